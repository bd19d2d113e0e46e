"""Training tracked in MLflow with the DVC data versions: real `dvc`, `mlflow run` and a real SQLite store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import joblib
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bts.model.evaluation import flat_metrics
from tests.integration.workspace import DATASETS, lock_outs, run, store

pytestmark = pytest.mark.integration


def experiment_runs(repo: Path) -> list:
    client = store(repo)
    experiment = client.get_experiment_by_name("bts-next-reading")
    return client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


def assert_run_traces_data(client: MlflowClient, run_id: str, md5s: dict[str, str]) -> None:
    """The run's tags and logged inputs carry the md5s that dvc.lock records for raw, clean and features."""
    logged = client.get_run(run_id)
    for name, path in DATASETS.items():
        assert logged.data.tags[f"data.{name}_md5"] == md5s[path]
    digests = {entry.dataset.name: entry.dataset.digest for entry in logged.inputs.dataset_inputs}
    assert digests == {f"bts-{name}": md5s[path] for name, path in DATASETS.items()}
    for tag in ["git.commit", "git.branch", "git.dirty", "machine.cpu", "machine.cores", "machine.memory_gb", "package.mlflow"]:
        assert logged.data.tags.get(tag), tag
    assert logged.data.tags["schema.raw_md5"] and logged.data.tags["schema.clean_md5"]


def test_repro_logs_one_run_tracing_data_and_reproduces_exactly(project_repo: Path) -> None:
    run(["dvc", "repro"], project_repo)
    md5s = lock_outs(project_repo / "dvc.lock")
    record = json.loads((project_repo / "models/run.json").read_text())
    client = store(project_repo)
    assert_run_traces_data(client, record["run_id"], md5s)

    logged = client.get_run(record["run_id"])
    metrics = json.loads((project_repo / "metrics/metrics.json").read_text())
    for name, value in flat_metrics(metrics).items():
        assert logged.data.metrics[name] == pytest.approx(value, abs=0, rel=1e-12), name
    training = json.loads((project_repo / "metrics/training.json").read_text())
    assert logged.data.metrics["training.cpu_seconds"] == training["training.cpu_seconds"]
    assert logged.data.params["train.model"] == "elasticnet"
    assert logged.data.params["train.alpha"] == "0.01"
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"metadata", "params.yaml", "evaluation"} <= artifacts
    # The default model beats persistence on the test split.
    assert metrics["test"]["rmse"] < metrics["test"]["persistence_rmse"]

    # Training again from the same commit gives the same model bytes, predictions and metrics, in a new run.
    features = pd.read_parquet(project_repo / DATASETS["features"])
    columns = json.loads((project_repo / "metadata/datasets/features.json").read_text())["feature_columns"]
    first_predictions = joblib.load(project_repo / "models/model.joblib").predict(features[columns])
    run(["dvc", "repro", "--force", "--single-item", "train", "evaluate"], project_repo)
    assert lock_outs(project_repo / "dvc.lock")["models/model.joblib"] == md5s["models/model.joblib"]
    assert json.loads((project_repo / "metrics/metrics.json").read_text()) == metrics
    second_predictions = joblib.load(project_repo / "models/model.joblib").predict(features[columns])
    assert (first_predictions == second_predictions).all()
    second = json.loads((project_repo / "models/run.json").read_text())["run_id"]
    assert second != record["run_id"]
    assert client.get_run(second).data.metrics["test.rmse"] == logged.data.metrics["test.rmse"]


def wait_for_queue(repo: Path, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout} s:\n{status}")


def test_queued_grid_lands_every_run_in_the_main_store(project_repo: Path) -> None:
    run(["dvc", "repro"], project_repo)
    run(["git", "add", "-A"], project_repo)
    run(["git", "commit", "-q", "-m", "baseline"], project_repo)
    md5s = lock_outs(project_repo / "dvc.lock")
    before = {r.info.run_id for r in experiment_runs(project_repo)}

    run(["dvc", "exp", "run", "--queue", "-S", "train.alpha=0.01,0.1,1", "-S", "train.l1_ratio=0.2,0.8"], project_repo)
    run(["dvc", "queue", "start", "-j", "2"], project_repo)
    status = wait_for_queue(project_repo)
    assert status.count("Success") == 6, status
    assert "Failed" not in status

    names = set(run(["dvc", "exp", "list", "--name-only"], project_repo).stdout.split())
    assert len(names) == 6
    for name in names:
        log = run(["dvc", "queue", "logs", name], project_repo).stdout
        assert "ERROR" not in log and "Traceback" not in log, log

    new_runs = [r for r in experiment_runs(project_repo) if r.info.run_id not in before]
    assert sorted(r.data.tags["dvc.exp_name"] for r in new_runs) == sorted(names)
    grid = {(r.data.params["train.alpha"], r.data.params["train.l1_ratio"]) for r in new_runs}
    assert grid == {(a, b) for a in ("0.01", "0.1", "1") for b in ("0.2", "0.8")}
    client = store(project_repo)
    for logged in new_runs:
        assert_run_traces_data(client, logged.info.run_id, md5s)
        assert "test.rmse" in logged.data.metrics  # evaluate logged into the same run
        assert logged.data.tags["dvc.baseline_rev"] == run(["git", "rev-parse", "HEAD"], project_repo).stdout.strip()

    # `bts runs check` finds nothing lost, then reports a run whose experiment ref is gone.
    check = run(["bts", "runs", "check"], project_repo)
    assert "6 matched" in check.stdout and "nothing lost" in check.stdout
    removed = sorted(names)[0]
    run(["dvc", "exp", "remove", removed], project_repo)
    check = run(["bts", "runs", "check"], project_repo, check=False)
    assert check.returncode == 1
    assert f"{removed}  run " in check.stdout and "dvc exp run -S train.alpha=" in check.stdout


def test_mlflow_run_entry_point_logs_into_its_own_run(project_repo: Path) -> None:
    result = run(
        ["mlflow", "run", ".", "-e", "train", "-P", "alpha=0.5", "--env-manager", "local", "--experiment-name", "bts-next-reading"],
        project_repo,
    )
    assert "succeeded" in result.stderr + result.stdout
    record = json.loads((project_repo / "models/run.json").read_text())
    client = store(project_repo)
    logged = client.get_run(record["run_id"])
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["mlflow.project.entryPoint"] == "train"  # the run `mlflow run` created
    assert logged.data.params["train.alpha"] == "0.5"
    assert logged.data.tags.get("dvc.exp_name")
    assert_run_traces_data(client, record["run_id"], lock_outs(project_repo / "dvc.lock"))
    assert "test.rmse" in logged.data.metrics
