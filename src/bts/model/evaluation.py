"""Scoring forecasts against the truth and against persistence (a later reading = the latest reading), horizon by
horizon, and their intervals against the share of readings they should hold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bts.horizons import FORECAST, LOWER, UPPER, label, output_column, target_column

SCORED_SPLITS = ["valid", "test", "holdout"]  # what evaluate scores: the model never fits these
BY_PARAMETER, BY_STATION = "_by_parameter", "_by_station"  # report keys: f"{split}{BY_STATION}"
# What metrics.json keeps per station and horizon (beside its rows); the run gets every score.
STATION_SCORES = ["rmse", "persistence_rmse", "skill", "coverage"]
# A station's split with fewer scored rows than this is reported with a warning: too few to judge the model there.
FEW_ROWS = 100


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R2 and MAPE (over non-zero targets only; undefined where every target is zero)."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    error = predicted - actual
    total = float(np.sum((actual - actual.mean()) ** 2))
    nonzero = actual != 0
    metrics = {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "r2": float(1 - np.sum(error**2) / total) if total > 0 else float("nan"),
    }
    if nonzero.any():
        metrics["mape"] = float(np.mean(np.abs(error[nonzero] / actual[nonzero])) * 100)
    return metrics


def interval_metrics(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, coverage: float) -> dict[str, float]:
    """How the intervals did: the share of actual readings inside them (coverage), their mean width, and the mean
    interval (Winkler) score at that coverage: the width, plus 2 / (1 - coverage) times how far outside a reading fell."""
    actual, lower, upper = (np.asarray(a, dtype=float) for a in (actual, lower, upper))
    width = upper - lower
    outside = np.maximum(lower - actual, 0.0) + np.maximum(actual - upper, 0.0)
    return {
        "coverage": float(np.mean((lower <= actual) & (actual <= upper))),
        "mean_width": float(np.mean(width)),
        "winkler": float(np.mean(width + 2.0 / (1.0 - coverage) * outside)),
    }


def horizon_score(frame: pd.DataFrame, horizon: int, coverage: float) -> dict[str, float]:
    """One horizon's scores on the rows of frame (its target, forecast, bounds and lag_1): the model's metrics,
    persistence's, the skill over persistence (1 - rmse / persistence_rmse), and the intervals' metrics."""
    from bts.model.forecasters import PERSISTENCE  # imports scikit-learn: not for the commands that only name a split

    actual = frame[target_column(horizon)]
    model = regression_metrics(actual, frame[output_column(FORECAST, horizon)])
    baseline = regression_metrics(actual, frame[PERSISTENCE])
    scores = {**model, **{f"persistence_{k}": v for k, v in baseline.items()}}
    scores["skill"] = 1 - model["rmse"] / baseline["rmse"] if baseline["rmse"] > 0 else float("nan")
    scores.update(interval_metrics(actual, frame[output_column(LOWER, horizon)], frame[output_column(UPPER, horizon)], coverage))
    return {k: round(v, 6) for k, v in scores.items()}


def score(frame: pd.DataFrame, horizons: list[int], coverage: float) -> dict:
    """{'rows': n, 'h1': scores of horizon 1, 'h5': ...} of the rows of frame."""
    return {"rows": len(frame), **{label(h): horizon_score(frame, h, coverage) for h in horizons}}


def scores_by(frame: pd.DataFrame, key: str, horizons: list[int], coverage: float) -> dict[str, dict]:
    """{value of key (as a string): scores of its rows}, in order of the value."""
    return {str(value): score(group, horizons, coverage) for value, group in frame.groupby(key, sort=True)}


def worst(by_group: dict[str, dict], horizon: int) -> tuple[str | None, float]:
    """The group with the lowest defined skill at this horizon, and that skill ((None, NaN) if none is defined)."""
    skills = {group: scores[label(horizon)]["skill"] for group, scores in by_group.items()}
    defined = {group: skill for group, skill in skills.items() if skill == skill}
    if not defined:
        return None, float("nan")
    group = min(defined, key=defined.__getitem__)
    return group, defined[group]


def evaluate(frame: pd.DataFrame, splits: list[str], horizons: list[int], coverage: float) -> dict:
    """{split: scores} for each split present (per horizon, with worst_station_skill among them), plus per-group scores:
    {split_by_parameter: {parameter_id: scores}} and {split_by_station: {station_id: scores}}.

    frame holds every example's targets, lag_1, and the model's forecasts and bounds (bts.horizons names them).
    Pooled scores hide a station whose readings the model gets wrong; the worst station's skill does not.
    """
    report: dict = {}
    for split in splits:
        part = frame[frame["split"] == split]
        if part.empty:
            continue
        by_station = scores_by(part, "station_id", horizons, coverage)
        overall = score(part, horizons, coverage)
        for h in horizons:
            overall[label(h)]["worst_station_skill"] = worst(by_station, h)[1]
        report[split] = overall
        report[f"{split}{BY_PARAMETER}"] = scores_by(part, "parameter_id", horizons, coverage)
        report[f"{split}{BY_STATION}"] = by_station
    return report


def dvc_metrics(report: dict, splits: list[str]) -> dict:
    """The DVC metrics of a report: each split's scores (worst_station_skill among them), then per split its stations'
    rows and, per horizon, STATION_SCORES, under the names the run logs them by (`test_by_station.<id>.h1.skill`)."""
    metrics = {split: report[split] for split in splits if split in report}
    for split in splits:
        if f"{split}{BY_STATION}" in report:
            stations = report[f"{split}{BY_STATION}"]
            metrics[f"{split}{BY_STATION}"] = {
                station: {key: value if key == "rows" else {k: value[k] for k in STATION_SCORES} for key, value in scores.items()}
                for station, scores in stations.items()
            }
    return metrics


def residual_histogram(residuals: np.ndarray, bins: int = 41) -> pd.DataFrame:
    """Counts of residuals per bin, symmetric around zero, for a residual-distribution plot."""
    limit = float(np.quantile(np.abs(residuals), 0.99)) or 1.0
    counts, edges = np.histogram(np.clip(residuals, -limit, limit), bins=bins, range=(-limit, limit))
    return pd.DataFrame({"residual": np.round((edges[:-1] + edges[1:]) / 2, 4), "count": counts})
