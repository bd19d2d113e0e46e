"""`bts compare` on a real SQLite MLflow store of 30 runs whose Pareto front and best run are known by construction, run
from a workspace whose dvc.lock records the data version they trained on; and on a built pipeline whose data changes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from bts.cli import main
from bts.project import TRAINING_STAGE, pipeline_argument
from bts.tracking.tags import GIT_DIRTY, data_md5_tag
from tests.integration.workspace import BIN, DATASETS, PROJECT, lock_outs, set_params
from tests.integration.workspace import run as user_run

pytestmark = pytest.mark.integration

EXPERIMENT = "bts-compare-test"
METRICS = ("test.h1.rmse", "training.seconds", "model.size_bytes", "test.h1.skill")
QUALITY_AND_COST = "test.h1.rmse:min,training.seconds:min,model.size_bytes:min,test.h1.skill:max"
LONG_SKILL = "test.h5.skill"  # every run with a test.h1.skill has this too, 0.1 below it
CURRENT_DATA = "0123456789abcdef0123456789abcdef"  # the features md5 the workspace's dvc.lock records, and the runs' own


def known_runs() -> dict[str, dict]:
    """Name -> metrics (test.h1.rmse, training.seconds, model.size_bytes, test.h1.skill), params and tags.

    "best" is better than every filler on every metric; "fast", its twin "fast-twin", "small" and "accurate" are
    each the best on one metric. So on all four metrics the front is those five, and with equal weights "best" ranks
    first; on the default, the test skill of each horizon (test.h1.skill and LONG_SKILL), "accurate" beats every run
    and is the front alone.
    Elasticnet runs have a train.alpha (ridge runs none); featurize.n_lags is the same everywhere.
    """
    runs: dict[str, dict] = {
        "best": {"metrics": (0.5, 1.0, 1000, 0.6), "model": "elasticnet"},
        "fast": {"metrics": (0.9, 0.1, 5000, 0.2), "model": "ridge"},
        "fast-twin": {"metrics": (0.9, 0.1, 5000, 0.2), "model": "ridge"},
        "small": {"metrics": (0.8, 2.0, 100, 0.3), "model": "ridge"},
        "accurate": {"metrics": (0.45, 10.0, 9000, 0.65), "model": "elasticnet"},
        "unevaluated": {"metrics": (0.4, 0.05, 50, None), "model": "ridge"},  # no skill: left out
    }
    for i in range(24):
        metrics = (0.55 + i * 0.45 / 23, 1.5 + (i * 7 % 24) * 3.5 / 23, 1500 + (i * 5 % 24) * 6500 / 23, 0.55 - (i * 11 % 24) * 0.45 / 23)
        runs[f"filler-{i:02d}"] = {"metrics": metrics, "model": "elasticnet" if i % 2 == 0 else "ridge", "sweep": "a" if i < 10 else "b"}
    return runs


RUNS = known_runs()
FRONT = {"best", "fast", "fast-twin", "small", "accurate"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder whose dvc.lock records CURRENT_DATA as the training features' md5: what `bts compare` compares on."""
    root = tmp_path_factory.mktemp("compare-workspace")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT / name, root / name)
    features = pipeline_argument(root, TRAINING_STAGE, "--features")
    lock = {"schema": "2.0", "stages": {"featurize": {"outs": [{"path": features, "md5": CURRENT_DATA}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tracking URI of a SQLite store holding the known runs in EXPERIMENT (and an empty experiment "empty")."""
    root = tmp_path_factory.mktemp("compare-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri())
    client.create_experiment("empty", artifact_location=(root / "mlartifacts").as_uri())
    for name, spec in RUNS.items():
        tags = {"dvc.exp_name": f"exp-{name}", data_md5_tag("features"): CURRENT_DATA, GIT_DIRTY: "false"}
        tags |= {"sweep": spec["sweep"]} if "sweep" in spec else {}
        run = client.create_run(experiment_id, run_name=name)
        metrics = [Metric(key, float(value), 0, 0) for key, value in zip(METRICS, spec["metrics"], strict=True) if value is not None]
        skill = spec["metrics"][METRICS.index("test.h1.skill")]
        metrics += [Metric(LONG_SKILL, round(skill - 0.1, 6), 0, 0)] if skill is not None else []
        params = [Param("train.model", spec["model"]), Param("featurize.n_lags", "6")]
        if spec["model"] == "elasticnet":
            params.append(Param("train.alpha", "0.1" if name.startswith("filler") else "0.01"))
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run.info.run_id)
    return uri


@pytest.fixture
def tracking(store: str, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The store, as MLFLOW_TRACKING_URI, used from the workspace (the current folder); MLflow's process-wide URI is reset
    afterwards."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(workspace)
    yield store
    mlflow.set_tracking_uri(None)  # bts compare sets it through use_store(); later tests must not inherit it


def compare_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["compare", "--experiment", EXPERIMENT, "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def names(document: dict) -> set[str]:
    return {run["run_name"] for run in document["ranking"]}


def table_rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]


def test_default_table_ranks_on_quality_and_shows_the_params_that_differ(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--experiment", EXPERIMENT, "--top", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[:7] == [
        f"experiment '{EXPERIMENT}': 29 runs on the workspace's data, features md5 {CURRENT_DATA[:12]} (dvc.lock)",
        "ranked on test skill per horizon: test.h1.skill and test.h5.skill (higher is better), equal weights",
        "1 run without all metrics was left out",
        "params that differ between them: train.alpha, train.model",
        "Pareto front: 1 run, marked *; 1 of them in the top 3",
        "",
        "rank  run                     features md5  dirty  h1.skill  h5.skill   score  front  alpha  model",
    ]
    rows = table_rows(out)
    md5 = CURRENT_DATA[:12]
    assert [row[0:2] + row[3:] for row in rows] == [
        ["1", "exp-accurate", md5, "no", "0.65", "0.55", "1.0000", "*", "0.01", "elasticnet"],
        ["2", "exp-best", md5, "no", "0.6", "0.5", "0.9091", "0.01", "elasticnet"],  # 0.05 / 0.55 below the best on each metric
        ["3", "exp-filler-00", md5, "no", "0.55", "0.45", "0.8182", "0.1", "elasticnet"],
    ]
    run_ids = {run["run_name"]: run["run_id"] for run in compare_json(capsys)["ranking"]}
    assert [row[2] for row in rows] == [run_ids[name][:8] for name in ("accurate", "best", "filler-00")]
    assert "training.seconds" not in out and "featurize.n_lags" not in out  # cost only on request; a param all runs share is noise
    assert "test.h1.rmse" not in out  # skill ranks the runs of one data version as rmse does


def test_a_param_a_run_lacks_shows_as_a_dash(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--experiment", EXPERIMENT, "--param", "train.model=ridge", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "no param differs between them" in out  # every ridge run lacks train.alpha: nothing differs
    assert main(["compare", "--experiment", EXPERIMENT, "--top", "30"]) == 0
    ridge = [row for row in table_rows(capsys.readouterr().out) if row[1] == "exp-small"]
    assert ridge[0][-2:] == ["ridge", "-"]


def test_table_on_quality_and_cost_shows_front_best_run_and_left_out_count(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--experiment", EXPERIMENT, "--metrics", QUALITY_AND_COST, "--top", "5"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1:3] == [  # wrapped to fit 120 columns
        "ranked on test.h1.rmse (lower is better), training.seconds (lower is better), model.size_bytes (lower is better) and",
        "  test.h1.skill (higher is better), equal weights",
    ]
    assert "1 run without all metrics was left out" in out
    assert "Pareto front: 5 runs" in out
    rows = table_rows(out)
    assert len(rows) == 5
    assert rows[0][:2] == ["1", "exp-best"]
    assert len(rows[0][2]) == 8
    assert {row[1] for row in rows if "*" in row} == {row[1] for row in rows} & {f"exp-{name}" for name in FRONT}
    assert max(len(line) for line in lines) <= 120


def test_unequal_weights_are_stated_with_each_metric(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--experiment", EXPERIMENT, "--weights", "3,1"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "ranked on test skill per horizon: test.h1.skill (weight 3) and test.h5.skill (weight 1), higher is better"
    )


def test_json_holds_every_compared_run_with_front_and_ranking(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    document = compare_json(capsys, "--metrics", QUALITY_AND_COST)
    assert document["runs_matched"] == 30
    assert document["runs_left_out"] == 1
    assert document["runs_compared"] == len(document["ranking"]) == 29
    assert "unevaluated" not in names(document)
    by_id = {run["run_id"]: run["run_name"] for run in document["ranking"]}
    assert {by_id[run_id] for run_id in document["pareto_front"]} == FRONT
    assert document["ranking"][0]["run_name"] == "best"
    assert document["ranking"][0]["metrics"] == {
        "test.h1.rmse": 0.5,
        "training.seconds": 1.0,
        "model.size_bytes": 1000.0,
        "test.h1.skill": 0.6,
    }
    assert document["default_metrics"] is False
    assert [run["rank"] for run in document["ranking"]] == list(range(1, 30))
    scores = [run["score"] for run in document["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert [m["name"] for m in document["metrics"]] == list(METRICS)
    assert document["params"] == ["train.alpha", "train.model"]
    assert document["ranking"][0]["params"] == {"train.alpha": "0.01", "train.model": "elasticnet"}
    assert {run["run_name"]: run["params"] for run in document["ranking"]}["small"] == {"train.alpha": None, "train.model": "ridge"}


def test_json_by_default_ranks_on_the_skill_of_every_horizon(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    document = compare_json(capsys)
    assert document["metrics"] == [
        {"name": "test.h1.skill", "direction": "max", "weight": 1.0},
        {"name": "test.h5.skill", "direction": "max", "weight": 1.0},
    ]
    assert document["default_metrics"] is True
    assert document["ranking"][0]["run_name"] == "accurate"
    assert document["ranking"][0]["metrics"] == {"test.h1.skill": 0.65, "test.h5.skill": 0.55}
    assert document["pareto_front"] == [document["ranking"][0]["run_id"]]


def test_weights_and_directions_change_the_winner(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare_json(capsys, "--metrics", QUALITY_AND_COST, "--weights", "1,0,0,0")["ranking"][0]["run_name"] == "accurate"
    fastest = compare_json(capsys, "--metrics", QUALITY_AND_COST, "--weights", "0,1,0,0")["ranking"][:2]
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
    accurate = compare_json(capsys, "--filter", "metrics.`test.h1.rmse` < 0.6 AND params.`featurize.n_lags` = '6'")
    assert names(accurate) == {"best", "accurate", "filler-00", "filler-01", "filler-02"}
    assert [metric["name"] for metric in accurate["metrics"]] == ["test.h1.skill", "test.h5.skill"]  # MLflow's search, the same
    assert accurate["runs_left_out"] == 1  # "unevaluated" (rmse 0.4) matched the filter but has no skill


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
        (["--experiment", EXPERIMENT, "--metrics", "test.h1.rmse:min,test.nope:max"], "none of the 30 runs matched"),
        (["--experiment", EXPERIMENT, "--metrics", "test.h1.rmse:best"], "--metrics: 'test.h1.rmse:best' is not NAME:min or NAME:max"),
        (["--experiment", EXPERIMENT, "--weights", "1,1,1"], "--weights: 3 weights for 2 metrics"),
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
    from bts.lifecycle.compare import fetch_runs

    client = MlflowClient(tracking_uri=tracking)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    doomed = client.create_run(experiment_id, run_name="deleted")
    client.log_metric(doomed.info.run_id, "test.h1.rmse", 0.01)
    client.log_metric(doomed.info.run_id, "test.h3.skill", 0.9)  # a horizon no active run has
    client.delete_run(doomed.info.run_id)
    direct, _ = fetch_runs(EXPERIMENT, "", list(METRICS))
    searched, _ = fetch_runs(EXPERIMENT, "attributes.run_name != 'no such run'", list(METRICS))
    assert len(direct) == len(RUNS)
    assert (
        [list(run) for run in direct]
        == [list(run) for run in searched]
        == [
            [
                "run_id",
                "run_name",
                "dvc_exp_name",
                "features_md5",
                "dirty",
                *METRICS,
                "has_params",
                "params.train.alpha",
                "params.train.model",
            ]
        ]
        * len(RUNS)
    )
    assert comparable(direct) == comparable(searched)
    alpha = {run["run_name"]: run["params.train.alpha"] for run in direct}
    assert (alpha["best"], alpha["filler-00"], alpha["small"]) == ("0.01", "0.1", None)
    assert math.isnan(next(run["test.h1.skill"] for run in direct if run["run_name"] == "unevaluated"))
    # The default metrics: the skill of every horizon the runs have, read from the newest runs on a database store.
    direct, _ = fetch_runs(EXPERIMENT, "", None)
    searched, _ = fetch_runs(EXPERIMENT, "attributes.run_name != 'no such run'", None)
    assert [key for key in direct[0] if key.startswith("test.")] == ["test.h1.skill", "test.h5.skill"]
    assert comparable(direct) == comparable(searched)


def comparable(runs: list[dict]) -> list[dict]:
    """The runs by run_id, NaN (a missing metric, never equal to itself) as None."""
    missing = [{key: None if isinstance(value, float) and math.isnan(value) else value for key, value in run.items()} for run in runs]
    return sorted(missing, key=lambda run: run["run_id"])


def user_env(tracking: str) -> dict[str, str]:
    """The environment of a user's shell: Python's stdout block-buffered into a pipe (no PYTHONUNBUFFERED), so a
    closed pipe shows when the buffer is flushed, as late as the interpreter's exit."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    return {**env, "MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(PROJECT / "src")}


def compare_process(tracking: str, stdout: int, *argv: str) -> subprocess.CompletedProcess:
    """`bts compare` as its own process, as a shell pipeline runs it, writing to `stdout` (a pipe's write end), from the
    current folder (the workspace `tracking` entered)."""
    env = user_env(tracking)
    command = [str(BIN / "bts"), "compare", "--experiment", EXPERIMENT, *argv]
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, env=env, text=True, timeout=120, cwd=Path.cwd())


@pytest.mark.parametrize("argv", [[], ["--json"]])
def test_a_reader_that_left_gets_no_traceback(tracking: str, argv: list[str]) -> None:
    """`bts compare | head` where head is gone before compare writes: a real pipe whose read end is closed.

    Python used to find the pipe closed only when flushing stdout at exit, after the CLI's BrokenPipeError handler:
    "Exception ignored in: <_io.TextIOWrapper name='<stdout>' ...> BrokenPipeError: [Errno 32] Broken pipe", exit 120.
    """
    read, write = os.pipe()
    os.close(read)
    try:
        result = compare_process(tracking, write, *argv)
    finally:
        os.close(write)
    assert result.returncode == 0
    assert result.stderr == ""


def test_piped_into_head_prints_the_first_lines_and_nothing_else(tracking: str) -> None:
    env = user_env(tracking)
    shell = f"'{BIN / 'bts'}' compare --experiment {EXPERIMENT} | head -n 1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, env=env, timeout=120, cwd=Path.cwd())
    assert (result.returncode, result.stderr) == (0, "")
    first = f"experiment '{EXPERIMENT}': 29 runs on the workspace's data, features md5 {CURRENT_DATA[:12]} (dvc.lock)"
    assert result.stdout == first + "\n"


def test_a_run_without_params_does_not_make_every_param_differ(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An evaluation-only run (the evaluate stage's run for a model no run trained) logs metrics but no params."""
    from bts.lifecycle.compare import fetch_runs

    client = MlflowClient(tracking_uri=tracking)
    experiment_id = client.create_experiment("with-evaluation-run")
    runs = {"trained-1": {"train.model": "ridge", "train.seed": "42"}, "trained-2": {"train.model": "ridge"}, "eval": {}}
    for name, params in runs.items():
        run = client.create_run(experiment_id, run_name=name)
        metrics = [Metric("test.h1.rmse", 0.7, 0, 0), Metric("test.h1.skill", 0.3, 0, 0)]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    assert main(["compare", "--experiment", "with-evaluation-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "params that differ between them: train.seed (1 run logged no params)" in lines  # not train.model
    direct, _ = fetch_runs("with-evaluation-run", "", ["test.h1.rmse"])
    searched, _ = fetch_runs("with-evaluation-run", "attributes.run_name != 'x'", ["test.h1.rmse"])
    assert {run["run_name"]: run["has_params"] for run in direct} == {"trained-1": True, "trained-2": True, "eval": False}
    assert comparable(direct) == comparable(searched)


def imported_modules(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """The real `bts` console script as its own process in the current folder, and the top-level packages it imported
    (Python's own import log)."""
    env = {**env, "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run([str(BIN / "bts"), *argv], capture_output=True, text=True, env=env, timeout=120, cwd=Path.cwd())
    log = [line for line in result.stderr.splitlines() if line.startswith("import time:") and "imported package" not in line]
    return result, {line.rsplit("|", 1)[1].strip().partition(".")[0] for line in log}


@pytest.mark.parametrize("argv", [[], ["--json"]])
def test_compare_on_a_sqlite_store_imports_neither_mlflow_nor_pandas_nor_sqlalchemy(tracking: str, argv: list[str]) -> None:
    """Importing MLflow takes seconds, pandas most of one, SQLAlchemy a third: a command that only reads the store must not
    pay for them."""
    result, imported = imported_modules(["compare", "--experiment", EXPERIMENT, *argv], user_env(tracking))
    assert result.returncode == 0, result.stderr
    assert "29 runs on the workspace's data" in result.stdout or json.loads(result.stdout)["runs_compared"] == 29
    assert {"bts", "sqlite3"} <= imported  # the log is whole: the runs were read with Python's sqlite3
    assert imported & {"mlflow", "pandas", "numpy", "sqlalchemy"} == set()


def test_compare_with_a_filter_still_searches_through_mlflow(tracking: str) -> None:
    result, imported = imported_modules(["compare", "--experiment", EXPERIMENT, "--tag", "sweep=a"], user_env(tracking))
    assert result.returncode == 0, result.stderr
    assert "10 runs on the workspace's data" in result.stdout
    assert "mlflow" in imported


def test_missing_experiment_on_the_fast_path_is_one_line_without_mlflow(tracking: str) -> None:
    result, imported = imported_modules(["compare", "--experiment", "no-such-experiment"], user_env(tracking))
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert (result.returncode, errors) == (1, [f"bts: error: unknown experiment 'no-such-experiment' in {tracking}"])
    assert "mlflow" not in imported


def test_help_imports_neither_mlflow_nor_pandas_nor_sqlalchemy(tracking: str) -> None:
    result, imported = imported_modules(["--help"], user_env(tracking))
    assert result.returncode == 0 and "compare" in result.stdout
    assert imported & {"mlflow", "pandas", "numpy", "sqlalchemy"} == set()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lineage", "nonsense"], "bts: error: nonsense: not a model reference"),
        (["reproduce", "models:/m/nine"], "bts: error: models:/m/nine: version 'nine' is not a number"),
        (["promote", "x1"], "bts: error: version 'x1': give a version number"),
        (["promote", "1", "--to", "latest"], "bts: error: alias 'latest': use a lowercase word"),
    ],
)
def test_a_mistyped_reference_version_or_alias_is_one_line_before_mlflow_is_imported(tracking: str, argv: list[str], message: str) -> None:
    result, imported = imported_modules(argv, user_env(tracking))
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 1 and len(errors) == 1 and errors[0].startswith(message), errors
    assert "bts" in imported and "mlflow" not in imported


def test_a_nan_metric_reads_as_nan_and_its_run_is_left_out(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    """MLflow keeps a NaN metric as 0 with an is_nan flag: the database read must not take it for 0."""
    from bts.lifecycle.compare import fetch_runs

    client = MlflowClient(tracking_uri=tracking)
    experiment_id = client.create_experiment("with-nan-metric")
    for name, skill in [("scored", 0.3), ("diverged", math.nan)]:
        run = client.create_run(experiment_id, run_name=name)
        client.log_batch(run.info.run_id, metrics=[Metric("test.h1.rmse", 0.7, 0, 0), Metric("test.h1.skill", skill, 0, 0)])
    direct, _ = fetch_runs("with-nan-metric", "", ["test.h1.rmse", "test.h1.skill"])
    searched, _ = fetch_runs("with-nan-metric", "attributes.run_name != 'x'", ["test.h1.rmse", "test.h1.skill"])
    assert comparable(direct) == comparable(searched)
    assert math.isnan(next(run["test.h1.skill"] for run in direct if run["run_name"] == "diverged"))
    assert main(["compare", "--experiment", "with-nan-metric"]) == 0
    assert "1 run without all metrics was left out" in capsys.readouterr().out.splitlines()


def test_runs_without_a_skill_per_horizon_are_not_ranked_by_default_and_metrics_may_name_theirs(tracking: str, capsys) -> None:
    """Runs scored before scores were logged per horizon (test.rmse, test.skill) have none of the default's metrics."""
    client = MlflowClient(tracking_uri=tracking)
    experiment_id = client.create_experiment("single-horizon")
    for name, rmse in [("older", 0.5), ("oldest", 0.6)]:
        run = client.create_run(experiment_id, run_name=name, tags={data_md5_tag("features"): CURRENT_DATA})
        client.log_batch(run.info.run_id, metrics=[Metric("test.rmse", rmse, 0, 0), Metric("test.skill", 1 - rmse, 0, 0)])
    for argv in [[], ["--filter", "attributes.status != 'nothing'"]]:  # the database read, then MLflow's search
        assert main(["compare", "--experiment", "single-horizon", *argv]) == 1
        error = capsys.readouterr().err
        assert error.startswith("bts: error: none of the 2 runs matched in experiment 'single-horizon'")
        assert "has a test skill per horizon (test.h<H>.skill), the default ranking; name the metrics to rank on with --metrics" in error
    assert main(["compare", "--experiment", "single-horizon", "--metrics", "test.rmse:min", "--json"]) == 0
    assert [run["run_name"] for run in json.loads(capsys.readouterr().out)["ranking"]] == ["older", "oldest"]


OTHER_DATA = "fedcba9876543210fedcba9876543210"


def test_runs_on_other_data_are_counted_and_all_data_ranks_each_version_on_its_own(tracking: str, capsys) -> None:
    """One model trained at one commit, so one run name: on the workspace's data (once with uncommitted changes), on other
    data, and before runs recorded their data. Rows are told apart by run id; only the workspace's data is ranked."""
    client = MlflowClient(tracking_uri=tracking)
    experiment_id = client.create_experiment("data-versions")
    made = [
        (CURRENT_DATA, "false", 0.5),
        (CURRENT_DATA, "true", 0.6),
        (OTHER_DATA, "false", 0.3),
        (OTHER_DATA, "false", 0.4),
        (None, None, 0.2),
    ]
    for md5, dirty, rmse in made:
        made_run = client.create_run(experiment_id, run_name="hist_gradient_boosting-41214a8")
        tags = [RunTag(key, value) for key, value in {data_md5_tag("features"): md5, GIT_DIRTY: dirty}.items() if value]
        metrics = [Metric("test.h1.rmse", rmse, 0, 0), Metric("test.h1.skill", 1 - rmse, 0, 0)]
        client.log_batch(made_run.info.run_id, metrics=metrics, params=[Param("train.model", "hist_gradient_boosting")], tags=tags)
    assert main(["compare", "--experiment", "data-versions"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"experiment 'data-versions': 2 runs on the workspace's data, features md5 {CURRENT_DATA[:12]} (dvc.lock)"
    assert f"3 runs on other data left out (2 on {OTHER_DATA[:12]}, 1 with no md5 recorded): --all-data shows them" in out
    rows = table_rows(out)
    assert [(row[0], row[1], row[3], row[4]) for row in rows] == [
        ("1", "hist_gradient_boosting-41214a8", CURRENT_DATA[:12], "no"),
        ("2", "hist_gradient_boosting-41214a8", CURRENT_DATA[:12], "yes"),
    ]
    assert len({row[2] for row in rows}) == 2  # the run ids' starts tell them apart
    assert main(["compare", "--experiment", "data-versions", "--all-data"]) == 0
    out = capsys.readouterr().out
    assert (
        f"data versions (features md5): {CURRENT_DATA[:12]} (the workspace's): 2 runs; {OTHER_DATA[:12]}: 2 runs; none recorded: 1 run"
        in out
    )
    assert [(row[0], row[3]) for row in table_rows(out)] == [
        ("1", CURRENT_DATA[:12]), ("2", CURRENT_DATA[:12]), ("1", OTHER_DATA[:12]), ("2", OTHER_DATA[:12]), ("1", "-")
    ]  # fmt: skip
    documents = []
    for argv in [[], ["--filter", "attributes.status != 'nothing'"]]:  # the database read, then MLflow's search
        assert main(["compare", "--experiment", "data-versions", "--all-data", "--json", *argv]) == 0
        documents.append(json.loads(capsys.readouterr().out))
    assert [(run["features_md5"], run["dirty"], run["rank"]) for run in documents[0]["ranking"]] == [
        (CURRENT_DATA, False, 1), (CURRENT_DATA, True, 2), (OTHER_DATA, False, 1), (OTHER_DATA, False, 2), (None, None, 1)
    ]  # fmt: skip
    assert documents[0]["ranking"] == documents[1]["ranking"]
    assert [version["features_md5"] for version in documents[0]["data_versions"]] == [CURRENT_DATA, OTHER_DATA, None]


def test_a_change_of_data_in_a_built_pipeline_is_a_new_data_version_ranked_apart(own_built_repo: Path) -> None:
    """The acceptance test: the pipeline's run on its first data, then a run on data featurized anew (uncommitted params):
    `bts compare` ranks only the run on the data dvc.lock now records, names the other version and counts its run, and
    --all-data ranks both, each on its own; every line fits 120 columns."""
    repo = own_built_repo
    first = lock_outs(repo / "dvc.lock")[DATASETS["features"]]
    set_params(repo, "featurize", "n_lags", 3)  # other features
    set_params(repo, "train", "model", "ridge")  # the quickest to train
    user_run(["dvc", "repro", "evaluate"], repo)  # featurize, train and evaluate: one new run, not the package
    second = lock_outs(repo / "dvc.lock")[DATASETS["features"]]
    assert second != first
    out = user_run(["bts", "compare"], repo).stdout
    lines = out.splitlines()
    assert lines[0] == f"experiment 'bts-next-reading': 1 run on the workspace's data, features md5 {second[:12]} (dvc.lock)"
    assert f"1 run on other data left out (1 on {first[:12]}): --all-data shows them" in lines
    assert [(row[1].rpartition("-")[0], row[3], row[4]) for row in table_rows(out)] == [("ridge", second[:12], "yes")]
    everything = user_run(["bts", "compare", "--all-data"], repo).stdout
    assert f"data versions (features md5): {second[:12]} (the workspace's): 1 run; {first[:12]}: 1 run" in everything
    assert [(row[0], row[3], row[4]) for row in table_rows(everything)] == [("1", second[:12], "yes"), ("1", first[:12], "no")]
    assert max(len(line) for text in (out, everything) for line in text.splitlines()) <= 120
