"""Tracing a model back to its run, its data versions and the git commits that hold them.

A model reference is a registry URI (`models:/name@alias`, `models:/name/3`),
a run id, or a packaged model folder. Its lineage (run id, git commit, data
and model md5s) is read from the registry version tags, the run tags or the
MLmodel metadata; the commits are found by looking for those md5s in every
dvc.lock of the repository's history, DVC experiment refs included.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bts.errors import BtsError
from bts.hashing import lock_md5s

DATASETS = ["raw", "clean", "features"]
RUN_METRICS = ["test.rmse", "test.skill", "test.persistence_rmse", "valid.rmse", "training.seconds", "training.peak_memory_mb"]


def _git(root: Path, *args: str, data: str | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=root, input=data, capture_output=True, text=True)
    if result.returncode != 0:
        raise BtsError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def resolve_reference(client: MlflowClient, ref: str) -> dict:
    """{'version': ModelVersion | None, 'run_id': str, 'lineage': {...}} for any kind of model reference."""
    try:
        if ref.startswith("models:/"):
            name, _, selector = ref.removeprefix("models:/").partition("@")
            if selector:
                version = client.get_model_version_by_alias(name, selector)
            else:
                name, _, number = ref.removeprefix("models:/").rpartition("/")
                version = client.get_model_version(name, number)
            lineage = {k: v for k, v in version.tags.items() if not k.startswith(("transition.", "package."))}
            return {"version": version, "run_id": version.run_id, "lineage": lineage}
        mlmodel = Path(ref) / "MLmodel"
        if mlmodel.exists():
            lineage = (yaml.safe_load(mlmodel.read_text()).get("metadata") or {}).get("lineage")
            if not lineage:
                raise BtsError(f"{mlmodel}: no lineage in the model metadata (not packaged by this pipeline)")
            return {"version": None, "run_id": lineage["run_id"], "lineage": lineage}
        run = client.get_run(ref)
        return {"version": None, "run_id": ref, "lineage": {"run_id": ref, **run.data.tags}}
    except MlflowException as exc:
        raise BtsError(f"{ref}: not found in the registry or tracking store {client.tracking_uri} ({exc.message.splitlines()[0]})") from exc


def commits_holding(root: Path, md5s: list[str]) -> list[dict]:
    """Commits (on any branch, tag or DVC experiment ref) whose dvc.lock records every md5 given, oldest first."""
    listing = _git(root, "log", "--all", "--format=%H %ct", "--", "dvc.lock").split("\n")
    commits = [line.split() for line in listing if line.strip()]
    if not commits:
        return []
    contents = _git(root, "cat-file", "--batch", data="".join(f"{sha}:dvc.lock\n" for sha, _ in commits))
    matches = []
    for (sha, timestamp), lock_text in zip(commits, _split_batch(contents), strict=True):
        if lock_text is not None and set(md5s) <= set(lock_md5s(lock_text).values()):
            matches.append({"commit": sha, "time": int(timestamp), "refs": _refs_of(root, sha)})
    return sorted(matches, key=lambda m: m["time"])


def _split_batch(output: str) -> list[str | None]:
    """The bodies of `git cat-file --batch` answers, None for a missing object."""
    bodies, position = [], 0
    while position < len(output):
        header_end = output.index("\n", position)
        header = output[position:header_end].split()
        if header[-1] == "missing":
            bodies.append(None)
            position = header_end + 1
            continue
        size = int(header[2])
        # sizes are in bytes; the lock file is ASCII, so characters and bytes agree
        bodies.append(output[header_end + 1 : header_end + 1 + size])
        position = header_end + 1 + size + 1
    return bodies


def _refs_of(root: Path, sha: str) -> list[dict]:
    refs = []
    for ref in _git(root, "for-each-ref", "--points-at", sha, "--format=%(refname)").split():
        if ref.startswith("refs/heads/"):
            refs.append({"kind": "branch", "name": ref.removeprefix("refs/heads/")})
        elif ref.startswith("refs/tags/"):
            refs.append({"kind": "tag", "name": ref.removeprefix("refs/tags/")})
        elif ref.startswith("refs/exps/") and ref.count("/") >= 4:
            refs.append({"kind": "dvc-experiment", "name": ref.rsplit("/", 1)[1], "ref": ref})
    for branch in _git(root, "branch", "--contains", sha, "--format=%(refname:short)").split():
        if not any(r["kind"] == "branch" and r["name"] == branch for r in refs):
            refs.append({"kind": "branch-contains", "name": branch})
    return refs


def _dataset_document(root: Path, commit: str | None, name: str, md5: str) -> dict | None:
    """The dataset's metadata document at the commit (or in the workspace, if it describes the same md5)."""
    path = f"metadata/datasets/{name}.json"
    try:
        text = _git(root, "show", f"{commit}:{path}") if commit else (root / path).read_text()
    except (BtsError, OSError):
        return None
    document = json.loads(text)
    return document if document["dvc"]["md5"] == md5 else None


def trace(client: MlflowClient, ref: str, root: Path) -> dict:
    """The whole chain: model version -> run -> features -> clean -> raw -> commits."""
    resolved = resolve_reference(client, ref)
    lineage = resolved["lineage"]
    run = client.get_run(resolved["run_id"])
    data_md5s = {name: lineage.get(f"data.{name}_md5") or run.data.tags.get(f"data.{name}_md5") for name in DATASETS}
    model_md5 = lineage.get("model_md5") or run.data.tags.get("model_md5")
    exact = commits_holding(root, [m for m in [*data_md5s.values(), model_md5] if m])
    data_only = exact or commits_holding(root, [m for m in data_md5s.values() if m])
    commit = exact[0]["commit"] if exact else (data_only[0]["commit"] if data_only else None)
    datasets = {}
    for name in reversed(DATASETS):
        document = _dataset_document(root, commit, name, data_md5s[name]) or _dataset_document(root, None, name, data_md5s[name])
        datasets[name] = {
            "md5": data_md5s[name],
            "rows": document["rows"] if document else None,
            "stations": len(document["stations"]) if document else None,
            "time_range": document["time_range"] if document else None,
            "quality": document["quality_of_data"] if document else None,
        }
    version = resolved["version"]
    return {
        "reference": ref,
        "model": None
        if version is None
        else {
            "name": version.name,
            "version": str(version.version),
            "aliases": sorted(version.aliases),
            "description": version.description,
        },
        "run": {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "params": dict(sorted(run.data.params.items())),
            "metrics": {m: run.data.metrics[m] for m in RUN_METRICS if m in run.data.metrics},
            "machine": {k: v for k, v in sorted(run.data.tags.items()) if k.startswith("machine.")},
            "dvc_experiment": run.data.tags.get("dvc.exp_name"),
        },
        "model_md5": model_md5,
        "datasets": datasets,
        "git": {
            "base_commit": lineage.get("git.commit") or run.data.tags.get("git.commit"),
            "dirty": (lineage.get("git.dirty") or run.data.tags.get("git.dirty")) == "true",
        },
        "commits": exact,
        "commits_with_same_data": [] if exact else data_only,
        "uncommitted": not exact,
        "monitoring": [],
    }


def format_trace(chain: dict) -> str:
    lines = []
    model = chain["model"]
    if model:
        aliases = f" @{', @'.join(model['aliases'])}" if model["aliases"] else ""
        lines += [f"model    {model['name']} version {model['version']}{aliases}", f"         {model['description']}"]
    run = chain["run"]
    metrics = ", ".join(f"{k} {v:.6g}" for k, v in run["metrics"].items())
    lines += [
        f"run      {run['run_id']} ({run['name']}, {run['status']})"
        + (f", DVC experiment {run['dvc_experiment']}" if run["dvc_experiment"] else "")
    ]
    lines += [f"         params: {', '.join(f'{k}={v}' for k, v in run['params'].items())}", f"         metrics: {metrics}"]
    machine = run["machine"]
    cpu, cores, memory = machine.get("machine.cpu"), machine.get("machine.cores"), machine.get("machine.memory_gb")
    lines += [f"         machine: {cpu}, {cores} cores, {memory} GB, {machine.get('machine.os')}"]
    lines += [f"weights  md5 {chain['model_md5']}"]
    for name in ["features", "clean", "raw"]:
        data = chain["datasets"][name]
        detail = ""
        if data["rows"] is not None:
            quality = data["quality"]
            detail = f"  {data['rows']} rows, {data['stations']} stations"
            detail += f", completeness {quality['completeness']}, validity {quality['validity']}"
        lines.append(f"{name:<8} md5 {data['md5']}{detail}")
    if chain["commits"]:
        for found in chain["commits"]:
            refs = ", ".join(f"{r['kind']} {r['name']}" for r in found["refs"]) or "no ref"
            lines.append(f"commit   {found['commit']} ({refs})")
    else:
        git = chain["git"]
        lines.append(f"commit   none holds these md5s: the model came from uncommitted state (base commit {git['base_commit']})")
        for found in chain["commits_with_same_data"]:
            lines.append(f"         same data (other weights) at {found['commit']}")
    lines.append("monitor  " + (", ".join(chain["monitoring"]) if chain["monitoring"] else "no monitoring reports yet"))
    return "\n".join(lines)
