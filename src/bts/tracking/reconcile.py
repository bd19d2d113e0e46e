"""`bts runs check`: reconciling DVC experiments, MLflow runs and registry versions, so nothing is lost or half-done unseen.

DVC's queue occasionally loses a finished experiment (treeverse/dvc 8014,
10673) and experiments can be removed with `dvc exp remove`; a training
killed mid-logging leaves its run RUNNING and without metrics; a killed
registration leaves a version without its alias. This lists each, with the
command that fixes it.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bts.errors import BtsError
from bts.tracking.lineage import experiment_refs
from bts.tracking.registry import version_integrity
from bts.tracking.store import store_is_idle
from bts.tracking.tags import EXP_NAME, REGISTRATION_COMPLETE

EVALUATED_METRIC = "test.rmse"


def experiment_runs(client: MlflowClient, experiment: str) -> list:
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


def registry_problems(client: MlflowClient, model_name: str) -> list[dict]:
    """Versions whose registration did not complete or whose package does not match its recorded md5."""
    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return []
    problems = []
    for version in sorted(versions, key=lambda v: int(v.version)):
        if version.tags.get(REGISTRATION_COMPLETE) != "true":
            problems.append({"version": version.version, "problem": "registration incomplete"})
        tampered = version_integrity(client, version)
        if tampered:
            problems.append({"version": version.version, "problem": "package " + "; ".join(tampered)})
    return problems


def reconcile(client: MlflowClient, root: Path, experiment: str, model_name: str) -> dict:
    """Experiments without a run, runs without an experiment ref, runs left RUNNING or unevaluated, broken versions."""
    refs = experiment_refs(root)
    runs = experiment_runs(client, experiment)
    idle = store_is_idle(root)
    dvc_runs = [run for run in runs if run.data.tags.get(EXP_NAME)]
    run_names = {run.data.tags[EXP_NAME] for run in dvc_runs}
    running = [run for run in runs if run.info.status == "RUNNING"]
    return {
        "experiment": experiment,
        "matched": sorted(set(refs) & run_names),
        "experiments_without_run": sorted(set(refs) - run_names),
        "runs_without_experiment": [
            {
                "run_id": run.info.run_id,
                "exp_name": run.data.tags[EXP_NAME],
                "params": {k: v for k, v in sorted(run.data.params.items()) if k.startswith("train.")},
            }
            for run in sorted(dvc_runs, key=lambda r: r.data.tags[EXP_NAME])
            if run.data.tags[EXP_NAME] not in refs
        ],
        # With the local store's lock free, no training is logging: a RUNNING run is one whose process died.
        "runs_left_running": [{"run_id": run.info.run_id, "name": run.info.run_name} for run in running] if idle is not False else [],
        "runs_without_metrics": [
            {"run_id": run.info.run_id, "name": run.info.run_name}
            for run in runs
            if run.info.status == "FINISHED" and EVALUATED_METRIC not in run.data.metrics
        ],
        "versions": registry_problems(client, model_name),
    }


def mark_failed(client: MlflowClient, run_ids: list[str]) -> None:
    for run_id in run_ids:
        client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))


def problems_found(report: dict) -> bool:
    keys = ["experiments_without_run", "runs_without_experiment", "runs_left_running", "runs_without_metrics", "versions"]
    return any(report[key] for key in keys)


def format_reconciliation(report: dict) -> str:
    lines = [f"DVC experiments vs MLflow runs of {report['experiment']!r}: {len(report['matched'])} matched"]
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
        lines.append(f"{len(report['runs_without_metrics'])} finished run(s) without evaluation metrics ({EVALUATED_METRIC}):")
        lines += [f"  {run['run_id']}  {run['name']}" for run in report["runs_without_metrics"]]
        lines.append("  fix: `dvc repro evaluate` (or `dvc repro --force` at their commit) logs them")
    if report["versions"]:
        lines.append(f"{len(report['versions'])} registry problem(s):")
        lines += [f"  version {item['version']}: {item['problem']}" for item in report["versions"]]
        lines.append("  fix: `bts register <package or run>` completes a registration; a tampered package must be registered anew")
    if not problems_found(report):
        lines.append("nothing lost")
    return "\n".join(lines)
