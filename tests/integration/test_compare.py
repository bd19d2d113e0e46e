"""`bts compare` on a real SQLite MLflow store of 30 runs whose Pareto front and best run are known by construction."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from bts.cli import main
from tests.integration.workspace import PROJECT

pytestmark = pytest.mark.integration

EXPERIMENT = "bts-compare-test"
METRICS = ("test.rmse", "training.seconds", "model.size_bytes", "test.skill")


def known_runs() -> dict[str, dict]:
    """Name -> metrics (test.rmse, training.seconds, model.size_bytes, test.skill), params and tags.

    "best" is better than every filler on every metric; "fast", its twin "fast-twin", "small" and "accurate" are
    each the best on one metric. So the front is those five, and with equal weights "best" ranks first.
    """
    runs: dict[str, dict] = {
        "best": {"metrics": (0.5, 1.0, 1000, 0.6), "model": "elasticnet"},
        "fast": {"metrics": (0.9, 0.1, 5000, 0.2), "model": "ridge"},
        "fast-twin": {"metrics": (0.9, 0.1, 5000, 0.2), "model": "ridge"},
        "small": {"metrics": (0.8, 2.0, 100, 0.3), "model": "ridge"},
        "accurate": {"metrics": (0.45, 10.0, 9000, 0.65), "model": "elasticnet"},
        "unevaluated": {"metrics": (0.4, 0.05, 50, None), "model": "ridge"},  # no test.skill: left out
    }
    for i in range(24):
        metrics = (0.55 + i * 0.45 / 23, 1.5 + (i * 7 % 24) * 3.5 / 23, 1500 + (i * 5 % 24) * 6500 / 23, 0.55 - (i * 11 % 24) * 0.45 / 23)
        runs[f"filler-{i:02d}"] = {"metrics": metrics, "model": "elasticnet" if i % 2 == 0 else "ridge", "sweep": "a" if i < 10 else "b"}
    return runs


RUNS = known_runs()
FRONT = {"best", "fast", "fast-twin", "small", "accurate"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tracking URI of a SQLite store holding the known runs in EXPERIMENT (and an empty experiment "empty")."""
    root = tmp_path_factory.mktemp("compare-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri())
    client.create_experiment("empty", artifact_location=(root / "mlartifacts").as_uri())
    for name, spec in RUNS.items():
        tags = {"dvc.exp_name": f"exp-{name}"} | ({"sweep": spec["sweep"]} if "sweep" in spec else {})
        run = client.create_run(experiment_id, run_name=name)
        metrics = [Metric(key, float(value), 0, 0) for key, value in zip(METRICS, spec["metrics"], strict=True) if value is not None]
        params = [Param("train.model", spec["model"]), Param("featurize.n_lags", "6")]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run.info.run_id)
    return uri


@pytest.fixture
def tracking(store: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The store, as MLFLOW_TRACKING_URI; MLflow's process-wide URI is reset afterwards."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    yield store
    mlflow.set_tracking_uri(None)  # bts compare sets it through use_store(); later tests must not inherit it


def compare_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["compare", "--experiment", EXPERIMENT, "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def names(document: dict) -> set[str]:
    return {run["run_name"] for run in document["ranking"]}


def test_table_shows_front_best_run_and_left_out_count(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--experiment", EXPERIMENT, "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "29 runs compared" in out
    assert "1 run without all metrics was left out" in out
    assert "Pareto front: 5 runs" in out
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 5
    assert rows[0][:4] == ["1", "best", rows[0][2], "exp-best"]
    assert len(rows[0][2]) == 8
    assert {row[1] for row in rows if row[-1] == "*"} == {row[1] for row in rows} & FRONT


def test_json_holds_every_compared_run_with_front_and_ranking(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    document = compare_json(capsys)
    assert document["runs_matched"] == 30
    assert document["runs_left_out"] == 1
    assert document["runs_compared"] == len(document["ranking"]) == 29
    assert "unevaluated" not in names(document)
    by_id = {run["run_id"]: run["run_name"] for run in document["ranking"]}
    assert {by_id[run_id] for run_id in document["pareto_front"]} == FRONT
    assert document["ranking"][0]["run_name"] == "best"
    assert document["ranking"][0]["metrics"] == {"test.rmse": 0.5, "training.seconds": 1.0, "model.size_bytes": 1000.0, "test.skill": 0.6}
    assert [run["rank"] for run in document["ranking"]] == list(range(1, 30))
    scores = [run["score"] for run in document["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert [m["name"] for m in document["metrics"]] == list(METRICS)


def test_weights_and_directions_change_the_winner(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare_json(capsys, "--weights", "1,0,0,0")["ranking"][0]["run_name"] == "accurate"
    fastest = compare_json(capsys, "--weights", "0,1,0,0")["ranking"][:2]
    assert {run["run_name"] for run in fastest} == {"fast", "fast-twin"}
    assert fastest[0]["score"] == fastest[1]["score"] == 1.0
    assert fastest[0]["run_id"] < fastest[1]["run_id"]  # a tie goes to the smaller run id
    slowest = compare_json(capsys, "--metrics", "training.seconds:max")
    assert slowest["ranking"][0]["run_name"] == "accurate"
    assert slowest["runs_left_out"] == 0


def test_tag_param_and_filter_narrow_the_runs(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    ridge = compare_json(capsys, "--param", "train.model=ridge")
    assert names(ridge) == {name for name, spec in RUNS.items() if spec["model"] == "ridge"} - {"unevaluated"}
    sweep_a = compare_json(capsys, "--tag", "sweep=a", "--param", "train.model=elasticnet")
    assert names(sweep_a) == {f"filler-{i:02d}" for i in range(0, 10, 2)}
    accurate = compare_json(capsys, "--filter", "metrics.`test.rmse` < 0.6 AND params.`featurize.n_lags` = '6'")
    assert names(accurate) == {"best", "accurate", "filler-00", "filler-01", "filler-02"}
    assert accurate["runs_left_out"] == 1  # "unevaluated" (rmse 0.4) matched the filter but lacks test.skill


def test_plot_writes_a_png(tracking: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plots" / "front.png"
    assert main(["compare", "--experiment", EXPERIMENT, "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    assert f"plot: {path}" in capsys.readouterr().out


def test_experiment_defaults_to_params_yaml(tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["train"]["experiment"] = EXPERIMENT
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(PROJECT / "dvc.yaml", tmp_path / "dvc.yaml")  # marks the project root, as in a real checkout
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # found from a subfolder too
    assert main(["compare", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["experiment"] == EXPERIMENT


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--experiment", "no-such-experiment"], "unknown experiment 'no-such-experiment'"),
        (["--experiment", "empty"], "no runs matched in experiment 'empty'"),
        (
            ["--experiment", EXPERIMENT, "--tag", "sweep=zzz"],
            "no runs matched in experiment 'bts-compare-test' with filter \"tags.`sweep` = 'zzz'\"",
        ),
        (["--experiment", EXPERIMENT, "--metrics", "test.rmse:min,test.nope:max"], "none of the 30 runs matched"),
        (["--experiment", EXPERIMENT, "--metrics", "test.rmse:best"], "--metrics: 'test.rmse:best' is not NAME:min or NAME:max"),
        (["--experiment", EXPERIMENT, "--weights", "1,1"], "--weights: 2 weights for 4 metrics"),
        (["--experiment", EXPERIMENT, "--filter", "metrics.rmse lower 1"], 'invalid filter "metrics.rmse lower 1"'),
        (["--experiment", EXPERIMENT, "--filter", "params.`train.model` > 'a'"], "invalid filter"),
    ],
)
def test_errors_exit_1_with_one_line(tracking: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", *argv]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"bts: error: {message}")
    assert captured.err.count("\n") == 1
    assert captured.out == ""


def test_missing_store_is_an_error_and_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    database = tmp_path / "nothing-here.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    assert main(["compare", "--experiment", EXPERIMENT]) == 1
    assert "no MLflow store at" in capsys.readouterr().err
    assert not database.exists()
    mlflow.set_tracking_uri(None)


def test_database_read_matches_the_search_api(tracking: str) -> None:
    """The column-only database read and MLflow's search give the same rows (a deleted run is left out by both)."""
    from bts.tracking.compare import fetch_runs

    client = MlflowClient(tracking_uri=tracking)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    doomed = client.create_run(experiment_id, run_name="deleted")
    client.log_metric(doomed.info.run_id, "test.rmse", 0.01)
    client.delete_run(doomed.info.run_id)
    direct, _ = fetch_runs(EXPERIMENT, "", list(METRICS))
    searched, _ = fetch_runs(EXPERIMENT, "attributes.run_name != 'no such run'", list(METRICS))
    assert len(direct) == len(RUNS)
    ordered = [frame.sort_values("run_id").reset_index(drop=True) for frame in (direct, searched)]
    pd.testing.assert_frame_equal(ordered[0], ordered[1], check_dtype=False)
