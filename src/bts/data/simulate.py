"""Deterministic synthetic BTS parameter exports, shaped like the real ones.

Real exports are event driven: a station sends a reading when a value changes,
in bursts of readings one second apart (about 15% share a timestamp) separated
by minutes of silence; values move in 0.5 steps along a sawtooth-like cycle
around a daily curve. Stations differ from one another: each has its own
level, step size, cycle length and daily curve per sensor, and its own
reporting rate (drawn once per station from the seed, so a station looks alike
every day); how far apart is a choice (the factors below) that puts the one
real station at hand, 1161114004, inside the simulated ones' range. The
generator reproduces that, then adds the dirt that real exports carry, each
kind at its own configurable rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from bts.data.catalogue import Sensor
from bts.data.schemas import SENTINEL
from bts.errors import ConfigError
from bts.params import DirtParams

EXPORT_COLUMNS = ["id", "value", "station_id", "parameter_id", "reading_time"]
FIRST_ID = 7_000_000_001  # real exports use ids near 5.65e9; keep simulated ones apart
IDS_PER_DAY = 100_000_000  # a day of readings spans fewer ids: days made apart (by start date) never share one
DAY_SECONDS = 86_400
STATION_TRAITS = 7_919  # tags the random streams of a station's traits apart from its daily ones


@dataclass(frozen=True)
class SeriesProfile:
    """How one sensor parameter moves: a daily curve plus a sawtooth cycle."""

    level: float
    daily_amplitude: float
    peak_hour: float
    swing: float  # half height of the sawtooth cycle
    mean_step: float  # typical change between two readings
    quantum: float = 0.5
    level_spread: float = 0.05  # how far stations' levels lie apart, as a fraction of the level


PROFILES: dict[int, SeriesProfile] = {
    111: SeriesProfile(level=27.0, daily_amplitude=2.5, peak_hour=15, swing=1.5, mean_step=0.5),
    114: SeriesProfile(level=28.0, daily_amplitude=5.0, peak_hour=14, swing=1.0, mean_step=0.5),
    115: SeriesProfile(level=70.0, daily_amplitude=10.0, peak_hour=4, swing=3.0, mean_step=1.0),
    116: SeriesProfile(level=30.0, daily_amplitude=2.0, peak_hour=16, swing=1.0, mean_step=0.5),
    121: SeriesProfile(level=221.0, daily_amplitude=6.0, peak_hour=3, swing=4.0, mean_step=1.0, level_spread=0.03),
    122: SeriesProfile(level=14.0, daily_amplitude=1.0, peak_hour=14, swing=6.0, mean_step=1.4, level_spread=0.4),
    123: SeriesProfile(level=50.0, daily_amplitude=0.2, peak_hour=3, swing=0.5, mean_step=0.5),
    141: SeriesProfile(level=53.5, daily_amplitude=0.4, peak_hour=13, swing=0.8, mean_step=0.5),
}


MEAN_SILENCE_SECONDS = 95.0
# How far stations lie apart at station_spread 1: factors drawn log-uniformly within [1 / f, f], shifts uniformly within +-.
STEP_FACTOR = 2.0  # a station's steps (and its cycle's height) are up to twice or half another's
CYCLE_FACTOR = 1.6  # the cycle's height relative to the steps: how many readings one cycle takes
DAILY_FACTOR = 2.0  # the daily curve's amplitude
PEAK_SHIFT_HOURS = 4.0  # the daily curve's peak hour
SILENCE_FACTOR = 2.0  # the station's mean silence between bursts: its reporting rate


def _log_uniform(rng: np.random.Generator, factor: float, spread: float) -> float:
    return math.exp(spread * rng.uniform(-math.log(factor), math.log(factor)))


def station_profile(profile: SeriesProfile, rng: np.random.Generator, spread: float) -> SeriesProfile:
    """One station's version of a sensor's profile: its level, step size, cycle length and daily curve (spread 0: the profile)."""
    step = _log_uniform(rng, STEP_FACTOR, spread)
    return replace(
        profile,
        level=profile.level * (1 + spread * profile.level_spread * rng.uniform(-1, 1)),
        mean_step=profile.mean_step * step,
        swing=profile.swing * step * _log_uniform(rng, CYCLE_FACTOR, spread),
        daily_amplitude=profile.daily_amplitude * _log_uniform(rng, DAILY_FACTOR, spread),
        peak_hour=profile.peak_hour + spread * rng.uniform(-PEAK_SHIFT_HOURS, PEAK_SHIFT_HOURS),
    )


# How a station's behaviour can change (`shifts` of simulate_exports), for days a model has not seen the like of:
# its level moves by a tenth of the sensor's level, its steps triple, or its cycle shrinks to a single step so that
# readings go up and down in turn (what a model that learnt to follow a trend forecasts worse than persistence).
SHIFTS = {
    "level": lambda p: replace(p, level=p.level * 1.1),
    "step": lambda p: replace(p, mean_step=p.mean_step * 3, swing=p.swing * 3),
    "rhythm": lambda p: replace(p, swing=p.quantum, mean_step=2 * p.quantum),
}


def _event_gaps(rng: np.random.Generator, n: int, mean_silence: float = MEAN_SILENCE_SECONDS) -> np.ndarray:
    """Seconds between readings: same-second repeats, 1-4 s bursts, long silences."""
    kind = rng.random(n)
    burst = rng.integers(1, 5, n)
    silence = np.ceil(rng.exponential(mean_silence, n))
    return np.where(kind < 0.17, 0, np.where(kind < 0.65, burst, silence)).astype(np.int64)


def _triangle(phase: np.ndarray) -> np.ndarray:
    """Triangle wave in [-1, 1] with period 1."""
    return 4.0 * np.abs(phase - np.floor(phase + 0.5)) - 1.0


def simulate_series(
    profile: SeriesProfile,
    day_start: pd.Timestamp,
    rng: np.random.Generator,
    mean_silence: float = MEAN_SILENCE_SECONDS,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> pd.DataFrame:
    """One station's readings of one parameter over one day: reading_time, value (within bounds, the sensor's range)."""
    seconds = np.cumsum(_event_gaps(rng, 4_000, mean_silence)) + int(rng.integers(0, 120))
    seconds = seconds[seconds < DAY_SECONDS]
    phase_step = rng.uniform(0.6, 1.4, len(seconds)) * profile.mean_step / (4.0 * profile.swing)
    phase = rng.random() + np.cumsum(phase_step)
    hours = seconds / 3600.0
    daily = profile.daily_amplitude * np.cos(2 * np.pi * (hours - profile.peak_hour) / 24.0)
    value = profile.level + daily + profile.swing * _triangle(phase)
    value = np.clip(np.round(value / profile.quantum) * profile.quantum, *bounds)
    changed = np.concatenate([[True], np.diff(value) != 0])  # a reading is sent when the value changes
    times = day_start + pd.to_timedelta(seconds[changed], unit="s")
    return pd.DataFrame({"reading_time": times, "value": value[changed]})


def _spoil(day: pd.DataFrame, dirt: DirtParams, catalogue: dict[int, Sensor], rng: np.random.Generator) -> pd.DataFrame:
    """Apply each kind of dirt to its own random rows of one day's export."""
    n = len(day)
    value = day["value"].to_numpy(dtype=object, copy=True)  # object: a missing value is written as an empty field

    def pick(rate: float) -> np.ndarray:
        return rng.random(n) < rate

    spike = pick(dirt.out_of_range)
    maxima = day["parameter_id"].map(lambda p: catalogue[p].max).to_numpy()
    value[spike] = maxima[spike] * 3 + 7.5
    value[pick(dirt.sentinel)] = SENTINEL
    value[pick(dirt.missing_value)] = None
    day = day.assign(value=value)
    bad_time = pick(dirt.bad_time)
    garbage = np.array(["", "N/A", "2017-13-45 25:61:00", "18/04/2017 07:00"], dtype=object)
    times = day["reading_time"].to_numpy(dtype=object, copy=True)
    times[bad_time] = garbage[rng.integers(0, len(garbage), int(bad_time.sum()))]
    day = day.assign(reading_time=times)
    repeats = day[pick(dirt.duplicate_id)]  # a row sent twice, right after itself
    day = pd.concat([day, repeats]).sort_index(kind="stable").reset_index(drop=True)
    order = np.arange(len(day))
    for i in np.flatnonzero(rng.random(len(day)) < dirt.out_of_order):  # a row delivered a few places late
        j = min(len(day) - 1, i + int(rng.integers(2, 20)))
        order[i], order[j] = order[j], order[i]
    return day.iloc[order].reset_index(drop=True)


def simulate_exports(
    stations: list[int],
    parameters: list[int],
    start_date: str,
    days: int,
    seed: int,
    dirt: DirtParams,
    catalogue: dict[int, Sensor],
    station_spread: float = 1.0,
    shifts: dict[int, str] | None = None,
    first_id: int = FIRST_ID,
    day_seed: int | None = None,
) -> dict[str, pd.DataFrame]:
    """{file name: export frame}, one export per day covering every station and parameter.

    station_spread scales how far stations differ (0: every station follows the same profiles, 1: the factors of this
    module); each station's traits come from the seed and its id alone. shifts ({station: a kind of SHIFTS}) changes
    how those stations behave on every day made; reading ids start after first_id; day_seed (default: seed) draws
    the days' readings.
    """
    unknown_shifts = {kind for kind in (shifts or {}).values() if kind not in SHIFTS}
    if unknown_shifts:
        raise ConfigError(f"simulate: unknown shift {sorted(unknown_shifts)}; known: {', '.join(SHIFTS)}")
    unknown = [p for p in parameters if p not in PROFILES or p not in catalogue]
    if unknown:
        raise ConfigError(f"simulate.parameters: no simulation profile for {unknown}; known: {sorted(PROFILES)}")
    if days < 1 or not stations:
        raise ConfigError("simulate: need at least one day and one station")
    if station_spread < 0:
        raise ConfigError(f"simulate: station_spread must be at least 0, got {station_spread}")
    profiles = {
        (station_id, parameter_id): station_profile(
            PROFILES[parameter_id], np.random.default_rng([seed, station_id, parameter_id, STATION_TRAITS]), station_spread
        )
        for station_id in stations
        for parameter_id in parameters
    }
    for (station_id, parameter_id), profile in profiles.items():
        if station_id in (shifts or {}):
            profiles[station_id, parameter_id] = SHIFTS[shifts[station_id]](profile)
    silences = {
        station_id: MEAN_SILENCE_SECONDS
        * _log_uniform(np.random.default_rng([seed, station_id, STATION_TRAITS]), SILENCE_FACTOR, station_spread)
        for station_id in stations
    }
    exports = {}
    next_id = first_id
    daily = seed if day_seed is None else day_seed
    for day_index in range(days):
        day_start = pd.Timestamp(start_date) + pd.Timedelta(days=day_index)
        frames = []
        for station_index, station_id in enumerate(stations):
            silent_rng = np.random.default_rng([daily, day_index, station_index, 0])
            silent_from = silent_rng.uniform(0, 24 - dirt.silent_hours) if silent_rng.random() < dirt.silent_station_days else None
            for parameter_id in parameters:
                rng = np.random.default_rng([daily, day_index, station_index, parameter_id])
                sensor = catalogue[parameter_id]
                series = simulate_series(profiles[station_id, parameter_id], day_start, rng, silences[station_id], (sensor.min, sensor.max))
                if silent_from is not None:
                    hour = (series["reading_time"] - day_start).dt.total_seconds() / 3600
                    series = series[(hour < silent_from) | (hour >= silent_from + dirt.silent_hours)]
                frames.append(series.assign(station_id=station_id, parameter_id=parameter_id))
        day = pd.concat(frames, ignore_index=True).sort_values(["reading_time", "station_id", "parameter_id"], kind="stable")
        rng = np.random.default_rng([daily, day_index])
        ids = next_id + np.cumsum(rng.integers(1, 300, len(day)))
        next_id = int(ids[-1])
        day = day.assign(id=ids, reading_time=day["reading_time"].dt.strftime("%Y-%m-%d %H:%M:%S")).reset_index(drop=True)
        exports[f"param-{day_start:%Y-%m-%d}.csv"] = _spoil(day[EXPORT_COLUMNS], dirt, catalogue, rng)
    return exports
