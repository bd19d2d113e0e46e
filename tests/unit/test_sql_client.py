"""SqlClient against MlflowClient on one store MLflow made: the same records, so `bts lineage` and `bts runs check` say
the same whichever client reads."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bts.errors import BtsError
from bts.lifecycle.lineage import trace
from bts.lifecycle.reconcile import reconcile
from bts.lifecycle.sql_client import SqlClient, mlflow_errors
from bts.tracking.tags import EXP_NAME, MONITORING_SUFFIX, PACKAGE_MD5, REGISTRATION_COMPLETE

MODEL = "bts-next-reading"
EXPERIMENT = "bts"


def package(folder: Path, weights: bytes) -> Path:
    """A package folder as the serve stage makes it: its weights, and an MLmodel whose metadata holds the lineage and
    the manifest of its files."""
    import yaml

    from bts.hashing import dir_manifest

    folder.mkdir(parents=True)
    (folder / "model.joblib").write_bytes(weights)
    metadata = {"lineage": {"model_md5": "m" * 32}, "manifest": dir_manifest(folder)}
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {}, "metadata": metadata}))
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowClient, SqlClient, dict]:
    """Two trainings (one with a NaN metric), a monitoring report, and a registered model of three versions (one
    deleted, one with an alias), whose packages do not match the md5 their versions record; MLflow wrote all of it.
    The tests only read it."""
    from bts.model.package import PACKAGE_ARTIFACT, package_metadata

    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    monitoring = client.create_experiment(EXPERIMENT + MONITORING_SUFFIX, artifact_location=(tmp_path / "artifacts").as_uri())
    runs = {}
    for index, name in enumerate(["first", "second"]):
        run = client.create_run(experiment, run_name=name, tags={EXP_NAME: f"exp-{name}", "data.features_md5": "f" * 32})
        client.log_param(run.info.run_id, "train.model", f"model-{index}")
        client.log_metric(run.info.run_id, "test.h1.rmse", 0.5 + index)
        client.log_metric(run.info.run_id, "test.h1.rmse", 0.25 + index)  # the latest value is the one read
        client.log_metric(run.info.run_id, "test.h1.skill", math.nan if index else 0.3)
        client.log_artifacts(run.info.run_id, str(package(tmp_path / f"package-{name}", name.encode())), PACKAGE_ARTIFACT)
        client.set_terminated(run.info.run_id)
        runs[name] = run.info.run_id
    assert package_metadata(tmp_path / "package-first")["manifest"]  # the fixture's package is one bts reads
    for at in (1, 2):
        report = client.create_run(monitoring, run_name=f"report-{at}", start_time=at * 1000, tags={PACKAGE_MD5: "p" * 32})
        client.log_metric(report.info.run_id, "service.requests", 10 * at)
    client.create_registered_model(MODEL)
    for name in ["first", "second", "first"]:
        version = client.create_model_version(MODEL, f"runs:/{runs[name]}/{PACKAGE_ARTIFACT}", run_id=runs[name], description=name)
        client.set_model_version_tag(MODEL, version.version, PACKAGE_MD5, "p" * 32)
        client.set_model_version_tag(MODEL, version.version, REGISTRATION_COMPLETE, "true")
    client.set_registered_model_alias(MODEL, "champion", "2")
    client.delete_model_version(MODEL, "3")
    return client, SqlClient(uri, uri), runs


def run_record(run) -> tuple:
    info = run.info
    metrics = {k: ("nan" if math.isnan(v) else v) for k, v in run.data.metrics.items()}
    record = (info.run_id, info.experiment_id, info.run_name, info.status, info.start_time, info.artifact_uri)
    return (*record, run.data.params, metrics, run.data.tags)


def version_record(version, aliases: bool = True) -> tuple:
    record = (version.name, version.version, version.run_id, version.source, version.description, version.current_stage)
    return (*record, version.tags, sorted(version.aliases) if aliases else None)


def test_runs_experiments_and_searches_read_as_mlflow_reads_them(store) -> None:
    mlflow, sql, runs = store
    for run_id in runs.values():
        assert run_record(sql.get_run(run_id)) == run_record(mlflow.get_run(run_id))
    for name in [EXPERIMENT, EXPERIMENT + MONITORING_SUFFIX, "nope"]:
        ours, theirs = sql.get_experiment_by_name(name), mlflow.get_experiment_by_name(name)
        assert (ours and (ours.experiment_id, ours.name)) == (theirs and (theirs.experiment_id, theirs.name))
    monitoring = mlflow.get_experiment_by_name(EXPERIMENT + MONITORING_SUFFIX).experiment_id
    assert sql.get_experiment(monitoring).name == EXPERIMENT + MONITORING_SUFFIX
    search = {"filter_string": f"tags.`{PACKAGE_MD5}` = '{'p' * 32}'", "order_by": ["attributes.start_time DESC"]}
    ours = sql.search_runs([monitoring], **search)
    assert [run_record(r) for r in ours] == [run_record(r) for r in mlflow.search_runs([monitoring], **search)]
    assert [r.info.run_name for r in ours] == ["report-2", "report-1"]


def test_the_registry_reads_as_mlflow_reads_it(store) -> None:
    mlflow, sql, _ = store
    theirs = sorted(mlflow.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    assert [version_record(v, aliases=False) for v in sql.search_model_versions(f"name = '{MODEL}'")] == [
        version_record(v, aliases=False) for v in theirs
    ]
    assert [str(v.version) for v in theirs] == ["1", "2"]  # the deleted version is gone from both
    assert version_record(sql.get_model_version_by_alias(MODEL, "champion")) == version_record(
        mlflow.get_model_version_by_alias(MODEL, "champion")
    )
    assert version_record(sql.get_model_version(MODEL, "1")) == version_record(mlflow.get_model_version(MODEL, "1"))
    assert sql.get_registered_model(MODEL).aliases == mlflow.get_registered_model(MODEL).aliases == {"champion": 2}


def test_artifacts_are_read_from_the_local_artifact_folder(store, tmp_path: Path) -> None:
    from bts.hashing import dir_manifest

    mlflow, sql, runs = store
    ours = sql.download_artifacts(runs["second"], "package", str(tmp_path / "ours"))
    theirs = mlflow.download_artifacts(runs["second"], "package", str(tmp_path / "theirs"))
    assert dir_manifest(Path(ours)) == dir_manifest(Path(theirs)) and dir_manifest(Path(ours))
    with pytest.raises(FileNotFoundError, match="no artifact nope"):
        sql.download_artifacts(runs["second"], "nope", str(tmp_path / "none"))


def test_lineage_and_runs_check_give_the_same_report_with_either_client(store, tmp_path: Path) -> None:
    import subprocess

    mlflow, sql, runs = store
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # no commit holds the models: both say so
    for ref in [f"models:/{MODEL}@champion", f"models:/{MODEL}/1", runs["first"]]:
        assert json.dumps(trace(sql, ref, tmp_path), default=str) == json.dumps(trace(mlflow, ref, tmp_path), default=str)
    assert reconcile(sql, tmp_path, EXPERIMENT, MODEL) == reconcile(mlflow, tmp_path, EXPERIMENT, MODEL)
    assert reconcile(sql, tmp_path, EXPERIMENT, MODEL)["versions"]  # the fixture's packages lack an md5 that matches


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda sql: sql.get_run("0" * 32), "run 0{32}: not found in sqlite:///"),
        (lambda sql: sql.get_model_version(MODEL, "3"), f"{MODEL} version 3: not found"),  # deleted
        (lambda sql: sql.get_model_version(MODEL, "x"), f"{MODEL} version x: not found"),
        (lambda sql: sql.get_model_version_by_alias(MODEL, "nope"), f"{MODEL}@nope: not found"),
        (lambda sql: sql.get_registered_model("nope"), "registered model nope: not found"),
        (lambda sql: sql.search_runs(["1"], "metrics.x > 1"), "take a tag filter"),
        (lambda sql: sql.search_model_versions("name LIKE 'b%'"), "take a name filter"),
    ],
)
def test_what_it_cannot_answer_is_one_error_naming_it(store, call, message: str) -> None:
    with pytest.raises(BtsError, match=message):
        call(store[1])


def test_mlflow_errors_are_caught_only_once_mlflow_is_imported(monkeypatch) -> None:
    from mlflow.exceptions import MlflowException

    assert mlflow_errors() == (MlflowException,)
    monkeypatch.delitem(sys.modules, "mlflow.exceptions")
    assert mlflow_errors() == ()


def test_a_version_whose_package_is_gone_is_a_problem_of_that_version_with_either_client(tmp_path: Path) -> None:
    from bts.lifecycle.integrity import version_integrity

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = MlflowClient(tracking_uri=uri)
    run = mlflow.create_run(mlflow.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri()))
    mlflow.create_registered_model(MODEL)
    mlflow.create_model_version(MODEL, f"runs:/{run.info.run_id}/package", run_id=run.info.run_id)
    mlflow.set_model_version_tag(MODEL, "1", PACKAGE_MD5, "p" * 32)  # registered, but nothing was ever logged
    for client in (mlflow, SqlClient(uri, uri)):
        problems = version_integrity(client, client.get_model_version(MODEL, "1"))
        assert len(problems) == 1 and problems[0].startswith(f"{MODEL} version 1: its package cannot be read from its run ("), problems
