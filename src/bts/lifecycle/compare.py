"""`bts compare`: rank the runs of one MLflow experiment on several metrics at once, by Pareto front and weighted score.

The ranking and the front are pure functions of the runs as plain rows (one
dict per run: names, data version, metrics, params), without pandas or numpy,
whose imports would cost a one-off command more than its work; reading the
runs from the store is kept apart, and so is the text table (compare_table).
Runs are compared only with runs trained on the same data (the features md5
each run records): by default those on the workspace's current data version;
with --all-data each data version is ranked on its own.
By default runs are ranked on quality alone: the test skill over persistence at
every horizon the compared runs forecast (test.h1.skill, test.h5.skill, ...).
Skill is 1 - rmse / persistence rmse on the same rows, so on one data version it
ranks runs as their rmse does, and it puts every horizon on one scale; the
Pareto front keeps both a run best at one horizon and one best at another.
Cost metrics such as training.seconds depend on the machine's load, so they
are compared only when --metrics names them, as is any other metric a run
logged (test.h15.coverage, test.h5.winkler, test_by_parameter.<id>.h1.skill).
The params that differ between the compared runs are shown beside them, so
the table says which setting won.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import operator
import os
import shutil
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bts.errors import BtsError, ConfigError
from bts.hashing import lock_md5s
from bts.horizons import label, metric_horizons, metric_name
from bts.project import TRAINING_STAGE, find_root, pipeline_argument
from bts.tracking.tags import EXP_NAME, GIT_DIRTY, data_md5_tag

# The default ranking: this score on this split at every horizon the compared runs forecast (quality only: wall-clock
# seconds would rank the machine's load).
DEFAULT_SPLIT, DEFAULT_SCORE, DEFAULT_DIRECTION = "test", "skill", "max"
DEFAULT_PATTERN = metric_name(DEFAULT_SPLIT, "<H>", DEFAULT_SCORE)  # type: ignore[arg-type]  # test.h<H>.skill, for the help
EXAMPLE_METRICS = f"{metric_name('test', 1, 'rmse')}:min,{metric_name('test', 1, 'winkler')}:min"  # what --metrics takes
# Runs of one data version (features md5) forecast the same horizons: the newest few of each, finished ones first, tell
# which on a database store, where reading every metric name of every run would cost more than the comparison.
PROBED_RUNS = 5
FINISHED = "FINISHED"  # MLflow's status of a run that ended well
COST_METRICS = "training.seconds:min,training.cpu_seconds:min,training.peak_memory_mb:min,model.size_bytes:min"
DIRECTIONS = ("min", "max")
BETTER = {"min": "lower is better", "max": "higher is better"}
PARAM_PREFIX = "params."  # the keys of the runs' params in a row, as mlflow.search_runs names its columns
HAS_PARAMS = "has_params"  # whether a run logged any param (a run that only evaluated a model has none)
PAGE_SIZE = 2000
# The tags each row carries, by row key: a run's DVC experiment, its training data version and whether its code differed
# from its commit.
ROW_TAGS = {"dvc_exp_name": EXP_NAME, "features_md5": data_md5_tag("features"), "dirty": GIT_DIRTY}
SHORT_MD5 = 12  # characters of an md5 shown, as `bts summary` shows them
SHORT_RUN_ID = 8  # characters of a run id shown: enough for `bts lineage` to find the run
PIPED_WIDTH = 120  # the table's width when the output is not a terminal (a file, a pipe, a page of the docs)
SCORE_DECIMALS = 12  # sums of the same normalized values in another order may differ in the last bit; ties must stay ties

FILTER_HELP = """\
MLflow search filter, passed through: clauses joined by AND (no OR), e.g.
  "params.`train.model` = 'elasticnet' AND metrics.`test.h1.skill` > 0"
  "tags.`dvc.exp_name` LIKE 'sweep-%%'"   "attributes.status = 'FINISHED'"
Names with dots (all of this pipeline's params, metrics and tags) need backticks;
string values take single quotes; metrics compare as numbers (= != < <= > >=),
params and tags as strings (= != LIKE ILIKE)."""


@dataclass(frozen=True)
class Comparison:
    """What to compare: metric directions and weights (in the order given), and the runs' search filter.

    The default ranking (default=True) leaves directions and weights empty until the runs say which horizons they
    forecast (default_comparison); weights_text holds the --weights given meanwhile.
    """

    directions: dict[str, str]
    weights: dict[str, float]
    filter_string: str
    all_data: bool = False  # every data version, each ranked on its own; else only the workspace's
    default: bool = False  # ranked on DEFAULT_SCORE at every horizon of the compared runs
    weights_text: str | None = None

    @property
    def resolved(self) -> bool:
        return bool(self.directions)


def default_metrics(horizons: Sequence[int]) -> list[str]:
    """test.h1.skill, test.h5.skill, ...: the default ranking's metrics for these horizons."""
    return [metric_name(DEFAULT_SPLIT, horizon, DEFAULT_SCORE) for horizon in horizons]


def default_comparison(comparison: Comparison, horizons: Sequence[int]) -> Comparison:
    """The default ranking on these horizons, with the --weights given (one per horizon) or equal weights."""
    names = default_metrics(horizons)
    directions = dict.fromkeys(names, DEFAULT_DIRECTION)
    return Comparison(directions, parse_weights(comparison.weights_text, names), comparison.filter_string, comparison.all_data, True)


Run = dict[str, Any]  # one run: run_id, run_name, the ROW_TAGS keys, each metric, has_params, params.<key>, in that order


def pareto_front(runs: Sequence[Mapping[str, Any]], directions: Mapping[str, str]) -> list[bool]:
    """True for each run no other run dominates: at least as good on every metric of `directions` and better on one.

    Directions are "min" or "max"; the runs must hold no missing values of those metrics. Identical runs do not
    dominate each other, so they are on the front together or off it together.
    """
    values = _oriented(runs, directions)  # smaller is better in every position
    # A row can only be dominated by a row before it in lexicographic order, and if it is dominated at all, it is
    # dominated by a front row (dominance is transitive); so one pass that checks against the front so far suffices.
    on_front = [False] * len(values)
    front: list[tuple[float, ...]] = []
    for position in sorted(range(len(values)), key=values.__getitem__):
        row = values[position]
        if not any(member != row and all(map(operator.le, member, row)) for member in front):
            on_front[position] = True
            front.append(row)
    return on_front


def weighted_scores(runs: Sequence[Mapping[str, Any]], directions: Mapping[str, str], weights: Mapping[str, float]) -> list[float]:
    """Sum of each metric min-max normalized across the runs (1 = best run, 0 = worst), times its share of the weights.

    Scores lie in [0, 1]. A metric equal on every run cannot tell runs apart: it gives each of them 1.
    """
    total = sum(weights[name] for name in directions)
    scores = [0.0] * len(runs)
    for name, direction in directions.items():
        column = [float(run[name]) for run in runs]
        low, high, share = min(column, default=0.0), max(column, default=0.0), weights[name] / total
        if high > low:
            normalized = [(high - value) / (high - low) if direction == "min" else (value - low) / (high - low) for value in column]
        else:
            normalized = [1.0] * len(column)
        scores = [score + share * value for score, value in zip(scores, normalized, strict=True)]
    return [round(score, SCORE_DECIMALS) for score in scores]


def rank_runs(runs: Sequence[Mapping[str, Any]], directions: Mapping[str, str], weights: Mapping[str, float]) -> list[Run]:
    """Each run with its score, pareto and rank, best first; equal scores are ordered by run_id."""
    scores, front = weighted_scores(runs, directions, weights), pareto_front(runs, directions)
    order = sorted(range(len(runs)), key=lambda index: (-scores[index], runs[index]["run_id"]))
    return [{**runs[index], "score": scores[index], "pareto": front[index], "rank": rank} for rank, index in enumerate(order, start=1)]


def varying_params(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The param keys (params.<key>) whose values differ between the runs that logged params (has_params).

    A param some of those runs lack differs too (another model's param); a run that logged no param at all (one that
    only evaluated a model) says nothing about any of them.
    """
    keys = [key for key in runs[0] if key.startswith(PARAM_PREFIX)] if runs else []
    with_params = [run for run in runs if run[HAS_PARAMS]]
    return sorted(key for key in keys if len({run[key] for run in with_params}) > 1)


def _oriented(runs: Sequence[Mapping[str, Any]], directions: Mapping[str, str]) -> list[tuple[float, ...]]:
    signs = [1.0 if direction == "min" else -1.0 for direction in directions.values()]
    values = [operator.itemgetter(name) for name in directions]
    return [tuple(float(value(run)) * sign for value, sign in zip(values, signs, strict=True)) for run in runs]


def parse_metrics(text: str) -> dict[str, str]:
    """'test.h1.rmse:min,test.h5.skill:max' -> {'test.h1.rmse': 'min', 'test.h5.skill': 'max'} (in that order)."""
    directions: dict[str, str] = {}
    for item in text.split(","):
        name, separator, direction = item.strip().rpartition(":")
        name, direction = name.strip(), direction.strip().lower()
        if not separator or not name or direction not in DIRECTIONS:
            raise ConfigError(f"--metrics: '{item.strip()}' is not NAME:min or NAME:max (e.g. {EXAMPLE_METRICS})")
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
    """The metrics, weights and filter the arguments ask for, or a ConfigError saying what is wrong with them.

    Without --metrics, the metrics (and the weights given) wait for the runs: see Comparison.
    """
    if args.top < 1:
        raise ConfigError(f"--top: {args.top}: give at least 1")
    filter_string = search_filter(args.filter, parse_pairs(args.tag, "--tag"), parse_pairs(args.param, "--param"))
    if args.metrics is None:
        return Comparison({}, {}, filter_string, args.all_data, default=True, weights_text=args.weights)
    directions = parse_metrics(args.metrics)
    comparison = Comparison(directions, parse_weights(args.weights, list(directions)), filter_string, args.all_data)
    check_plot(args.plot, comparison)
    return comparison


def check_plot(plot: str | None, comparison: Comparison) -> None:
    """A ConfigError if --plot is asked for with fewer than the two metrics it draws."""
    if plot and len(comparison.directions) < 2:
        why = " (the runs compared forecast one horizon: the default ranks on its skill alone)" if comparison.default else ""
        raise ConfigError(f"--plot draws the first two metrics: give at least two in --metrics{why}")


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


FEATURES_TAG = ROW_TAGS["features_md5"]


class SearchedRuns:
    """Runs read whole, as `fetch_runs` gives them (MLflow's search): every column of every run is at hand."""

    def __init__(self, runs: list[Run], experiment_id: str) -> None:
        self.runs, self.experiment_id = runs, experiment_id
        self.versions = Counter(run["features_md5"] for run in runs)

    def rows(self, version: str | None, every_version: bool) -> list[Run]:
        return [run for run in self.runs if every_version or run["features_md5"] == version]

    def varying(self, compared: Sequence[Run]) -> tuple[list[str], int]:
        return varying_params(compared), sum(not run[HAS_PARAMS] for run in compared)

    def describe(self, runs: Sequence[Run], keys: Sequence[str]) -> None:
        pass


class DatabaseRuns:
    """The runs of an experiment on a database store, read with SQL a few columns at a time: the data version and
    the ranking's metrics of every run, which params differ as one grouped query, and names, tags and param values only
    for the runs shown. MLflow's search would load every metric, param and tag of every run (about 0.7 ms a run)."""

    def __init__(
        self, read: Any, uri: str, experiment: str, metrics: Sequence[str] | None, version: str | None, every_version: bool
    ) -> None:
        from bts.lifecycle import database

        self._database, self._read, self._uri = database, read, uri
        self._experiment = database.experiment_id(read, experiment, uri)
        self.experiment_id = str(self._experiment)
        # The params of the runs on the data version that will most likely be compared, read meanwhile on a connection
        # of their own: the grouped query takes as long as all the rest (1 s over 100,000 runs) and leaves Python free.
        self._spread = self._in_thread(database.run_set(self._experiment, FEATURES_TAG, version, every_version))
        self._runs = database.run_versions(read, self._experiment, FEATURES_TAG)
        self.versions = Counter(md5 for *_, md5 in self._runs)
        if metrics is None:  # the horizons of the newest runs of each data version
            names = database.metric_keys(read, probed_runs(self._runs))
            metrics = default_metrics(metric_horizons(names, DEFAULT_SPLIT, DEFAULT_SCORE))
        self.metrics = list(metrics)
        self._scope: tuple[str | None, bool, list[str]] = (version, every_version, [])

    def _in_thread(self, runs: list) -> tuple[list, Any]:
        """Start param_spread of these runs in a thread: (the runs, a function that waits for the result)."""
        import threading

        found: list = []

        def spread() -> None:
            try:
                with self._database.reading(self._uri) as read:
                    found.append(self._database.param_spread(read, runs))
            except BaseException as exc:  # raised where the result is awaited
                found.append(exc)

        thread = threading.Thread(target=spread, daemon=True)
        thread.start()

        def result() -> dict[str, tuple[int, str, str]]:
            thread.join()
            if isinstance(found[0], BaseException):
                raise found[0]
            return found[0]

        return runs, result

    def rows(self, version: str | None, every_version: bool) -> list[Run]:
        """run_id, features_md5 and the metrics (NaN where a run lacks one) of the runs of this data version, or of all."""
        in_scope = [(run_id, md5) for run_id, _, _, md5 in self._runs if every_version or md5 == version]
        self._scope = (version, every_version, [run_id for run_id, _ in in_scope])
        columns: dict[str, dict[str, float]] = {name: {} for name in self.metrics}
        for run_id, key, value in self._database.metric_values(self._read, self.metrics) if self.metrics else []:
            columns[key][run_id] = value  # of any run of the store: those of the runs in scope are kept
        values = [(name, columns[name].get) for name in self.metrics]
        return [
            {"run_id": run_id, "features_md5": md5, **{name: value(run_id, math.nan) for name, value in values}} for run_id, md5 in in_scope
        ]

    def varying(self, compared: Sequence[Run], lacking: bool = False) -> tuple[list[str], int]:
        """The params.<key> that differ between the compared runs (of the last rows read) that logged params, as
        varying_params says (lacking: or that some compared run lacks, as fetch_runs says), and how many of them
        logged none."""
        database, (version, every_version, in_scope) = self._database, self._scope
        kept = {run["run_id"] for run in compared}
        left_out = [run_id for run_id in in_scope if run_id not in kept]
        if len(left_out) <= database.LISTED:
            runs = database.run_set(self._experiment, FEATURES_TAG, version, every_version, left_out)
        else:
            runs = database.listed_runs(sorted(kept))
        started, result = self._spread
        spread = result()  # awaited even when unused: its connection closes before the store's
        if runs != started:
            spread = database.param_spread(self._read, runs)
        # A key every run logged says that every run logged params, without counting them.
        logged = len(kept) if any(count == len(kept) for count, _, _ in spread.values()) else database.runs_with_params(self._read, runs)
        every = len(kept) if lacking else logged
        keys = sorted(PARAM_PREFIX + key for key, (count, low, high) in spread.items() if count < every or low != high)
        return keys, len(kept) - logged

    def describe(self, runs: Sequence[Run], keys: Sequence[str]) -> None:
        """Add each run's name, ROW_TAGS, has_params and the params of keys (None where it lacks one)."""
        params = [key.removeprefix(PARAM_PREFIX) for key in keys]
        found = self._database.run_details(self._read, [run["run_id"] for run in runs], list(ROW_TAGS.values()), params)
        names, tags, values = dict(found["names"]), _by_run(found["tags"]), _by_run(found["params"])
        with_params = {run_id for (run_id,) in found["with_params"]}
        for run in runs:
            run_id = run["run_id"]
            run |= {"run_name": names.get(run_id), HAS_PARAMS: run_id in with_params}
            run |= {key: tags.get(run_id, {}).get(tag) for key, tag in ROW_TAGS.items()}
            run |= {PARAM_PREFIX + key: values.get(run_id, {}).get(key) for key in params}


Runs = SearchedRuns | DatabaseRuns


@contextmanager
def open_runs(
    experiment: str, filter_string: str, metrics: Sequence[str] | None, version: str | None = None, every_version: bool = True
) -> Iterator[Runs]:
    """The runs of the experiment that match the filter: read with SQL from a database store when there is no filter
    (MLflow's filters are MLflow's to apply), else through MLflow's search. Metrics None: the default ranking's
    metrics (default_metrics) of every horizon the runs forecast. The data version (or every one) is the one most
    likely compared, whose params a database store starts reading at once."""
    from bts.lifecycle.database import reading, store_uri
    from bts.tracking.store import bulk_read_database, check_store

    uri = store_uri()
    database = bulk_read_database(uri)
    if filter_string or not database:
        yield SearchedRuns(*fetch_runs(experiment, filter_string, metrics))
        return
    check_store(database)  # the database read, not a server in front of it: one line if it is unreachable
    with reading(database) as read:
        yield DatabaseRuns(read, database, experiment, metrics, version, every_version)


def probed_runs(runs: Sequence[tuple[str, str, int | None, str | None]]) -> list[str]:
    """The ids of the PROBED_RUNS newest of these (run_id, status, start time, features md5) runs of each data version,
    finished ones first: whose metric names tell the version's horizons (a run still training, or one that failed, may
    have none yet)."""
    by_version: dict[str | None, list[tuple[bool, int, str]]] = {}
    for run_id, status, start_time, md5 in runs:
        by_version.setdefault(md5, []).append((status == FINISHED, start_time or 0, run_id))
    return [run_id for found in by_version.values() for _, _, run_id in sorted(found, reverse=True)[:PROBED_RUNS]]


def _by_run(rows: Iterable[tuple]) -> dict[str, dict[str, Any]]:
    """(run_id, key, value) rows as {run_id: {key: value}}."""
    found: dict[str, dict[str, Any]] = {}
    for run_id, key, value in rows:
        found.setdefault(run_id, {})[key] = value
    return found


def _run(
    run_id: str,
    run_name: str | None,
    tags: Mapping[str, str | None],
    metric_values: Mapping[str, float],
    has_params: bool,
    param_values: Mapping[str, str],
    metrics: Sequence[str],
    keys: Sequence[str],
) -> Run:
    """One run's row: its ROW_TAGS (None where it lacks one), the metrics asked for (NaN where it lacks one), then the
    params of `keys` (None where it lacks one)."""
    return {
        "run_id": run_id,
        "run_name": run_name,
        **{key: tags.get(key) for key in ROW_TAGS},
        **{name: float(metric_values.get(name, math.nan)) for name in metrics},
        HAS_PARAMS: has_params,
        **{PARAM_PREFIX + key: param_values.get(key) for key in keys},
    }


def fetch_runs(experiment: str, filter_string: str, metrics: Sequence[str] | None) -> tuple[list[Run], str]:
    """One row per matching active run, and the experiment id.

    Keys of each row: run_id, run_name, the ROW_TAGS keys (dvc_exp_name, features_md5, dirty: the tags' values, None
    where a run lacks one), each metric (NaN where a run lacks it), has_params (the run logged any param), then
    params.<key> for each param whose value differs between the matched runs or that some lack (None where a run lacks
    it), by key. Metrics None: the default ranking's metrics (default_metrics) of every horizon the runs forecast.
    """
    from bts.lifecycle.database import store_uri
    from bts.tracking.store import bulk_read_database, use_uri

    uri = store_uri()
    if not filter_string and bulk_read_database(uri):
        with open_runs(experiment, filter_string, metrics) as source:
            rows = source.rows(None, True)
            keys, _ = source.varying(rows, lacking=True)  # type: ignore[call-arg]
            source.describe(rows, keys)
        names = [key.removeprefix(PARAM_PREFIX) for key in keys]
        metrics = source.metrics  # type: ignore[union-attr]
        return [
            _run(run["run_id"], run["run_name"], run, run, run[HAS_PARAMS], {key: run[PARAM_PREFIX + key] for key in names}, metrics, names)
            for run in rows
        ], source.experiment_id
    from mlflow import MlflowClient  # only here: importing MLflow takes seconds
    from mlflow.exceptions import MlflowException

    use_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise BtsError(f"unknown experiment '{experiment}' in {uri}")
    found_runs: list[tuple] = []
    params: list[dict[str, str]] = []
    logged_metrics: set[str] = set()
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
                tags = {key: run.data.tags.get(tag) for key, tag in ROW_TAGS.items()}
                found_runs.append((run.info.run_id, run.info.run_name, tags, run.data.metrics))
                params.append(run.data.params)
                logged_metrics.update(run.data.metrics)
            token = page.token
            if not token:
                break
    keys = sorted({key for values in params for key in values})
    keys = [key for key in keys if len({values.get(key) for values in params}) > 1]  # differs, or some run lacks it
    if metrics is None:
        metrics = default_metrics(metric_horizons(logged_metrics, DEFAULT_SPLIT, DEFAULT_SCORE))
    rows = [
        _run(run_id, run_name, tags, values, bool(logged), logged, metrics, keys)
        for (run_id, run_name, tags, values), logged in zip(found_runs, params, strict=True)
    ]
    return rows, found.experiment_id


def workspace_features_md5() -> tuple[str | None, str]:
    """The md5 the workspace's dvc.lock records for the training stage's features (its current data version), or None
    and why there is none here (no project, no dvc.lock, the pipeline not run yet)."""
    try:
        root = find_root()
    except BtsError:
        return None, "no BTS project here (no dvc.yaml in this folder or above), so no workspace data version"
    try:
        features = pipeline_argument(root, TRAINING_STAGE, "--features")
        md5 = lock_md5s((root / "dvc.lock").read_bytes()).get(features)
    except FileNotFoundError:
        return None, "no dvc.lock in the workspace (the pipeline has not run)"
    except BtsError as exc:
        return None, str(exc)
    return (md5, "") if md5 else (None, f"dvc.lock records no md5 for {features} (the pipeline has not run)")


def data_versions(counts: Mapping[str | None, int], workspace_md5: str | None) -> list[tuple[str | None, int]]:
    """The data versions (features md5) with their number of runs: the workspace's version first, then the others by
    number of runs (most first) and md5, then the runs that recorded none (older runs)."""
    return sorted(counts.items(), key=lambda item: (item[0] is None, item[0] != workspace_md5, -item[1], item[0] or ""))


def short_md5(md5: str | None) -> str:
    return md5[:SHORT_MD5] if md5 else "none recorded"


def unique_name(run: Mapping[str, Any]) -> str:
    """A row's name: its DVC experiment name (else its run name) and the start of its run id, which tells apart runs of
    one name (a model trained twice at one commit, on other data or with uncommitted changes)."""
    name = cell_text(run.get("dvc_exp_name")) or cell_text(run.get("run_name"))
    return f"{name} {run['run_id'][:SHORT_RUN_ID]}".lstrip()


def dirty_flag(value: str | None) -> bool | None:
    """A run's git.dirty tag as a bool: None where git could not tell or the run did not record it."""
    return {"true": True, "false": False}.get(value or "")


def compare(
    experiment: str, comparison: Comparison, workspace_md5: str | None = None, why_no_workspace: str = "", shown: int | None = None
) -> dict[str, Any]:
    """The runs matched, those left out (on other data, or for want of a metric), and the ranked runs with their front
    membership, in groups by data version: the workspace's alone unless comparison.all_data, or the workspace has no
    data version (why_no_workspace says why), or no run matched trained on it. The default ranking is resolved on the
    horizons of the runs considered; result["comparison"] is the comparison made. The first `shown` ranked runs of each
    group (all when None) carry names, tags and params; the others, on a database store, only what ranked them."""
    metrics = list(comparison.directions) if comparison.resolved else None
    every_version = comparison.all_data or workspace_md5 is None
    with open_runs(experiment, comparison.filter_string, metrics, workspace_md5, every_version) as source:
        return _compared(source, experiment, comparison, workspace_md5, why_no_workspace, shown)


def _compared(
    source: Runs, experiment: str, comparison: Comparison, workspace_md5: str | None, why_no_workspace: str, shown: int | None
) -> dict[str, Any]:
    where = f' with filter "{comparison.filter_string}"' if comparison.filter_string else ""
    versions = data_versions(source.versions, workspace_md5)
    if not versions:
        raise BtsError(f"no runs matched in experiment '{experiment}'{where}")
    on_workspace = workspace_md5 is not None and versions[0][0] == workspace_md5
    all_data = comparison.all_data or not on_workspace
    data_note = ""
    if not comparison.all_data and workspace_md5 is None:
        data_note = why_no_workspace or "no workspace data version to compare on"
    elif not comparison.all_data and not on_workspace:
        data_note = f"no run matched trained on the workspace's data (features md5 {short_md5(workspace_md5)})"
    scope = "" if all_data else f" on the workspace's data (features md5 {short_md5(workspace_md5)})"
    by_md5: dict[str | None, list[Run]] = {md5: [] for md5, _ in (versions if all_data else versions[:1])}
    for run in source.rows(versions[0][0], all_data):
        by_md5[run["features_md5"]].append(run)
    considered = list(by_md5.items())
    matched = sum(len(group) for _, group in considered)
    if not comparison.resolved:
        matched_runs = f"the {matched} runs matched in experiment '{experiment}'{where}{scope}"
        comparison = default_comparison(comparison, shared_horizons(considered, matched_runs))
    metrics = list(comparison.directions)
    ranked_on = [operator.itemgetter(name) for name in metrics]
    groups = [(md5, [run for run in group if all(math.isfinite(value(run)) for value in ranked_on)]) for md5, group in considered]
    compared = [run for _, group in groups for run in group]
    if not compared:
        raise BtsError(
            f"none of the {matched} runs matched in experiment '{experiment}'{where}{scope} has all of {', '.join(metrics)}"
            " (NaN and infinite values count as missing)"
        )
    varying, without_params = source.varying(compared)
    same = {key for key in compared[0] if key.startswith(PARAM_PREFIX)} - set(varying)
    if same:  # params that differ only because of runs left out
        groups = [(md5, [{key: value for key, value in run.items() if key not in same} for run in group]) for md5, group in groups]
    ranked_groups = [
        {
            "features_md5": md5,
            "workspace": md5 is not None and md5 == workspace_md5,
            "ranked": rank_runs(group, comparison.directions, comparison.weights),
        }
        for md5, group in groups
        if group
    ]
    source.describe([run for group in ranked_groups for run in group["ranked"][:shown]], varying)
    return {
        "comparison": comparison,
        "experiment": experiment,
        "experiment_id": source.experiment_id,
        "filter": comparison.filter_string,
        "runs_matched": sum(source.versions.values()),
        "workspace_features_md5": workspace_md5,
        "all_data": all_data,
        "data_note": data_note,  # why every data version is ranked though --all-data was not given
        "runs_on_other_data": [] if all_data else versions[1:],
        "runs_left_out": matched - len(compared),
        "params": [column.removeprefix(PARAM_PREFIX) for column in varying],
        "runs_without_params": without_params,
        "groups": ranked_groups,
        "ranked": [run for group in ranked_groups for run in group["ranked"]],
    }


def shared_horizons(considered: Sequence[tuple[str | None, Sequence[Run]]], matched: str) -> list[int]:
    """The horizons of the default metrics some run of every data version considered has, shortest first (a version
    whose runs have none, older runs scored on one horizon say, does not count); a BtsError when there are none.
    `matched` names the runs, for the error."""
    found = metric_horizons(considered[0][1][0], DEFAULT_SPLIT, DEFAULT_SCORE)  # every row has the same keys
    named = list(zip(found, default_metrics(found), strict=True))
    by_version = [(md5, [horizon for horizon, name in named if has_value(group, name)]) for md5, group in considered]
    scored = [(md5, horizons) for md5, horizons in by_version if horizons]
    if not scored:
        raise BtsError(
            f"none of {matched} has a {DEFAULT_SPLIT} {DEFAULT_SCORE} per horizon ({DEFAULT_PATTERN}), the default ranking; "
            f"name the metrics to rank on with --metrics (e.g. {EXAMPLE_METRICS})"
        )
    shared = sorted(set.intersection(*(set(horizons) for _, horizons in scored)))
    if not shared:
        each = "; ".join(f"{short_md5(md5)}: {', '.join(map(label, horizons))}" for md5, horizons in scored)
        raise BtsError(f"the data versions compared forecast no horizon in common ({each}): name the metrics to rank on with --metrics")
    return shared


def has_value(runs: Sequence[Run], metric: str) -> bool:
    """Whether some run has a finite value of the metric."""
    return any(math.isfinite(run[metric]) for run in runs)


def cell_text(value: object) -> str:
    """A name cell: missing (None, or NaN) shows as empty."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def ranked_on(comparison: Comparison) -> str:
    """The metrics of the ranking in words: 'test.h1.rmse (lower is better) and test.h1.skill (higher is better), equal
    weights'; metrics of one direction say it once: 'test.h1.skill and test.h5.skill (higher is better), equal weights',
    'test.h1.skill (weight 3) and test.h5.skill (weight 1), higher is better'. The default ranking says what it is."""
    equal = len(set(comparison.weights.values())) == 1
    directions = set(comparison.directions.values())
    if len(directions) == 1:
        items = [name if equal else f"{name} (weight {comparison.weights[name]:g})" for name in comparison.directions]
    else:
        items = [
            f"{name} ({BETTER[direction]}{'' if equal else f', weight {comparison.weights[name]:g}'})"
            for name, direction in comparison.directions.items()
        ]
    text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    if len(directions) == 1:
        text += f" ({BETTER[next(iter(directions))]})" if equal else f", {BETTER[next(iter(directions))]}"
    text += ", equal weights" if equal and len(items) > 1 else ""
    return f"{DEFAULT_SPLIT} {DEFAULT_SCORE} per horizon: {text}" if comparison.default else text


def plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def result_document(result: dict[str, Any]) -> dict[str, Any]:
    """The whole result as plain JSON-able data: every compared run, ranked within its data version, with its full
    features md5, dirty flag and every param that differs (a table narrower than the data leaves none out here)."""
    comparison: Comparison = result["comparison"]
    metrics = list(comparison.directions)
    runs = [
        {
            "rank": int(row["rank"]),
            "run_id": row["run_id"],
            "name": unique_name(row),
            "run_name": cell_text(row["run_name"]) or None,
            "dvc_exp_name": cell_text(row["dvc_exp_name"]) or None,
            "features_md5": row.get("features_md5"),
            "dirty": dirty_flag(row.get("dirty")),
            "params": {key: cell_text(row.get(PARAM_PREFIX + key)) or None for key in result["params"]},
            "metrics": {name: float(row[name]) for name in metrics},
            "score": float(row["score"]),
            "pareto": bool(row["pareto"]),
        }
        for row in result["ranked"]
    ]
    return {
        "experiment": result["experiment"],
        "experiment_id": result["experiment_id"],
        "filter": result["filter"],
        "metrics": [{"name": n, "direction": d, "weight": comparison.weights[n]} for n, d in comparison.directions.items()],
        "default_metrics": comparison.default,  # the test skill of every horizon, as no --metrics was given
        "workspace_features_md5": result["workspace_features_md5"],
        "all_data": result["all_data"],
        "data_note": result["data_note"] or None,
        "data_versions": [
            {
                "features_md5": group["features_md5"],
                "workspace": group["workspace"],
                "runs_compared": len(group["ranked"]),
                "pareto_front": [run["run_id"] for run in group["ranked"] if run["pareto"]],
            }
            for group in result["groups"]
        ],
        "params": result["params"],
        "runs_matched": result["runs_matched"],
        "runs_on_other_data": sum(count for _, count in result["runs_on_other_data"]),
        "runs_compared": len(runs),
        "runs_left_out": result["runs_left_out"],
        "runs_without_params": result.get("runs_without_params", 0),
        "pareto_front": [run["run_id"] for run in runs if run["pareto"]],
        "ranking": runs,
    }


def axis_label(metric: str, direction: str) -> str:
    """'test.h1.rmse (lower is better)': a direction, never a unit-like '(min)'."""
    return f"{metric} ({BETTER[direction]})"


def front_figure(ranked: Sequence[Mapping[str, Any]], comparison: Comparison) -> Any:
    """Scatter of the first two metrics: every run, the Pareto front highlighted, the top-ranked run named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (x, x_direction), (y, y_direction) = list(comparison.directions.items())[:2]
    front, best = [run for run in ranked if run["pareto"]], ranked[0]
    figure, axes = plt.subplots(figsize=(10, 6))
    axes.scatter([run[x] for run in ranked], [run[y] for run in ranked], s=8, color="0.7", label=f"runs ({len(ranked)})")
    axes.scatter(
        [run[x] for run in front],
        [run[y] for run in front],
        s=24,
        color="tab:red",
        label=f"Pareto front ({len(front)}, on all {len(comparison.directions)} metrics)",
    )
    axes.scatter([best[x]], [best[y]], s=120, facecolors="none", edgecolors="black", linewidths=1.5)
    axes.set_xlabel(axis_label(x, x_direction))
    axes.set_ylabel(axis_label(y, y_direction))
    title = f"bts compare: {plural(len(ranked), 'run', 'runs')} ranked on {', '.join(comparison.directions)}"
    labelled = (front + [run for run in ranked if not run["pareto"]])[:FRONT_LABELS]  # the front first, then by rank
    if len(ranked) > len(labelled):
        title += f" ({len(labelled)} named: the front first, then by rank)"
    axes.set_title(textwrap.fill(title, width=80), fontsize="medium")
    axes.margins(0.15)  # room inside the axes for the names, away from the title
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    figure.tight_layout()
    names = [f"#{run['rank']} {run_label(run)}" + (f" (score {run['score']:.3f})" if run is best else "") for run in labelled]
    colors = ["black" if run["pareto"] else "0.45" for run in labelled]
    place_labels(axes, [(run[x], run[y]) for run in labelled], names, colors)
    return figure


FRONT_LABELS = 12  # runs named on the plot, the Pareto front's first, then by rank; more would hide each other
# Where a name may go, in points from its dot: nearest first, eight directions at growing distances (a leader line
# joins a name to its dot).
LABEL_OFFSETS = [
    (round(radius * math.cos(angle)), round(radius * math.sin(angle)))
    for radius in (12, 26, 44, 66, 92, 122, 156)
    for angle in (math.pi / 4, -math.pi / 4, 3 * math.pi / 4, -3 * math.pi / 4, 0, math.pi, math.pi / 2, -math.pi / 2)
]


def run_label(run: Mapping[str, Any]) -> str:
    return str(run.get("dvc_exp_name") or run.get("run_name") or run["run_id"][:8])


def place_labels(axes: Any, points: Sequence[tuple[float, float]], names: Sequence[str], colors: Sequence[str]) -> None:
    """Name each point beside it, trying the offsets in turn until the name overlaps no name placed before it and
    stays inside the axes (so never on the title); the last offset tried stays when none is free."""
    from matplotlib.text import Text

    renderer = axes.figure.canvas.get_renderer()
    frame, taken = axes.get_window_extent(renderer), []
    for point, name, color in zip(points, names, colors, strict=True):
        for dx, dy in LABEL_OFFSETS:
            label = axes.annotate(
                name, point, xytext=(dx, dy), textcoords="offset points", fontsize="small", color=color,
                ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                arrowprops={"arrowstyle": "-", "color": "0.4", "linewidth": 0.6},
            )  # fmt: skip
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)  # the name alone, not its leader line
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in taken):
                break
            if (dx, dy) != LABEL_OFFSETS[-1]:
                label.remove()
        taken.append(box)


def plot_front(ranked: Sequence[Mapping[str, Any]], comparison: Comparison, path: str | Path) -> None:
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
        "Only runs trained on the same data are compared: by default those on the workspace's data version (the\n"
        "features md5 dvc.lock records), the others counted; --all-data ranks each data version on its own.\n"
        "Active (not deleted) runs only; runs missing any of the metrics (or with NaN) are left out and counted.\n"
        f"By default runs are ranked on the {DEFAULT_SPLIT} {DEFAULT_SCORE} over persistence at every horizon they forecast\n"
        f"({DEFAULT_PATTERN}, higher is better; with --all-data, the horizons every data version has).\n"
        "Each row names its run (DVC experiment or run name, and the start of its run id), its data version\n"
        "(features md5) and whether its code differed from its commit (dirty), then the params that differ.\n"
        f"The table fits the terminal ({PIPED_WIDTH} columns when the output is not one): the columns that do not fit\n"
        "are named above it, --wide shows them all."
    )
    parser.add_argument("--experiment", help="MLflow experiment name (default: train.experiment in params.yaml)")
    parser.add_argument(
        "--metrics",
        help="comma list of NAME:min or NAME:max: any metric the runs logged, e.g. scores per horizon such as\n"
        f"{EXAMPLE_METRICS} (the interval score: width plus misses),\n"
        f"{metric_name('test_by_parameter.<id>', 1, 'skill')}:max.\n"
        f"Default: {DEFAULT_PATTERN}:{DEFAULT_DIRECTION} for each horizon H the runs forecast, quality only (skill =\n"
        "1 - rmse / persistence rmse on the same rows: it ranks as rmse does, on one scale for every horizon).\n"
        f"Add cost metrics to trade them off, e.g. {metric_name('test', 1, 'skill')}:max,{COST_METRICS.split(',')[0]},"
        f"{COST_METRICS.split(',')[-1]}\n"
        "(training.seconds is wall-clock time: it varies with the machine's load; training.cpu_seconds less so)",
    )
    parser.add_argument(
        "--weights",
        help="comma list of weights >= 0, one per metric in the same order (default: equal);\nwith the default metrics, one per horizon",
    )
    parser.add_argument("--filter", help=FILTER_HELP)
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this tag value (repeatable)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="only runs with this param value (repeatable)")
    parser.add_argument(
        "--all-data",
        action="store_true",
        help="every data version, each ranked on its own (default: the workspace's alone; runs that recorded\n"
        "no features md5, older ones, are a version of their own)",
    )
    parser.add_argument("--top", type=int, default=20, metavar="N", help="rows of each data version's ranking to print (default: 20)")
    parser.add_argument("--wide", action="store_true", help="every column, however wide the table (default: what fits the terminal)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the full result (every compared run, its features md5, dirty flag and params) as JSON instead of the table",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="write a PNG scatter of the first two metrics with the Pareto front highlighted\n"
        "(of the workspace's data version, or with --all-data of the first version listed)",
    )


def run_compare(args: argparse.Namespace) -> int:
    """`bts compare`: print the ranking (or JSON), write the plot if asked."""
    asked = comparison_from_args(args)
    experiment = args.experiment or _default_experiment()
    # The table names and shows the params of its top rows alone; the JSON and the plot's names may need any run's.
    result = compare(experiment, asked, *workspace_features_md5(), shown=None if args.json or args.plot else args.top)
    comparison = result["comparison"]
    if args.plot:
        check_plot(args.plot, comparison)  # the default ranking's metrics are known now
        plot_front(result["groups"][0]["ranked"], comparison, args.plot)
    if args.json:
        write_output(json.dumps(result_document(result), indent=2) + "\n")
        return 0
    from bts.lifecycle.compare_table import format_table  # with tabulate, only when a table is printed

    table = format_table(result, args.top, output_width(), wide=args.wide)
    plotted = f" (features md5 {short_md5(result['groups'][0]['features_md5'])})" if len(result["groups"]) > 1 else ""
    write_output(table + (f"\n\nplot: {args.plot}{plotted}" if args.plot else "") + "\n")
    return 0


def output_width() -> int:
    """The terminal's width (COLUMNS when set), or PIPED_WIDTH when the output is not a terminal."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else PIPED_WIDTH


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

    return load_params(find_root() / PARAMS_FILE).train.experiment
