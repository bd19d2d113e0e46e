"""Reconciling DVC experiments with MLflow runs, so that nothing is silently lost between the two.

DVC's queue occasionally loses a finished experiment (treeverse/dvc 8014,
10673) and experiments can be removed with `dvc exp remove`; MLflow runs can
fail before logging. This lists DVC experiments without a run and runs whose
experiment ref is gone, with the params needed to run them again.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mlflow.tracking import MlflowClient

from bts.errors import BtsError
from bts.params import load_params
from bts.tracking.runs import use_store
from bts.tracking.store import repository_root

# refs/exps/<baseline sha[:2]>/<baseline sha[2:]>/<name>; other refs/exps/* are DVC's own bookkeeping.
EXPERIMENT_REF = re.compile(r"^refs/exps/([0-9a-f]{2})/([0-9a-f]{38})/(.+)$")


def dvc_experiments(root: Path) -> dict[str, str]:
    """{experiment name: baseline commit} for every DVC experiment ref in the repository."""
    result = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise BtsError(f"{root}: cannot list DVC experiments ({result.stderr.strip()})")
    experiments = {}
    for ref in result.stdout.split():
        match = EXPERIMENT_REF.match(ref)
        if match:
            experiments[match.group(3)] = match.group(1) + match.group(2)
    return experiments


def experiment_runs(experiment: str) -> list:
    """Every run of the MLflow experiment that was started under `dvc exp run`."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise BtsError(f"MLflow experiment {experiment!r} not found in {client.tracking_uri}")
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], filter_string="tags.`dvc.exp_name` != ''", max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def reconcile(experiment: str | None = None) -> dict:
    """Experiments without a run, runs without an experiment ref, and how many matched."""
    root = use_store()
    experiment = experiment or load_params("train", root / "params.yaml")["experiment"]
    refs = dvc_experiments(root)
    runs = experiment_runs(experiment)
    run_names = {run.data.tags["dvc.exp_name"] for run in runs}
    return {
        "experiment": experiment,
        "repository": str(repository_root()),
        "matched": sorted(set(refs) & run_names),
        "experiments_without_run": sorted(set(refs) - run_names),
        "runs_without_experiment": [
            {
                "run_id": run.info.run_id,
                "exp_name": run.data.tags["dvc.exp_name"],
                "baseline_rev": run.data.tags.get("dvc.baseline_rev", ""),
                "params": {k: v for k, v in sorted(run.data.params.items()) if k.startswith("train.")},
            }
            for run in sorted(runs, key=lambda r: r.data.tags["dvc.exp_name"])
            if run.data.tags["dvc.exp_name"] not in refs
        ],
    }


def format_reconciliation(report: dict) -> str:
    lines = [f"DVC experiments vs MLflow runs of {report['experiment']!r}: {len(report['matched'])} matched"]
    if report["experiments_without_run"]:
        lines.append(f"{len(report['experiments_without_run'])} DVC experiment(s) without an MLflow run:")
        lines += [f"  {name}" for name in report["experiments_without_run"]]
    if report["runs_without_experiment"]:
        lines.append(f"{len(report['runs_without_experiment'])} MLflow run(s) whose DVC experiment is gone (lost or removed):")
        for run in report["runs_without_experiment"]:
            rerun = " ".join(f"-S {k}={v}" for k, v in run["params"].items() if k != "train.experiment")
            lines.append(f"  {run['exp_name']}  run {run['run_id']}  to run it again: dvc exp run {rerun}")
    if not report["experiments_without_run"] and not report["runs_without_experiment"]:
        lines.append("nothing lost")
    return "\n".join(lines)
