"""Scoring forecasts against the truth and against persistence (next reading = latest reading)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bts.model.forecasters import PERSISTENCE


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
    """The model's metrics, persistence's, and the skill over persistence (1 - rmse / persistence_rmse)."""
    model = regression_metrics(frame["target"], predicted)
    baseline = regression_metrics(frame["target"], frame[PERSISTENCE])
    scores = {**model, **{f"persistence_{k}": v for k, v in baseline.items()}}
    scores["skill"] = 1 - model["rmse"] / baseline["rmse"] if baseline["rmse"] > 0 else float("nan")
    return {k: round(v, 6) for k, v in scores.items()}


def evaluate(frame: pd.DataFrame, predicted: np.ndarray, splits: list[str]) -> dict:
    """{split: scores} for each split present, plus {split_by_parameter: {parameter_id: scores}}."""
    report: dict = {}
    predicted = pd.Series(predicted, index=frame.index)
    for split in splits:
        part = frame[frame["split"] == split]
        if part.empty:
            continue
        report[split] = score(part, predicted[part.index].to_numpy())
        report[f"{split}_by_parameter"] = {
            str(pid): score(group, predicted[group.index].to_numpy()) for pid, group in part.groupby("parameter_id", sort=True)
        }
    return report


def residual_histogram(residuals: np.ndarray, bins: int = 41) -> pd.DataFrame:
    """Counts of residuals per bin, symmetric around zero, for a residual-distribution plot."""
    limit = float(np.quantile(np.abs(residuals), 0.99)) or 1.0
    counts, edges = np.histogram(np.clip(residuals, -limit, limit), bins=bins, range=(-limit, limit))
    return pd.DataFrame({"residual": np.round((edges[:-1] + edges[1:]) / 2, 4), "count": counts})
