"""Reproducing a model from its commit in a temporary git worktree, and checking that nothing differs.

The user's working tree is never touched: the traced commit is checked out
beside it, shares the repository's DVC cache (so real exports tracked with
`dvc add` come back), and is rebuilt with `dvc repro --force` against a
throw-away MLflow store. Data md5s, the model's md5 and the recorded
metrics must come out equal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from bts.errors import BtsError
from bts.hashing import lock_md5s
from bts.tracking.lineage import DATASETS, trace

COMPARED_METRICS = ["valid.rmse", "valid.mae", "test.rmse", "test.mae", "test.r2", "test.skill"]


def _run(args: list[str], cwd: Path, env: dict[str, str], echo: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if echo:
        for line in result.stdout.splitlines():
            if line.startswith(("Running stage", "simulate:", "ingest:", "clean:", "featurize:", "train:", "evaluate:", "serve:")):
                print(f"  | {line}", file=sys.stderr)
    if result.returncode != 0:
        raise BtsError(f"{' '.join(args)} failed in the reproduction worktree:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


def reproduce(client: MlflowClient, ref: str, root: Path, keep: bool = False) -> dict:
    """Rebuild the model's commit from scratch and compare md5s and metrics with the recorded ones."""
    chain = trace(client, ref, root)
    if not chain["commits"]:
        raise BtsError(
            f"{ref}: no commit holds this model's data and weights (it came from uncommitted state, base commit "
            f"{chain['git']['base_commit']}); commit the experiment (e.g. `dvc exp branch`) to make it reproducible"
        )
    commit = chain["commits"][0]["commit"]
    recorded_metrics = client.get_run(chain["run"]["run_id"]).data.metrics
    work = Path(tempfile.mkdtemp(prefix="bts-reproduce-"))
    tree = work / "worktree"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    print(f"reproducing {ref} from commit {commit[:12]} in {tree}", file=sys.stderr)
    _run(["git", "worktree", "add", "--detach", str(tree), commit], root, env)
    try:
        _run(["dvc", "cache", "dir", "--local", str(root / ".dvc" / "cache")], tree, env)
        subprocess.run(["dvc", "checkout", "--quiet"], cwd=tree, env=env, capture_output=True)  # missing outputs are rebuilt below
        _run(["dvc", "repro", "--force"], tree, env, echo=True)
        md5s = lock_md5s((tree / "dvc.lock").read_text())
        documents = {name: json.loads((tree / f"metadata/datasets/{name}.json").read_text()) for name in DATASETS}
        checks = [
            {"what": f"data.{name}_md5", "recorded": chain["datasets"][name]["md5"], "reproduced": documents[name]["dvc"]["md5"]}
            for name in DATASETS
        ]
        model_path = next((path for path, md5 in md5s.items() if path.endswith(".joblib")), None)
        checks.append({"what": "model_md5", "recorded": chain["model_md5"], "reproduced": md5s.get(model_path)})
        metrics = json.loads((tree / "metrics/metrics.json").read_text())
        for name in COMPARED_METRICS:
            split, metric = name.split(".")
            checks.append({"what": name, "recorded": recorded_metrics.get(name), "reproduced": metrics.get(split, {}).get(metric)})
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, capture_output=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    for check in checks:
        check["ok"] = check["recorded"] == check["reproduced"]
    return {"reference": ref, "commit": commit, "checks": checks, "ok": all(c["ok"] for c in checks)}


def format_verdict(verdict: dict) -> str:
    lines = [f"reproduction of {verdict['reference']} from commit {verdict['commit']}:"]
    for check in verdict["checks"]:
        mark = "ok  " if check["ok"] else "DIFF"
        detail = f"{check['recorded']}" if check["ok"] else f"recorded {check['recorded']} != reproduced {check['reproduced']}"
        lines.append(f"  {mark} {check['what']:<16} {detail}")
    lines.append("verdict: REPRODUCED" if verdict["ok"] else "verdict: NOT REPRODUCED (see DIFF lines)")
    return "\n".join(lines)
