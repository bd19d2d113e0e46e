"""The `bts` command: runs, comparison, lineage and serving on top of DVC and MLflow."""

from __future__ import annotations

import argparse
import sys

from bts.errors import BtsError


def _runs_check(args: argparse.Namespace) -> int:
    from bts.reconcile import format_reconciliation, reconcile

    report = reconcile(experiment=args.experiment)
    print(format_reconciliation(report))
    return 1 if report["experiments_without_run"] or report["runs_without_experiment"] else 0


def _compare(args: argparse.Namespace) -> int:
    from bts.compare import run_compare

    return run_compare(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bts", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    runs = commands.add_parser("runs", help="MLflow runs of the pipeline")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    check = runs_commands.add_parser("check", help="reconcile DVC experiments with MLflow runs")
    check.add_argument("--experiment", default=None, help="MLflow experiment name (default: train.experiment in params.yaml)")
    check.set_defaults(handler=_runs_check)

    compare = commands.add_parser("compare", help="compare runs on several metrics: Pareto front and weighted ranking")
    from bts.compare import add_compare_arguments

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
