"""`bts compare`: rank the runs of one MLflow experiment on several metrics at once, by Pareto front and weighted score.

The ranking and the front are pure functions of a small frame (one row per
run, one column per metric); reading the runs from the store is kept apart.
By default runs are ranked on quality alone (test.rmse, test.skill): cost
metrics such as training.seconds depend on the machine's load, so they are
compared only when --metrics names them. The params that differ between the
compared runs are shown beside them, so the table says which setting won.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bts.errors import BtsError, ConfigError
from bts.tracking.tags import EXP_NAME

DEFAULT_METRICS = "test.rmse:min,test.skill:max"  # quality only: wall-clock seconds would rank the machine's load
COST_METRICS = "training.seconds:min,training.cpu_seconds:min,training.peak_memory_mb:min,model.size_bytes:min"
DIRECTIONS = ("min", "max")
BETTER = {"min": "lower is better", "max": "higher is better"}
PARAM_PREFIX = "params."  # the columns of the runs' params, as mlflow.search_runs names them
HAS_PARAMS = "has_params"  # whether a run logged any param (a run that only evaluated a model has none)
PAGE_SIZE = 2000
SCORE_DECIMALS = 12  # sums of the same normalized values in another order may differ in the last bit; ties must stay ties

FILTER_HELP = """\
MLflow search filter, passed through: clauses joined by AND (no OR), e.g.
  "params.`train.model` = 'elasticnet' AND metrics.`test.skill` > 0"
  "tags.`dvc.exp_name` LIKE 'sweep-%%'"   "attributes.status = 'FINISHED'"
Names with dots (all of this pipeline's params, metrics and tags) need backticks;
string values take single quotes; metrics compare as numbers (= != < <= > >=),
params and tags as strings (= != LIKE ILIKE)."""


@dataclass(frozen=True)
class Comparison:
    """What to compare: metric directions and weights (in the order given), and the runs' search filter."""

    directions: dict[str, str]
    weights: dict[str, float]
    filter_string: str


def pareto_front(frame: pd.DataFrame, directions: Mapping[str, str]) -> pd.Series:
    """True for each row no other row dominates: at least as good on every metric of `directions` and better on one.

    Directions are "min" or "max"; the frame must hold no missing values in those columns. Identical rows do not
    dominate each other, so they are on the front together or off it together.
    """
    values = _oriented(frame, directions)  # smaller is better in every column
    # A row can only be dominated by a row before it in lexicographic order, and if it is dominated at all, it is
    # dominated by a front row (dominance is transitive); so one pass that checks against the front so far suffices.
    order = np.lexsort(values.T[::-1]) if len(values) else np.array([], dtype=int)
    on_front = np.zeros(len(values), dtype=bool)
    front, size = np.empty_like(values), 0
    for position in order:
        row, members = values[position], front[:size]
        if not np.any(np.all(members <= row, axis=1) & np.any(members < row, axis=1)):
            on_front[position] = True
            front[size], size = row, size + 1
    return pd.Series(on_front, index=frame.index, name="pareto")


def weighted_scores(frame: pd.DataFrame, directions: Mapping[str, str], weights: Mapping[str, float]) -> pd.Series:
    """Sum of each metric min-max normalized across the rows (1 = best row, 0 = worst), times its share of the weights.

    Scores lie in [0, 1]. A metric equal on every row cannot tell rows apart: it gives each of them 1.
    """
    total = sum(weights[name] for name in directions)
    score = pd.Series(0.0, index=frame.index, name="score")
    for name, direction in directions.items():
        column = frame[name].astype(float)
        low, high = column.min(), column.max()
        if high > low:
            normalized = (high - column) / (high - low) if direction == "min" else (column - low) / (high - low)
        else:
            normalized = pd.Series(1.0, index=frame.index)
        score += weights[name] / total * normalized
    return score.round(SCORE_DECIMALS)


def rank_runs(frame: pd.DataFrame, directions: Mapping[str, str], weights: Mapping[str, float]) -> pd.DataFrame:
    """The frame with score, pareto and rank columns, best first; equal scores are ordered by run_id."""
    ranked = frame.assign(score=weighted_scores(frame, directions, weights), pareto=pareto_front(frame, directions))
    ranked = ranked.sort_values(["score", "run_id"], ascending=[False, True], kind="stable")
    return ranked.assign(rank=range(1, len(ranked) + 1)).reset_index(drop=True)


def varying_params(frame: pd.DataFrame) -> list[str]:
    """The param columns (params.<key>) whose values differ between the rows that logged params (column has_params).

    A param some of those rows lack differs too (another model's param); a run that logged no param at all (one that
    only evaluated a model) says nothing about any of them.
    """
    columns = [column for column in frame.columns if column.startswith(PARAM_PREFIX)]
    with_params = frame[frame[HAS_PARAMS]]
    return sorted(column for column in columns if with_params[column].nunique(dropna=False) > 1)


def _oriented(frame: pd.DataFrame, directions: Mapping[str, str]) -> np.ndarray:
    columns = [frame[name].to_numpy(dtype=float) * (1.0 if direction == "min" else -1.0) for name, direction in directions.items()]
    return np.column_stack(columns) if columns else np.empty((len(frame), 0))


def parse_metrics(text: str) -> dict[str, str]:
    """'test.rmse:min,test.skill:max' -> {'test.rmse': 'min', 'test.skill': 'max'} (in that order)."""
    directions: dict[str, str] = {}
    for item in text.split(","):
        name, separator, direction = item.strip().rpartition(":")
        name, direction = name.strip(), direction.strip().lower()
        if not separator or not name or direction not in DIRECTIONS:
            raise ConfigError(f"--metrics: '{item.strip()}' is not NAME:min or NAME:max (e.g. {DEFAULT_METRICS})")
        if name in directions:
            raise ConfigError(f"--metrics: '{name}' is given twice")
        directions[name] = direction
    return directions


def parse_weights(text: str | None, names: Sequence[str]) -> dict[str, float]:
    """'2,1,1' -> {name: weight} in the order of `names`; equal weights when text is None."""
    if text is None:
        return dict.fromkeys(names, 1.0)
    items = [item.strip() for item in text.split(",")]
    if len(items) != len(names):
        raise ConfigError(f"--weights: {len(items)} weights for {len(names)} metrics ({', '.join(names)}); give one per metric, in order")
    try:
        weights = [float(item) for item in items]
    except ValueError:
        raise ConfigError(f"--weights: '{text}' is not a comma list of numbers") from None
    if any(not math.isfinite(weight) or weight < 0 for weight in weights) or sum(weights) == 0:
        raise ConfigError(f"--weights: '{text}': weights must be finite, >= 0, and not all 0")
    return dict(zip(names, weights, strict=True))


def parse_pairs(items: Sequence[str], option: str) -> dict[str, str]:
    """['train.model=ridge'] -> {'train.model': 'ridge'}."""
    pairs = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"{option}: '{item}' is not KEY=VALUE")
        pairs[key.strip()] = value
    return pairs


def search_filter(filter_string: str | None, tags: Mapping[str, str], params: Mapping[str, str]) -> str:
    """One MLflow filter: the user's, AND tag and param equalities (keys in backticks, values quoted)."""
    clauses = [filter_string.strip()] if filter_string and filter_string.strip() else []
    for kind, pairs in [("tags", tags), ("params", params)]:
        for key, value in pairs.items():
            clauses.append(f"{kind}.{_quoted_key(key, kind)} = {_quoted_value(value, kind)}")
    return " AND ".join(clauses)


def _quoted_key(key: str, kind: str) -> str:
    if "`" in key:
        raise ConfigError(f"--{kind[:-1]}: key '{key}' contains a backtick, which MLflow filters cannot quote")
    return f"`{key}`"


def _quoted_value(value: str, kind: str) -> str:
    # MLflow's filter parser takes the text between the quotes as is (no escapes): pick a quote the value lacks.
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"--{kind[:-1]}: value {value!r} holds both kinds of quote, which MLflow filters cannot express")


def comparison_from_args(args: argparse.Namespace) -> Comparison:
    """The metrics, weights and filter the arguments ask for, or a ConfigError saying what is wrong with them."""
    directions = parse_metrics(args.metrics)
    weights = parse_weights(args.weights, list(directions))
    if args.top < 1:
        raise ConfigError(f"--top: {args.top}: give at least 1")
    if args.plot and len(directions) < 2:
        raise ConfigError("--plot draws the first two metrics: give at least two in --metrics")
    return Comparison(directions, weights, search_filter(args.filter, parse_pairs(args.tag, "--tag"), parse_pairs(args.param, "--param")))


@contextmanager
def _collector_paused() -> Iterator[None]:
    # Loading a run makes ~80 SQLAlchemy objects; the cyclic collector rescans them over and over, which made
    # fetching 10,000 runs three times slower. Nothing built here is cyclic garbage, so pause it meanwhile.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _store_uri() -> str:
    import mlflow

    from bts.tracking.store import use_store, use_uri

    if os.environ.get("MLFLOW_TRACKING_URI"):  # a store named outright needs no project around it
        use_uri(os.environ["MLFLOW_TRACKING_URI"])
    else:
        use_store()
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///").partition("?")[0]).exists():
        raise BtsError(f"no MLflow store at {uri} (set MLFLOW_TRACKING_URI, or run from the repository)")
    return uri


def fetch_runs_from_database(uri: str, experiment: str, metrics: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """The same rows as `fetch_runs`, read with MLflow's own ORM models: only the columns compared, not whole runs.

    MLflow's public search loads every metric, param and tag of every run (about 0.7 ms a run); an
    unfiltered comparison of a database store reads just the latest values of the compared metrics, and the
    values of only the params that differ between the runs (found first by one grouped query in the database).
    """
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag
    from sqlalchemy import create_engine, func, select

    from bts.tracking.database import active_runs

    engine = create_engine(uri)
    with engine.connect() as connection:
        experiment_id, active = active_runs(connection, experiment, uri)
        found = connection.execute(select(SqlRun.run_uuid, SqlRun.name).where(active)).all()
        runs = pd.DataFrame([tuple(row) for row in found], columns=["run_id", "run_name"])  # plain tuples: pandas probes Row objects slowly
        values = connection.execute(
            select(SqlLatestMetric.run_uuid, SqlLatestMetric.key, SqlLatestMetric.value)
            .join(SqlRun, SqlRun.run_uuid == SqlLatestMetric.run_uuid)
            .where(active & SqlLatestMetric.key.in_(list(metrics)))
        ).all()
        names = connection.execute(
            select(SqlTag.run_uuid, SqlTag.value).join(SqlRun, SqlRun.run_uuid == SqlTag.run_uuid).where(active & (SqlTag.key == EXP_NAME))
        ).all()
        # A param differs between the runs if its smallest and largest values differ or some run lacks it (min and
        # max: no sort of every value; runs as a subquery: one pass over the params, 3x faster than a join on
        # SQLite). Only the params that differ are read.
        spread = connection.execute(
            select(SqlParam.key, func.min(SqlParam.value), func.max(SqlParam.value), func.count())
            .where(SqlParam.run_uuid.in_(select(SqlRun.run_uuid).where(active)))
            .group_by(SqlParam.key)
        ).all()
        keys = sorted(key for key, lowest, highest, runs_with in spread if lowest != highest or runs_with < len(runs))
        params = connection.execute(
            select(SqlParam.run_uuid, SqlParam.key, SqlParam.value)
            .join(SqlRun, SqlRun.run_uuid == SqlParam.run_uuid)
            .where(active & SqlParam.key.in_(keys))
        ).all()
        with_params = connection.execute(
            select(SqlParam.run_uuid).distinct().where(SqlParam.run_uuid.in_(select(SqlRun.run_uuid).where(active)))
        ).scalars()
        logged = set(with_params)
    engine.dispose()
    frame = runs.assign(dvc_exp_name=runs["run_id"].map(dict(names)), **{HAS_PARAMS: runs["run_id"].isin(logged)})
    frame = frame.assign(**_columns(values, metrics, frame["run_id"]))
    frame = frame.assign(**{PARAM_PREFIX + key: column for key, column in _columns(params, keys, frame["run_id"]).items()})
    return _with_types(frame, metrics), str(experiment_id)


def _columns(rows: Sequence[tuple], keys: Sequence[str], run_ids: pd.Series) -> dict[str, pd.Series]:
    """(run_id, key, value) rows as one column per key, aligned on run_ids (NaN where a run lacks the key).

    A dict per key and Series.map: several times faster than DataFrame.pivot on the 100,000 rows of a large experiment.
    """
    by_key: dict[str, dict] = {key: {} for key in keys}
    for run_id, key, value in rows:
        by_key[key][run_id] = value
    return {key: run_ids.map(by_key[key]) for key in keys}


def _with_types(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The columns in their order (names, metrics, has_params, params by key); dvc_exp_name and params as objects, None if absent."""
    params = sorted(column for column in frame.columns if column.startswith(PARAM_PREFIX))
    frame = frame[["run_id", "run_name", "dvc_exp_name", *metrics, HAS_PARAMS, *params]].astype(
        {**dict.fromkeys(metrics, float), HAS_PARAMS: bool}
    )
    return frame.assign(**{column: frame[column].astype(object).where(frame[column].notna(), None) for column in ["dvc_exp_name", *params]})


def fetch_runs(experiment: str, filter_string: str, metrics: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """One row per matching active run, and the experiment id.

    Columns: run_id, run_name, dvc_exp_name, each metric (NaN where a run lacks it), has_params (the run logged any
    param), then params.<key> for each param whose value differs between the matched runs or that some lack (None
    where a run lacks it), by key.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from bts.tracking.store import bulk_read_database

    uri = _store_uri()
    database = bulk_read_database(uri)
    if not filter_string and database:
        return fetch_runs_from_database(database, experiment, metrics)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise BtsError(f"unknown experiment '{experiment}' in {uri}")
    rows: list[tuple] = []
    params: list[dict[str, str]] = []
    token = None
    # MLflow's public search has no column selection: each run comes whole (every metric, param and tag), about
    # 0.7 ms a run on SQLite, which makes this loop the slow part of the command on large experiments.
    with _collector_paused():
        while True:
            try:
                page = client.search_runs([found.experiment_id], filter_string=filter_string, max_results=PAGE_SIZE, page_token=token)
            except MlflowException as exc:
                if exc.error_code == "INVALID_PARAMETER_VALUE":
                    raise ConfigError(f'invalid filter "{filter_string}": {exc.message}') from None
                raise BtsError(f"cannot search runs in {uri}: {exc.message}") from None
            for run in page:
                values = run.data.metrics
                rows.append((run.info.run_id, run.info.run_name, run.data.tags.get(EXP_NAME), *(values.get(m, math.nan) for m in metrics)))
                params.append(run.data.params)
            token = page.token
            if not token:
                break
    frame = pd.DataFrame.from_records(rows, columns=["run_id", "run_name", "dvc_exp_name", *metrics])
    keys = sorted({key for values in params for key in values})
    keys = [key for key in keys if len({values.get(key) for values in params}) > 1]  # differs, or some run lacks it
    frame = frame.assign(**{HAS_PARAMS: [bool(values) for values in params]})
    frame = frame.assign(**{PARAM_PREFIX + key: [values.get(key) for values in params] for key in keys})
    return _with_types(frame, metrics), found.experiment_id


def compare(experiment: str, comparison: Comparison) -> dict[str, Any]:
    """The runs matched, those left out for want of a metric, and the ranked runs with their front membership."""
    metrics = list(comparison.directions)
    runs, experiment_id = fetch_runs(experiment, comparison.filter_string, metrics)
    where = f' with filter "{comparison.filter_string}"' if comparison.filter_string else ""
    if runs.empty:
        raise BtsError(f"no runs matched in experiment '{experiment}'{where}")
    complete = np.isfinite(runs[metrics].to_numpy(dtype=float)).all(axis=1)
    if not complete.any():
        raise BtsError(
            f"none of the {len(runs)} runs matched in experiment '{experiment}'{where} has all of {', '.join(metrics)}"
            " (NaN and infinite values count as missing)"
        )
    compared = runs[complete]
    varying = varying_params(compared)
    compared = compared.drop(columns=[c for c in compared.columns if c.startswith(PARAM_PREFIX) and c not in varying])
    return {
        "experiment": experiment,
        "experiment_id": experiment_id,
        "filter": comparison.filter_string,
        "runs_matched": len(runs),
        "runs_left_out": int((~complete).sum()),
        "params": [column.removeprefix(PARAM_PREFIX) for column in varying],
        "runs_without_params": int((~compared[HAS_PARAMS]).sum()),
        "ranked": rank_runs(compared, comparison.directions, comparison.weights),
    }


def _text(value: object) -> str:
    """A name cell: missing (None or NaN, depending on how the frame was built) shows as empty."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def ranked_on(comparison: Comparison) -> str:
    """The metrics of the ranking in words: 'test.rmse (lower is better) and test.skill (higher is better), equal weights'."""
    equal = len(set(comparison.weights.values())) == 1
    items = [
        f"{name} ({BETTER[direction]}{'' if equal else f', weight {comparison.weights[name]:g}'})"
        for name, direction in comparison.directions.items()
    ]
    text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return text + (", equal weights" if equal and len(items) > 1 else "")


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def format_table(result: dict[str, Any], comparison: Comparison, top: int) -> str:
    """The top rows of the ranking as a plain-text table, with a summary above it."""
    ranked: pd.DataFrame = result["ranked"]
    metrics = list(comparison.directions)
    params = result["params"]
    front = int(ranked["pareto"].sum())
    shown = ranked.head(top)
    lines = [f"experiment '{result['experiment']}': {_plural(len(ranked), 'run', 'runs')} ranked on {ranked_on(comparison)}"]
    if result["filter"]:
        lines.append(f"filter: {result['filter']}")
    left_out = result["runs_left_out"]
    if left_out:
        lines.append(f"{_plural(left_out, 'run', 'runs')} without all metrics {'was' if left_out == 1 else 'were'} left out")
    differ = f"params that differ between them: {', '.join(params)}" if params else "no param differs between them"
    without = result.get("runs_without_params", 0)
    lines.append(differ + (f" ({_plural(without, 'run', 'runs')} logged no params)" if without else ""))
    unset = [key for key in params if shown[PARAM_PREFIX + key].isna().all()]  # e.g. another model's params
    if unset:
        lines.append(f"not set in any run shown, so not in the table: {', '.join(unset)}")
    params = [key for key in params if key not in unset]
    lines.append(f"Pareto front: {_plural(front, 'run', 'runs')}, marked *; {int(shown['pareto'].sum())} of them in the top {len(shown)}")
    # The ranking first, the params last: a long param name widens only the right end of a line.
    header = ["rank", "run", "run id", "dvc exp", *metrics, "score", "front", *(PARAM_PREFIX + key for key in params)]
    body = [
        [
            str(row["rank"]),
            _text(row["run_name"]),
            row["run_id"][:8],
            _text(row["dvc_exp_name"]),
            *(f"{row[name]:.6g}" for name in metrics),
            f"{row['score']:.4f}",
            "*" if row["pareto"] else "",
            *(_text(row[PARAM_PREFIX + key]) or "-" for key in params),
        ]
        for row in shown.to_dict("records")
    ]
    numeric = {0, *range(4, 4 + len(metrics) + 1)}
    widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([*lines, "", line(header), line(["-" * w for w in widths]), *(line(cells) for cells in body)])


def result_document(result: dict[str, Any], comparison: Comparison) -> dict[str, Any]:
    """The whole result as plain JSON-able data: every compared run, ranked."""
    ranked: pd.DataFrame = result["ranked"]
    metrics = list(comparison.directions)
    runs = [
        {
            "rank": int(row["rank"]),
            "run_id": row["run_id"],
            "run_name": _text(row["run_name"]) or None,
            "dvc_exp_name": _text(row["dvc_exp_name"]) or None,
            "params": {key: _text(row[PARAM_PREFIX + key]) or None for key in result["params"]},
            "metrics": {name: float(row[name]) for name in metrics},
            "score": float(row["score"]),
            "pareto": bool(row["pareto"]),
        }
        for row in ranked.to_dict("records")
    ]
    return {
        "experiment": result["experiment"],
        "experiment_id": result["experiment_id"],
        "filter": result["filter"],
        "metrics": [{"name": n, "direction": d, "weight": comparison.weights[n]} for n, d in comparison.directions.items()],
        "params": result["params"],
        "runs_matched": result["runs_matched"],
        "runs_compared": len(runs),
        "runs_left_out": result["runs_left_out"],
        "runs_without_params": result.get("runs_without_params", 0),
        "pareto_front": [run["run_id"] for run in runs if run["pareto"]],
        "ranking": runs,
    }


def axis_label(metric: str, direction: str) -> str:
    """'test.rmse (lower is better)': a direction, never a unit-like '(min)'."""
    return f"{metric} ({BETTER[direction]})"


def front_figure(ranked: pd.DataFrame, comparison: Comparison) -> Any:
    """Scatter of the first two metrics: every run, the Pareto front highlighted, the top-ranked run named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (x, x_direction), (y, y_direction) = list(comparison.directions.items())[:2]
    front, best = ranked[ranked["pareto"]], ranked.iloc[0]
    figure, axes = plt.subplots(figsize=(8, 6))
    axes.scatter(ranked[x], ranked[y], s=8, color="0.7", label=f"runs ({len(ranked)})")
    axes.scatter(
        front[x], front[y], s=24, color="tab:red", label=f"Pareto front ({len(front)}, on all {len(comparison.directions)} metrics)"
    )
    axes.scatter([best[x]], [best[y]], s=120, facecolors="none", edgecolors="black", linewidths=1.5)
    axes.annotate(
        f"#1 {best['run_name'] or best['run_id'][:8]} (score {best['score']:.3f})",
        (best[x], best[y]),
        xytext=(12, 12),
        textcoords="offset points",
        arrowprops={"arrowstyle": "-", "color": "black"},
    )
    axes.set_xlabel(axis_label(x, x_direction))
    axes.set_ylabel(axis_label(y, y_direction))
    title = f"bts compare: {_plural(len(ranked), 'run', 'runs')} ranked on {', '.join(comparison.directions)}"
    axes.set_title(textwrap.fill(title, width=80), fontsize="medium")
    axes.legend(loc="best")
    figure.tight_layout()
    return figure


def plot_front(ranked: pd.DataFrame, comparison: Comparison, path: str | Path) -> None:
    """front_figure as a PNG."""
    import matplotlib.pyplot as plt

    figure = front_figure(ranked, comparison)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bts compare`."""
    parser.formatter_class = argparse.RawTextHelpFormatter
    parser.description = (
        "Compare the runs of one MLflow experiment on several metrics: the Pareto front (runs no other run beats on\n"
        "every metric) and a ranking by weighted score (each metric min-max normalized over the compared runs, 1 = best).\n"
        "Active (not deleted) runs only; runs missing any of the metrics (or with NaN) are left out and counted.\n"
        "The params whose values differ between the compared runs are shown as params.<key> columns."
    )
    parser.add_argument("--experiment", help="MLflow experiment name (default: train.experiment in params.yaml)")
    parser.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help=f"comma list of NAME:min or NAME:max (default: {DEFAULT_METRICS}, quality only);\n"
        f"add cost metrics to trade them off, e.g. {DEFAULT_METRICS},{COST_METRICS.split(',')[0]},{COST_METRICS.split(',')[-1]}\n"
        f"(training.seconds is wall-clock time: it varies with the machine's load; training.cpu_seconds less so)",
    )
    parser.add_argument("--weights", help="comma list of weights >= 0, one per metric in the same order (default: equal)")
    parser.add_argument("--filter", help=FILTER_HELP)
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this tag value (repeatable)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="only runs with this param value (repeatable)")
    parser.add_argument("--top", type=int, default=20, metavar="N", help="rows of the ranking to print (default: 20)")
    parser.add_argument("--json", action="store_true", help="print the full result (every compared run) as JSON instead of the table")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG scatter of the first two metrics with the Pareto front highlighted")


def run_compare(args: argparse.Namespace) -> int:
    """`bts compare`: print the ranking (or JSON), write the plot if asked."""
    comparison = comparison_from_args(args)
    experiment = args.experiment or _default_experiment()
    result = compare(experiment, comparison)
    if args.plot:
        plot_front(result["ranked"], comparison, args.plot)
    if args.json:
        write_output(json.dumps(result_document(result, comparison), indent=2) + "\n")
    else:
        write_output(format_table(result, comparison, args.top) + (f"\n\nplot: {args.plot}" if args.plot else "") + "\n")
    return 0


def write_output(text: str) -> None:
    """Write to stdout and flush; a reader that stops early (`bts compare | head`) ends the output quietly.

    Flushing here makes a closed pipe show up here, not when Python exits (which prints "Exception ignored ...
    BrokenPipeError"); stdout is then pointed at /dev/null so that nothing is written, or raised, after this.
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _default_experiment() -> str:
    from bts.params import PARAMS_FILE, load_params
    from bts.tracking.store import find_root

    return load_params(find_root() / PARAMS_FILE).train.experiment
