"""Supervised examples from clean readings: lags, gaps, target, time-ordered splits and accounting."""

from __future__ import annotations

import pandas as pd
import pytest

from bts.data.features import SPLITS, FeatureSpec, build_features
from bts.errors import ConfigError

START = pd.Timestamp("2017-04-18 00:00:00")
GAPS = [0, 1, 1, 4, 60, 0, 170, 2, 1, 900, 3, 0]  # seconds between readings, cycled: same-second, bursts, silences


def clean_frame(stations: tuple[int, ...] = (1, 2), readings: int = 20, parameter_id: int = 122) -> pd.DataFrame:
    """Interleaved series; value = 1000 * station + position, so a value tells its series and its position."""
    rows = []
    next_id = 1
    for position in range(readings):
        for station in stations:
            offset = sum(GAPS[i % len(GAPS)] for i in range(position)) + station  # series interleave in time
            rows.append((station, parameter_id, START + pd.Timedelta(seconds=offset), next_id, 1000.0 * station + position))
            next_id += 1
    frame = pd.DataFrame(rows, columns=["station_id", "parameter_id", "reading_time", "id", "value"])
    return frame.astype({"station_id": "int64", "parameter_id": "int64", "reading_time": "datetime64[us]", "id": "int64"}).assign(
        source_file="test.csv", source_row=lambda f: pd.RangeIndex(2, len(f) + 2)
    )


def position(value: pd.Series) -> pd.Series:
    return (value % 1000).astype("int64")


def station_of(value: pd.Series) -> pd.Series:
    return (value // 1000).astype("int64")


@pytest.fixture
def clean() -> pd.DataFrame:
    return clean_frame()


def test_feature_columns_are_present(clean):
    spec = FeatureSpec(n_lags=4)
    features, _ = build_features(clean, spec)
    assert spec.feature_columns == [
        *[f"lag_{k}" for k in range(1, 5)],
        *[f"gap_{k}_seconds" for k in range(1, 4)],
        "hour_sin",
        "hour_cos",
        "day_of_week",
    ]
    assert set(spec.feature_columns) | {"target", "target_time", "split"} <= set(features.columns)


def test_lag_k_is_the_value_k_minus_1_readings_back_in_the_same_series(clean):
    spec = FeatureSpec(n_lags=5)
    features, _ = build_features(clean.sample(frac=1, random_state=0), spec)  # input order must not matter
    latest = features["lag_1"]
    assert (station_of(latest) == features["station_id"]).all()
    for k in range(1, spec.n_lags + 1):
        lag = features[f"lag_{k}"]
        assert (station_of(lag) == features["station_id"]).all(), f"lag_{k} crossed into another series"
        assert (position(lag) == position(latest) - (k - 1)).all(), f"lag_{k} is not {k - 1} readings back"


def test_lag_1_is_the_reading_at_reading_time(clean):
    features, _ = build_features(clean, FeatureSpec(n_lags=3))
    time_of = clean.set_index("value")["reading_time"]
    assert (time_of.loc[features["lag_1"]].to_numpy() == features["reading_time"].to_numpy()).all()


def test_no_example_uses_readings_of_another_series():
    """The first n_lags - 1 readings of each series have no full history, even when another series precedes them."""
    spec = FeatureSpec(n_lags=4)
    features, accounting = build_features(clean_frame(stations=(1, 2, 3), readings=10), spec)
    for _, series in features.groupby("station_id"):
        assert position(series["lag_1"]).min() == spec.n_lags - 1
    assert accounting["readings_without_full_history"] == 3 * (spec.n_lags - 1)


def test_gaps_are_seconds_between_consecutive_lags(clean):
    spec = FeatureSpec(n_lags=4)
    features, _ = build_features(clean, spec)
    time_of = clean.set_index("value")["reading_time"]
    for k in range(1, spec.n_lags):
        newer = time_of.loc[features[f"lag_{k}"]].to_numpy()
        older = time_of.loc[features[f"lag_{k + 1}"]].to_numpy()
        expected = (newer - older) / pd.Timedelta(seconds=1)
        assert (features[f"gap_{k}_seconds"].to_numpy() == expected).all()
    assert (features["gap_1_seconds"] == 0).any(), "same-second readings give a zero gap"
    assert features["gap_1_seconds"].max() == 900


def test_calendar_features_come_from_the_latest_reading(clean):
    features, _ = build_features(clean, FeatureSpec(n_lags=2))
    assert (features["day_of_week"] == 1.0).all()  # 2017-04-18 was a Tuesday
    assert features["hour_sin"].between(-1, 1).all() and features["hour_cos"].between(-1, 1).all()
    assert ((features["hour_sin"] ** 2 + features["hour_cos"] ** 2).round(9) == 1).all()


@pytest.mark.parametrize("horizon", [1, 3])
def test_target_is_the_reading_horizon_steps_ahead(horizon, clean):
    features, _ = build_features(clean, FeatureSpec(n_lags=3, horizon=horizon))
    assert (station_of(features["target"]) == features["station_id"]).all()
    assert (position(features["target"]) == position(features["lag_1"]) + horizon).all()
    time_of = clean.set_index("value")["reading_time"]
    assert (features["target_time"].to_numpy() == time_of.loc[features["target"]].to_numpy()).all()
    assert (features["target_time"] >= features["reading_time"]).all()


@pytest.mark.parametrize(("n_lags", "horizon"), [(1, 1), (4, 1), (6, 2)])
def test_every_reading_is_accounted_for(n_lags, horizon):
    readings, stations = 15, (1, 2)
    clean = clean_frame(stations=stations, readings=readings)
    features, accounting = build_features(clean, FeatureSpec(n_lags=n_lags, horizon=horizon))
    assert accounting["readings_in"] == len(clean)
    assert accounting["examples_out"] == len(features)
    assert accounting["readings_in"] == (
        accounting["examples_out"] + accounting["readings_without_full_history"] + accounting["readings_without_target"]
    )
    assert accounting["readings_without_full_history"] == len(stations) * (n_lags - 1)
    assert accounting["readings_without_target"] == len(stations) * horizon
    assert sum(accounting["examples_by_split"].values()) == len(features)


def test_splits_are_in_time_order_of_the_target():
    features, accounting = build_features(clean_frame(stations=(1, 2, 3), readings=40), FeatureSpec(n_lags=3))
    by_split = {split: features.loc[features["split"] == split, "target_time"] for split in ["train", "valid", "test"]}
    assert all(len(targets) > 0 for targets in by_split.values())
    assert by_split["train"].max() <= by_split["valid"].min()
    assert by_split["valid"].max() <= by_split["test"].min()
    assert set(features["split"]) <= set(SPLITS)
    assert accounting["examples_by_split"]["holdout"] == 0
    assert accounting["examples_by_split"]["train"] > accounting["examples_by_split"]["test"]


def test_held_out_stations_go_to_holdout_only():
    spec = FeatureSpec(n_lags=3, holdout_stations=(2,))
    features, accounting = build_features(clean_frame(stations=(1, 2, 3), readings=40), spec)
    assert (features.loc[features["station_id"] == 2, "split"] == "holdout").all()
    assert (features.loc[features["station_id"] != 2, "split"] != "holdout").all()
    assert accounting["examples_by_split"]["holdout"] == int((features["station_id"] == 2).sum()) > 0
    in_time = features[features["split"] != "holdout"]
    assert in_time.loc[in_time["split"] == "train", "target_time"].max() <= in_time.loc[in_time["split"] == "test", "target_time"].min()


def test_holding_out_every_station_is_a_config_error():
    with pytest.raises(ConfigError) as raised:
        build_features(clean_frame(stations=(1, 2)), FeatureSpec(n_lags=2, holdout_stations=(1, 2)))
    assert str(raised.value) == "featurize.holdout_stations: every station is held out; nothing is left to train on"


def test_series_too_short_for_any_example_is_not_blamed_on_holdout_stations():
    """No station is held out: the error says what is missing, not that every station is held out."""
    short = clean_frame(stations=(1, 2), readings=3)
    with pytest.raises(ConfigError) as raised:
        build_features(short, FeatureSpec(n_lags=6))
    assert str(raised.value) == (
        "featurize: no series has the 7 readings one example needs (n_lags + horizon); "
        "lower featurize.n_lags or featurize.horizon, or add data"
    )


def test_a_series_just_long_enough_gives_one_example_each():
    features, accounting = build_features(clean_frame(stations=(1, 2), readings=7), FeatureSpec(n_lags=6))
    assert len(features) == 2
    assert accounting["readings_without_full_history"] == 2 * 5
    assert accounting["readings_without_target"] == 2


LAGS_MESSAGE = "featurize.n_lags and featurize.horizon must be at least 1"
FRACTIONS_MESSAGE = "featurize.valid_fraction and test_fraction must be positive and sum below 1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_lags": 0}, LAGS_MESSAGE),
        ({"horizon": 0}, LAGS_MESSAGE),
        ({"valid_fraction": 0.0}, FRACTIONS_MESSAGE),
        ({"test_fraction": -0.1}, FRACTIONS_MESSAGE),
        ({"valid_fraction": 0.5, "test_fraction": 0.5}, FRACTIONS_MESSAGE),
    ],
)
def test_unusable_feature_spec_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError) as raised:
        FeatureSpec(**kwargs)
    assert str(raised.value) == message
