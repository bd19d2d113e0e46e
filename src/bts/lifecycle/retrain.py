"""`bts retrain`: from a served version and the readings that came since to a gated successor, with lineage from the
monitoring report that asked for it to the version that answers next.

1. The served version is verified (its package against its recorded md5); the new export is copied into data/external
   (unless it is there) and tracked with DVC (`dvc add`, unless it is tracked already), its .dvc file staged so that the
   experiment sees it.
2. A DVC experiment runs the pipeline in a temporary copy (`dvc exp run --temp`, the workspace untouched) with the
   export added to data.sources; it is named after the version and the time and kept as an experiment ref, so that
   `dvc exp show`, `bts lineage` and `bts reproduce` find it.
3. The package its run logged is registered (@candidate) and tagged with the version it was retrained from, the
   monitoring report that triggered it, the md5 of the added data and the experiment.
4. The candidate and the served version are scored on the same rows, the candidate's test split (each station's newest
   readings, the new ones among them), and the alias moves through the promotion gate only if the candidate wins.

Every step can be taken again: the plan (the version retrained from, the experiment's name, then the decision) is kept
in RETRAIN_DIR, so a rerun after a kill finds the experiment, the run and the version already made instead of making
others, and marks FAILED a run that a killed experiment left RUNNING; a rerun once decided prints the decision.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bts.errors import BtsError, ConfigError, first_line
from bts.kill_points import kill_point
from bts.lifecycle.references import MODEL_URI, check_alias, check_reference

RETRAIN_DIR = ".dvc/tmp/retrain"  # the plan of each retrain, by alias and data md5 (git-ignored with the rest of .dvc/tmp)
# Tags of a retrained version: where it came from and why.
RETRAINED_FROM = "retrain.from_version"
RETRAIN_REPORT = "retrain.monitoring_report"
RETRAIN_DATA_MD5 = "retrain.data_md5"
RETRAIN_EXPERIMENT = "retrain.experiment"
RETRAIN_TAGS = {
    RETRAINED_FROM: "retrained from version",
    RETRAIN_REPORT: "monitoring report",
    RETRAIN_DATA_MD5: "added data md5",
    RETRAIN_EXPERIMENT: "experiment",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", help="the served version: models:/name@alias (or models:/name/<version> with --to)")
    parser.add_argument("--with", dest="export", required=True, metavar="EXPORT", help="the new readings: a raw export (CSV) or a folder")
    parser.add_argument("--report", metavar="RUN_ID", help="the `bts monitor` report (its MLflow run id) that asked for it")
    parser.add_argument("--to", metavar="ALIAS", help="the alias to move if the candidate wins (default: the ref's alias)")


def checked_arguments(args: argparse.Namespace) -> tuple[str, str]:
    """(registered model name, alias) of the arguments, or a ConfigError naming the one that is wrong."""
    if not args.ref.startswith("models:/"):
        raise ConfigError(f"{args.ref}: retrain a registered version: models:/name@alias or models:/name/<version>")
    match = MODEL_URI.match(check_reference(args.ref))
    alias = args.to or match.group("alias")
    if alias is None:
        raise ConfigError(f"{args.ref}: names a version, not an alias: say which alias to move with --to <alias>")
    if not (Path(args.export).is_file() or Path(args.export).is_dir()):
        raise ConfigError(f"--with {args.export}: no such file or folder (give a raw export, CSV, or a folder of them)")
    return match.group("name"), check_alias(alias)


def retrain_command(project: object, args: argparse.Namespace, publish_card: object) -> int:
    from bts.lifecycle.registry import Gate

    name, alias = checked_arguments(args)
    registry = project.params.registry
    line = retrain(
        project.client,
        project.root,
        args.ref,
        name,
        alias,
        Path(args.export),
        args.report,
        Gate(registry.gate_metric, registry.gate_direction),
        project.params.data.sources,
        publish_card,
    )
    print(line)
    return 0


def retrain(
    client: object,
    root: Path,
    ref: str,
    name: str,
    alias: str,
    export: Path,
    report: str | None,
    gate: object,
    sources: list[str],
    publish_card: object,
) -> str:
    """Retrain the version `ref` names with `export` added to the data, register the candidate and promote it to
    `alias` if it beats the served version on the candidate's test split; the one line saying what was decided."""
    from mlflow.exceptions import MlflowException

    from bts.hashing import dvc_md5
    from bts.lifecycle.integrity import version_integrity
    from bts.lifecycle.registry import alias_holder, get_version, promote, rescored

    data_md5 = dvc_md5(export)
    plan_path = root / RETRAIN_DIR / f"{name}@{alias}-{data_md5}.json"
    plan = _read_plan(plan_path)
    if plan and plan.get("decision"):  # done before: the same command says what was decided, and does nothing again
        return plan["decision"]
    # The version retrained from is the one served when the retrain began: a rerun after the alias moved keeps it.
    served = get_version(client, name, plan["served"]) if plan else _served_version(client, ref)
    problems = version_integrity(client, served)
    if problems:
        raise BtsError(f"{ref}: package TAMPERED: {', '.join(problems)}; nothing was retrained")
    if report is not None:
        try:
            client.get_run(report)
        except MlflowException:
            raise BtsError(f"--report {report}: no such monitoring run in the store") from None
    if plan is None:
        plan = {"served": str(served.version), "experiment": f"retrain-v{served.version}-{datetime.now(UTC):%Y%m%dT%H%M%S}"}
        _write_plan(plan_path, plan)
    tracked = track_export(root, export, data_md5)
    kill_point("retrain-tracked")
    experiment = plan["experiment"]
    run = _experiment_run(client, root, experiment, [*[s for s in sources if s != tracked], tracked])
    kill_point("retrain-experiment-done")
    _progress(f"registering the package of run {run.info.run_id}")
    candidate = _register_candidate(client, root, name, run)
    origin = f"retrain: version {candidate.version} from version {served.version} (experiment {experiment}, {tracked} md5 {data_md5})"
    if candidate.version == served.version:
        decision = f"{origin}: the new readings changed nothing: the experiment packaged the served version's very model"
    else:
        tags = {RETRAINED_FROM: str(served.version), RETRAIN_DATA_MD5: data_md5, RETRAIN_EXPERIMENT: experiment}
        if report is not None:
            tags[RETRAIN_REPORT] = report
        for key, value in tags.items():
            client.set_model_version_tag(name, str(candidate.version), key, value)
        kill_point("retrain-tagged")
        _progress(f"scoring version {candidate.version} and version {served.version} on the candidate's test split")
        features = _cached_features(root, candidate)
        new, old = rescored(client, [candidate, served], gate, features)
        scores = f"{gate.metric} {new:.6g} vs {old:.6g} of version {served.version}, both on the candidate's test split"
        if gate.better(new, old):
            reason = f"retrained from version {served.version}: {scores}"
            candidate, _ = promote(client, name, str(candidate.version), alias, gate, reason=reason, evaluate_on=features)
            decision = f"{origin}: promoted to @{alias} ({scores})"
        else:
            holder = alias_holder(client, name, alias)
            decision = (
                f"{origin}: not promoted, @{alias} stays on version {holder.version if holder else '-'} ({scores}; {gate.describe()})"
            )
    publish_card(candidate)
    _write_plan(plan_path, {**plan, "decision": decision})
    return decision


def _progress(message: str) -> None:
    print(f"retrain: {message}", file=sys.stderr, flush=True)


def _served_version(client: object, ref: str) -> object:
    from mlflow.exceptions import MlflowException

    match = MODEL_URI.match(ref)
    try:
        if match.group("alias"):
            return client.get_model_version_by_alias(match.group("name"), match.group("alias"))
        return client.get_model_version(match.group("name"), match.group("version"))
    except MlflowException:
        raise BtsError(f"{ref}: no such registered version in the store") from None


def track_export(root: Path, export: Path, data_md5: str) -> str:
    """The export's path under data/external (copied there if it is elsewhere), tracked by DVC and its .dvc file staged."""
    from bts.hashing import dvc_md5
    from bts.project import pipeline_argument

    inputs = pipeline_argument(root, "ingest", "--inputs")  # where real exports go, as dvc.yaml says
    external = (root / inputs).resolve()
    source = export.resolve()
    if source.parent == external:
        placed = source
    else:
        placed = external / export.name
        if placed.exists() and dvc_md5(placed) != data_md5:
            raise BtsError(f"--with {export}: {inputs}/{export.name} exists with other readings; rename the export")
        if not placed.exists():
            partial = placed.with_name(f".{placed.name}.retrain.tmp")
            shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
            shutil.copytree(source, partial) if source.is_dir() else shutil.copyfile(source, partial)
            partial.replace(placed)
    relative = placed.relative_to(root.resolve()).as_posix()
    dvc_file = placed.with_name(placed.name + ".dvc")
    if not dvc_file.exists() or data_md5 not in dvc_file.read_text():
        _run(root, ["dvc", "add", "--quiet", relative], f"dvc add {relative}")
    _run(root, ["git", "add", f"{relative}.dvc", f"{inputs}/.gitignore"], "git add")
    return relative


def _run(root: Path, command: list[str], what: str) -> str:
    """Run a tool of the project's environment; BtsError with its last line when it fails."""
    executable = Path(sys.executable).parent / command[0]
    argv = [str(executable) if executable.exists() else command[0], *command[1:]]
    result = subprocess.run(argv, cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        stage_errors = [line for line in lines if ": error: " in line]
        raise BtsError(f"{what} failed: {(stage_errors or lines or ['exit ' + str(result.returncode)])[-1].strip()}")
    return result.stdout


def _experiment_run(client: object, root: Path, experiment: str, sources: list[str]) -> object:
    """The MLflow run of the experiment: found when a run before this one finished it, else run now (a run a killed
    experiment left RUNNING is marked FAILED first)."""
    from mlflow.entities import RunStatus

    from bts.horizons import headline_metric
    from bts.tracking.tags import EXP_NAME

    existing = set(_run(root, ["dvc", "exp", "list", "--name-only"], "dvc exp list").split())
    runs = client.search_runs(_experiment_ids(client), filter_string=f"tags.`{EXP_NAME}` = '{experiment}'")
    if experiment not in existing:
        for left in runs:
            if left.info.status == "RUNNING":
                client.set_terminated(left.info.run_id, status=RunStatus.to_string(RunStatus.FAILED))
        listed = "[" + ", ".join(sources) + "]"
        _progress(f"running experiment {experiment}: the pipeline with data.sources {listed}, in a temporary copy")
        _run(
            root,
            ["dvc", "exp", "run", "--temp", "--name", experiment, "--set-param", f"data.sources={listed}"],
            f"dvc exp run {experiment}",
        )
        runs = client.search_runs(_experiment_ids(client), filter_string=f"tags.`{EXP_NAME}` = '{experiment}'")
    finished = [run for run in runs if run.info.status == "FINISHED" and headline_metric(run.data.metrics) is not None]  # evaluated
    if not finished:
        raise BtsError(f"experiment {experiment}: no finished run with evaluation metrics in the store; run `bts runs check`")
    return max(finished, key=lambda run: run.info.start_time)


def _experiment_ids(client: object) -> list[str]:
    return [experiment.experiment_id for experiment in client.search_experiments()]


def _register_candidate(client: object, root: Path, name: str, run: object) -> object:
    """The version of the package the experiment's run logged (registered now, or found registered), checked file by file
    against its manifest before anything of it is loaded."""
    from bts.hashing import dvc_md5
    from bts.lifecycle.lineage import resolve_reference
    from bts.lifecycle.registry import describe_run, register
    from bts.model.package import PACKAGE_ARTIFACT, verify_package

    with tempfile.TemporaryDirectory() as scratch:
        package = Path(client.download_artifacts(run.info.run_id, PACKAGE_ARTIFACT, scratch))
        problems = resolve_reference(client, str(package), root)["package"]["problems"]
        if problems:
            raise BtsError(f"run {run.info.run_id}: package TAMPERED: {', '.join(problems)}; not registered")
        metadata = verify_package(package)
        version, _ = register(client, name, package, dvc_md5(package), metadata["lineage"], run, describe_run(run))
    return version


def _cached_features(root: Path, version: object) -> Path:
    """The candidate's features table, from the DVC cache, checked against the md5 its version records."""
    from bts.hashing import file_md5
    from bts.tracking.tags import data_md5_tag

    md5 = version.tags.get(data_md5_tag("features"), "")
    cached = root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    if not md5 or not cached.is_file():
        raise BtsError(f"version {version.version}: its features (md5 {md5 or 'unrecorded'}) are not in the DVC cache")
    if file_md5(cached) != md5:
        raise BtsError(f"{cached}: corrupt in the DVC cache (md5 differs from {md5}); run `dvc cache migrate` or retrain again")
    return cached


def _read_plan(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BtsError(f"{path}: unreadable retrain plan ({first_line(exc)}); remove it to start over") from None


def _write_plan(path: Path, plan: dict) -> None:
    from bts.files import write_json

    write_json(path, plan)
