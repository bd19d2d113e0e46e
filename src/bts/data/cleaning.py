"""Cleaning rules for raw readings: fix what can be fixed, quarantine the rest with a reason.

Rules run in order and a row is quarantined by the first rule it breaks, so
every removed row carries exactly one reason code and
rows_in == rows_out + rows_quarantined holds by construction (and is checked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa

from bts.data.catalogue import Sensor, plausible_ranges
from bts.data.readings import CLEAN_ORDER, SERIES_KEYS, labels, repeated, sort_order
from bts.data.schemas import SENTINEL, TIME_DTYPE, TIMESTAMP_FORMAT, arrived_in_order, parse_reading_time, value_in_range
from bts.errors import DataContractError

Rule = Callable[[pd.DataFrame, dict[int, Sensor]], pd.Series]


# ISO forms of the export format: 'T' separator, fraction (dropped), zone 'Z' or a UTC offset. A zero offset is
# dropped here; any other is kept after the time (group 3) for normalize_reading_time to apply.
_OFFSET = r"[+-](?:[01]\d|2[0-3])(?::?[0-5]\d)?"
_ISO_TIME = rf"^(\d{{4}}-\d{{2}}-\d{{2}})[T ](\d{{2}}:\d{{2}}:\d{{2}})(?:\.\d+)?(?:Z|[+-]00(?::?00)?|({_OFFSET}))?$"
_WITH_OFFSET = rf"^\d{{4}}-\d{{2}}-\d{{2}} \d{{2}}:\d{{2}}:\d{{2}}{_OFFSET}$"


def normalize_reading_time(text: pd.Series) -> pd.Series:
    """ISO forms of the export timestamp rewritten to the export format, in UTC.

    A 'T' separator, a fraction of a second (dropped) and a 'Z' suffix are fixed, and a UTC offset (+07:00, +0700,
    +07, -05:30 ...) is applied, so '2017-04-18T07:00:00+07:00' becomes '2017-04-18 00:00:00'. Anything else is left
    as is, for the unparseable_time rule.
    """
    stripped = text.str.strip()
    normalized = stripped.copy()
    iso = (stripped.str.len() != len("YYYY-MM-DD HH:MM:SS")) | stripped.str.contains("T", regex=False)  # the others cannot change
    if not iso.any():
        return normalized
    fixed = stripped[iso].str.replace(_ISO_TIME, r"\1 \2\3", regex=True)
    offset = fixed.str.match(_WITH_OFFSET)
    if offset.any():
        local, zone = fixed[offset].str.slice(0, 19), fixed[offset].str.slice(19).str.replace(":", "")
        minutes = zone.str.slice(1, 3).astype("int64") * 60 + pd.to_numeric(zone.str.slice(3, 5), errors="coerce").fillna(0).astype("int64")
        utc = pd.to_datetime(local, format=TIMESTAMP_FORMAT, errors="coerce") - pd.to_timedelta(
            minutes.where(zone.str.startswith("+"), -minutes), unit="min"
        )
        fixed[offset] = utc.dt.strftime(TIMESTAMP_FORMAT).where(utc.notna(), stripped[iso][offset])  # an impossible date stays as given
    if (fixed != stripped[iso]).any():  # writing back into the column copies it: only when something was fixed
        normalized[iso] = fixed
    return normalized


def invalid_key(frame: pd.DataFrame, catalogue: dict[int, Sensor]) -> pd.Series:
    """id, station_id or parameter_id is missing, not an integer, or negative."""
    keys = frame[["id", "station_id", "parameter_id"]]
    if all(dtype.kind in "iu" for dtype in keys.dtypes):  # integers, missing ones or not: one pass a column
        invalid = [keys[c].to_numpy(dtype="int64", na_value=-1) < 0 for c in keys.columns]
        return pd.Series(np.logical_or.reduce(invalid), index=frame.index)
    return (keys.isna() | keys.lt(0).fillna(False)).any(axis=1).astype(bool)


def normalized_times(text: pd.Series) -> tuple[pd.Series, int]:
    """The reading times normalized and parsed (NaT where unparseable), and the count of rows normalizing changed.

    A day's readings share some tens of thousands of times, so each distinct text is normalized and parsed once
    and the results are spread back over the rows.
    """
    codes, distinct = pd.factorize(text, use_na_sentinel=False)  # a missing text is one of the distinct ones
    distinct = pd.Series(distinct, dtype=text.dtype)
    normalized = normalize_reading_time(distinct)
    changed = (normalized != distinct.str.strip()).to_numpy(dtype=bool)
    parsed = parse_reading_time(normalized).to_numpy()
    return pd.Series(parsed[codes], index=text.index, name=text.name), int(np.count_nonzero(changed[codes]))


def unparseable_time(frame: pd.DataFrame, catalogue: dict[int, Sensor]) -> pd.Series:
    """reading_time is not a valid 'YYYY-MM-DD HH:MM:SS' timestamp, even after normalizing (ISO forms, UTC offsets).

    Times already parsed (as normalized_times gives them) are unparseable where they are missing.
    """
    times = frame["reading_time"]
    return times.isna() if times.dtype == TIME_DTYPE else normalized_times(times)[0].isna()


def missing_value(frame: pd.DataFrame, catalogue: dict[int, Sensor]) -> pd.Series:
    """value is empty or not a number."""
    return frame["value"].isna()


def sentinel_value(frame: pd.DataFrame, catalogue: dict[int, Sensor]) -> pd.Series:
    """value is the export's 999999 'not set' sentinel."""
    return frame["value"].eq(SENTINEL).fillna(False).astype(bool)


def unknown_parameter(frame: pd.DataFrame, catalogue: dict[int, Sensor]) -> pd.Series:
    """parameter_id is not in the sensor catalogue."""
    return ~frame["parameter_id"].isin(list(catalogue)).fillna(False).astype(bool)


def out_of_range(frame: pd.DataFrame, catalogue: dict[int, Sensor]) -> pd.Series:
    """value lies outside its sensor's plausible range."""
    return ~value_in_range(frame, plausible_ranges(catalogue))


def duplicate_id(frame: pd.DataFrame, catalogue: dict[int, Sensor]) -> pd.Series:
    """id was already delivered in an earlier row (a resend or a conflicting reading)."""
    return repeated(frame["id"])


RULES: dict[str, Rule] = {
    "invalid_key": invalid_key,
    "unparseable_time": unparseable_time,
    "missing_value": missing_value,
    "sentinel_value": sentinel_value,
    "unknown_parameter": unknown_parameter,
    "out_of_range": out_of_range,
    "duplicate_id": duplicate_id,
}


# Rules whose verdict on a row depends on the other rows, with the columns they read (they get no other: a copy
# of the pending rows' text columns would cost more than the rule).
CROSS_ROW_RULES = {"duplicate_id": ["id"]}


@dataclass
class CleaningResult:
    clean: pd.DataFrame
    quarantine: pd.DataFrame
    accounting: dict = field(default_factory=dict)


def quarantine_reasons(frame: pd.DataFrame, catalogue: dict[int, Sensor]) -> pd.Series:
    """The first rule each row breaks (NA for rows that pass every rule)."""
    return labels(first_broken(frame, catalogue), list(RULES), frame.index)


def first_broken(frame: pd.DataFrame, catalogue: dict[int, Sensor]) -> np.ndarray:
    """The index in RULES of the first rule each row breaks, -1 for rows that pass every rule.

    Each rule judges the rows that no earlier rule quarantined. A rule that judges every row on its own gives
    those rows the same verdict over the whole frame, so it runs once over it (no copy of the frame per rule);
    a rule in CROSS_ROW_RULES compares rows with each other, so it sees the pending rows only (an id first
    delivered in a row quarantined for another reason is not a duplicate when it comes again).
    """
    broken_first = np.full(len(frame), -1)  # index in RULES of the first rule broken, -1 for none
    for number, (code, rule) in enumerate(RULES.items()):
        pending = broken_first < 0
        if code in CROSS_ROW_RULES:
            broken = np.zeros(len(frame), dtype=bool)
            broken[pending] = rule(frame.loc[pending, CROSS_ROW_RULES[code]], catalogue).to_numpy(dtype=bool)
        else:
            broken = pending & rule(frame, catalogue).to_numpy(dtype=bool)
        broken_first[broken] = number
    return broken_first


def clean_readings(raw: pd.DataFrame, catalogue: dict[int, Sensor], schema: pa.DataFrameSchema) -> CleaningResult:
    """Split raw readings into clean rows (typed, sorted, schema-valid) and quarantined rows with reasons."""
    result = split_readings(raw, catalogue, list(schema.columns))
    check_clean(result.clean, schema)
    return result


def _taken(column: pd.Series, rows: np.ndarray) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """column.take(rows) without its index: numpy's indexing for a numpy column, and text (a file's name: few
    distinct values) through its codes, a few times faster than taking millions of strings."""
    if isinstance(column.dtype, np.dtype):
        return column.to_numpy()[rows]
    if column.dtype == "str":
        codes, names = pd.factorize(column)
        return labels(codes[rows], list(names)).array
    return column.array.take(rows)


def split_readings(raw: pd.DataFrame, catalogue: dict[int, Sensor], columns: list[str]) -> CleaningResult:
    """clean_readings without the final check against the clean schema: clean rows (typed, sorted, in the given
    columns) and quarantined rows with reasons. Whoever uses the clean rows checks them (check_clean) first."""
    parsed, time_fixed = normalized_times(raw["reading_time"])
    frame = raw.assign(reading_time=parsed)
    reason = first_broken(frame, catalogue)  # codes, not millions of labels: only the quarantined rows get theirs
    # The keys of the kept rows tell which came late and the clean order; all columns are then taken once, in that order.
    rows = np.flatnonzero(reason < 0)
    keys = frame[["station_id", "parameter_id", "id"]].take(rows).astype("int64")
    keys = keys.assign(reading_time=parsed.to_numpy()[rows])
    delivered_late = ~arrived_in_order(keys, SERIES_KEYS)
    order = sort_order(keys, CLEAN_ORDER)
    taken = {column: keys[column].to_numpy() for column in keys.columns}  # int64 and times: the clean types
    if order is not None:
        rows, taken = rows[order], {column: values[order] for column, values in taken.items()}
    clean = pd.DataFrame({column: taken[column] if column in taken else _taken(frame[column], rows) for column in columns}, copy=False)
    quarantined = np.flatnonzero(reason >= 0)
    quarantine = raw.take(quarantined).reset_index(drop=True)
    quarantine["quarantine_reason"] = labels(reason[quarantined], list(RULES)).array
    counts = np.bincount(reason[quarantined], minlength=len(RULES))
    accounting = {
        "rows_in": len(raw),
        "rows_out": len(clean),
        "rows_quarantined": len(quarantine),
        "quarantined_by_reason": {code: int(count) for code, count in zip(RULES, counts, strict=True)},
        "fixed": {"reading_time_normalized": time_fixed, "reordered_late_rows": int(delivered_late.sum())},
    }
    if accounting["rows_in"] != accounting["rows_out"] + accounting["rows_quarantined"]:
        raise DataContractError(f"row accounting broken: {accounting['rows_in']} in != {len(clean)} out + {len(quarantine)} quarantined")
    return CleaningResult(clean, quarantine, accounting)


def check_clean(clean: pd.DataFrame, schema: pa.DataFrameSchema) -> None:
    """The clean rows pass the clean schema, or DataContractError names the first failure."""
    try:
        schema.validate(clean, lazy=True, inplace=True)  # nothing is coerced: spare pandera's copy of the frame
    except pa.errors.SchemaErrors as exc:
        first = exc.failure_cases.iloc[0]
        raise DataContractError(
            f"clean output fails schema {schema.name}: column {first['column']}, check {first['check']}, "
            f"{len(exc.failure_cases)} failure(s), e.g. {first['failure_case']!r}"
        ) from exc
