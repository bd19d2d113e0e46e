"""`mlflow run` of the MLproject with real `dvc` and a real SQLite store: where each entry point logs, and what it leaves.

No test passes --experiment-name (one only to show it changes nothing): the pipeline's runs go to params.yaml
train.experiment, and the run `mlflow run` opens itself is deleted once it is closed.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from bts.params import load_params
from tests.integration.test_training import assert_run_traces_data
from tests.integration.workspace import lock_outs, run, store, training_run

pytestmark = pytest.mark.integration

LAUNCHER_RUN = re.compile(r"in run with ID '([0-9a-f]{32})'")  # how `mlflow run` names the run it opened
DELETION_TIMEOUT_SECONDS = 60


def mlflow_run(repo: Path, *args: str, check: bool = True) -> tuple[subprocess.CompletedProcess, str]:
    """`mlflow run .` as the README gives it, and the id of the run it opened itself."""
    result = run(["mlflow", "run", ".", "--env-manager", "local", *args], repo, check=check)
    found = LAUNCHER_RUN.search(result.stderr)
    assert found, result.stderr
    return result, found.group(1)


def wait_until_deleted(client: MlflowClient, run_id: str) -> None:
    """`mlflow run`'s own run is deleted by a detached process, right after `mlflow run` has closed it."""
    deadline = time.monotonic() + DELETION_TIMEOUT_SECONDS
    while client.get_run(run_id).info.lifecycle_stage != "deleted":
        assert time.monotonic() < deadline, f"run {run_id} of `mlflow run` not deleted after {DELETION_TIMEOUT_SECONDS} s"
        time.sleep(0.5)


def active_runs(client: MlflowClient) -> dict[str, str]:
    """{run id: experiment name} for every run not deleted, in every experiment."""
    experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ALL)}
    runs = client.search_runs(list(experiments), run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
    return {r.info.run_id: experiments[r.info.experiment_id] for r in runs}


def project_experiment(repo: Path) -> str:
    return load_params(repo / "params.yaml").train.experiment


def assert_params_logged_once(logged, repo: Path) -> None:
    """Exactly the params the train stage logs, under their params.yaml keys: no `alpha` beside `train.alpha`."""
    expected = {key: str(value) for key, value in load_params(repo / "params.yaml").run_params().items()}
    assert logged.data.params == expected


def test_main_entry_point_logs_in_the_project_experiment_and_leaves_no_run_when_nothing_changed(project_repo: Path) -> None:
    client = store(project_repo)
    experiment = project_experiment(project_repo)
    result, launcher = mlflow_run(project_repo)
    launched = f"run {launcher} only launched `dvc repro`: deleted once closed"
    assert f"mlproject: runs are logged in experiment '{experiment}'; {launched}" in result.stdout
    wait_until_deleted(client, launcher)
    logged = training_run(project_repo)
    assert client.get_experiment(logged.info.experiment_id).name == experiment
    commit = run(["git", "rev-parse", "HEAD"], project_repo).stdout.strip()
    assert logged.info.run_name == f"hist_gradient_boosting-{commit[:7]}"  # as `dvc repro` names it
    assert logged.data.tags["mlflow.project.entryPoint"] == "main"
    assert_params_logged_once(logged, project_repo)
    assert "test.rmse" in logged.data.metrics
    assert active_runs(client) == {logged.info.run_id: experiment}  # nothing in Default

    # Nothing changed: no run anywhere, also when `mlflow run` is told the project's experiment.
    for args in [(), ("--experiment-name", experiment)]:
        result, launcher = mlflow_run(project_repo, *args)
        assert "Data and pipelines are up to date." in result.stdout
        wait_until_deleted(client, launcher)
        assert active_runs(client) == {logged.info.run_id: experiment}

    check = run(["bts", "runs", "check"], project_repo)
    assert "nothing lost" in check.stdout
    ranking = json.loads(run(["bts", "compare", "--json"], project_repo).stdout)["ranking"]
    assert [entry["run_id"] for entry in ranking] == [logged.info.run_id]


def test_train_entry_point_logs_one_run_named_after_its_dvc_experiment_with_each_param_once(project_repo: Path) -> None:
    client = store(project_repo)
    experiment = project_experiment(project_repo)
    result, launcher = mlflow_run(project_repo, "-e", "train", "-P", "train.hist_gradient_boosting.learning_rate=0.2")
    assert "succeeded" in result.stderr
    wait_until_deleted(client, launcher)
    names = run(["dvc", "exp", "list", "--name-only"], project_repo).stdout.split()
    assert len(names) == 1
    logged = training_run(project_repo)
    assert logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == experiment
    assert logged.info.run_name == logged.data.tags["dvc.exp_name"] == names[0]
    assert logged.data.tags["mlflow.project.entryPoint"] == "train"
    assert logged.data.params["train.hist_gradient_boosting.learning_rate"] == "0.2"
    assert_params_logged_once(logged, project_repo)  # the experiment's params.yaml, applied to the workspace
    assert_run_traces_data(client, logged.info.run_id, lock_outs(project_repo / "dvc.lock"))
    assert "test.rmse" in logged.data.metrics
    assert active_runs(client) == {logged.info.run_id: experiment}

    check = run(["bts", "runs", "check"], project_repo)
    assert "1 matched" in check.stdout and "nothing lost" in check.stdout
    ranking = json.loads(run(["bts", "compare", "--json"], project_repo).stdout)["ranking"]
    assert [(entry["run_id"], entry["dvc_exp_name"]) for entry in ranking] == [(logged.info.run_id, names[0])]


def test_a_param_not_named_by_its_params_yaml_key_stops_before_dvc_and_leaves_no_run(project_repo: Path) -> None:
    client = store(project_repo)
    result, launcher = mlflow_run(project_repo, "-e", "train", "-P", "alpha=0.5", check=False)
    assert result.returncode == 1
    assert (
        "mlproject: error: -P alpha=0.5: params.yaml has no key 'alpha': -P takes params.yaml keys"
        " (did you mean -P train.alpha=0.5 or -P train.ridge.alpha=0.5?)"
    ) in result.stderr
    wait_until_deleted(client, launcher)

    result, launcher = mlflow_run(project_repo, "-P", "train.alpha=0.5", check=False)
    assert result.returncode == 1
    assert "mlproject: error: the main entry point runs `dvc repro` on params.yaml as it is" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    wait_until_deleted(client, launcher)

    assert active_runs(client) == {}
    assert run(["dvc", "exp", "list", "--name-only"], project_repo).stdout.split() == []
