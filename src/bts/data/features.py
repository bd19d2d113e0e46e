"""Supervised examples from clean readings: the last N readings of a series predict a later one.

Per (station, parameter) series: lag_1 is the latest reading (its id is the
example's reading_id), lag_N the oldest; gap_k_seconds is the time between
lag_k and lag_k+1; calendar features come from the latest reading's time. The target is the reading
`horizon` steps ahead. Splits are in time order of the target, so no
training example looks at a validation or test target. Nothing is fitted
here: scaling lives in the model pipeline and is fitted on train only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bts.data.cleaning import SERIES_KEYS
from bts.errors import ConfigError

SPLITS = ["train", "valid", "test", "holdout"]


@dataclass(frozen=True)
class FeatureSpec:
    n_lags: int = 6
    horizon: int = 1
    valid_fraction: float = 0.15
    test_fraction: float = 0.15
    holdout_stations: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.n_lags < 1 or self.horizon < 1:
            raise ConfigError("featurize.n_lags and featurize.horizon must be at least 1")
        if not (self.valid_fraction > 0 and self.test_fraction > 0 and self.valid_fraction + self.test_fraction < 1):
            raise ConfigError("featurize.valid_fraction and test_fraction must be positive and sum below 1")

    @property
    def lag_columns(self) -> list[str]:
        return [f"lag_{k}" for k in range(1, self.n_lags + 1)]

    @property
    def gap_columns(self) -> list[str]:
        return [f"gap_{k}_seconds" for k in range(1, self.n_lags)]

    @property
    def feature_columns(self) -> list[str]:
        return self.lag_columns + self.gap_columns + ["hour_sin", "hour_cos", "day_of_week"]


def build_features(clean: pd.DataFrame, spec: FeatureSpec) -> tuple[pd.DataFrame, dict]:
    """Feature rows with target and split, plus the count of readings that could not become examples."""
    clean = clean.sort_values([*SERIES_KEYS, "reading_time", "id"], kind="stable").reset_index(drop=True)
    series = clean.groupby(SERIES_KEYS, sort=False)
    columns: dict[str, pd.Series] = {}
    for k in range(1, spec.n_lags + 1):
        columns[f"lag_{k}"] = series["value"].shift(k - 1)
    seconds = (clean["reading_time"] - pd.Timestamp(0)).dt.total_seconds()
    shifted = {k: seconds.groupby([clean[c] for c in SERIES_KEYS], sort=False).shift(k) for k in range(spec.n_lags)}
    for k in range(1, spec.n_lags):
        columns[f"gap_{k}_seconds"] = shifted[k - 1] - shifted[k]
    hour = clean["reading_time"].dt.hour + clean["reading_time"].dt.minute / 60.0
    columns["hour_sin"] = np.sin(2 * np.pi * hour / 24.0)
    columns["hour_cos"] = np.cos(2 * np.pi * hour / 24.0)
    columns["day_of_week"] = clean["reading_time"].dt.day_of_week.astype("float64")
    columns["target"] = series["value"].shift(-spec.horizon)
    columns["target_time"] = series["reading_time"].shift(-spec.horizon)
    keys = clean[[*SERIES_KEYS, "reading_time", "id"]].rename(columns={"id": "reading_id"})  # the example's latest reading
    frame = pd.concat([keys, pd.DataFrame(columns)], axis=1)
    no_history = frame[f"lag_{spec.n_lags}"].isna()
    no_target = frame["target"].isna() & ~no_history
    frame = frame[~(no_history | no_target)].reset_index(drop=True)
    if frame.empty:
        raise ConfigError(
            f"featurize: no series has the {spec.n_lags + spec.horizon} readings one example needs (n_lags + horizon); "
            "lower featurize.n_lags or featurize.horizon, or add data"
        )
    frame.insert(4, "split", assign_splits(frame, spec))
    accounting = {
        "readings_in": len(clean),
        "examples_out": len(frame),
        "readings_without_full_history": int(no_history.sum()),
        "readings_without_target": int(no_target.sum()),
        "examples_by_split": {s: int((frame["split"] == s).sum()) for s in SPLITS},
    }
    return frame, accounting


def assign_splits(frame: pd.DataFrame, spec: FeatureSpec) -> pd.Series:
    """train / valid / test by target time (global cut points); held-out stations apart."""
    holdout = frame["station_id"].isin(list(spec.holdout_stations))
    in_time = frame.loc[~holdout, "target_time"]
    if in_time.empty:
        raise ConfigError("featurize.holdout_stations: every station is held out; nothing is left to train on")
    train_end = in_time.quantile(1 - spec.valid_fraction - spec.test_fraction, interpolation="lower")
    valid_end = in_time.quantile(1 - spec.test_fraction, interpolation="lower")
    split = np.where(frame["target_time"] <= train_end, "train", np.where(frame["target_time"] <= valid_end, "valid", "test"))
    return pd.Series(np.where(holdout, "holdout", split), index=frame.index, dtype="str")
