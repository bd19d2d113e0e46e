"""Tracing a model back to its run, its data versions and the git commits that hold them.

A model reference is a registry URI (`models:/name@alias`, `models:/name/3`),
a run id, or a packaged model folder. Its lineage (content hashes of data,
params, code and weights) is read from the registry version tags, the run
tags or the package's MLmodel metadata, after the package's files are checked
against its manifest; the commits are found by looking for those md5s in
every dvc.lock of the repository's history, DVC experiment refs included.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bts.errors import BtsError
from bts.hashing import dvc_md5, lock_md5s
from bts.horizons import LIVE_SPLIT, label, metric_horizons, metric_name
from bts.lifecycle.integrity import version_integrity
from bts.lifecycle.model_card import brief_scores
from bts.lifecycle.references import MODEL_URI, RUN_ID, check_reference
from bts.lifecycle.retrain import RETRAIN_TAGS
from bts.lifecycle.sql_client import NotFound, mlflow_errors
from bts.project import git, git_text
from bts.tracking.tags import (
    CODE_MD5,
    DATASETS,
    EXP_NAME,
    GIT_COMMIT,
    GIT_DIRTY,
    MODEL_MD5,
    MONITORING_SUFFIX,
    PACKAGE_MD5,
    PARAMS_MD5,
    REGISTRATION_COMPLETE,
    TRANSITION_PREFIX,
    data_md5_tag,
    dataset_document_path,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from bts.lifecycle.sql_client import Run as SqlRun
    from bts.lifecycle.sql_client import SqlClient

# What a run's summary keeps of its metrics: these scores of every horizon it forecasts, per split, then its cost.
RUN_SCORES = {"test": ["rmse", "persistence_rmse", "skill", "coverage", "mean_width"], "valid": ["rmse"]}
RUN_COSTS = {"training.seconds": "{:.3g} s", "training.peak_memory_mb": "{:.0f} MB peak"}  # as the summary shows them
AMBIGUOUS_SHOWN = 5
# refs/exps/<baseline sha[:2]>/<baseline sha[2:]>/<name>; other refs/exps/* are DVC's own bookkeeping.
EXPERIMENT_REF = re.compile(r"^refs/exps/([0-9a-f]{2})/([0-9a-f]{38})/([^/]+)$")


def experiment_refs(root: Path) -> dict[str, dict[str, str]]:
    """{experiment name: {'ref': full ref, 'baseline': baseline commit}} for every DVC experiment ref in the repository."""
    listing = git_text(root, "for-each-ref", "--format=%(refname)", "refs/exps/") or ""
    found = {}
    for ref in listing.split():
        match = EXPERIMENT_REF.match(ref)
        if match:
            found[match.group(3)] = {"ref": ref, "baseline": match.group(1) + match.group(2)}
    return found


def describe_ref(ref: str) -> dict[str, str] | None:
    """A git ref as {'kind', 'name'}: branch, tag or dvc-experiment (None for other refs)."""
    if ref.startswith("refs/heads/"):
        return {"kind": "branch", "name": ref.removeprefix("refs/heads/")}
    if ref.startswith("refs/tags/"):
        return {"kind": "tag", "name": ref.removeprefix("refs/tags/")}
    match = EXPERIMENT_REF.match(ref)
    return {"kind": "dvc-experiment", "name": match.group(3)} if match else None


def resolve_reference(client: MlflowClient | SqlClient, ref: str, root: Path) -> dict:
    """{'version', 'run', 'lineage', 'package'} for any kind of model reference; package integrity is checked here."""
    check_reference(ref)
    try:
        if ref.startswith("models:/"):
            return _registry_reference(client, ref)
        folder = Path(ref)
        if folder.is_dir():
            return _package_reference(folder, root)
        run = client.get_run(full_run_id(client, ref))
        lineage = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        return {"version": None, "run": run, "lineage": lineage, "package": None}
    except (*mlflow_errors(), NotFound) as exc:
        raise BtsError(f"{ref}: not found in {client.tracking_uri} ({exc.message.splitlines()[0]})") from None


def full_run_id(client: MlflowClient | SqlClient, prefix: str) -> str:
    """The run whose id starts with prefix (8 characters or more), or a BtsError: none, or the candidates when several."""
    if RUN_ID.match(prefix):
        return prefix
    from bts.lifecycle import database
    from bts.tracking.store import bulk_read_database

    uri = client.tracking_uri
    source = bulk_read_database(uri)
    if source is not None:
        with database.reading(source) as read:
            found = database.runs_starting_with(read, prefix, AMBIGUOUS_SHOWN + 1)
    else:  # a tracking server without its database named: its API matches run ids whole only
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = sorted(r.info.run_id for r in client.search_runs(experiments, max_results=50_000) if r.info.run_id.startswith(prefix))
    if not found:
        raise BtsError(f"{prefix}: no run id starts with it in {uri}")
    if len(found) > 1:
        shown = ", ".join(found[:AMBIGUOUS_SHOWN]) + (", ..." if len(found) > AMBIGUOUS_SHOWN else "")
        raise BtsError(
            f"{prefix}: {len(found)}{'+' if len(found) > AMBIGUOUS_SHOWN else ''} runs start with it ({shown}); give more characters"
        )
    return found[0]


def _registry_reference(client: MlflowClient | SqlClient, ref: str) -> dict:
    match = MODEL_URI.match(ref)  # its form checked by resolve_reference, the one caller
    if match.group("alias"):
        version = client.get_model_version_by_alias(match.group("name"), match.group("alias"))
    else:
        version = client.get_model_version(match.group("name"), match.group("version"))
    lineage = {k: v for k, v in version.tags.items() if not k.startswith((TRANSITION_PREFIX, "registration."))}
    package = {
        "md5": version.tags.get(PACKAGE_MD5),
        "source": version.source,
        "problems": version_integrity(client, version),
        "registration_complete": version.tags.get(REGISTRATION_COMPLETE) == "true",
    }
    return {"version": version, "run": client.get_run(version.run_id), "lineage": lineage, "package": package}


def _package_reference(folder: Path, root: Path) -> dict:
    from bts.model.package import package_metadata, tampered_files
    from bts.tracking.runs import find_training_run

    lineage = package_metadata(folder)["lineage"]
    md5 = dvc_md5(folder)
    recorded = lock_record(root, folder)
    problems = tampered_files(folder, recorded)
    return {
        "version": None,
        "run": find_training_run(lineage),
        "lineage": lineage,
        "package": {"md5": md5, "source": str(folder), "problems": problems},
    }


def lock_record(root: Path, folder: Path) -> str | None:
    """The md5 the workspace's dvc.lock records for this folder, when it is a pipeline output."""
    try:
        relative = folder.resolve().relative_to(root).as_posix()
        return lock_md5s((root / "dvc.lock").read_bytes()).get(relative)
    except (ValueError, OSError):
        return None


def commits_holding(root: Path, md5s: list[str]) -> list[dict]:
    """Commits (on any branch, tag or DVC experiment ref) whose dvc.lock records every md5 given, oldest first."""
    listing = git_text(root, "log", "--all", "--format=%H %ct", "--", "dvc.lock") or ""
    commits = [line.split() for line in listing.splitlines() if line.strip()]
    if not commits or not md5s:
        return []
    request = "".join(f"{sha}:dvc.lock\n" for sha, _ in commits).encode()
    result = git(root, "cat-file", "--batch", input_bytes=request)
    matches = []
    wanted = [str(md5).encode() for md5 in md5s]  # a tampered package's lineage may hold other types: then no match
    for (sha, timestamp), lock in zip(commits, split_batch(result or b""), strict=True):
        # Parsed only when its text holds every md5: the versions of other models' experiments are skipped unparsed.
        if lock is not None and all(md5 in lock for md5 in wanted) and set(md5s) <= recorded_md5s(lock):
            matches.append({"commit": sha, "time": int(timestamp)})
    return sorted(matches, key=lambda m: m["time"])


def recorded_md5s(lock: bytes) -> set[str]:
    """The output md5s a committed dvc.lock records; none when that version cannot be parsed (a merge conflict
    committed in it, say): it cannot vouch for any output."""
    try:
        return set(lock_md5s(lock).values())
    except BtsError:
        return set()


def split_batch(output: bytes) -> list[bytes | None]:
    """The bodies of `git cat-file --batch` answers (bytes, sized in bytes), None for a missing object."""
    bodies, position = [], 0
    while position < len(output):
        header_end = output.index(b"\n", position)
        header = output[position:header_end].split()
        if header[-1] == b"missing":
            bodies.append(None)
            position = header_end + 1
            continue
        size = int(header[2])
        bodies.append(output[header_end + 1 : header_end + 1 + size])
        position = header_end + 1 + size + 1
    return bodies


def refs_containing(root: Path, sha: str) -> list[dict[str, str]]:
    """Branches, tags and DVC experiments whose history holds the commit."""
    listing = git_text(root, "for-each-ref", "--contains", sha, "--format=%(refname)", "refs/heads", "refs/tags", "refs/exps") or ""
    return [described for ref in listing.split() if (described := describe_ref(ref))]


def _dataset_document(root: Path, commit: str | None, name: str, md5: str | None) -> dict | None:
    """The dataset's metadata document at the commit (or in the workspace), if it describes the same md5."""
    try:
        path = dataset_document_path(root, name)
        text = git(root, "show", f"{commit}:{path}") if commit else (root / path).read_bytes()
        document = json.loads(text)
    except (BtsError, OSError, ValueError):
        return None
    return document if document.get("dvc", {}).get("md5") == md5 else None


def run_metrics(metrics: dict[str, float]) -> list[str]:
    """The names of RUN_SCORES at every horizon the run forecasts (by split, then horizon), then RUN_COSTS."""
    horizons = metric_horizons(metrics)
    return [metric_name(split, h, score) for split, scores in RUN_SCORES.items() for h in horizons for score in scores] + list(RUN_COSTS)


def _run_summary(run: Run | SqlRun | None) -> dict | None:
    if run is None:
        return None
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "params": dict(sorted(run.data.params.items())),
        "metrics": {m: run.data.metrics[m] for m in run_metrics(run.data.metrics) if m in run.data.metrics},
        "machine": {k: v for k, v in sorted(run.data.tags.items()) if k.startswith("machine.")},
        "dvc_experiment": run.data.tags.get(EXP_NAME),
        "git_commit": run.data.tags.get(GIT_COMMIT),
        "git_dirty": run.data.tags.get(GIT_DIRTY) == "true",
    }


def trace(client: MlflowClient | SqlClient, ref: str, root: Path) -> dict:
    """The whole chain: model version -> package -> run -> features -> clean -> raw -> commits."""
    resolved = resolve_reference(client, ref, root)
    lineage, run = resolved["lineage"], resolved["run"]
    data_md5s = {name: lineage.get(data_md5_tag(name)) for name in DATASETS}
    model_md5 = lineage.get(MODEL_MD5)
    package_md5 = (resolved["package"] or {}).get("md5")  # with it, the commits hold the very code that packaged the model
    exact = commits_holding(root, [m for m in [*data_md5s.values(), model_md5, package_md5] if m])
    data_only = [] if exact else commits_holding(root, [m for m in data_md5s.values() if m])
    recorded_commit = run.data.tags.get(GIT_COMMIT) if run else None
    chosen = next((c for c in exact if c["commit"] == recorded_commit), exact[-1] if exact else None)
    first = exact[0] if exact else (data_only[0] if data_only else None)
    datasets = {}
    for name in reversed(DATASETS):
        document = _dataset_document(root, first["commit"] if first else None, name, data_md5s[name])
        document = document or _dataset_document(root, None, name, data_md5s[name])
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
        "package": resolved["package"],
        "retrain": {tag: lineage[tag] for tag in RETRAIN_TAGS if tag in lineage},  # where a retrained version came from
        "run": _run_summary(run),
        "model_md5": model_md5,
        "params_md5": lineage.get(PARAMS_MD5),
        "code_md5": lineage.get(CODE_MD5),
        "datasets": datasets,
        "commits": exact,
        "first_commit": None if first is None else {**first, "refs": refs_containing(root, first["commit"])},
        "rebuild_commit": chosen["commit"] if chosen else None,
        "commits_with_same_data": data_only,
        "uncommitted": not exact,
        "monitoring": monitoring_reports(client, run, package_md5 or lineage.get(PACKAGE_MD5)),
    }


def monitoring_reports(client: MlflowClient | SqlClient, run: Run | SqlRun | None, package_md5: str | None, newest: int = 3) -> dict:
    """The `bts monitor` reports on this package (in its training experiment's monitoring experiment), newest first."""
    if run is None or not package_md5:
        return {"count": 0, "newest": []}
    experiment = client.get_experiment_by_name(client.get_experiment(run.info.experiment_id).name + MONITORING_SUFFIX)
    if experiment is None:
        return {"count": 0, "newest": []}
    reports = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{PACKAGE_MD5}` = '{package_md5}'", order_by=["attributes.start_time DESC"]
    )
    return {
        "count": len(reports),
        "newest": [
            {
                "run_id": report.info.run_id,
                "time": datetime.fromtimestamp(report.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "requests": report.data.metrics.get("service.requests"),
                "features_drifted": report.data.metrics.get("drift.features_drifted"),
                "live_skill": {
                    label(h): report.data.metrics[metric_name(LIVE_SPLIT, h, "skill")]
                    for h in metric_horizons(report.data.metrics, LIVE_SPLIT, "skill")
                },
            }
            for report in reports[:newest]
        ],
    }


def format_reports(reports: dict) -> list[str]:
    lines = []
    for i, report in enumerate(reports["newest"]):
        skills = report["live_skill"]
        live = ", live skill " + ", ".join(f"{key} {skill:+.1%}" for key, skill in skills.items()) if skills else ""
        drifted = f", {report['features_drifted']:.0f} feature(s) drifted" if report["features_drifted"] is not None else ""
        head = f"monitor  {reports['count']} report(s); " if i == 0 else "         "
        lines.append(f"{head}{report['time']}: run {report['run_id']} ({report['requests']:.0f} requests{drifted}{live})")
    return lines


def format_trace(chain: dict) -> str:
    lines = []
    model = chain["model"]
    if model:
        aliases = f" @{', @'.join(model['aliases'])}" if model["aliases"] else ""
        lines += [f"model    {model['name']} version {model['version']}{aliases}", f"         {model['description']}"]
    package = chain["package"]
    if package:
        state = "TAMPERED: " + ", ".join(package["problems"]) if package["problems"] else "every file matches its manifest"
        if package.get("registration_complete") is False:
            state += "; registration incomplete (run `bts register` again)"
        lines.append(f"package  md5 {package['md5']}  {state}")
    if chain["retrain"]:
        lines.append("retrain  " + ", ".join(f"{RETRAIN_TAGS[tag]} {value}" for tag, value in chain["retrain"].items()))
    run = chain["run"]
    if run is None:
        lines.append("run      none in this tracking store trained these exact weights")
    else:
        experiment = f", DVC experiment {run['dvc_experiment']}" if run["dvc_experiment"] else ""
        lines.append(f"run      {run['run_id']} ({run['name']}, {run['status']}){experiment}")
        lines.append(f"         params: {', '.join(f'{k}={v}' for k, v in run['params'].items())}")
        costs = [shown.format(run["metrics"][name]) for name, shown in RUN_COSTS.items() if name in run["metrics"]]
        cost = f"; training {', '.join(costs)}" if costs else ""
        lines.append(f"         metrics: {brief_scores(run['metrics'], run['params'])}{cost}")
        machine = run["machine"]
        lines.append(
            f"         machine: {machine.get('machine.cpu')}, {machine.get('machine.cores')} cores, "
            f"{machine.get('machine.memory_gb')} GB, {machine.get('machine.os')}"
        )
    lines.append(f"weights  md5 {chain['model_md5']}  (params md5 {chain['params_md5']}, code md5 {chain['code_md5']})")
    for name in ["features", "clean", "raw"]:
        data = chain["datasets"][name]
        detail = ""
        if data["rows"] is not None:
            quality = data["quality"]
            detail = f"  {data['rows']} rows, {data['stations']} stations"
            detail += f", completeness {quality['completeness']}, validity {quality['validity']}"
        lines.append(f"{name:<8} md5 {data['md5']}{detail}")
    first = chain["first_commit"]
    if chain["commits"]:
        refs = ", ".join(f"{r['kind']} {r['name']}" for r in first["refs"]) or "no branch, tag or experiment"
        later = len(chain["commits"]) - 1
        lines.append(f"commit   {first['commit']} first holds these md5s" + (f" ({later} later commit(s) too)" if later else ""))
        lines.append(f"         in: {refs}")
    else:
        base = chain["run"]["git_commit"] if chain["run"] else "unknown"
        lines.append(f"commit   none holds these weights: the model came from uncommitted state (base commit {base})")
        if first:
            lines.append(f"         the same data is at {first['commit']}")
    lines += format_reports(chain["monitoring"])
    return "\n".join(lines)
