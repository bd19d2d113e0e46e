"""The `bts` command: runs, comparison, lineage and serving on top of DVC and MLflow."""

from __future__ import annotations

import argparse
import sys

from bts.errors import BtsError


def _runs_check(args: argparse.Namespace) -> int:
    from bts.tracking.reconcile import format_reconciliation, reconcile

    report = reconcile(experiment=args.experiment)
    print(format_reconciliation(report))
    return 1 if report["experiments_without_run"] or report["runs_without_experiment"] else 0


def _compare(args: argparse.Namespace) -> int:
    from bts.tracking.compare import run_compare

    return run_compare(args)


def _client() -> tuple:
    """The repository root and an MlflowClient on its store (MLflow is imported lazily: `bts --help` stays fast)."""
    from mlflow.tracking import MlflowClient

    from bts.tracking.runs import use_store

    return use_store(), MlflowClient()


def _serve_params() -> dict:
    from bts.params import load_params

    return load_params("serve")


def _lineage(args: argparse.Namespace) -> int:
    import json

    from bts.tracking.lineage import format_trace, trace

    root, client = _client()
    chain = trace(client, args.ref, root)
    print(json.dumps(chain, indent=2) if args.json else format_trace(chain))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from bts.tracking.reproduce import format_verdict, reproduce

    root, client = _client()
    verdict = reproduce(client, args.ref, root, keep=args.keep)
    print(format_verdict(verdict))
    return 0 if verdict["ok"] else 1


def _promote(args: argparse.Namespace) -> int:
    from bts.tracking.registry import Gate, promote

    params = _serve_params()
    _, client = _client()
    gate = Gate(params["gate_metric"], params["gate_direction"])
    print(promote(client, args.name or params["registered_model"], args.version, args.to, gate, args.force, args.reason or ""))
    return 0


def _history(args: argparse.Namespace) -> int:
    from bts.tracking.registry import history

    name = args.name or _serve_params()["registered_model"]
    _, client = _client()
    events = history(client, name)
    print(f"alias transitions of {name}:")
    for event in events:
        forced = " FORCED" if event["forced"] else ""
        previous = event["previous"] or "-"
        transition = f"@{event['alias']:<10} version {event['version']:<4} (was {previous:<4})"
        print(f"  {event['at']}  {transition} by {event['by']}{forced}: {event['reason']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bts", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    runs = commands.add_parser("runs", help="MLflow runs of the pipeline")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    check = runs_commands.add_parser("check", help="reconcile DVC experiments with MLflow runs")
    check.add_argument("--experiment", default=None, help="MLflow experiment name (default: train.experiment in params.yaml)")
    check.set_defaults(handler=_runs_check)

    lineage = commands.add_parser("lineage", help="where a model came from: run, data versions, commits")
    lineage.add_argument("ref", help="models:/name@alias, models:/name/version, a run id, or a packaged model folder")
    lineage.add_argument("--json", action="store_true", help="print the chain as JSON")
    lineage.set_defaults(handler=_lineage)

    reproduce = commands.add_parser("reproduce", help="rebuild a model from its commit in a temporary worktree and compare")
    reproduce.add_argument("ref", help="models:/name@alias, models:/name/version, a run id, or a packaged model folder")
    reproduce.add_argument("--keep", action="store_true", help="keep the temporary folder (worktree removed) for inspection")
    reproduce.set_defaults(handler=_reproduce)

    promote = commands.add_parser("promote", help="move an alias (e.g. champion) to a version that passes the gate")
    promote.add_argument("version")
    promote.add_argument("--to", default="champion", help="alias to move (default: champion)")
    promote.add_argument("--name", help="registered model (default: serve.registered_model in params.yaml)")
    promote.add_argument("--force", action="store_true", help="promote even if the gate metric is worse (needs --reason)")
    promote.add_argument("--reason", help="why; recorded on the version")
    promote.set_defaults(handler=_promote)

    history = commands.add_parser("history", help="every alias transition of the registered model")
    history.add_argument("--name", help="registered model (default: serve.registered_model in params.yaml)")
    history.set_defaults(handler=_history)

    compare = commands.add_parser("compare", help="compare runs on several metrics: Pareto front and weighted ranking")
    from bts.tracking.compare import add_compare_arguments

    add_compare_arguments(compare)
    compare.set_defaults(handler=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bts` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except BtsError as exc:
        print(f"bts: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
