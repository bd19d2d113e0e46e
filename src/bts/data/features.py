"""Supervised examples from clean readings: the last N readings of a series predict a later one.

Per (station, parameter) series: lag_1 is the latest reading (its id is the
example's reading_id), lag_N the oldest; gap_k_seconds is the time between
lag_k and lag_k+1. Over the last `scale_window` readings (lag_1 included, so
known when the forecast is made): step_scale, the mean absolute change between
consecutive readings, the series' own unit of change; offset_in_steps, how far
lag_1 lies from their mean in that unit; range_position, where lag_1 lies
between their minimum (0) and maximum (1). These describe a series in its own
terms, so they mean the same on any station and sensor. Calendar features
(from the latest reading's time) are optional: they learn the training
stations' daily pattern. There is one target per horizon (featurize.horizons):
the reading that many steps ahead, and its time. An example needs every one of
them. Splits are in time order of the farthest target, so no training example
looks at a validation or test target. Nothing is fitted here: scaling lives in the model
pipeline and is fitted on train only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import ModelWrapValidatorHandler, ValidationError, model_validator

from bts.data.readings import CLEAN_ORDER, SERIES_KEYS, labels, sorted_by
from bts.errors import ConfigError
from bts.horizons import target_column, target_time_column
from bts.params import FeaturizeParams, describe_problems

SPLITS = ["train", "valid", "test", "holdout"]
INPUT_COLUMNS = [*SERIES_KEYS, "reading_time", "id", "value"]  # what build_features reads of the clean readings
SCALE_COLUMN = "step_scale"
WINDOW_COLUMNS = [SCALE_COLUMN, "offset_in_steps", "range_position"]
CALENDAR_COLUMNS = ["hour_sin", "hour_cos", "day_of_week"]


class FeatureSpec(FeaturizeParams):
    """params.yaml's featurize section (FeaturizeParams: its fields, defaults and checks, none repeated here) and the
    feature columns it gives. A value it cannot use is a ConfigError naming the key, as load_params names it."""

    @model_validator(mode="wrap")
    @classmethod
    def _one_error_line(cls, values: Any, handler: ModelWrapValidatorHandler[FeatureSpec]) -> FeatureSpec:
        try:
            return handler(values)
        except ValidationError as exc:
            raise ConfigError(describe_problems(exc, FeaturizeParams, "featurize")) from None

    @classmethod
    def from_params(cls, params: FeaturizeParams) -> FeatureSpec:
        """The spec of params.yaml's featurize section: the one way the stage, replay and batch scoring build it."""
        return cls(**params.model_dump())

    def but(self, **changes: Any) -> FeatureSpec:
        """This spec with some params changed, checked as any spec (pydantic's model_copy would not check them)."""
        return type(self)(**{**self.model_dump(), **changes})

    @property
    def lag_columns(self) -> list[str]:
        return [f"lag_{k}" for k in range(1, self.n_lags + 1)]

    @property
    def gap_columns(self) -> list[str]:
        return [f"gap_{k}_seconds" for k in range(1, self.n_lags)]

    @property
    def feature_columns(self) -> list[str]:
        return self.lag_columns + self.gap_columns + WINDOW_COLUMNS + (CALENDAR_COLUMNS if self.calendar else [])

    @property
    def target_columns(self) -> list[str]:
        return [target_column(h) for h in self.horizons]

    @property
    def target_time_columns(self) -> list[str]:
        return [target_time_column(h) for h in self.horizons]


def _trailing(values: np.ndarray, position: np.ndarray, window: int, reduce: np.ufunc) -> np.ndarray:
    """reduce over each row's last `window` values of its series (itself included); rows are series by series in time order.

    position is the row's index within its series, so a window never reaches into the previous series. Each row
    takes its values newest first (a sum adds them in that order, so the result is the same to the last bit): whole
    arrays at a time as if every window were full, then the rows whose window the series' start cuts short, again.
    """
    result = values.copy()
    for back in range(1, min(window, len(values))):
        reduce(result[back:], values[:-back], out=result[back:])
    heads = np.flatnonzero(position < window - 1)
    head = values[heads]
    for back in range(1, window):
        inside = position[heads] >= back
        if not inside.any():
            break
        head[inside] = reduce(head[inside], values[heads[inside] - back])
    result[heads] = head
    return result


def window_features(value: pd.Series, position: pd.Series, window: int) -> dict[str, np.ndarray]:
    """step_scale, offset_in_steps and range_position of each reading over its series' last `window` readings.

    A reading without an earlier one has step_scale 0; where step_scale is 0 the offset is 0, and where the window
    holds one value only, range_position is 0.5 (the middle: no side to lean to).
    """
    values, positions = value.to_numpy(dtype="float64"), position.to_numpy()
    steps = np.zeros_like(values)
    steps[1:] = np.abs(np.diff(values))
    has_step = positions >= 1
    step_count = np.minimum(positions, window - 1)
    step_sum = _trailing(np.where(has_step, steps, 0.0), positions - 1, window - 1, np.add)  # the steps into the window's readings
    scale = np.divide(step_sum, step_count, out=np.zeros_like(values), where=step_count > 0)
    mean = _trailing(values, positions, window, np.add) / (np.minimum(positions, window - 1) + 1)
    low = _trailing(values, positions, window, np.minimum)
    high = _trailing(values, positions, window, np.maximum)
    return {
        SCALE_COLUMN: scale,
        "offset_in_steps": np.divide(values - mean, scale, out=np.zeros_like(values), where=scale > 0),
        "range_position": np.divide(values - low, high - low, out=np.full_like(values, 0.5), where=high > low),
    }


def series_positions(keys: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's index within its series and the rows left after it there; rows come series by series.

    A row with a missing key is a series of its own with no row before or after it (position -1, as pandas'
    groupby leaves such rows out), so nothing is shifted into or out of it.
    """
    columns = [keys[c].to_numpy() for c in keys.columns]
    starts = np.ones(len(keys), dtype=bool)
    if len(keys):
        starts[1:] = np.logical_or.reduce([c[1:] != c[:-1] for c in columns])
    first = np.flatnonzero(starts)
    series = np.cumsum(starts) - 1
    position = np.arange(len(keys)) - first[series]
    left = np.append(first[1:], len(keys))[series] - 1 - np.arange(len(keys))
    missing = keys.isna().any(axis=1).to_numpy()
    position[missing], left[missing] = -1, -1
    return position, left


def shift_within(values: np.ndarray, position: np.ndarray, left: np.ndarray, k: int) -> np.ndarray:
    """values moved k rows later in their series (k < 0: earlier), missing (NaN, NaT) where the series has no such row.

    What pandas' groupby(...).shift(k) gives on rows that come series by series, without grouping again.
    """
    if k == 0:
        return values.copy()  # pandas' shift(0) keeps even the rows of a missing key
    missing = np.array("NaT", dtype=values.dtype) if values.dtype.kind == "M" else np.nan
    shifted = np.full_like(values, missing)
    if k > 0:
        shifted[k:] = values[: len(values) - k]
        shifted[position < k] = missing
    else:
        shifted[:k] = values[-k:]
        shifted[left < -k] = missing
    return shifted


class FeatureTable:
    """The examples of clean readings (feature rows with target and split), built a slice of rows at a time.

    What spans the whole table is settled once, here: each reading's place in its series, which readings make
    examples, their targets and splits. `rows(start, stop)` then computes the features of examples start..stop-1
    only, from their readings and the few before them that a lag or a window reaches. Any slice holds exactly
    those rows of the whole table, to the last bit, so a writer can encode one slice while the next is built.
    """

    def __init__(self, clean: pd.DataFrame, spec: FeatureSpec) -> None:
        self.spec = spec
        clean = sorted_by(clean, CLEAN_ORDER)  # series by series in time order; the clean stage writes them so
        self._position, self._left = series_positions(clean[SERIES_KEYS])
        self._value = clean["value"].to_numpy(dtype="float64")
        self._time = clean["reading_time"]
        oldest = shift_within(self._value, self._position, self._left, spec.n_lags - 1)
        farthest = max(spec.horizons)
        no_history = np.isnan(oldest)
        no_target = np.isnan(shift_within(self._value, self._position, self._left, -farthest)) & ~no_history
        self._rows = np.flatnonzero(~(no_history | no_target))  # the readings that are an example's latest one
        if not len(self._rows):
            raise ConfigError(
                f"featurize: no series has the {spec.n_lags + farthest} readings one example needs (n_lags + the farthest of "
                "horizons); lower featurize.n_lags or featurize.horizons, or add data"
            )
        self.keys = pd.DataFrame({c: clean[c].to_numpy().take(self._rows) for c in [*SERIES_KEYS, "reading_time"]}, copy=False)
        self.keys["reading_id"] = clean["id"].to_numpy().take(self._rows)  # the example's latest reading
        times = self._time.to_numpy()
        self._targets = {h: shift_within(self._value, self._position, self._left, -h).take(self._rows) for h in spec.horizons}
        self._target_times = {h: shift_within(times, self._position, self._left, -h).take(self._rows) for h in spec.horizons}
        self._split = split_codes(self.keys["station_id"], pd.Series(self._target_times[farthest]), spec)
        counts = np.bincount(self._split, minlength=len(SPLITS))
        self.accounting = {
            "readings_in": len(clean),
            "examples_out": len(self._rows),
            "readings_without_full_history": int(no_history.sum()),
            "readings_without_target": int(no_target.sum()),
            "examples_by_split": {split: int(count) for split, count in zip(SPLITS, counts, strict=True)},
        }

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def targets(self) -> pd.DataFrame:
        """split and the farthest target's time (target_time) of every example: what the split is cut on."""
        return pd.DataFrame({"split": labels(self._split, SPLITS), "target_time": self._target_times[max(self.spec.horizons)]})

    def rows(self, start: int, stop: int) -> pd.DataFrame:
        """Examples start..stop-1 (index start..stop-1), every column."""
        spec, rows = self.spec, self._rows[start:stop]
        reach = max(spec.n_lags, spec.scale_window) + 1  # the readings before an example's latest one its features read
        low = max(int(rows[0]) - reach, 0) if len(rows) else 0
        span = slice(low, int(rows[-1]) + 1 if len(rows) else 0)
        value, position, left, time = self._value[span], self._position[span], self._left[span], self._time.iloc[span]
        at = rows - low
        columns: dict[str, np.ndarray] = {}
        for k in range(1, spec.n_lags + 1):
            columns[f"lag_{k}"] = shift_within(value, position, left, k - 1)
        seconds = (time - pd.Timestamp(0)).dt.total_seconds().to_numpy()
        shifted = {k: shift_within(seconds, position, left, k) for k in range(spec.n_lags)}
        for k in range(1, spec.n_lags):
            columns[f"gap_{k}_seconds"] = shifted[k - 1] - shifted[k]
        columns.update(window_features(pd.Series(value), pd.Series(np.maximum(position, 0)), spec.scale_window))
        if spec.calendar:
            hour = time.dt.hour + time.dt.minute / 60.0
            columns["hour_sin"] = np.sin(2 * np.pi * hour / 24.0).to_numpy()
            columns["hour_cos"] = np.cos(2 * np.pi * hour / 24.0).to_numpy()
            columns["day_of_week"] = time.dt.day_of_week.astype("float64").to_numpy()
        keys = {c: self.keys[c].to_numpy()[start:stop] for c in self.keys.columns}
        # column by column, each kept as its own array: no full-size frame, no consolidated copy of the examples
        return pd.DataFrame(
            {
                **keys,
                "split": labels(self._split[start:stop], SPLITS).array,
                **{name: values.take(at) for name, values in columns.items()},
                **{target_column(h): values[start:stop] for h, values in self._targets.items()},
                **{target_time_column(h): values[start:stop] for h, values in self._target_times.items()},
            },
            index=pd.RangeIndex(start, start + len(rows)),
            copy=False,
        )


def build_features(clean: pd.DataFrame, spec: FeatureSpec) -> tuple[pd.DataFrame, dict]:
    """Feature rows with target and split, plus the count of readings that could not become examples."""
    table = FeatureTable(clean, spec)
    return table.rows(0, len(table)), table.accounting


def split_codes(station: pd.Series, target_time: pd.Series, spec: FeatureSpec) -> np.ndarray:
    """Each example's index in SPLITS: train / valid / test by (the farthest) target time, cut at each station's own quantiles, so that
    every station (a real export whose only day is the earliest of the data too) has train, valid and test examples,
    its newest in test; held-out stations apart. Features only read their own series' past, so a station's test
    example earlier than another station's train examples learns nothing from them."""
    station = station.reset_index(drop=True)
    target_time = target_time.reset_index(drop=True)
    holdout = station.isin(list(spec.holdout_stations)).to_numpy()
    if holdout.all():
        raise ConfigError("featurize.holdout_stations: every station is held out; nothing is left to train on")
    times = target_time[~holdout].groupby(station[~holdout], sort=False)
    train_end = station.map(times.quantile(1 - spec.valid_fraction - spec.test_fraction, interpolation="lower"))
    valid_end = station.map(times.quantile(1 - spec.test_fraction, interpolation="lower"))
    split = np.where(target_time <= train_end, 0, np.where(target_time <= valid_end, 1, 2))
    return np.where(holdout, SPLITS.index("holdout"), split)
