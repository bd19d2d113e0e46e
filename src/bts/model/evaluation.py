"""Scoring forecasts against the truth and against persistence (next reading = latest reading)."""

from __future__ import annotations

import numpy as np
import pandas as pd

SCORED_SPLITS = ["valid", "test", "holdout"]  # what evaluate scores: the model never fits these
BY_PARAMETER, BY_STATION = "_by_parameter", "_by_station"  # report keys: f"{split}{BY_STATION}"
STATION_SCORES = ["rows", "rmse", "persistence_rmse", "skill"]  # what metrics.json keeps per station; the run gets every score
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


def score(frame: pd.DataFrame, predicted: np.ndarray) -> dict[str, float]:
    """How many rows were scored, the model's metrics, persistence's, and the skill over persistence (1 - rmse /
    persistence_rmse)."""
    from bts.model.forecasters import PERSISTENCE  # imports scikit-learn: not for the commands that only name a split

    model = regression_metrics(frame["target"], predicted)
    baseline = regression_metrics(frame["target"], frame[PERSISTENCE])
    scores = {**model, **{f"persistence_{k}": v for k, v in baseline.items()}}
    scores["skill"] = 1 - model["rmse"] / baseline["rmse"] if baseline["rmse"] > 0 else float("nan")
    return {"rows": len(frame), **{k: round(v, 6) for k, v in scores.items()}}


def scores_by(frame: pd.DataFrame, predicted: pd.Series, key: str) -> dict[str, dict[str, float]]:
    """{value of key (as a string): scores of its rows}, in order of the value."""
    return {str(value): score(group, predicted[group.index].to_numpy()) for value, group in frame.groupby(key, sort=True)}


def worst(by_group: dict[str, dict[str, float]]) -> tuple[str | None, float]:
    """The group with the lowest defined skill, and that skill ((None, NaN) if none is defined): where the model does worst."""
    defined = {group: scores["skill"] for group, scores in by_group.items() if scores["skill"] == scores["skill"]}
    if not defined:
        return None, float("nan")
    group = min(defined, key=defined.__getitem__)
    return group, defined[group]


def evaluate(frame: pd.DataFrame, predicted: np.ndarray, splits: list[str]) -> dict:
    """{split: scores} for each split present, with worst_station_skill among them, plus per-group scores:
    {split_by_parameter: {parameter_id: scores}} and {split_by_station: {station_id: scores}}.

    Pooled scores hide a station whose readings the model gets wrong; the worst station's skill does not.
    """
    report: dict = {}
    predicted = pd.Series(predicted, index=frame.index)
    for split in splits:
        part = frame[frame["split"] == split]
        if part.empty:
            continue
        by_station = scores_by(part, predicted, "station_id")
        report[split] = {**score(part, predicted[part.index].to_numpy()), "worst_station_skill": worst(by_station)[1]}
        report[f"{split}{BY_PARAMETER}"] = scores_by(part, predicted, "parameter_id")
        report[f"{split}{BY_STATION}"] = by_station
    return report


def dvc_metrics(report: dict, splits: list[str]) -> dict:
    """The DVC metrics of a report: each split's scores (worst_station_skill among them), then per split its stations'
    rmse, persistence_rmse and skill, under the names the run logs them by (`test_by_station.<id>.skill`)."""
    metrics = {split: report[split] for split in splits if split in report}
    for split in splits:
        if f"{split}{BY_STATION}" in report:
            stations = report[f"{split}{BY_STATION}"]
            metrics[f"{split}{BY_STATION}"] = {station: {k: scores[k] for k in STATION_SCORES} for station, scores in stations.items()}
    return metrics


def residual_histogram(residuals: np.ndarray, bins: int = 41) -> pd.DataFrame:
    """Counts of residuals per bin, symmetric around zero, for a residual-distribution plot."""
    limit = float(np.quantile(np.abs(residuals), 0.99)) or 1.0
    counts, edges = np.histogram(np.clip(residuals, -limit, limit), bins=bins, range=(-limit, limit))
    return pd.DataFrame({"residual": np.round((edges[:-1] + edges[1:]) / 2, 4), "count": counts})
