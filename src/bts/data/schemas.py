"""Pandera schemas of the raw and clean telemetry, built from the sensor catalogue.

The raw schema states what a good reading looks like; raw data is validated
against it lazily and may fail it (the failures are reported, not fatal). The
clean schema is strict: the clean stage fails if its output does not pass it.
Custom checks are registered so that both schemas serialize to YAML.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.extensions as extensions
import pandera.pandas as pa
from pandas.arrays import ArrowStringArray
from pandera.backends.base import CoreCheckResult
from pandera.backends.pandas.components import ColumnBackend
from pandera.backends.pandas.error_formatters import reshape_failure_cases
from pandera.backends.utils import convert_uniquesettings
from pandera.errors import SchemaErrorReason

from bts.data.catalogue import Sensor, plausible_ranges
from bts.data.readings import CLEAN_NAME, CLEAN_TYPES, folded_keys, in_order, repeated
from bts.errors import InputFileError, first_line
from bts.files import read_parquet

SENTINEL = 999999.0
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"
TIME_DTYPE = CLEAN_TYPES["reading_time"]


def parse_times(text: pd.Series, time_format: str = TIMESTAMP_FORMAT) -> pd.Series:
    """pandas' to_datetime(text, format=time_format, errors="coerce") as datetime64[us], each distinct string parsed once.

    The readings of a day share a few thousand times, so parsing those and spreading them back over the rows
    gives pandas' own result at a fraction of the cost. Text held in an Arrow array (immutable) is parsed once
    while that array lives: ingest's time checks and its coverage all read the same column of millions of rows.
    """
    source = text.array.__arrow_array__() if isinstance(text.array, ArrowStringArray) else None
    times = _last_parse.get(source, time_format)
    if times is None:
        codes, distinct = pd.factorize(text)  # a missing string gets code -1
        parsed = pd.to_datetime(distinct, format=time_format, errors="coerce").astype(TIME_DTYPE).to_numpy()
        times = np.append(parsed, np.datetime64("NaT"))[codes]  # code -1 takes the NaT at the end
        _last_parse.keep(source, time_format, times)
    return pd.Series(times, index=text.index, name=text.name, copy=True)


class _LastParse:
    """The times parsed from one Arrow array, forgotten when the array is (the array is the key, not its text)."""

    def __init__(self) -> None:
        self._source: weakref.ref | None = None
        self._format = ""
        self._times: np.ndarray | None = None

    def get(self, source: object, time_format: str) -> np.ndarray | None:
        same = source is not None and self._source is not None and self._source() is source
        return self._times if same and self._format == time_format else None

    def keep(self, source: object, time_format: str, times: np.ndarray) -> None:
        if source is not None:
            self._source, self._format, self._times = weakref.ref(source, self._forget), time_format, times

    def _forget(self, _: weakref.ref) -> None:
        self._source = self._times = None


_last_parse = _LastParse()


def parse_reading_time(text: pd.Series) -> pd.Series:
    """Timestamps in the export format; anything else becomes NaT."""
    return parse_times(text, TIMESTAMP_FORMAT)


def value_in_range(frame: pd.DataFrame, ranges: dict) -> pd.Series:
    """True where value lies in its parameter's plausible range (or cannot be judged)."""
    known = pd.Index([int(k) for k in ranges], dtype="int64")
    sensor = known.get_indexer(frame["parameter_id"])  # -1 for an unknown or missing parameter
    bounds = np.array([[float(low), float(high)] for low, high in ranges.values()] + [[np.nan, np.nan]], dtype="float64")
    low, high = bounds[sensor, 0], bounds[sensor, 1]  # index -1 is the NaN row
    value = frame["value"].to_numpy(dtype="float64", na_value=np.nan)
    return pd.Series(np.isnan(value) | np.isnan(low) | ((value >= low) & (value <= high)), index=frame.index)


@extensions.register_check_method(statistics=["sentinel"], supported_types=pd.Series)
def not_sentinel(series: pd.Series, *, sentinel: float) -> pd.Series:
    """The export writes a sentinel where a value was never set."""
    return series.ne(sentinel) | series.isna()


@extensions.register_check_method(statistics=["time_format"], supported_types=pd.Series)
def parseable_time(series: pd.Series, *, time_format: str) -> pd.Series:
    return parse_times(series, time_format).notna()


@extensions.register_check_method(statistics=["ranges"], check_type="vectorized", supported_types=pd.DataFrame)
def within_sensor_range(frame: pd.DataFrame, *, ranges: dict) -> pd.Series:
    """Each value inside the plausible range of its sensor (catalogue min..max)."""
    return value_in_range(frame, ranges)


def arrived_in_order(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """True where a reading is not older than the row before it in its group (untimed rows pass)."""
    times = frame["reading_time"]
    if times.dtype != TIME_DTYPE:
        times = parse_reading_time(times)
    by: list = [frame[k] for k in keys]
    if not any(g.hasnans for g in by):
        # Integer keys as they are, others by their codes (text: a file's name), folded into one integer key.
        codes = [g.to_numpy() if g.dtype.kind in "iu" else pd.factorize(g)[0] for g in by]
        if not times.hasnans and in_order([*codes, times.to_numpy()]):  # sorted by group, then time: none came late
            return pd.Series(True, index=frame.index, name=times.name)
        by = folded_keys(codes)
    previous = times.groupby(by[0] if len(by) == 1 else by, sort=False, dropna=False).shift()
    return (times.isna() | previous.isna() | (times >= previous)).astype(bool)


@extensions.register_check_method(statistics=["keys"], check_type="vectorized", supported_types=pd.DataFrame)
def in_time_order(frame: pd.DataFrame, *, keys: list) -> pd.Series:
    """Readings of each group arrive in time order."""
    return arrived_in_order(frame, keys)


class SortingColumnBackend(ColumnBackend):
    """pandera's pandas column backend, with `unique=True` judged by a sort instead of pandas' hashing.

    On millions of integer ids pandera's check (Series.is_unique, then Series.duplicated) costs about a second a
    column; `repeated` finds the same rows in a few tenths. The result (rows, message, failure cases) is
    pandera's own; any column other than integers without missing values goes to pandera's check unchanged.
    """

    def check_unique(self, check_obj: pd.Series, schema) -> CoreCheckResult:
        if not schema.unique or check_obj.dtype.kind not in "iu" or check_obj.hasnans:
            return super().check_unique(check_obj, schema)
        duplicates = repeated(check_obj, keep=convert_uniquesettings(schema.report_duplicates))
        failed = check_obj[duplicates] if duplicates.any() else None
        return CoreCheckResult(
            passed=failed is None,
            check="field_uniqueness",
            reason_code=SchemaErrorReason.SERIES_CONTAINS_DUPLICATES,
            message=None if failed is None else f"series '{check_obj.name}' contains duplicate values:\n{failed}",
            failure_cases=None if failed is None else reshape_failure_cases(failed),
        )


# Registered before pandera registers its own backends (on the first validation), which then leave this one in place.
pa.Column.register_backend(pd.DataFrame, SortingColumnBackend, force=True)


def raw_schema(catalogue: dict[int, Sensor]) -> pa.DataFrameSchema:
    """What a reading of a parameter export should be; the typed raw copy is checked against it."""
    return pa.DataFrameSchema(
        {
            "id": pa.Column("Int64", pa.Check.ge(0), unique=True, nullable=False),
            "value": pa.Column("float64", pa.Check.not_sentinel(sentinel=SENTINEL), nullable=False),
            "station_id": pa.Column("Int64", pa.Check.ge(0), nullable=False),
            "parameter_id": pa.Column("Int64", pa.Check.isin(sorted(catalogue)), nullable=False),
            "reading_time": pa.Column("str", pa.Check.parseable_time(time_format=TIMESTAMP_FORMAT), nullable=False),
            "source_file": pa.Column("str"),
            "source_row": pa.Column("int64", pa.Check.ge(2)),
        },
        checks=[
            pa.Check.within_sensor_range(ranges=plausible_ranges(catalogue)),
            pa.Check.in_time_order(keys=["source_file", "station_id", "parameter_id"]),
        ],
        name="bts_raw_readings",
        description="Typed copy of BTS parameter exports (one row per reading, as delivered).",
        strict=True,
        ordered=True,
    )


def clean_schema(catalogue: dict[int, Sensor]) -> pa.DataFrameSchema:
    """Clean readings: typed, complete, unique, plausible, sorted per series."""
    return pa.DataFrameSchema(
        {
            "station_id": pa.Column(CLEAN_TYPES["station_id"], pa.Check.ge(0)),
            "parameter_id": pa.Column(CLEAN_TYPES["parameter_id"], pa.Check.isin(sorted(catalogue))),
            "reading_time": pa.Column(CLEAN_TYPES["reading_time"]),
            "id": pa.Column(CLEAN_TYPES["id"], pa.Check.ge(0), unique=True),
            "value": pa.Column(CLEAN_TYPES["value"], [pa.Check.not_sentinel(sentinel=SENTINEL)]),
            "source_file": pa.Column(CLEAN_TYPES["source_file"]),
            "source_row": pa.Column(CLEAN_TYPES["source_row"], pa.Check.ge(2)),
        },
        checks=[
            pa.Check.within_sensor_range(ranges=plausible_ranges(catalogue)),
            pa.Check.in_time_order(keys=["station_id", "parameter_id"]),
        ],
        name=CLEAN_NAME,
        description="Readings that passed every cleaning rule, sorted by station, parameter and time.",
        strict=True,
        ordered=True,
    )


def read_table(path: str | Path, schema: pa.DataFrameSchema, columns: list[str] | None = None) -> pd.DataFrame:
    """The Parquet table at path, its columns (by default all of the schema's, in its order) of the schema's types.

    Only the types are checked here (pandera on none of the rows): the values are judged by whoever reads them.
    A missing or unreadable file, a missing column or a column of another type is one InputFileError naming it.
    """
    names = columns if columns is not None else list(schema.columns)
    frame = read_parquet(path, names)
    types = pa.DataFrameSchema({name: pa.Column(schema.dtypes[name]) for name in names}, name=schema.name)
    try:
        types.validate(frame.head(0))
    except pa.errors.SchemaError as exc:
        raise InputFileError(path, f"types do not match schema {schema.name}: {first_line(exc)}") from None
    return frame
