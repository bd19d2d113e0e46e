"""The `bts` command: lineage, reproduction, registry, runs, comparison, serving and batch scoring on top of DVC and MLflow.

Every subcommand finds the project from any folder inside it (as git and DVC
do), fails with one `bts: error:` line and no traceback, and imports MLflow
only when it needs it, so `bts --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bts
from bts.errors import BtsError
from bts.lifecycle.references import MODEL_REFERENCE

# What logs the workspace's model to the current store when the pipeline is up to date (another store was used before).
RETRAIN_HERE = "dvc repro --force --single-item train evaluate serve"


@dataclass
class Project:
    root: Path
    params: object  # bts.params.Params
    client: object  # mlflow.tracking.MlflowClient


def _project(*checks: Callable[[], object], reads_only: bool = False) -> Project:
    """The project around the current folder, its params and a client on its tracking store.

    `checks` (of the command's arguments) run once the project is found, before MLflow is imported: a mistyped
    argument is one line at once. A command that `reads_only` gets bts.lifecycle.sql_client's client where the store
    is a database (or a server's database is named), and never imports MLflow unless it must read a server's artifacts.
    """
    from bts.params import PARAMS_FILE, load_params
    from bts.project import find_root

    root = find_root()
    params = load_params(root / PARAMS_FILE)
    for check in checks:
        check()
    if reads_only:
        from bts.lifecycle.database import SQLITE_PREFIX, sqlite_path
        from bts.lifecycle.sql_client import SqlClient
        from bts.tracking.store import bulk_read_database, tracking_uri

        uri = tracking_uri(root)
        database = bulk_read_database(uri)
        missing = database is not None and database.startswith(SQLITE_PREFIX) and not Path(sqlite_path(database)).exists()
        if database is not None and not missing:  # a store not there yet: MLflow's client makes it and says what it lacks
            return Project(root, params, SqlClient(uri, database))
    from mlflow.tracking import MlflowClient

    from bts.tracking.store import use_store

    use_store(root)
    return Project(root, params, MlflowClient())


def _runs_check(args: argparse.Namespace) -> int:
    from bts.lifecycle.reconcile import format_reconciliation, mark_failed, problems_found, reconcile

    project = _project(reads_only=not args.mark_failed)
    experiment = args.experiment or project.params.train.experiment
    report = reconcile(project.client, project.root, experiment, project.params.registry.model_name)
    if args.mark_failed and report["runs_left_running"]:
        mark_failed(project.client, [run["run_id"] for run in report["runs_left_running"]])
        print(f"marked {len(report['runs_left_running'])} run(s) FAILED")
        report["runs_left_running"] = []
    print(format_reconciliation(report))
    return 1 if problems_found(report) else 0


def _compare(args: argparse.Namespace) -> int:
    from bts.lifecycle.compare import run_compare

    return run_compare(args)


def _lineage(args: argparse.Namespace) -> int:
    import json

    from bts.lifecycle.references import check_reference

    project = _project(lambda: check_reference(args.ref), reads_only=True)
    from bts.lifecycle.lineage import format_trace, trace

    chain = trace(project.client, args.ref, project.root)
    print(json.dumps(chain, indent=2) if args.json else format_trace(chain))
    return 1 if chain["package"] and chain["package"]["problems"] else 0


def _reproduce(args: argparse.Namespace) -> int:
    from bts.lifecycle.references import check_reference

    project = _project(lambda: check_reference(args.ref))
    from bts.lifecycle.reproduce import format_verdict, reproduce

    verdict = reproduce(project.client, args.ref, project.root, keep=args.keep)
    print(format_verdict(verdict))
    return 0 if verdict["ok"] else 1


def _publish_card(project: Project, version: object) -> Path:
    """Write the card of this version, then of every other version whose card the registry no longer agrees with (the
    holder an alias left, or what a killed promotion did not finish): registry changes leave every card current."""
    from bts.data.catalogue import load_catalogue
    from bts.lifecycle.integrity import download_version
    from bts.lifecycle.model_card import cards_folder, publish_card, stale_cards
    from bts.project import pipeline_argument

    catalogue = load_catalogue(project.root / pipeline_argument(project.root, "simulate", "--sensors"))
    cards = cards_folder(project.root, project.client.tracking_uri)

    def publish(one: object) -> Path:
        with tempfile.TemporaryDirectory() as scratch:
            package = download_version(project.client, one, Path(scratch))
            return publish_card(project.client, one, package, project.params.registry.license, cards, catalogue)

    card = publish(version)
    for stale, _, _ in stale_cards(project.client, version.name, cards):
        publish(project.client.get_model_version(version.name, stale))
    return card


def _register(args: argparse.Namespace) -> int:
    from bts.hashing import dvc_md5
    from bts.lifecycle.lineage import full_run_id, resolve_reference
    from bts.lifecycle.references import RUN_ID_PREFIX
    from bts.lifecycle.registry import describe_run, register
    from bts.model.package import PACKAGE_ARTIFACT, verify_package
    from bts.project import pipeline_argument
    from bts.tracking.store import shown_store

    project = _project()
    name = project.params.registry.model_name
    ref = args.ref or str(project.root / pipeline_argument(project.root, "serve", "--package"))
    with tempfile.TemporaryDirectory() as scratch:
        if RUN_ID_PREFIX.match(ref) and not Path(ref).exists():
            package = Path(project.client.download_artifacts(full_run_id(project.client, ref), PACKAGE_ARTIFACT, scratch))
        else:
            package = Path(ref)
        resolved = resolve_reference(project.client, str(package), project.root)
        if resolved["package"]["problems"]:
            raise BtsError(f"{ref}: package TAMPERED: {', '.join(resolved['package']['problems'])}; not registered")
        run = resolved["run"]
        if run is None:
            raise BtsError(
                f"{ref}: no run in {shown_store(project.client.tracking_uri, project.root)} trained these weights: "
                f"`{RETRAIN_HERE}` trains them again there (the same bytes: training is deterministic); then register"
            )
        metadata = verify_package(package)
        version, state = register(project.client, name, package, dvc_md5(package), metadata["lineage"], run, describe_run(run))
    card = _publish_card(project, version)
    aliases = ", ".join(f"@{a}" for a in sorted(version.aliases)) or "no alias"
    print(f"{state}: models:/{name}/{version.version} ({aliases}) from run {run.info.run_id}; model card {card.relative_to(project.root)}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from bts.lifecycle.references import check_alias, check_version

    project = _project(lambda: check_version(args.version), lambda: check_alias(args.to))
    from bts.lifecycle.registry import Gate, promote

    registry = project.params.registry
    gate = Gate(registry.gate_metric, registry.gate_direction)
    evaluate_on = Path(args.evaluate_on) if args.evaluate_on else None
    if evaluate_on is not None and not evaluate_on.is_file():
        raise BtsError(f"--evaluate-on {evaluate_on}: no such feature table")
    version, message = promote(
        project.client, args.name or registry.model_name, args.version, args.to, gate, args.force, args.reason or "", evaluate_on
    )
    card = _publish_card(project, version)
    print(f"{message}; model card {card.relative_to(project.root)}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from bts.lifecycle.retrain import checked_arguments, retrain_command

    project = _project(lambda: checked_arguments(args))
    return retrain_command(project, args, lambda version: _publish_card(project, version))


def _history(args: argparse.Namespace) -> int:
    from bts.lifecycle.history import history
    from bts.params import PARAMS_FILE, load_params
    from bts.project import find_root

    name = args.name or load_params(find_root() / PARAMS_FILE).registry.model_name
    events = history(name)
    print(f"alias transitions of {name}:")
    for event in events:
        forced = " FORCED" if event["forced"] else ""
        previous = event["previous"] or "-"
        transition = f"@{event['alias']:<10} version {event['version']:<4} (was {previous:<4})"
        print(f"  {event['at']}  {transition} by {event['by']}{forced}: {event['reason']}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from bts.serving.server import check_arguments, serve

    project = _project(lambda: check_arguments(args))
    return serve(project.client, project.root, args)


def _monitor(args: argparse.Namespace) -> int:
    from bts.monitoring.command import monitor_command

    project = _project()
    return monitor_command(project.client, project.root, args)


def _batch_predict(args: argparse.Namespace) -> int:
    from bts.batch.command import batch_command

    project = _project()
    return batch_command(project.client, project.root, args)


def _verify(args: argparse.Namespace) -> int:
    """Check a registered version or a package folder file by file against its recorded md5s, loading nothing."""
    from bts.errors import ConfigError
    from bts.lifecycle.lineage import lock_record, resolve_reference
    from bts.tracking.tags import PACKAGE_MD5

    project = _project()
    resolved = resolve_reference(project.client, args.ref, project.root)
    package = resolved["package"]
    if package is None:
        raise ConfigError(f"{args.ref}: a run id names no package; verify models:/name/<version>, models:/name@alias or a package folder")
    if package["problems"]:
        print(f"{args.ref}: TAMPERED: {', '.join(package['problems'])}; do not serve or load it")
        return 1
    if resolved["version"] is not None:
        against = f"the version's {PACKAGE_MD5} tag"
    elif lock_record(project.root, Path(args.ref)):
        against = "dvc.lock"
    else:
        against = "its own manifest only (not a pipeline output recorded in dvc.lock: its MLmodel file is not covered)"
    print(f"{args.ref}: verified: package md5 {package['md5']}; every file matches {against}")
    return 0


def _params(args: argparse.Namespace) -> int:
    """Check params.yaml whole, as every stage and command reads it, before DVC reads it its own way."""
    from bts.params import PARAMS_FILE, load_params
    from bts.project import find_root

    params = load_params(find_root() / PARAMS_FILE)
    print(f"{PARAMS_FILE}: valid ({', '.join(type(params).model_fields)})")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from bts.monitoring.replay import replay_command
    from bts.project import find_root

    return replay_command(find_root(), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bts", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bts {bts.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    runs = commands.add_parser("runs", help="MLflow runs of the pipeline", description="MLflow runs of the pipeline.")
    runs_commands = runs.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    check = runs_commands.add_parser(
        "check",
        help="reconcile DVC experiments, MLflow runs and registry versions",
        description="List DVC experiments without a run, runs whose experiment is gone, runs left RUNNING or without "
        "metrics, and registry versions left incomplete or tampered with; exit 1 if any.",
    )
    check.add_argument("--experiment", default=None, help="MLflow experiment name (default: train.experiment in params.yaml)")
    check.add_argument("--mark-failed", action="store_true", help="mark runs left RUNNING by a dead training as FAILED")
    check.set_defaults(handler=_runs_check)

    from bts import serving  # its defaults only: `bts --help` stays fast

    verify = commands.add_parser(
        "verify",
        help="check a model's package against its recorded md5s",
        description="Check a registered version (downloaded) or a package folder file by file against its recorded md5s "
        "(the version's package.md5 tag, dvc.lock) without loading it; exit 1 and name the files when it was tampered with. "
        "Run it before serving a version with stock `mlflow models serve`, which loads whatever it is given.",
    )
    verify.add_argument("ref", help=serving.SERVED_REFERENCE)
    verify.set_defaults(handler=_verify)

    params = commands.add_parser(
        "params",
        help="check params.yaml",
        description="Check params.yaml whole (every section, every key) as the stages and commands read it; exit 1 with "
        "one line naming the first wrong key or YAML line otherwise.",
    )
    params.set_defaults(handler=_params)

    lineage = commands.add_parser(
        "lineage", help="where a model came from", description="Where a model came from: package, run, data versions, commits."
    )
    lineage.add_argument("ref", help=MODEL_REFERENCE)
    lineage.add_argument("--json", action="store_true", help="print the chain as JSON")
    lineage.set_defaults(handler=_lineage)

    reproduce = commands.add_parser(
        "reproduce",
        help="rebuild a model from its commit in a temporary worktree and compare",
        description="Rebuild a model from its commit, with that commit's own code, in a temporary git worktree, and compare "
        "every md5 and metric with the recorded ones; exit 1 if anything differs.",
    )
    reproduce.add_argument("ref", help=MODEL_REFERENCE)
    reproduce.add_argument("--keep", action="store_true", help="keep the temporary folder (worktree removed) for inspection")
    reproduce.set_defaults(handler=_reproduce)

    register = commands.add_parser(
        "register",
        help="make a registry version of a package or run (alias @candidate)",
        description="Register a verified package (default: the serve stage's --package in dvc.yaml) or the package logged "
        "to a run as a version of "
        "registry.model_name with the @candidate alias. Idempotent: a package registered already keeps its version, and "
        "an interrupted registration is completed.",
    )
    register.add_argument("ref", nargs="?", help="a package folder or a run id (default: the serve stage's --package in dvc.yaml)")
    register.set_defaults(handler=_register)

    promote = commands.add_parser(
        "promote",
        help="move an alias (e.g. champion) to a version that passes the gate",
        description="Move an alias to a version if it beats the current holder on registry.gate_metric, both scored on the "
        "same data; every transition is recorded on the version.",
    )
    promote.add_argument("version", help="version number")
    promote.add_argument("--to", default="champion", help="alias to move (default: champion)")
    promote.add_argument("--name", help="registered model (default: registry.model_name in params.yaml)")
    promote.add_argument("--evaluate-on", metavar="FEATURES", help="score both versions anew on this feature table (Parquet)")
    promote.add_argument("--force", action="store_true", help="promote even if the gate says no (needs --reason)")
    promote.add_argument("--reason", help="why; recorded on the version")
    promote.set_defaults(handler=_promote)

    history = commands.add_parser(
        "history", help="every alias transition of the registered model", description="Every alias transition, oldest first."
    )
    history.add_argument("--name", help="registered model (default: registry.model_name in params.yaml)")
    history.set_defaults(handler=_history)

    serve = commands.add_parser(
        "serve",
        help="HTTP scoring server for a verified model package (MLflow's scoring protocol)",
        description="Serve a model over HTTP as `mlflow models serve` does (POST /invocations; GET /ping, /health, /version, "
        "/model, /metrics), after checking its package against the recorded md5; log every request and prediction to "
        "day-partitioned Parquet. One process, or --workers N on the same port; stop it with SIGTERM or Ctrl-C (the log is flushed). "
        "A registry alias is followed: when it moves, the version it names is verified, loaded and swapped in without failing a "
        "request; a version number or a package folder is pinned.",
    )
    serve.add_argument("ref", help=serving.SERVED_REFERENCE)
    serve.add_argument("--host", default=serving.DEFAULT_HOST, help=f"address to bind (default: {serving.DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=serving.DEFAULT_PORT, help=f"port (default: {serving.DEFAULT_PORT}; 0: any free port)")
    serve.add_argument("--log-dir", help=f"monitoring log folder (default: {serving.DEFAULT_LOG_DIR}/ under the project root)")
    serve.add_argument("--no-log", action="store_true", help="do not keep the monitoring log")
    serve.add_argument(
        "--log-max-mb", type=float, default=serving.DEFAULT_LOG_MAX_MB, help="size cap of the monitoring log; oldest days go first"
    )
    serve.add_argument("--max-rows", type=int, default=serving.DEFAULT_MAX_ROWS, help="rows per request at most (default: %(default)s)")
    serve.add_argument(
        "--max-body-bytes", type=int, default=serving.DEFAULT_MAX_BODY_BYTES, help="request body size at most (default: %(default)s)"
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        default=serving.DEFAULT_READ_TIMEOUT_SECONDS,
        help="seconds a request's head, then its body, may take to arrive whole: a late body gets 408, and either way the "
        "connection is closed (default: %(default)s)",
    )
    serve.add_argument(
        "--keep-alive",
        type=float,
        default=serving.DEFAULT_KEEP_ALIVE_SECONDS,
        help="seconds an idle keep-alive connection is kept open (default: %(default)s)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=serving.DEFAULT_MAX_CONNECTIONS,
        help="connections and requests in flight at once; past it, 503 (default: %(default)s)",
    )
    serve.add_argument(
        "--workers",
        default=serving.DEFAULT_WORKERS,
        metavar="N",
        help=f"processes answering on the port, 1 to {serving.MAX_WORKERS}, each with the limits above (default: %(default)s)",
    )
    serve.add_argument(
        "--follow-interval",
        default=serving.DEFAULT_FOLLOW_SECONDS,
        metavar="SECONDS",
        help="with models:/name@alias: seconds between looks at the registry; a version the alias moves to is verified and "
        "loaded in the background, then answers the requests that come after (default: %(default)g). models:/name/<version> "
        "and a package folder are pinned: they serve that one version until stopped",
    )
    serve.add_argument(
        "--no-follow", action="store_true", help="with models:/name@alias: serve the version it names at start until stopped"
    )
    serve.set_defaults(handler=_serve)

    monitor = commands.add_parser(
        "monitor",
        help="report on a served model: service and cost, input drift, live accuracy (JSON, HTML, MLflow run)",
        description="Read the monitoring log of `bts serve` for one model and report its service (requests, errors, latency, "
        "CPU per 1,000 predictions), the drift of its inputs against the training profile and, given the readings that came "
        "next (--actuals), its live accuracy beside the offline test scores. Writes report.json and report.html, logs them "
        "as a run of the `<experiment>-monitoring` MLflow experiment and tags the model version with it.",
    )
    monitor.add_argument("ref", help="models:/name@alias, models:/name/<version>, or a package folder (what `bts serve` served)")
    monitor.add_argument("--since", help="from this time (ISO 8601, UTC if naive; or 30m, 24h, 7d back from now)")
    monitor.add_argument("--until", help="until this time (same forms)")
    monitor.add_argument("--actuals", metavar="EXPORT", help="the readings that came next: a raw export (CSV or folder) or clean Parquet")
    monitor.add_argument("--log-dir", help=f"monitoring log folder (default: {serving.DEFAULT_LOG_DIR}/ under the project root)")
    monitor.add_argument("--out", help="report folder (default: <log dir>/reports/<time>-<package md5>)")
    monitor.set_defaults(handler=_monitor)

    replay = commands.add_parser(
        "replay",
        help="send an export to a scoring server reading by reading, in time order, as the field would",
        description="Turn an export (raw CSV, a folder of them, or clean Parquet) into the requests a station would send: one "
        "per reading with enough history, in time order, with its key columns (station_id, parameter_id, reading_time).",
    )
    from bts.monitoring.replay import add_arguments as add_replay_arguments

    add_replay_arguments(replay)
    replay.set_defaults(handler=_replay)

    batch = commands.add_parser(
        "batch-predict",
        help="score raw exports in bulk with a verified model, with pandas or on Apache Spark",
        description="Read raw exports (a CSV, a folder of them, or Parquet), validate them with the raw schema, clean them "
        "with the pipeline's rules and forecast every horizon of the model, with its interval, after every reading with full "
        "history, with pandas in this process or on Spark (grouped by series). Writes a Parquet folder whose rows carry the "
        "model's lineage, and beside it "
        "the quarantined rows with their reasons and a manifest (input md5s, model lineage, row counts, timings). Nothing "
        "is written unless the whole batch succeeds.",
    )
    from bts.batch.command import add_arguments as add_batch_arguments

    add_batch_arguments(batch)
    batch.set_defaults(handler=_batch_predict)

    retrain = commands.add_parser(
        "retrain",
        help="retrain a served version with new readings; promote the candidate only if it beats it on the same rows",
        description="Track the new export with DVC, run the pipeline with it as a DVC experiment (in a temporary copy, kept "
        "as an experiment ref), register the candidate with the version it was retrained from, the monitoring report and "
        "the added data's md5, score both on the candidate's test split and move the alias only if the candidate wins. "
        "Prints one line with the decision and both scores; a rerun after an interruption completes it.",
    )
    from bts.lifecycle.retrain import add_arguments as add_retrain_arguments

    add_retrain_arguments(retrain)
    retrain.set_defaults(handler=_retrain)

    compare = commands.add_parser("compare", help="compare the runs on the workspace's data: Pareto front and weighted ranking")
    from bts.lifecycle.compare import add_compare_arguments

    add_compare_arguments(compare)
    compare.set_defaults(handler=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bts` console script."""
    args = build_parser().parse_args(argv)
    # A command says what it did in lines of its own: not MLflow's INFO lines ("Creating initial MLflow database
    # tables..."), set up as MLflow is imported; a user's own MLFLOW_LOGGING_LEVEL wins.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        return args.handler(args)
    except BtsError as exc:
        print(f"bts: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `bts ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("bts: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # MLflow and git failures are expected at this edge: one line, no traceback
        if type(exc).__module__.startswith(("mlflow", "sqlalchemy", "yaml")) or isinstance(exc, OSError):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"bts: error: {first}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
