"""The names of a multi-horizon forecast's columns and metrics: the one home of every module that writes or reads them.

A horizon is a number of steps (readings of the series) ahead. The features
table holds, per horizon h, the reading h steps after the example's latest
one (`target_h5`) and its time (`target_time_h5`). A model's forecast holds,
per horizon, the central value and the bounds of its interval
(`forecast_h5`, `lower_h5`, `upper_h5`), in horizon order: what the package's
signature names, what `bts serve`, batch scoring and the monitoring log carry.
Evaluation scores are logged as `<split>.h5.<score>` (`test.h5.rmse`).
This module is packaged with the model (it imports nothing), and read by featurize too.
"""

from __future__ import annotations

import re

FORECAST, LOWER, UPPER = "forecast", "lower", "upper"
COVERAGE_PARAM = "train.interval_coverage"  # as a run logs it: the share of readings the intervals should hold
LIVE_SPLIT = "live"  # a `bts monitor` report's scores are named as a split's: live.h5.skill beside test.h5.skill
KINDS = (FORECAST, LOWER, UPPER)
_OUTPUT = re.compile(r"^(forecast|lower|upper)_h([1-9][0-9]*)$")
_METRIC = re.compile(r"^(?P<split>[a-z]+)\.h(?P<horizon>[1-9][0-9]*)\.(?P<score>[a-z_]+)$")


def label(horizon: int) -> str:
    """h5: how a horizon is named in columns, metrics and reports."""
    return f"h{horizon}"


def target_column(horizon: int) -> str:
    return f"target_{label(horizon)}"


def target_time_column(horizon: int) -> str:
    return f"target_time_{label(horizon)}"


def output_column(kind: str, horizon: int) -> str:
    """forecast_h5, lower_h5 or upper_h5."""
    return f"{kind}_{label(horizon)}"


def output_columns(horizons: list[int] | tuple[int, ...]) -> list[str]:
    """Every output column of a model forecasting these horizons: forecast, lower, upper of each horizon, in order."""
    return [output_column(kind, horizon) for horizon in horizons for kind in KINDS]


def output_horizons(columns: list[str]) -> list[int]:
    """The horizons of a model's output columns, in their order; a ValueError unless they are output_columns of them."""
    horizons = list(dict.fromkeys(int(match.group(2)) for match in map(_OUTPUT.match, columns) if match))
    if not horizons or list(columns) != output_columns(horizons):
        raise ValueError(f"not the output columns of a forecast ({', '.join(KINDS)} per horizon): {', '.join(columns[:9])}")
    return horizons


def metric_name(split: str, horizon: int, score: str) -> str:
    """test.h5.rmse: a score of one horizon on one split, as evaluate logs it."""
    return f"{split}.{label(horizon)}.{score}"


def metric_horizons(names: object, split: str = "test", score: str = "rmse") -> list[int]:
    """The horizons a run's metrics score on this split, shortest first (e.g. [1, 5, 15] from test.h1.rmse, ...)."""
    found = {int(m["horizon"]) for m in map(_METRIC.match, names) if m and m["split"] == split and m["score"] == score}
    return sorted(found)


def headline_metric(names: object, score: str = "rmse", split: str = "test") -> str | None:
    """The score of the shortest horizon a run has (test.h1.rmse), or None when it has no such score."""
    horizons = metric_horizons(names, split, score)
    return metric_name(split, horizons[0], score) if horizons else None
