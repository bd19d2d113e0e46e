"""Supervised examples from clean readings: lags, gaps, target, time-ordered splits and accounting."""

from __future__ import annotations

import ast
import inspect
import pickle

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from bts.data.features import CALENDAR_COLUMNS, SPLITS, WINDOW_COLUMNS, FeatureSpec, build_features, window_features
from bts.errors import ConfigError
from bts.params import FeaturizeParams

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
        "step_scale",
        "offset_in_steps",
        "range_position",
    ]
    assert spec.target_columns == ["target_h1", "target_h5", "target_h15"]
    assert spec.target_time_columns == ["target_time_h1", "target_time_h5", "target_time_h15"]
    assert set(spec.feature_columns) | set(spec.target_columns) | set(spec.target_time_columns) | {"split"} <= set(features.columns)
    assert not set(CALENDAR_COLUMNS) & set(features.columns)  # off unless asked for


def test_calendar_columns_come_only_when_asked_for(clean):
    spec = FeatureSpec(n_lags=4, calendar=True)
    features, _ = build_features(clean, spec)
    assert spec.feature_columns[-3:] == ["hour_sin", "hour_cos", "day_of_week"]
    assert set(CALENDAR_COLUMNS) <= set(features.columns)
    assert list(features.columns[:5]) == ["station_id", "parameter_id", "reading_time", "reading_id", "split"]


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
    spec = FeatureSpec(n_lags=4, horizons=[1])
    features, accounting = build_features(clean_frame(stations=(1, 2, 3), readings=10), spec)
    for _, series in features.groupby("station_id"):
        assert position(series["lag_1"]).min() == spec.n_lags - 1
    assert accounting["readings_without_full_history"] == 3 * (spec.n_lags - 1)


def test_gaps_are_seconds_between_consecutive_lags(clean):
    spec = FeatureSpec(n_lags=4, horizons=[1])
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
    features, _ = build_features(clean, FeatureSpec(n_lags=2, calendar=True))
    assert (features["day_of_week"] == 1.0).all()  # 2017-04-18 was a Tuesday
    assert features["hour_sin"].between(-1, 1).all() and features["hour_cos"].between(-1, 1).all()
    assert ((features["hour_sin"] ** 2 + features["hour_cos"] ** 2).round(9) == 1).all()


@pytest.mark.parametrize("horizons", [[1], [3], [1, 2, 7]])
def test_each_target_is_the_reading_its_horizon_steps_ahead(horizons, clean):
    features, _ = build_features(clean, FeatureSpec(n_lags=3, horizons=horizons))
    time_of = clean.set_index("value")["reading_time"]
    for horizon in horizons:
        target, target_time = features[f"target_h{horizon}"], features[f"target_time_h{horizon}"]
        assert (station_of(target) == features["station_id"]).all()
        assert (position(target) == position(features["lag_1"]) + horizon).all()
        assert (target_time.to_numpy() == time_of.loc[target].to_numpy()).all()
        assert (target_time >= features["reading_time"]).all()
    # every example has every target: the farthest one decides which readings are examples
    assert position(features["lag_1"]).max() == 20 - 1 - max(horizons)


@pytest.mark.parametrize(("n_lags", "horizons"), [(1, [1]), (4, [1]), (6, [2]), (3, [1, 4])])
def test_every_reading_is_accounted_for(n_lags, horizons):
    readings, stations = 15, (1, 2)
    clean = clean_frame(stations=stations, readings=readings)
    features, accounting = build_features(clean, FeatureSpec(n_lags=n_lags, horizons=horizons))
    assert accounting["readings_in"] == len(clean)
    assert accounting["examples_out"] == len(features)
    assert accounting["readings_in"] == (
        accounting["examples_out"] + accounting["readings_without_full_history"] + accounting["readings_without_target"]
    )
    assert accounting["readings_without_full_history"] == len(stations) * (n_lags - 1)
    assert accounting["readings_without_target"] == len(stations) * max(horizons)
    assert sum(accounting["examples_by_split"].values()) == len(features)


def test_splits_are_in_time_order_of_the_farthest_target_within_each_station():
    features, accounting = build_features(clean_frame(stations=(1, 2, 3), readings=40), FeatureSpec(n_lags=3))
    for station, examples in features.groupby("station_id"):
        by_split = {split: examples.loc[examples["split"] == split, "target_time_h15"] for split in ["train", "valid", "test"]}
        assert all(len(targets) > 0 for targets in by_split.values()), station
        assert by_split["train"].max() <= by_split["valid"].min()
        assert by_split["valid"].max() <= by_split["test"].min()
    assert set(features["split"]) <= set(SPLITS)
    assert accounting["examples_by_split"]["holdout"] == 0
    assert accounting["examples_by_split"]["train"] > accounting["examples_by_split"]["test"]


def test_a_station_whose_readings_all_come_before_the_others_has_valid_and_test_examples_too():
    """A real export of one early day beside later simulated days: split by global time, all of it would be train."""
    later = clean_frame(stations=(1, 2), readings=40)
    early = one_series([float(v % 7) for v in range(40)], station=1161114004).assign(
        reading_time=lambda f: f["reading_time"] - pd.Timedelta(days=3), source_file="real.csv", source_row=range(2, 42)
    )
    features, _ = build_features(pd.concat([later, early], ignore_index=True), FeatureSpec(n_lags=3, horizons=[1]))
    assert early["reading_time"].max() < later["reading_time"].min()
    counts = features.groupby(["station_id", "split"]).size().unstack(fill_value=0)
    assert (counts[["train", "valid", "test"]] > 0).all(axis=None), counts
    # the same fractions in each station, whatever its hours
    assert counts.loc[1161114004, "test"] == counts.loc[1, "test"]


def test_held_out_stations_go_to_holdout_only():
    spec = FeatureSpec(n_lags=3, holdout_stations=(2,))
    features, accounting = build_features(clean_frame(stations=(1, 2, 3), readings=40), spec)
    assert (features.loc[features["station_id"] == 2, "split"] == "holdout").all()
    assert (features.loc[features["station_id"] != 2, "split"] != "holdout").all()
    assert accounting["examples_by_split"]["holdout"] == int((features["station_id"] == 2).sum()) > 0
    in_time = features[features["split"] != "holdout"]
    train, test = in_time[in_time["split"] == "train"], in_time[in_time["split"] == "test"]
    assert train["target_time_h15"].max() <= test["target_time_h15"].min()


def test_a_held_out_station_from_another_export_leaves_the_others_splits_as_they_were():
    """A real export of one station (other ids, other hours) held out beside simulated stations: their splits do not move."""
    simulated = clean_frame(stations=(1, 2), readings=40)
    real = one_series([float(v) for v in range(20)], station=1161114004).assign(
        reading_time=lambda f: f["reading_time"] - pd.Timedelta(hours=6), source_file="real.csv", source_row=range(2, 22)
    )
    spec = FeatureSpec(n_lags=3)
    alone, _ = build_features(simulated, spec)
    both, accounting = build_features(pd.concat([simulated, real], ignore_index=True), spec.but(holdout_stations=[1161114004]))
    assert (both.loc[both["station_id"] == 1161114004, "split"] == "holdout").all()
    assert accounting["examples_by_split"]["holdout"] == 20 - (spec.n_lags - 1) - max(spec.horizons)
    kept = both[both["station_id"] != 1161114004].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, alone)


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
        "featurize: no series has the 21 readings one example needs (n_lags + the farthest of horizons); "
        "lower featurize.n_lags or featurize.horizons, or add data"
    )


def test_a_series_just_long_enough_gives_one_example_each():
    features, accounting = build_features(clean_frame(stations=(1, 2), readings=7), FeatureSpec(n_lags=6, horizons=[1]))
    assert len(features) == 2
    assert accounting["readings_without_full_history"] == 2 * 5
    assert accounting["readings_without_target"] == 2


# --- the recent window: step_scale, offset_in_steps, range_position ---------------------------------------------------


def one_series(values: list[float], station: int = 1) -> pd.DataFrame:
    """One series of readings a minute apart, with these values in time order."""
    times = START + pd.to_timedelta(np.arange(len(values)), unit="min")
    return pd.DataFrame(
        {"station_id": station, "parameter_id": 122, "reading_time": times, "id": np.arange(len(values)) + 100 * station, "value": values}
    ).astype({"station_id": "int64", "parameter_id": "int64", "reading_time": "datetime64[us]", "id": "int64", "value": "float64"})


def window_of(values: list[float], window: int) -> pd.DataFrame:
    return pd.DataFrame(window_features(pd.Series(values, dtype="float64"), pd.Series(range(len(values))), window))


def test_window_features_by_hand():
    frame = window_of([10.0, 12.0, 11.0, 14.0], window=3)
    # steps 2, 1, 3; a window of 3 readings holds 2 steps
    np.testing.assert_allclose(frame["step_scale"], [0.0, 2.0, 1.5, 2.0])
    np.testing.assert_allclose(frame["offset_in_steps"], [0.0, (12 - 11) / 2.0, (11 - 11) / 1.5, (14 - 37 / 3) / 2.0])
    np.testing.assert_allclose(frame["range_position"], [0.5, 1.0, 0.5, 1.0])


def test_a_flat_window_has_scale_0_offset_0_and_sits_in_the_middle():
    frame = window_of([5.0, 5.0, 5.0], window=3)
    assert frame.to_dict("list") == {"step_scale": [0.0, 0.0, 0.0], "offset_in_steps": [0.0, 0.0, 0.0], "range_position": [0.5, 0.5, 0.5]}


def test_window_features_are_the_same_in_any_unit_for_offset_and_position():
    """A series and the same series in another unit and level (x 10 + 200): the scale follows, the rest is unit-free."""
    values = [10.0, 12.0, 11.0, 14.0, 13.5, 9.0, 10.5]
    base, scaled = window_of(values, window=4), window_of([10 * v + 200 for v in values], window=4)
    np.testing.assert_allclose(scaled["step_scale"], 10 * base["step_scale"])
    np.testing.assert_allclose(scaled[["offset_in_steps", "range_position"]], base[["offset_in_steps", "range_position"]])


def test_window_features_look_back_only_and_never_into_another_series():
    """Each example's window statistics equal those of its own series' readings up to lag_1, however series interleave."""
    first = [10.0, 12.0, 11.0, 14.0, 13.5, 9.0, 10.5, 11.0]
    second = [200.0, 230.0, 215.0, 240.0, 180.0, 190.0, 210.0, 205.0]
    clean = pd.concat([one_series(first, station=1), one_series(second, station=2)]).sample(frac=1, random_state=3)
    spec = FeatureSpec(n_lags=2, horizons=[1], scale_window=3)
    features, _ = build_features(clean, spec)
    for station, values in {1: first, 2: second}.items():
        expected = window_of(values, window=3).iloc[spec.n_lags - 1 : len(values) - 1].reset_index(drop=True)  # rows with lags and target
        got = features.loc[features["station_id"] == station, WINDOW_COLUMNS].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected)


def test_a_future_reading_does_not_change_the_window_features_of_earlier_ones():
    values = [10.0, 12.0, 11.0, 14.0, 13.5, 9.0]
    shorter, longer = window_of(values, window=4), window_of([*values, 99.0], window=4)
    pd.testing.assert_frame_equal(longer.iloc[: len(values)], shorter)


def test_window_features_over_windows_longer_than_the_series_use_what_there_is():
    frame = window_of([1.0, 3.0, 2.0], window=50)
    np.testing.assert_allclose(frame["step_scale"], [0.0, 2.0, 1.5])
    np.testing.assert_allclose(frame["range_position"], [0.5, 1.0, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_lags": 0}, "featurize.n_lags: Input should be greater than or equal to 1, got 0"),
        ({"horizons": [1, 0]}, "featurize.horizons[1]: Input should be greater than or equal to 1, got 0"),
        ({"horizons": []}, "featurize.horizons: needs at least 1 item(s), got []"),
        ({"horizons": [5, 1]}, "featurize: horizons must be distinct steps in increasing order, got [5, 1]"),
        ({"horizons": [1, 1]}, "featurize: horizons must be distinct steps in increasing order, got [1, 1]"),
        ({"horizons": 5}, "featurize.horizons: Input should be a valid list, got 5"),
        ({"valid_fraction": 0.0}, "featurize.valid_fraction: Input should be greater than 0, got 0.0"),
        ({"test_fraction": -0.1}, "featurize.test_fraction: Input should be greater than 0, got -0.1"),
        ({"valid_fraction": 0.5, "test_fraction": 0.5}, "featurize: valid_fraction + test_fraction must be below 1"),
        ({"scale_window": 1}, "featurize.scale_window: Input should be greater than or equal to 2, got 1"),
        ({"holdout_stations": [3, -1]}, "featurize.holdout_stations[1]: Input should be greater than or equal to 0, got -1"),
        ({"n_lag": 3}, "featurize.n_lag: unknown key (allowed: " + ", ".join(FeaturizeParams.model_fields) + ")"),
        ({"n_lags": 0, "horizons": [0]}, "featurize.n_lags: Input should be greater than or equal to 1, got 0 (and 1 more problem(s))"),
    ],
)
def test_unusable_feature_spec_is_one_config_error_line_naming_the_key(kwargs, message):
    with pytest.raises(ConfigError) as raised:
        FeatureSpec(**kwargs)
    assert str(raised.value) == message


def test_the_spec_is_the_featurize_params_with_no_field_repeated() -> None:
    assert list(FeatureSpec.model_fields) == list(FeaturizeParams.model_fields)
    for name, field in FeatureSpec.model_fields.items():  # same type, default and constraints (pydantic copies each field)
        assert repr(field) == repr(FeaturizeParams.model_fields[name]), name
    body = ast.parse(inspect.getsource(FeatureSpec)).body[0]
    assert isinstance(body, ast.ClassDef) and [base.id for base in body.bases] == ["FeaturizeParams"]
    assert not [node for node in body.body if isinstance(node, ast.AnnAssign)]  # no field (re)defined here
    assert FeatureSpec().model_dump() == FeaturizeParams().model_dump()  # the defaults live in one place


def test_the_spec_of_the_featurize_params_is_built_one_way() -> None:
    params = FeaturizeParams(
        n_lags=4, horizons=[2], valid_fraction=0.1, test_fraction=0.2, holdout_stations=[7, 3], scale_window=12, calendar=True
    )
    spec = FeatureSpec.from_params(params)
    assert isinstance(spec, FeatureSpec) and spec.model_dump() == params.model_dump()  # every param reaches the spec
    assert spec == FeatureSpec(
        n_lags=4, horizons=[2], valid_fraction=0.1, test_fraction=0.2, holdout_stations=(7, 3), scale_window=12, calendar=True
    )
    assert spec.feature_columns == [*spec.lag_columns, *spec.gap_columns, *WINDOW_COLUMNS, *CALENDAR_COLUMNS]


def test_a_derived_spec_is_validated_as_any_spec() -> None:
    """serving_rows and the benchmarks derive specs from another with some params changed."""
    spec = FeatureSpec(n_lags=4, holdout_stations=[2])
    derived = spec.but(horizons=[3], holdout_stations=[])
    assert isinstance(derived, FeatureSpec) and derived == FeatureSpec(n_lags=4, horizons=[3])
    assert spec.horizons == [1, 5, 15] and spec.holdout_stations == [2]  # the original is left as it was
    with pytest.raises(ConfigError, match=r"^featurize\.n_lags: Input should be greater than or equal to 1, got 0$"):
        spec.but(n_lags=0)
    with pytest.raises(ValidationError):  # frozen, as params are
        spec.n_lags = 5  # type: ignore[misc]


def test_a_spec_crosses_to_other_processes_intact() -> None:
    """The Spark engine pickles the spec to its Python workers."""
    spec = FeatureSpec(n_lags=3, holdout_stations=[5], calendar=True)
    copy = pickle.loads(pickle.dumps(spec))
    assert type(copy) is FeatureSpec and copy == spec and copy.feature_columns == spec.feature_columns


def _naive_trailing(values, position, window, reduce):
    """The window of each row computed alone, newest value first."""
    result = values.copy()
    for i in range(len(values)):
        for back in range(1, window):
            if position[i] >= back:
                result[i] = reduce(result[i], values[i - back])
    return result


@pytest.mark.parametrize("reduce", [np.add, np.minimum, np.maximum])
@pytest.mark.parametrize("window", [2, 3, 30])
def test_trailing_windows_stop_at_series_boundaries_and_sum_in_the_same_order(reduce, window):
    from bts.data.features import _trailing

    rng = np.random.default_rng(window)
    position = np.concatenate([np.arange(n) for n in (1, 4, 40, 2, 7)])  # a one-reading series, short and long ones
    values = rng.normal(size=len(position)) * 10.0 ** rng.integers(-3, 4, len(position))
    got, want = _trailing(values, position, window, reduce), _naive_trailing(values, position, window, reduce)
    assert np.array_equal(got.view(np.int64), want.view(np.int64))  # bit for bit, -0.0 included


def test_series_positions_count_rows_within_and_after_each_series():
    from bts.data.features import series_positions

    keys = pd.DataFrame({"station_id": [1, 1, 1, 2, 3, 3], "parameter_id": [7, 7, 8, 8, 8, 8]})
    position, left = series_positions(keys)
    assert position.tolist() == [0, 1, 0, 0, 0, 1]
    assert left.tolist() == [1, 0, 0, 0, 1, 0]


def test_a_row_with_a_missing_key_is_a_series_of_its_own():
    from bts.data.features import series_positions

    position, left = series_positions(pd.DataFrame({"station_id": [1.0, np.nan, 1.0], "parameter_id": [7, 7, 7]}))
    assert position.tolist() == [0, -1, 0] and left.tolist() == [0, -1, 0]


@pytest.mark.parametrize("k", [-2, -1, 0, 1, 3])
def test_shift_within_is_pandas_grouped_shift_on_rows_in_series_order(k):
    from bts.data.features import series_positions, shift_within

    frame = pd.DataFrame(
        {
            "station_id": [1, 1, 1, 1, 2, 2, 3],
            "parameter_id": [7, 7, 7, 7, 7, 7, 7],
            "value": [1.0, 2.0, -0.0, 4.0, 5.0, 6.0, 7.0],
            "reading_time": pd.to_datetime([0, 1, 9, 60, 0, 5, 3], unit="s").astype("datetime64[us]"),
        }
    )
    position, left = series_positions(frame[["station_id", "parameter_id"]])
    groups = frame.groupby(["station_id", "parameter_id"], sort=False)
    for column in ["value", "reading_time"]:
        want = groups[column].shift(k).to_numpy()
        got = shift_within(frame[column].to_numpy(), position, left, k)
        assert np.array_equal(got.view(np.int64), want.view(np.int64)), column


def test_features_of_unsorted_input_equal_those_of_sorted_input(clean):
    spec = FeatureSpec(n_lags=3)
    shuffled, _ = build_features(clean.sample(frac=1, random_state=3), spec)
    ordered, _ = build_features(clean.sort_values(["station_id", "parameter_id", "reading_time", "id"]), spec)
    pd.testing.assert_frame_equal(shuffled, ordered)


@pytest.mark.parametrize(
    "spec", [FeatureSpec(n_lags=3, scale_window=4), FeatureSpec(n_lags=2, horizons=[2, 3], scale_window=9, calendar=True)]
)
def test_any_slice_of_the_feature_table_holds_those_rows_of_the_whole_table(spec):
    from bts.data.features import FeatureTable

    table = FeatureTable(clean_frame(stations=(1, 2, 3), readings=25), spec)
    whole, accounting = build_features(clean_frame(stations=(1, 2, 3), readings=25), spec)
    assert table.accounting == accounting
    pd.testing.assert_frame_equal(table.rows(0, len(table)), whole, check_exact=True)
    for size in (1, 5, 17):  # slices that start inside a series, past its first windows
        parts = pd.concat([table.rows(start, start + size) for start in range(0, len(table), size)])
        pd.testing.assert_frame_equal(parts, whole, check_exact=True)
    farthest = whole[["split", f"target_time_h{max(spec.horizons)}"]].set_axis(["split", "target_time"], axis=1)
    pd.testing.assert_frame_equal(table.targets, farthest.reset_index(drop=True))
    pd.testing.assert_frame_equal(table.keys, whole[["station_id", "parameter_id", "reading_time", "reading_id"]])
