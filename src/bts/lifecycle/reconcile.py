"""`bts runs check`: reconciling DVC experiments, MLflow runs and registry versions, so nothing is lost or half-done unseen.

DVC's queue occasionally loses a finished experiment (treeverse/dvc 8014,
10673) and experiments can be removed with `dvc exp remove`; a training
killed mid-logging leaves its run RUNNING and without metrics; a killed
registration leaves a version without its alias. This lists each, with the
command that fixes it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from bts.errors import BtsError
from bts.lifecycle.integrity import version_integrity
from bts.lifecycle.lineage import experiment_refs
from bts.lifecycle.model_card import cards_folder, stale_cards
from bts.lifecycle.sql_client import mlflow_errors
from bts.params import PARAMS_FILE
from bts.project import git_text
from bts.tracking.store import bulk_read_database, shown_store, store_is_idle
from bts.tracking.tags import EXP_NAME, REGISTRATION_COMPLETE, TRAINING_PROCESS, training_process_gone

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from bts.lifecycle.sql_client import SqlClient

# Evaluate logs it with the scores of every horizon (test.h1.rmse, ...), whichever horizons the run forecasts: a run
# that has it was evaluated, and on a database store one key tells, where the horizons would need every run's metrics.
EVALUATED_METRIC = "test.rows"
RERUN_PARAM_PREFIX = "train."  # the params of the `dvc exp run -S ...` that recreates a lost experiment
# A remote store has no lock to tell a live training from a dead one: a run RUNNING for longer than this (a training
# takes minutes) is taken for dead; a younger one may be a colleague's training in progress.
STALE_RUNNING_HOURS = 6


def experiment_runs(client: MlflowClient | SqlClient, experiment: str) -> list:
    """Every run of the MLflow experiment."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise BtsError(f"MLflow experiment {experiment!r} not found in {client.tracking_uri}")
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def run_records(client: MlflowClient | SqlClient, experiment: str) -> list[dict]:
    """What reconciling needs of each run of the experiment: run_id, name, status, exp_name, evaluated, and `params` (its
    train.* params) where they came at no cost.

    With SQL (a database store, or a server's database named by BTS_TRACKING_DATABASE_URI) it reads just those
    columns: whole runs cost about 0.7 ms each, minutes for 10,000. Through a tracking server's API they come whole.
    """
    database = bulk_read_database(client.tracking_uri)
    if database:
        return _records_from_database(database, experiment)
    return [
        {
            "run_id": run.info.run_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "exp_name": run.data.tags.get(EXP_NAME),
            "process": run.data.tags.get(TRAINING_PROCESS),
            "evaluated": EVALUATED_METRIC in run.data.metrics,
            "params": {k: v for k, v in sorted(run.data.params.items()) if k.startswith(RERUN_PARAM_PREFIX)},
        }
        for run in experiment_runs(client, experiment)
    ]


def _records_from_database(uri: str, experiment: str) -> list[dict]:
    from bts.lifecycle import database

    with database.reading(uri) as read:
        experiment_id = database.experiment_id(read, experiment, uri)
        runs = database.active_runs(read, experiment_id)
        names = dict(database.tag_values(read, experiment_id, EXP_NAME))
        processes = dict(database.tag_values(read, experiment_id, TRAINING_PROCESS))
        evaluated = {run_id for run_id, _, _ in database.latest_metrics(read, experiment_id, [EVALUATED_METRIC])}
    return [
        {
            "run_id": run_id,
            "name": name,
            "status": status,
            "start_time": start_time,
            "exp_name": names.get(run_id),
            "process": processes.get(run_id),
            "evaluated": run_id in evaluated,
        }
        for run_id, name, status, start_time in runs
    ]


def rerun_params(client: MlflowClient | SqlClient, records: list[dict]) -> dict[str, dict[str, str]]:
    """{run_id: its train.* params} for these runs (the few whose experiment is gone); read in one query where needed."""
    found = {record["run_id"]: record["params"] for record in records if "params" in record}
    missing = [record["run_id"] for record in records if "params" not in record]
    if missing:
        from bts.lifecycle import database

        found.update({run_id: {} for run_id in missing})
        with database.reading(bulk_read_database(client.tracking_uri)) as read:
            rows = database.params_of(read, missing, RERUN_PARAM_PREFIX)
        for run_id, key, value in rows:
            found[run_id][key] = value
    return found


def registry_problems(client: MlflowClient | SqlClient, model_name: str, cards_dir: Path) -> list[dict]:
    """Versions whose registration did not complete, whose package does not match its recorded md5, or whose model card
    gives another status than the registry."""
    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except mlflow_errors():
        return []
    problems = []
    for version in sorted(versions, key=lambda v: int(v.version)):
        if version.tags.get(REGISTRATION_COMPLETE) != "true":
            problems.append({"version": version.version, "problem": "registration incomplete"})
        tampered = version_integrity(client, version)
        if tampered:
            problems.append({"version": version.version, "problem": "package " + "; ".join(tampered)})
    for version, written, registry in stale_cards(client, model_name, cards_dir):
        said = ", ".join(written) if isinstance(written, list) else str(written)
        problems.append({"version": version, "problem": f"model card says {said}, the registry {', '.join(registry)}"})
    return sorted(problems, key=lambda item: int(item["version"]))


def interrupted_experiment(root: Path) -> list[str]:
    """The trace a `dvc exp run` killed mid-way leaves in the workspace: params.yaml staged in git as DVC rewrote it
    (comments gone). DVC's executor refs (refs/exps/exec/) stay after a finished experiment too: they prove nothing."""
    staged = git_text(root, "diff", "--cached", "--name-only", "--", str(PARAMS_FILE), check=False)
    return [f"{PARAMS_FILE} staged in git"] if staged else []


def reconcile(client: MlflowClient | SqlClient, root: Path, experiment: str, model_name: str) -> dict:
    """Experiments without a run, runs without an experiment ref, runs left RUNNING or unevaluated, broken versions."""
    refs = experiment_refs(root)
    runs = run_records(client, experiment)
    idle = store_is_idle(root)
    dvc_runs = [run for run in runs if run["exp_name"]]
    run_names = {run["exp_name"] for run in dvc_runs}
    # A finished run whose experiment ref is gone was lost; a failed or running one never had a ref to lose.
    finished = [run for run in dvc_runs if run["status"] == "FINISHED"]
    lost = sorted((run for run in finished if run["exp_name"] not in refs), key=lambda run: run["exp_name"])
    params = rerun_params(client, lost)
    return {
        "store": shown_store(client.tracking_uri, root),
        "experiment": experiment,
        "matched": sorted(set(refs) & run_names),
        "experiments_without_run": sorted(set(refs) - run_names),
        "runs_without_experiment": [
            {"run_id": run["run_id"], "exp_name": run["exp_name"], "params": params[run["run_id"]]} for run in lost
        ],
        # With the local store's lock free, no training is logging: a RUNNING run is one whose process died.
        "runs_left_running": [{"run_id": run["run_id"], "name": run["name"]} for run in left_running(runs, idle)],
        "runs_without_metrics": [
            {"run_id": run["run_id"], "name": run["name"]} for run in runs if run["status"] == "FINISHED" and not run["evaluated"]
        ],
        "versions": registry_problems(client, model_name, cards_folder(root, client.tracking_uri)),
        "interrupted_experiment": interrupted_experiment(root),
    }


def left_running(runs: list[dict], idle: bool | None) -> list[dict]:
    """The RUNNING runs whose training died: all of them when the local store's lock is free, none while it is held;
    on a remote store (idle None), those whose training process is gone from this host, and any RUNNING for longer than
    STALE_RUNNING_HOURS."""
    running = [run for run in runs if run["status"] == "RUNNING"]
    if idle is None:
        cutoff = (time.time() - STALE_RUNNING_HOURS * 3600) * 1000
        return [run for run in running if (run["start_time"] or 0) < cutoff or training_process_gone(run["process"])]
    return running if idle else []


def mark_failed(client: MlflowClient, run_ids: list[str]) -> None:
    from mlflow.entities import RunStatus

    for run_id in run_ids:
        client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))


def problems_found(report: dict) -> bool:
    keys = ["experiments_without_run", "runs_without_experiment", "runs_left_running", "runs_without_metrics", "versions"]
    keys.append("interrupted_experiment")
    return any(report[key] for key in keys)


def format_reconciliation(report: dict) -> str:
    lines = [f"DVC experiments vs MLflow runs of {report['experiment']!r} in {report['store']}: {len(report['matched'])} matched"]
    if report["experiments_without_run"]:
        lines.append(f"{len(report['experiments_without_run'])} DVC experiment(s) without an MLflow run:")
        lines += [f"  {name}" for name in report["experiments_without_run"]]
    if report["runs_without_experiment"]:
        lines.append(f"{len(report['runs_without_experiment'])} MLflow run(s) whose DVC experiment is gone (lost or removed):")
        for run in report["runs_without_experiment"]:
            rerun = " ".join(f"-S {k}={v}" for k, v in run["params"].items())
            lines.append(f"  {run['exp_name']}  run {run['run_id']}  to run it again: dvc exp run {rerun}")
    if report["runs_left_running"]:
        lines.append(f"{len(report['runs_left_running'])} run(s) left RUNNING by a training that died (no process is logging):")
        lines += [f"  {run['run_id']}  {run['name']}" for run in report["runs_left_running"]]
        lines.append("  fix: `bts runs check --mark-failed` marks them FAILED; `dvc repro` (or the experiment) trains again")
    if report["runs_without_metrics"]:
        lines.append(f"{len(report['runs_without_metrics'])} finished run(s) without evaluation metrics (no {EVALUATED_METRIC}):")
        lines += [f"  {run['run_id']}  {run['name']}" for run in report["runs_without_metrics"]]
        lines.append("  fix: `dvc repro evaluate` (or `dvc repro --force` at their commit) logs them")
    if report["versions"]:
        lines.append(f"{len(report['versions'])} registry problem(s):")
        lines += [f"  version {item['version']}: {item['problem']}" for item in report["versions"]]
        lines.append("  fix: `bts register <package or run>` completes a registration; a tampered package must be registered anew;")
        lines.append("       any `bts register` or `bts promote` (again: it is idempotent) rewrites the cards the registry disagrees with")
    if report["interrupted_experiment"]:
        lines.append(f"a `dvc exp run` did not finish here ({', '.join(report['interrupted_experiment'])}):")
        lines.append(f"  fix: `git restore --staged --worktree {PARAMS_FILE}` brings back the committed params.yaml, comments")
        lines.append("       included; `dvc exp clean` removes what DVC left; then run the experiment again")
    if not problems_found(report):
        lines.append("nothing lost")
    return "\n".join(lines)
