"""`mlflow run` of the MLproject's main entry point with real `dvc` and a real SQLite store: where it logs, and what it
leaves. (The walkthrough's MLproject section runs the train entry point and a misnamed -P; test_readme checks its run.)

No test passes --experiment-name (one only to show it changes nothing): the pipeline's runs go to params.yaml
train.experiment, and the run `mlflow run` opens itself is deleted once it is closed.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from bts.params import load_params
from tests.integration.workspace import bts, commit_all, run, set_params, store, training_run

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


def test_main_logs_one_run_in_the_project_experiment_none_when_nothing_changed_and_takes_no_param(own_built_repo: Path) -> None:
    repo = own_built_repo
    client = store(repo)
    experiment = project_experiment(repo)
    before = active_runs(client)  # the build's run

    # main: `dvc repro` on params.yaml as it is (a changed seed: the model retrains), one run named as `dvc repro` names it.
    set_params(repo, "train", "seed", 7)
    commit = commit_all(repo, "seed 7")
    result, launcher = mlflow_run(repo)
    launched = f"run {launcher} only launched `dvc repro`: deleted once closed"
    assert f"mlproject: runs are logged in experiment '{experiment}'; {launched}" in result.stdout
    wait_until_deleted(client, launcher)
    main = training_run(repo)
    assert client.get_experiment(main.info.experiment_id).name == experiment
    assert main.info.run_name == f"hist_gradient_boosting-{commit[:7]}"
    assert main.data.tags["mlflow.project.entryPoint"] == "main"
    assert_params_logged_once(main, repo)
    assert "test.h1.rmse" in main.data.metrics
    assert active_runs(client) == {**before, main.info.run_id: experiment}  # nothing in Default

    # Nothing changed: no run anywhere, also when `mlflow run` is told the project's experiment.
    for args in [(), ("--experiment-name", experiment)]:
        result, launcher = mlflow_run(repo, *args)
        assert "Data and pipelines are up to date." in result.stdout
        wait_until_deleted(client, launcher)
        assert active_runs(client) == {**before, main.info.run_id: experiment}

    # main takes no -P: it stops before DVC starts, and leaves no run.
    result, launcher = mlflow_run(repo, "-P", "train.alpha=0.5", check=False)
    assert result.returncode == 1
    assert "mlproject: error: the main entry point runs `dvc repro` on params.yaml as it is" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    wait_until_deleted(client, launcher)
    assert active_runs(client) == {**before, main.info.run_id: experiment}
    assert "nothing lost" in bts(["runs", "check"], repo).stdout
