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
from tests.integration.workspace import bts, commit_all, lock_outs, run, set_params, store, training_run

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


def test_both_entry_points_log_one_run_each_in_the_project_experiment_and_none_when_nothing_changed(own_built_repo: Path) -> None:
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
    assert "test.rmse" in main.data.metrics
    assert active_runs(client) == {**before, main.info.run_id: experiment}  # nothing in Default

    # Nothing changed: no run anywhere, also when `mlflow run` is told the project's experiment.
    for args in [(), ("--experiment-name", experiment)]:
        result, launcher = mlflow_run(repo, *args)
        assert "Data and pipelines are up to date." in result.stdout
        wait_until_deleted(client, launcher)
        assert active_runs(client) == {**before, main.info.run_id: experiment}

    # train: `dvc exp run --force -S <key>=<value>`, one run named after its DVC experiment, each param once.
    result, launcher = mlflow_run(repo, "-e", "train", "-P", "train.hist_gradient_boosting.learning_rate=0.2")
    assert "succeeded" in result.stderr
    wait_until_deleted(client, launcher)
    names = run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
    assert len(names) == 1
    trained = training_run(repo)
    assert trained.info.status == "FINISHED"
    assert client.get_experiment(trained.info.experiment_id).name == experiment
    assert trained.info.run_name == trained.data.tags["dvc.exp_name"] == names[0]
    assert trained.data.tags["mlflow.project.entryPoint"] == "train"
    assert trained.data.params["train.hist_gradient_boosting.learning_rate"] == "0.2"
    assert_params_logged_once(trained, repo)  # the experiment's params.yaml, applied to the workspace
    assert_run_traces_data(client, trained.info.run_id, lock_outs(repo / "dvc.lock"))
    assert "test.rmse" in trained.data.metrics
    assert active_runs(client) == {**before, main.info.run_id: experiment, trained.info.run_id: experiment}

    check = bts(["runs", "check"], repo)
    assert "1 matched" in check.stdout and "nothing lost" in check.stdout
    ranking = json.loads(bts(["compare", "--json"], repo).stdout)["ranking"]
    assert {entry["run_id"] for entry in ranking} == {*before, main.info.run_id, trained.info.run_id}  # one data version
    assert [entry["dvc_exp_name"] for entry in ranking if entry["run_id"] == trained.info.run_id] == names


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
