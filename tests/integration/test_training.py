"""The whole pipeline with real `dvc` and a real SQLite store: determinism, run contents, dead runs (the queued grid: the
walkthrough's, in test_readme)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from bts.kill_points import STOP_POINT_VARIABLE
from bts.model.package import load_workspace_model
from bts.params import flatten
from tests.integration.workspace import (
    DATASETS,
    as_first_committed,
    bts,
    lock_outs,
    run,
    set_params,
    stopped_stage,
    store,
    training_run,
    user_env,
)

pytestmark = pytest.mark.integration

TRACKED_OUTPUTS = ["dvc.lock", "metadata", "metrics", "plots"]


def experiment_runs(repo: Path) -> list:
    client = store(repo)
    experiment = client.get_experiment_by_name("bts-next-reading")
    return client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


def assert_run_traces_data(client: MlflowClient, run_id: str, md5s: dict[str, str]) -> None:
    """The run's tags and logged inputs carry the md5s that dvc.lock records for raw, clean, features and the model."""
    logged = client.get_run(run_id)
    for name, path in DATASETS.items():
        assert logged.data.tags[f"data.{name}_md5"] == md5s[path]
    assert logged.data.tags["model_md5"] == md5s["models/model.joblib"]
    digests = {entry.dataset.name: entry.dataset.digest for entry in logged.inputs.dataset_inputs}
    assert digests == {f"bts-{name}": md5s[path] for name, path in DATASETS.items()}
    for tag in ["git.commit", "git.branch", "git.dirty", "machine.cpu", "machine.cores", "machine.memory_gb", "package.mlflow", "code_md5"]:
        assert logged.data.tags.get(tag), tag
    assert logged.data.tags["schema.raw_md5"] and logged.data.tags["schema.clean_md5"]


def test_repro_from_a_fresh_copy_gives_the_committed_bytes_and_one_complete_run(pipeline_build: Path, built_repo: Path) -> None:
    """The session's one build from nothing (pipeline_build: `dvc repro` in a fresh repository of the project's files)."""
    project_repo = built_repo
    # Every tracked output (dvc.lock, metadata, metrics, plots) came out byte for byte as committed: no run id, no timing.
    assert run(["git", "log", "--format=%s", "-1"], pipeline_build).stdout.strip() == "pipeline results"
    assert run(["git", "show", "--stat", "--format=", "HEAD"], pipeline_build).stdout == ""  # nothing to commit after repro
    committed = as_first_committed(project_repo, "dvc.lock")["dvc.lock"].decode()  # the project's, on the simulated defaults
    assert lock_outs(project_repo / "dvc.lock") == lock_outs(project_repo / "dvc.lock", text=committed)
    md5s = lock_outs(project_repo / "dvc.lock")
    client = store(project_repo)
    logged = training_run(project_repo)
    assert_run_traces_data(client, logged.info.run_id, md5s)

    metrics = json.loads((project_repo / "metrics/metrics.json").read_text())
    for name, value in flatten(metrics).items():
        if value is not None:
            assert logged.data.metrics[name] == pytest.approx(value, abs=0, rel=1e-12), name
    assert {"training.seconds", "training.cpu_seconds", "training.peak_memory_mb", "model.size_bytes"} <= set(logged.data.metrics)
    assert logged.data.params["train.model"] == "hist_gradient_boosting" and logged.data.params["train.target"] == "scaled_change"
    assert logged.data.params["train.hist_gradient_boosting.max_iter"] == "50"
    assert not {"alpha", "train.alpha", "train.ridge.alpha"} & set(logged.data.params)  # each param once, only the model's
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"metadata", "params.yaml", "evaluation", "package"} <= artifacts
    for horizon in ("h1", "h5", "h15"):  # the default model beats persistence at every horizon; its intervals hold
        assert metrics["test"][horizon]["rmse"] < metrics["test"][horizon]["persistence_rmse"], horizon
        assert 0.85 <= metrics["test"][horizon]["coverage"] <= 0.97, horizon
    assert not client.search_registered_models()  # the pipeline never touches the registry

    # Training again from the same commit gives the same bytes everywhere, and a new run found by the same content tags.
    features = pd.read_parquet(project_repo / DATASETS["features"])
    columns = json.loads((project_repo / "metadata/datasets/features.json").read_text())["feature_columns"]
    first_predictions = load_workspace_model(project_repo / "models/model.joblib", project_repo / "dvc.lock").predict(features[columns])
    run(["dvc", "repro", "--force", "--single-item", "train", "evaluate", "serve"], project_repo)
    assert lock_outs(project_repo / "dvc.lock") == md5s
    assert run(["git", "status", "--porcelain", "--", *TRACKED_OUTPUTS], project_repo).stdout == ""
    second = training_run(project_repo)
    assert second.info.run_id != logged.info.run_id
    assert second.data.metrics["test.h15.rmse"] == logged.data.metrics["test.h15.rmse"]
    second_predictions = load_workspace_model(project_repo / "models/model.joblib", project_repo / "dvc.lock").predict(features[columns])
    pd.testing.assert_frame_equal(first_predictions, second_predictions, check_exact=True)


def test_a_training_killed_mid_logging_is_reported_and_marked_failed(built_repo: Path) -> None:
    killed = run(["dvc", "repro", "--force", "--single-item", "train"], built_repo, check=False, env={"BTS_TEST_KILL_AT": "run-started"})
    assert killed.returncode != 0
    client = store(built_repo)
    running = [r for r in experiment_runs(built_repo) if r.info.status == "RUNNING"]
    assert len(running) == 1 and not [name for name in running[0].data.metrics if name.startswith("test.")]
    check = bts(["runs", "check"], built_repo, check=False)
    assert check.returncode == 1
    assert "1 run(s) left RUNNING" in check.stdout and running[0].info.run_id in check.stdout
    assert "bts runs check --mark-failed" in check.stdout
    fixed = bts(["runs", "check", "--mark-failed"], built_repo, check=False)
    assert "marked 1 run(s) FAILED" in fixed.stdout
    assert client.get_run(running[0].info.run_id).info.status == "FAILED"
    run(["git", "checkout", "--", "."], built_repo)
    run(["dvc", "checkout", "--force"], built_repo)


def test_a_killed_dvc_exp_run_is_reported_and_the_fix_runs_check_gives_brings_back_the_committed_params(
    own_built_repo: Path,
) -> None:
    """`dvc exp run` killed (SIGKILL, DVC and its stage) while the train stage logs: runs check names the traces and the
    fix; the fix restores params.yaml byte for byte, comments included, and the experiment then runs whole."""
    repo = own_built_repo
    committed = (repo / "params.yaml").read_bytes()
    command = ["dvc", "exp", "run", "-S", "train.alpha=0.5", "-S", "train.model=elasticnet"]
    experiment = subprocess.Popen(
        command,
        cwd=repo,
        env=user_env({STOP_POINT_VARIABLE: "run-started"}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    stage = stopped_stage("src/stages/train.py", repo, started=experiment)
    os.killpg(experiment.pid, signal.SIGKILL)  # DVC, its stage, everything the experiment started
    experiment.wait()
    psutil.wait_procs([stage], timeout=30)  # the stage too (not DVC's child any more): its lock on the store is free

    assert (repo / "params.yaml").read_bytes() != committed  # DVC's rewrite, comments gone
    check = bts(["runs", "check"], repo, check=False)
    assert check.returncode == 1, check.stdout
    assert "a `dvc exp run` did not finish here (params.yaml staged in git)" in check.stdout
    assert "1 run(s) left RUNNING" in check.stdout
    fix = re.search(r"fix: `(git restore [^`]+)`.*?`(dvc exp clean)`", check.stdout, re.DOTALL)
    assert fix, check.stdout
    run(fix.group(1).split(), repo)
    run(fix.group(2).split(), repo)
    bts(["runs", "check", "--mark-failed"], repo, check=False)
    assert (repo / "params.yaml").read_bytes() == committed
    run(command, repo)
    assert "nothing lost" in bts(["runs", "check"], repo).stdout  # the killed run, FAILED, had no ref to lose

    # A finished run whose experiment ref is gone is reported lost, with the command that runs it again.
    (name,) = run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
    run(["dvc", "exp", "remove", name], repo)
    check = bts(["runs", "check"], repo, check=False)
    assert check.returncode == 1 and "1 MLflow run(s) whose DVC experiment is gone" in check.stdout, check.stdout
    assert f"  {name}  run " in check.stdout and "to run it again: dvc exp run -S train.alpha=0.5" in check.stdout, check.stdout


def test_a_params_mistake_stops_the_pipeline_with_one_line(built_repo: Path) -> None:
    set_params(built_repo, "train", "alpha", -1)
    result = run(["dvc", "repro"], built_repo, check=False)
    assert result.returncode != 0
    assert "train: error: params.yaml: train.alpha: Input should be greater than or equal to 0, got -1" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # The last good outputs are still there, unchanged.
    assert run(["git", "status", "--porcelain", "--", "metadata", "metrics", "plots"], built_repo).stdout == ""
    run(["git", "checkout", "--", "params.yaml"], built_repo)


def test_a_rerun_removes_what_a_killed_writer_left_and_writes_with_normal_permissions(built_repo: Path) -> None:
    interim = built_repo / "data/interim"
    stale = interim / ".clean.parquet.k1lled.tmp"  # what atomic_write leaves when its stage is killed mid-write
    stale.write_bytes(b"half a parquet file")
    run(["dvc", "repro", "--force", "--single-item", "clean"], built_repo)
    assert not stale.exists()
    assert run(["git", "status", "--porcelain"], built_repo).stdout == ""
    mask = os.umask(0)
    os.umask(mask)
    for path in [interim / "clean.parquet", built_repo / "metadata/datasets/clean.json"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
    for folder in [built_repo / "models/package", built_repo / "models/package/code"]:
        assert folder.stat().st_mode & 0o777 == 0o777 & ~mask, folder


def test_an_edit_that_retrains_reruns_evaluate_and_serve_and_leaves_no_run_without_metrics(own_built_repo: Path) -> None:
    """The training-feature profile is training code: its edit retrains, and the new run gets its metrics and package."""
    repo = own_built_repo
    before = training_run(repo).data.tags["code_md5"]
    with open(repo / "src/bts/model/profile.py", "a") as handle:
        handle.write("# x\n")
    rerun = run(["dvc", "repro"], repo).stdout
    assert all(f"Running stage '{stage}'" in rerun for stage in ("train", "evaluate", "serve")), rerun
    check = bts(["runs", "check"], repo)
    assert "nothing lost" in check.stdout and "without evaluation metrics" not in check.stdout
    newest = training_run(repo)  # the same weights: the newest run that trained them
    assert newest.data.tags["code_md5"] != before and "test.h1.rmse" in newest.data.metrics


def outputs_md5(repo: Path) -> dict[str, str]:
    """md5 of every output file of the pipeline, cached or in git, as it is in the workspace now."""
    from bts.hashing import dvc_md5

    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = [
        next(iter(out)) if isinstance(out, dict) else out
        for stage in stages.values()
        for out in [*stage.get("outs", []), *stage.get("metrics", [])]
    ]
    return {path: dvc_md5(repo / path) for path in paths}


def test_a_stage_that_refuses_its_input_leaves_every_last_good_output_in_place(own_built_repo: Path) -> None:
    """DVC deletes a stage's outputs before running it; persisted, they stay when the stage stops with an error."""
    repo = own_built_repo
    good = outputs_md5(repo)
    (repo / "data/external/empty.csv").write_text("")
    breakages = {
        "simulate": lambda: set_params(repo, "simulate", "days", 0),
        "ingest": lambda: set_params(repo, "data", "sources", ["simulated", "data/external/empty.csv"]),
        "clean": lambda: set_params(repo, "clean", "gap_threshold_minutes", -1),
        "featurize": lambda: set_params(repo, "featurize", "n_lags", 0),
        "train": lambda: set_params(repo, "train", "model", "xgboost"),
        "evaluate": lambda: set_params(repo, "train", "model", "xgboost"),
        "serve": lambda: (repo / "models/model.joblib").write_bytes((repo / "models/model.joblib").read_bytes() + b"\0"),
    }
    problems = []
    for stage, breakage in breakages.items():
        saved = (repo / "models/model.joblib").read_bytes()
        breakage()
        result = run(["dvc", "repro", "--force", "--single-item", stage], repo, check=False)
        (repo / "models/model.joblib").write_bytes(saved)
        run(["git", "checkout", "--", "params.yaml"], repo)
        if result.returncode == 0:
            problems.append(f"{stage}: ran although its input was broken")
        elif f"{stage}: error: " not in result.stderr or "Traceback" in result.stderr:
            problems.append(f"{stage}: did not stop with one error line:\n{result.stderr[-1500:]}")
        changed = {path for path, md5 in outputs_md5(repo).items() if md5 != good[path]}
        if changed:
            problems.append(f"{stage}: the last good outputs changed: {sorted(changed)}")
    assert not problems, "\n".join(problems)
    assert run(["git", "status", "--porcelain", "--", "metadata", "metrics", "plots", "dvc.lock"], repo).stdout == ""
