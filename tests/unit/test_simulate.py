"""The simulator: deterministic, shaped like the real exports, and dirty exactly as configured."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from bts.data.schemas import SENTINEL, TIMESTAMP_FORMAT
from bts.data.simulate import EXPORT_COLUMNS, PEAK_SHIFT_HOURS, PROFILES, STATION_TRAITS, STEP_FACTOR, simulate_exports, station_profile
from bts.errors import ConfigError
from bts.params import DirtParams

STATIONS = [1161114004, 1161114005]
PARAMETERS = [122, 121, 111, 141]


def simulate(catalogue, seed: int = 7, dirt: DirtParams | None = None, days: int = 2, stations=STATIONS, parameters=PARAMETERS):
    return simulate_exports(
        stations=list(stations),
        parameters=list(parameters),
        start_date="2017-04-18",
        days=days,
        seed=seed,
        dirt=dirt or DirtParams(),
        catalogue=catalogue,
    )


def pooled(exports: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(exports.values(), ignore_index=True)


def times(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame["reading_time"], format=TIMESTAMP_FORMAT, errors="coerce")


def test_same_seed_gives_identical_frames(catalogue):
    dirt = DirtParams(missing_value=0.01, sentinel=0.01, duplicate_id=0.01, out_of_range=0.01, bad_time=0.01, out_of_order=0.01)
    first, second = simulate(catalogue, seed=11, dirt=dirt), simulate(catalogue, seed=11, dirt=dirt)
    assert list(first) == list(second)
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name])


def test_different_seed_gives_different_frames(catalogue):
    first, second = simulate(catalogue, seed=11), simulate(catalogue, seed=12)
    assert list(first) == list(second)  # same days, so same file names
    for name in first:
        assert not first[name].equals(second[name])


def test_one_export_per_day_with_the_export_columns(catalogue):
    exports = simulate(catalogue, days=3)
    assert list(exports) == ["param-2017-04-18.csv", "param-2017-04-19.csv", "param-2017-04-20.csv"]
    for name, frame in exports.items():
        assert list(frame.columns) == EXPORT_COLUMNS
        day = name.removeprefix("param-").removesuffix(".csv")
        assert frame["reading_time"].str.startswith(day).all()
        assert set(frame["station_id"]) == set(STATIONS)
        assert set(frame["parameter_id"]) == set(PARAMETERS)


def test_clean_simulation_is_shaped_like_real_exports(catalogue):
    frame = pooled(simulate(catalogue))
    values = frame["value"].astype("float64")
    assert (values * 2 == np.round(values * 2)).all(), "values move in 0.5 steps"
    assert times(frame).notna().all(), "every timestamp is in the export format"
    assert frame["id"].is_unique and frame["id"].is_monotonic_increasing, "ids are unique and grow across days"
    maxima = frame["parameter_id"].map(lambda p: catalogue[p].max)
    minima = frame["parameter_id"].map(lambda p: catalogue[p].min)
    assert values.between(minima, maxima).all(), "values lie in their sensor's plausible range"


def test_about_one_in_six_consecutive_readings_share_a_second(catalogue):
    frame = pooled(simulate(catalogue)).assign(time=lambda f: times(f))
    steps = frame.groupby(["station_id", "parameter_id"])["time"].diff().dropna()
    share = float((steps == pd.Timedelta(0)).mean())
    assert 0.10 <= share <= 0.25
    assert (steps >= pd.Timedelta(0)).all(), "a clean series is in time order"


def test_values_change_between_consecutive_readings_of_a_series(catalogue):
    """A reading is sent when the value changes."""
    frame = pooled(simulate(catalogue))
    changes = frame.groupby(["station_id", "parameter_id", frame["reading_time"].str[:10]])["value"].diff().dropna()
    assert (changes != 0).all()


# Each dirt kind and how to measure its share of rows in the pooled exports.
DIRT_MEASURES: dict[str, Callable[[pd.DataFrame, dict], float]] = {
    "missing_value": lambda f, cat: float(f["value"].isna().mean()),
    "sentinel": lambda f, cat: float(f["value"].eq(SENTINEL).mean()),
    "out_of_range": lambda f, cat: float(
        (pd.to_numeric(f["value"]).gt(f["parameter_id"].map(lambda p: cat[p].max)) & f["value"].ne(SENTINEL)).mean()
    ),
    "duplicate_id": lambda f, cat: float(f["id"].duplicated().mean()),
    "bad_time": lambda f, cat: float(times(f).isna().mean()),
}


def late_share(exports: dict[str, pd.DataFrame]) -> float:
    """Share of rows older than the row before them in their file (files are written in time order)."""
    late = sum(int((times(frame).diff() < pd.Timedelta(0)).sum()) for frame in exports.values())
    return late / sum(len(frame) for frame in exports.values())


def test_no_dirt_at_all_when_every_rate_is_zero(catalogue):
    exports = simulate(catalogue)
    frame = pooled(exports)
    for kind, measure in DIRT_MEASURES.items():
        assert measure(frame, catalogue) == 0, kind
    assert late_share(exports) == 0


@pytest.mark.parametrize("kind", [*DIRT_MEASURES, "out_of_order"])
def test_each_dirt_kind_appears_at_roughly_its_rate_and_alone(kind, catalogue):
    rate = 0.05
    exports = simulate(catalogue, dirt=DirtParams(**{kind: rate}))
    frame = pooled(exports)
    assert len(frame) > 10_000
    shares = {name: measure(frame, catalogue) for name, measure in DIRT_MEASURES.items()}
    shares["out_of_order"] = late_share(exports)
    if kind == "out_of_order":
        assert 0.5 * rate <= shares[kind] <= 3 * rate  # one late row can make one or two steps backwards
    else:
        assert 0.6 * rate <= shares[kind] <= 1.4 * rate
    assert {name: share for name, share in shares.items() if name != kind} == dict.fromkeys(set(shares) - {kind}, 0.0)


def longest_silence_hours(frame: pd.DataFrame) -> pd.Series:
    """Per station, the longest time without a reading, counting from midnight to midnight."""
    day_start = pd.Timestamp("2017-04-18")
    day_end = day_start + pd.Timedelta(days=1)

    def longest(t: pd.Series) -> float:
        edges = pd.concat([pd.Series([day_start]), t.sort_values(), pd.Series([day_end])], ignore_index=True)
        return edges.diff().max() / pd.Timedelta(hours=1)

    return frame.assign(time=times(frame)).groupby("station_id")["time"].apply(longest)


@pytest.mark.parametrize(("rate", "low", "high"), [(0.0, 0.0, 0.0), (0.5, 0.25, 0.75), (1.0, 1.0, 1.0)])
def test_silent_station_days_appear_at_their_rate(rate, low, high, catalogue):
    dirt = DirtParams(silent_station_days=rate, silent_hours=3)
    frame = pooled(simulate(catalogue, dirt=dirt, days=1, stations=range(1, 41), parameters=[122]))
    silent = longest_silence_hours(frame) >= 3
    assert low <= silent.mean() <= high


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"parameters": [999]}, "no simulation profile for [999]"),
        ({"days": 0}, "need at least one day and one station"),
        ({"stations": []}, "need at least one day and one station"),
    ],
)
def test_unusable_simulate_params_raise_config_error(kwargs, message, catalogue):
    with pytest.raises(ConfigError) as caught:
        simulate(catalogue, **kwargs)
    assert message in str(caught.value)


# --- stations differ as real ones do ------------------------------------------------------------------------------

FIVE_STATIONS = [1161114011, 1161114015, 1161114023, 1161114031, 1161114042]


def series_statistics(exports: dict[str, pd.DataFrame], parameter_id: int) -> pd.DataFrame:
    """Per station, for one parameter: mean value, mean absolute step between readings, readings per day."""
    frame = pooled(exports).assign(time=lambda f: times(f))
    frame = frame[frame["parameter_id"] == parameter_id].sort_values(["station_id", "time"], kind="stable")
    values = frame.groupby("station_id")["value"]
    return pd.DataFrame(
        {
            "mean": values.mean(),
            "mean_step": values.apply(lambda v: v.diff().abs().mean()),
            "per_day": values.size() / len(exports),
        }
    )


def test_stations_differ_in_level_step_size_and_reporting_rate(catalogue):
    stats = series_statistics(simulate(catalogue, days=1, stations=FIVE_STATIONS, parameters=[122]), 122)
    assert stats["mean"].max() / stats["mean"].min() > 1.2
    assert stats["mean_step"].max() / stats["mean_step"].min() > 1.5
    assert stats["per_day"].max() / stats["per_day"].min() > 1.5


def test_the_real_station_lies_among_the_simulated_ones(catalogue):
    """Station 1161114004 of ../shared/data/bts (Load of power grid, 2017-04-18): mean 14.1 A, mean step 1.33 A, 2348 readings."""
    stats = series_statistics(simulate(catalogue, days=2, stations=FIVE_STATIONS, parameters=[122]), 122)
    for column, real in {"mean": 14.1, "mean_step": 1.33, "per_day": 2348}.items():
        assert stats[column].min() < real < stats[column].max(), column


def test_station_spread_0_makes_every_station_follow_the_same_profiles(catalogue):
    stats = series_statistics(simulate_exports(FIVE_STATIONS, [122], "2017-04-18", 1, 7, DirtParams(), catalogue, station_spread=0.0), 122)
    assert stats["mean_step"].max() / stats["mean_step"].min() < 1.1
    assert stats["per_day"].max() / stats["per_day"].min() < 1.2


def traits_rng(station: int) -> np.random.Generator:
    return np.random.default_rng([42, station, 122, STATION_TRAITS])


def test_a_station_has_the_same_traits_whatever_the_other_stations():
    """Traits come from the seed and the station id, not its place in the list: a station looks alike in every run."""
    rng = traits_rng
    assert station_profile(PROFILES[122], rng(1161114011), 1.0) == station_profile(PROFILES[122], rng(1161114011), 1.0)
    assert station_profile(PROFILES[122], rng(1161114011), 1.0) != station_profile(PROFILES[122], rng(1161114015), 1.0)
    assert station_profile(PROFILES[122], rng(1161114011), 0.0) == PROFILES[122]


@pytest.mark.parametrize("station", FIVE_STATIONS)
def test_station_traits_stay_within_their_spread(station):
    profile = PROFILES[122]
    traits = station_profile(profile, traits_rng(station), 1.0)
    assert abs(traits.level / profile.level - 1) <= profile.level_spread
    assert 1 / STEP_FACTOR <= traits.mean_step / profile.mean_step <= STEP_FACTOR
    assert abs(traits.peak_hour - profile.peak_hour) <= PEAK_SHIFT_HOURS


def test_negative_station_spread_is_a_config_error(catalogue):
    with pytest.raises(ConfigError, match="station_spread must be at least 0"):
        simulate_exports(STATIONS, PARAMETERS, "2017-04-18", 1, 7, DirtParams(), catalogue, station_spread=-1.0)
