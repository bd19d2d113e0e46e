"""The SQL bts runs on MLflow's tables, on a SQLite database made from MLflow's own schema (its ORM models)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.store.tracking.dbmodels import models
from sqlalchemy import create_engine, insert

from bts.errors import BtsError
from bts.lifecycle import database


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A SQLite URI of MLflow's tables holding experiment 1 with runs a (deleted), b and c, and experiment 2 with run d."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    engine = create_engine(uri)
    tables = [models.SqlExperiment, models.SqlRun, models.SqlParam, models.SqlTag, models.SqlLatestMetric]
    models.Base.metadata.create_all(engine, tables=[model.__table__ for model in tables])
    with engine.begin() as connection:
        for experiment_id, name in [(1, "bts"), (2, "other")]:
            connection.execute(
                insert(models.SqlExperiment.__table__).values(experiment_id=experiment_id, name=name, lifecycle_stage="active")
            )
        for run_id, experiment_id, stage in [("a", 1, "deleted"), ("b", 1, "active"), ("c", 1, "active"), ("d", 2, "active")]:
            run = {"run_uuid": run_id, "name": f"run-{run_id}", "experiment_id": experiment_id, "lifecycle_stage": stage}
            details = {
                "status": "FINISHED",
                "start_time": 1000,
                "source_type": "LOCAL",
                "source_name": "",
                "user_id": "",
                "artifact_uri": "",
            }
            connection.execute(insert(models.SqlRun.__table__).values(**run, **details, entry_point_name=""))
            connection.execute(insert(models.SqlParam.__table__).values(run_uuid=run_id, key="train.model", value=f"model-{run_id}"))
            connection.execute(insert(models.SqlTag.__table__).values(run_uuid=run_id, key="dvc.exp_name", value=f"exp-{run_id}"))
            is_nan = run_id == "c"  # MLflow keeps NaN as 0 and the flag
            row = {"run_uuid": run_id, "key": "test.h1.rmse", "value": 0.0 if is_nan else 0.5, "is_nan": is_nan, "timestamp": 0, "step": 0}
            connection.execute(insert(models.SqlLatestMetric.__table__).values(**row))
        connection.execute(insert(models.SqlParam.__table__).values(run_uuid="b", key="featurize.n_lags", value="6"))
    engine.dispose()
    return uri


def test_reads_the_active_runs_of_one_experiment(store: str) -> None:
    with database.reading(store) as read:
        experiment = database.experiment_id(read, "bts", store)
        assert sorted(database.active_runs(read, experiment)) == [("b", "run-b", "FINISHED", 1000), ("c", "run-c", "FINISHED", 1000)]
        assert sorted(database.tag_values(read, experiment, "dvc.exp_name")) == [("b", "exp-b"), ("c", "exp-c")]
        versions = [("b", "FINISHED", 1000, "exp-b"), ("c", "FINISHED", 1000, "exp-c")]
        assert sorted(database.run_versions(read, experiment, "dvc.exp_name")) == versions
        metrics = dict((run_id, value) for run_id, _, value in database.latest_metrics(read, experiment, ["test.h1.rmse", "test.h1.skill"]))
        assert metrics["b"] == 0.5 and math.isnan(metrics["c"])
        every = dict((run_id, value) for run_id, _, value in database.metric_values(read, ["test.h1.rmse", "test.h1.skill"]))
        assert every.keys() == {"a", "b", "c", "d"} and every["b"] == 0.5 and math.isnan(every["c"])  # any run's: callers pick
        assert database.metric_keys(read, ["b", "c"]) == {"test.h1.rmse"}


def test_params_are_compared_in_the_database_over_the_runs_of_a_data_version(store: str) -> None:
    with database.reading(store) as read:
        experiment = database.experiment_id(read, "bts", store)
        both = database.run_set(experiment, "dvc.exp_name", None, every_version=True)
        assert database.param_spread(read, both) == {"featurize.n_lags": (1, "6", "6"), "train.model": (2, "model-b", "model-c")}
        assert database.runs_with_params(read, both) == 2
        only_b = database.run_set(experiment, "dvc.exp_name", "exp-b", every_version=False)
        assert database.param_spread(read, only_b) == database.param_spread(read, database.listed_runs(["b"]))
        assert database.param_spread(read, only_b)["train.model"] == (1, "model-b", "model-b")
        untagged = database.run_set(experiment, "dvc.exp_name", None, every_version=False)  # the runs without the tag: none
        assert database.param_spread(read, untagged) == {} and database.runs_with_params(read, untagged) == 0
        without_b = database.run_set(experiment, "dvc.exp_name", None, every_version=True, left_out=["b"])
        assert database.param_spread(read, without_b) == {"train.model": (1, "model-c", "model-c")}
        found = database.run_details(read, ["b", "c"], ["dvc.exp_name"], ["train.model"])
        assert sorted(found["names"]) == [("b", "run-b"), ("c", "run-c")] and sorted(found["with_params"]) == [("b",), ("c",)]
        assert sorted(found["tags"]) == [("b", "dvc.exp_name", "exp-b"), ("c", "dvc.exp_name", "exp-c")]
        assert sorted(found["params"]) == [("b", "train.model", "model-b"), ("c", "train.model", "model-c")]


def test_params_of_runs(store: str) -> None:
    with database.reading(store) as read:
        assert database.params_of(read, ["b", "d"], "train.") == [("b", "train.model", "model-b"), ("d", "train.model", "model-d")]
        assert database.params_of(read, [], "train.") == []


def test_an_unknown_experiment_names_the_store(store: str) -> None:
    with database.reading(store) as read, pytest.raises(BtsError, match=f"unknown experiment 'nope' in {store}"):
        database.experiment_id(read, "nope", store)


def test_a_missing_sqlite_store_is_not_created(tmp_path: Path) -> None:
    import sqlite3

    missing = tmp_path / "nothing.db"
    with pytest.raises(sqlite3.OperationalError), database.reading(f"sqlite:///{missing}"):
        pass
    assert not missing.exists()


def test_other_databases_are_read_through_sqlalchemy(store: str) -> None:
    """The same SQL through SQLAlchemy (as for PostgreSQL): pysqlite's URI takes SQLAlchemy's path, not sqlite3's."""
    through_sqlalchemy = store.replace("sqlite:///", "sqlite+pysqlite:///")
    with database.reading(through_sqlalchemy) as read:
        experiment = database.experiment_id(read, "bts", through_sqlalchemy)
        assert sorted(database.active_runs(read, experiment))[0] == ("b", "run-b", "FINISHED", 1000)
        assert database.params_of(read, ["b"], "train.") == [("b", "train.model", "model-b")]
        assert math.isnan(dict((r, v) for r, _, v in database.latest_metrics(read, experiment, ["test.h1.rmse"]))["c"])


@pytest.mark.parametrize(("content", "reason"), [(b"not a database at all\n", "file is not a database"), (None, "no such table")])
def test_a_file_that_is_no_mlflow_store_is_one_error_naming_it(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "mlflow.db"
    if content is None:  # a SQLite database, but not MLflow's
        import sqlite3

        sqlite3.connect(path).execute("CREATE TABLE other (a)").connection.close()
    else:
        path.write_bytes(content)
    uri = f"sqlite:///{path}"
    with pytest.raises(BtsError) as caught, database.reading(uri) as read:
        database.experiment_id(read, "bts-next-reading", uri)
    assert str(caught.value).startswith(f"cannot read the MLflow store {uri}: ") and reason in str(caught.value)


def test_history_reads_the_transitions_of_the_versions_not_deleted_as_mlflows_api_does(tmp_path: Path, monkeypatch) -> None:
    """On a store MLflow made: the SQL read of `bts history` gives what MLflow's API gives, oldest first, without the
    transitions of a deleted version or of another model."""
    import json

    from mlflow.tracking import MlflowClient

    from bts.lifecycle.history import history, transitions
    from bts.tracking.tags import TRANSITION_PREFIX

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    for name in ("bts", "other"):
        client.create_registered_model(name)
        for version, at in [("1", "2026-01-02T00:00:00Z"), ("2", "2026-01-01T00:00:00Z"), ("3", "2026-01-03T00:00:00Z")]:
            client.create_model_version(name, str(tmp_path), run_id=None)
            event = {"alias": "champion", "version": version, "previous": None, "at": at, "by": "me", "forced": False, "reason": name}
            client.set_model_version_tag(name, version, f"{TRANSITION_PREFIX}{at}", json.dumps(event))
            client.set_model_version_tag(name, version, "other.tag", "x")
    client.delete_model_version("bts", "3")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    read = history("bts")
    assert [(event["version"], event["reason"]) for event in read] == [("2", "bts"), ("1", "bts")]
    versions = client.search_model_versions("name = 'bts'")
    assert read == transitions(value for v in versions for key, value in v.tags.items() if key.startswith(TRANSITION_PREFIX))
