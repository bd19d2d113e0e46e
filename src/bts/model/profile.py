"""The training features' profile, and how far live features have drifted from it.

The train stage logs the profile of the train split as a run artifact
(`profile/features.json`), so drift is measured later without the training
data. Per feature it holds the count, mean, standard deviation, 101
percentiles, the bins of the population stability index (edges at the
training deciles, with the training share in each) and a seeded sample of
at most 2,000 training values for the two-sample Kolmogorov-Smirnov test.

Drift of one feature: PSI = sum over bins of (live - train) * ln(live / train)
(shares floored at 1e-4), and scipy's two-sample KS test of the live values
against the training sample. A feature is flagged when its PSI reaches the
threshold and the KS test rejects at the given p-value: a large shift that
is not chance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PROFILE_ARTIFACT = "profile/features.json"
PROFILE_VERSION = 1
SAMPLE_SIZE = 2_000
PSI_FLOOR = 1e-4
PERCENTILES = np.linspace(0.0, 1.0, 101)


def psi_edges(values: np.ndarray) -> list[float]:
    """Interior bin edges at the deciles (distinct ones only: a feature with few values gets fewer bins)."""
    return [float(edge) for edge in np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))]


def bin_shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """The share of values in each bin (-inf, e1], (e1, e2], ... (ek, inf)."""
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="left"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def feature_profile(frame: pd.DataFrame, columns: list[str], seed: int) -> dict:
    """The profile of these columns of `frame` (the train split): deterministic for a given frame and seed."""
    rng = np.random.default_rng(seed)
    profile: dict = {"version": PROFILE_VERSION, "rows": len(frame), "features": {}}
    for column in columns:
        values = frame[column].to_numpy(dtype=np.float64)
        edges = psi_edges(values)
        sample = values if len(values) <= SAMPLE_SIZE else rng.choice(values, SAMPLE_SIZE, replace=False)
        profile["features"][column] = {
            "count": len(values),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "percentiles": [float(v) for v in np.quantile(values, PERCENTILES)],
            "psi_edges": edges,
            "psi_shares": [float(v) for v in bin_shares(values, edges)],
            "sample": [float(v) for v in np.sort(sample)],
        }
    return profile


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    expected = np.maximum(expected, PSI_FLOOR)
    actual = np.maximum(actual, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift(profile: dict, live: pd.DataFrame, psi_threshold: float, ks_p_value: float, ignored: list[str]) -> list[dict]:
    """Per profiled feature present in `live`: live mean, PSI, KS statistic and p-value, and whether it drifted."""
    from scipy import stats  # here, not at the top: the train stage imports this module for the profile alone

    rows = []
    for column, train in profile["features"].items():
        if column not in live.columns:
            continue
        values = live[column].to_numpy(dtype=np.float64)
        shares = bin_shares(values, train["psi_edges"])
        index = psi(np.asarray(train["psi_shares"]), shares)
        test = stats.ks_2samp(values, np.asarray(train["sample"]))
        rows.append(
            {
                "feature": column,
                "train_mean": train["mean"],
                "live_mean": float(values.mean()),
                "psi": round(index, 6),
                "ks_statistic": round(float(test.statistic), 6),
                "ks_p_value": float(test.pvalue),
                "ignored": column in ignored,
                "drifted": bool(column not in ignored and index >= psi_threshold and test.pvalue < ks_p_value),
            }
        )
    return rows
