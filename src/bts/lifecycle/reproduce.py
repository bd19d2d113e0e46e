"""Reproducing a model from its commit in a temporary git worktree, with that commit's own code, and checking that nothing differs.

The user's working tree is never touched: the traced commit is checked out
beside it, shares the repository's DVC cache (so real exports tracked with
`dvc add` come back), and is rebuilt with `dvc repro --force` against a
throw-away MLflow store, importing the worktree's own `src/` (PYTHONPATH),
not the installed package. When the cache holds the commit's data (after
`dvc pull --all-commits` on a fresh clone, say), every data file and every
`dvc add`ed export is hashed against its recorded md5 (DVC does not re-hash
its cache) and only the stages from train on are rebuilt; otherwise every
stage is. A `dvc add`ed export whose cached bytes differ from its record
can never give the recorded data back: it is reported as a difference, and
nothing is rebuilt. Data md5s, the model and package md5s, the code md5 and the
recorded metrics (every horizon's) must come out equal; the code md5 that the rebuilt stages
computed from the code they imported must equal the worktree's, which proves
that the commit's own code ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from bts.errors import BtsError
from bts.hashing import dvc_md5, lock_md5s
from bts.horizons import metric_horizons, metric_name
from bts.lifecycle.lineage import trace
from bts.model.package import package_metadata
from bts.params import flatten
from bts.project import TRAINING_STAGE, code_md5, pipeline_argument
from bts.tracking.tags import CODE_MD5, DATASETS, data_md5_tag, dataset_document_path

# The scores compared, recorded against reproduced, at every horizon the run forecasts.
COMPARED_SCORES = {"valid": ["rmse"], "test": ["rmse", "skill", "coverage", "mean_width"]}  # the forecasts and their intervals
STAGE_PREFIXES = ("simulate:", "ingest:", "clean:", "featurize:", "train:", "evaluate:", "serve:")


def _run(args: list[str], cwd: Path, env: dict[str, str], echo: bool = False) -> None:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if echo:
        for line in result.stdout.splitlines():
            if line.startswith(STAGE_PREFIXES):
                print(f"  | {line}", file=sys.stderr)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise BtsError(f"{' '.join(args)} failed in the reproduction worktree; its last lines:\n" + "\n".join(output[-15:]))


def _upstream_stages(lock: dict, stage: str) -> set[str]:
    """The stages whose outputs the stage depends on, directly or not (from dvc.lock)."""
    producer = {out["path"]: name for name, entry in lock["stages"].items() for out in entry.get("outs", [])}
    found: set[str] = set()
    pending = [stage]
    while pending:
        entry = lock["stages"].get(pending.pop(), {})
        for dep in entry.get("deps", []):
            name = producer.get(dep["path"])
            if name and name not in found:
                found.add(name)
                pending.append(name)
    return found


def _recorded_data(tree: Path) -> tuple[dict[str, str | None] | None, dict[str, str | None]]:
    """{path: recorded md5} of the outputs of the stages before train (from dvc.lock; None without a train stage), and
    of every `dvc add`ed input."""
    inputs = {}
    tracked = subprocess.run(["git", "ls-files", "-z", "*.dvc"], cwd=tree, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        document = yaml.safe_load((tree / name).read_text()) or {}
        for out in document.get("outs", []):
            inputs[(Path(name).parent / out["path"]).as_posix()] = out.get("md5")
    try:
        lock = yaml.safe_load((tree / "dvc.lock").read_text())
        stages = _upstream_stages(lock, TRAINING_STAGE)
        return {out["path"]: out.get("md5") for name in stages for out in lock["stages"][name].get("outs", [])}, inputs
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None, inputs


def _mismatches(tree: Path, recorded: dict[str, str | None]) -> dict[str, str | None]:
    """{path: md5 found (None when missing)} of the files that are not in the worktree with their recorded md5."""
    found = {path: dvc_md5(tree / path) if (tree / path).exists() else None for path in sorted(recorded)}
    return {path: md5 for path, md5 in found.items() if md5 != recorded[path]}


def _rebuild(tree: Path, env: dict[str, str], outputs: dict[str, str | None] | None, missing_inputs: list[str]) -> None:
    """`dvc repro --force` from train on when every output of the data stages and every `dvc add`ed input is there
    with its recorded md5, else of every stage."""
    if outputs is None:
        problems = ["dvc.lock has no train stage"]
    else:
        mismatched = _mismatches(tree, outputs)
        problems = [f"{path} missing" if md5 is None else f"{path} does not match its md5" for path, md5 in mismatched.items()]
    problems += [f"{path} missing" for path in missing_inputs]
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        print(
            f"data: not restored from the DVC cache ({problems[0]}{more}; `dvc pull --all-commits` fetches every version): "
            "rebuilding every stage",
            file=sys.stderr,
        )
        _run(["dvc", "repro", "--force"], tree, env, echo=True)
    else:
        print(f"data: restored from the DVC cache, every md5 verified: rebuilding from the {TRAINING_STAGE} stage on", file=sys.stderr)
        _run(["dvc", "repro", "--force", "--downstream", TRAINING_STAGE], tree, env, echo=True)


def reproduce(client: MlflowClient, ref: str, root: Path, keep: bool = False) -> dict:
    """Rebuild the model's commit from scratch with its own code and compare md5s and metrics with the recorded ones."""
    chain = trace(client, ref, root)
    package = chain["package"]
    if package and package["problems"]:
        raise BtsError(f"{ref}: package TAMPERED: {', '.join(package['problems'])}; nothing was reproduced")
    if not chain["commits"]:
        raise BtsError(
            f"{ref}: no commit holds this model's data and weights (it came from uncommitted state); "
            "commit the experiment (e.g. `dvc exp branch <name> <branch>`) to make it reproducible"
        )
    commit = chain["rebuild_commit"]
    recorded_metrics = client.get_run(chain["run"]["run_id"]).data.metrics if chain["run"] else {}
    work = Path(tempfile.mkdtemp(prefix="bts-reproduce-"))
    tree = work / "worktree"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "PYTHONPATH"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env["PYTHONPATH"] = str(tree / "src")  # the commit's own library, whatever its dvc.yaml says, never the installed one
    print(f"reproducing {ref} from commit {commit[:12]} in {tree}", file=sys.stderr)
    _run(["git", "worktree", "add", "--detach", str(tree), commit], root, env)
    try:
        _run(["dvc", "cache", "dir", "--local", str(root / ".dvc" / "cache")], tree, env)
        subprocess.run(["dvc", "checkout", "--quiet"], cwd=tree, env=env, capture_output=True)  # missing outputs are rebuilt below
        outputs, inputs = _recorded_data(tree)
        mismatched = _mismatches(tree, inputs)
        altered = {path: md5 for path, md5 in mismatched.items() if md5 is not None}
        if altered:  # an input's bytes differ from its record: no rebuild can give the recorded data back
            print(f"data: the DVC cache's bytes of {', '.join(altered)} differ from the recorded md5: nothing rebuilt", file=sys.stderr)
            checks = [{"what": f"{path} (input)", "recorded": inputs[path], "reproduced": md5} for path, md5 in altered.items()]
        else:
            _rebuild(tree, env, outputs, [path for path, md5 in mismatched.items() if md5 is None])
            checks = _compare(chain, tree, recorded_metrics)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, capture_output=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    for check in checks:
        check["ok"] = check["recorded"] is not None and check["recorded"] == check["reproduced"]
    return {"reference": ref, "commit": commit, "checks": checks, "ok": all(c["ok"] for c in checks)}


def _compare(chain: dict, tree: Path, recorded_metrics: dict) -> list[dict]:
    md5s = lock_md5s((tree / "dvc.lock").read_bytes())
    documents = {name: json.loads((tree / dataset_document_path(tree, name)).read_text()) for name in DATASETS}
    checks = [
        {"what": data_md5_tag(name), "recorded": chain["datasets"][name]["md5"], "reproduced": documents[name]["dvc"]["md5"]}
        for name in DATASETS
    ]
    model_path = next((path for path, md5 in md5s.items() if path.endswith(".joblib")), None)
    checks.append({"what": "model_md5", "recorded": chain["model_md5"], "reproduced": md5s.get(model_path)})
    package_path = next((path for path in md5s if (tree / path / "MLmodel").is_file()), None)
    if chain["package"]:
        checks.append({"what": "package_md5", "recorded": chain["package"]["md5"], "reproduced": md5s.get(package_path)})
    built_code = package_metadata(tree / package_path)["lineage"].get(CODE_MD5) if package_path else None
    try:
        worktree_code = code_md5(tree)
    except BtsError:  # a commit whose dvc.yaml names no train stage: nothing to prove the ran code against
        worktree_code = None
    checks.append({"what": "code_md5 (ran)", "recorded": worktree_code, "reproduced": built_code})
    checks.append({"what": "code_md5", "recorded": chain["code_md5"], "reproduced": built_code})
    reproduced = flatten(json.loads((tree / pipeline_argument(tree, "evaluate", "--metrics")).read_text()))
    checks += [
        {"what": name, "recorded": recorded_metrics.get(name), "reproduced": reproduced.get(name)}
        for name in compared_metrics(recorded_metrics, reproduced)
    ]
    return checks


def compared_metrics(recorded: dict, reproduced: dict) -> list[str]:
    """COMPARED_SCORES at every horizon the recorded run forecasts (those of the reproduced metrics when no run is
    recorded), by split, horizon and score."""
    horizons = metric_horizons(recorded) or metric_horizons(reproduced)
    return [metric_name(split, horizon, score) for split, scores in COMPARED_SCORES.items() for horizon in horizons for score in scores]


def format_verdict(verdict: dict) -> str:
    lines = [f"reproduction of {verdict['reference']} from commit {verdict['commit']}:"]
    for check in verdict["checks"]:
        mark = "ok  " if check["ok"] else "DIFF"
        detail = f"{check['recorded']}" if check["ok"] else f"recorded {check['recorded']} != reproduced {check['reproduced']}"
        lines.append(f"  {mark} {check['what']:<20} {detail}")
    lines.append("verdict: REPRODUCED" if verdict["ok"] else "verdict: NOT REPRODUCED (see DIFF lines)")
    return "\n".join(lines)
