"""Request bodies of MLflow's scoring protocol, parsed and checked into a float matrix of the model's feature columns.

Accepted, as `mlflow.pyfunc.scoring_server` accepts them for a model with
named columns: a JSON object with exactly one of `dataframe_split`
({"columns": [...], "data": [[...], ...]}, optional "index"),
`dataframe_records` ([{column: value}, ...]), `instances` (a list of records)
or `inputs` (a list of records, or {column: [values]} / {column: value}),
with an optional `params` object (ignored: the model takes none); or a
`text/csv` body whose header names the columns.

Stricter than MLflow where a silent coercion would hide a bad request: every
feature must be a finite number (no null, NaN, infinity, string or boolean),
an unknown column is refused instead of dropped, and the rows must be
rectangular. Three key columns may come beside the features: `station_id`
and `parameter_id` (integers) and `reading_time` (ISO 8601, the time of the
latest reading; naive times are UTC); they are never fed to the model, only
kept with the predictions for monitoring, and any of them may be null.

Every problem is a RequestError: an HTTP status, an error code and a short
message naming the column or row, never echoing more than a few dozen
characters of the input. Nothing here recurses into the input, so a JSON
document nested a thousand levels deep is one more 400.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson

JSON = "application/json"
CSV = "text/csv"
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PARAMS_KEY = "params"
# Optional key columns of a request row, kept with its prediction: the series, the id of its latest reading (unique
# in an export, where two readings of a series may share a second) and that reading's time.
SERIES_COLUMNS = ("station_id", "parameter_id")
READING_ID = "reading_id"
ID_COLUMNS = (*SERIES_COLUMNS, READING_ID)
TIME_COLUMN = "reading_time"
KEY_COLUMNS = (*ID_COLUMNS, TIME_COLUMN)
MAX_NAMES_SHOWN = 8
MAX_NAME_CHARS = 40
INT64_MAX = 2**63 - 1
# Characters a CSV number may hold (Python's float() also takes '_', spaces and non-ASCII digits: pandas does not).
NUMBER_CHARS = frozenset("0123456789.+-eE" + "nNaAiIfFtTyY")
NUMBER_TYPES = frozenset({int, float})
ID_TYPES = frozenset({int, type(None)})


class RequestError(Exception):
    """A client error: the HTTP status, a stable error code and a short message for the client."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Batch:
    """The rows of one request: features (rows x feature columns, float64, the model's order) and the key columns given."""

    features: np.ndarray
    keys: dict[str, list] = field(default_factory=dict)
    format: str = ""

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def shown(name: object) -> str:
    """One of the model's own column names as a message shows it: quoted, and cut to a few dozen characters."""
    text = name if isinstance(name, str) else type(name).__name__
    return repr(text if len(text) <= MAX_NAME_CHARS else text[:MAX_NAME_CHARS] + "...")


def shown_names(names: list, known: Collection[str]) -> str:
    """Names a reply may show: the known ones (the model's columns, the protocol's fields) quoted, any other counted.

    A reply never carries a client's text back (a CSV formula, markup): what it did not expect is told by count and
    position, never echoed.
    """
    ours = [name for name in names if name in known]
    listed = [shown(name) for name in ours[:MAX_NAMES_SHOWN]]
    if len(ours) > MAX_NAMES_SHOWN:
        listed.append(f"{len(ours) - MAX_NAMES_SHOWN} more")
    if len(names) > len(ours):
        listed.append(f"{len(names) - len(ours)} unknown")
    return ", ".join(listed)


def positions(names: list, chosen: list) -> str:
    """1-based positions of the chosen names among those sent: how a reply points at a name it must not echo."""
    found = [str(i + 1) for i, name in enumerate(names) if name in chosen]
    return ", ".join(found[:MAX_NAMES_SHOWN]) + (f" and {len(found) - MAX_NAMES_SHOWN} more" if len(found) > MAX_NAMES_SHOWN else "")


def json_kind(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "number"


def bad_payload(message: str) -> RequestError:
    return RequestError(400, "INVALID_PAYLOAD", message)


def media_type(content_type: str | None) -> str:
    """application/json or text/csv from a Content-Type header (UTF-8 only, as MLflow); a 415 otherwise."""
    if not content_type or not content_type.strip():
        raise RequestError(415, "UNSUPPORTED_CONTENT_TYPE", f"no Content-Type: send {JSON} or {CSV}")
    mime, *parameters = (part.strip() for part in content_type.split(";"))
    mime = mime.lower()
    if mime not in (JSON, CSV):
        raise RequestError(415, "UNSUPPORTED_CONTENT_TYPE", f"this Content-Type is not supported: send {JSON} or {CSV}")
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() != "charset":
            raise RequestError(415, "UNSUPPORTED_CONTENT_TYPE", "a Content-Type parameter other than charset is not supported")
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise RequestError(415, "UNSUPPORTED_CONTENT_TYPE", "only the UTF-8 charset is supported")
    return mime


def load_json(body: bytes) -> object:
    """The JSON document (orjson; Python's json only to read NaN and Infinity, which a later check names by column)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
    if "depth limit" in reason:
        raise RequestError(400, "JSON_TOO_DEEP", "JSON nested too deep (at most 1024 levels; a payload needs 3)")
    if b"NaN" in body or b"Infinity" in body or "infinity" in reason:
        try:
            return json.loads(body)
        except RecursionError:
            raise RequestError(400, "JSON_TOO_DEEP", "JSON nested too deep (a payload needs 3 levels)") from None
        except ValueError:
            pass
    raise RequestError(400, "MALFORMED_JSON", f"malformed JSON: {reason[:120]}")


class PayloadParser:
    """Parses request bodies for a model with these feature columns (all double), at most max_rows rows each."""

    def __init__(self, feature_columns: list[str], max_rows: int) -> None:
        self.feature_columns = list(feature_columns)
        self.known = set(self.feature_columns) | set(KEY_COLUMNS)
        self.max_rows = max_rows

    def parse(self, body: bytes, content_type: str | None) -> Batch:
        mime = media_type(content_type)
        if not body.strip():
            raise RequestError(400, "EMPTY_BODY", "empty body: send a JSON payload (e.g. dataframe_split) or a CSV table")
        if mime == CSV:
            return self.parse_csv(body)
        return self.parse_json(load_json(body))

    # -- JSON ---------------------------------------------------------------------------------------------------------

    def parse_json(self, payload: object) -> Batch:
        if not isinstance(payload, dict):
            raise bad_payload(f"the body must be a JSON object with one of {', '.join(FORMATS)}; got a {json_kind(payload)}")
        unknown = [key for key in payload if key not in FORMATS and key != PARAMS_KEY]
        if unknown:
            message = f"{len(unknown)} unknown payload key(s); use one of {', '.join(FORMATS)}"
            raise RequestError(400, "UNKNOWN_PAYLOAD_KEY", message)
        given = [key for key in payload if key in FORMATS]
        if len(given) != 1:
            raise bad_payload(f"use exactly one of {', '.join(FORMATS)}; got {shown_names(given, FORMATS) if given else 'none'}")
        params = payload.get(PARAMS_KEY)
        if params is not None and not isinstance(params, dict):
            raise bad_payload(f"'params' must be an object; got a {json_kind(params)}")
        name = given[0]
        value = payload[name]
        if name == "dataframe_split":
            columns = self.split_columns(value)
        elif name == "inputs" and isinstance(value, dict):
            columns = self.columnar(value)
        else:
            columns = self.records(name, value)
        return self.batch(columns, name)

    def check_row_count(self, rows: int) -> None:
        if rows > self.max_rows:
            raise RequestError(413, "TOO_MANY_ROWS", f"{rows} rows: at most {self.max_rows} per request; split the request")
        if rows == 0:
            raise RequestError(400, "NO_ROWS", "no rows to score")

    def check_columns(self, names: list[str]) -> None:
        """Every feature column there, none unknown (the key columns are optional)."""
        present = set(names)
        missing = [column for column in self.feature_columns if column not in present]
        extra = [name for name in names if name not in self.known]
        if missing:
            also = f"; {len(extra)} unknown column(s) at position(s) {positions(names, extra)}" if extra else ""
            raise RequestError(400, "MISSING_COLUMNS", f"missing column(s) {shown_names(missing, self.feature_columns)}{also}")
        if extra:
            raise RequestError(
                400,
                "EXTRA_COLUMNS",
                f"{len(extra)} unknown column(s) at position(s) {positions(names, extra)}: the model takes "
                f"{len(self.feature_columns)} feature columns "
                f"and the optional keys {', '.join(KEY_COLUMNS)}",
            )

    def split_columns(self, value: object) -> dict[str, list]:
        if not isinstance(value, dict):
            raise bad_payload(f"dataframe_split must be an object with 'columns' and 'data'; got a {json_kind(value)}")
        unknown = [key for key in value if key not in ("columns", "data", "index")]
        if unknown:
            raise bad_payload(f"dataframe_split: {len(unknown)} unknown field(s) (allowed: columns, data, index)")
        names, data = value.get("columns"), value.get("data")
        if names is None:
            raise bad_payload("dataframe_split needs 'columns': the model takes named columns")
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise bad_payload("dataframe_split: 'columns' must be a list of column names (strings)")
        if not isinstance(data, list):
            raise bad_payload(f"dataframe_split: 'data' must be a list of rows; got a {json_kind(data)}")
        if len(set(names)) != len(names):
            raise bad_payload(f"dataframe_split: duplicate column(s) {shown_names(duplicates(names), self.known)}")
        self.check_columns(names)
        self.check_row_count(len(data))
        index = value.get("index")
        if index is not None and (not isinstance(index, list) or len(index) != len(data)):
            raise bad_payload("dataframe_split: 'index' must be a list with one entry per row of 'data'")
        width = len(names)
        if not all(type(row) is list for row in data):
            row = next(i for i, row in enumerate(data) if type(row) is not list)
            raise RequestError(400, "RAGGED_ROWS", f"dataframe_split: row {row} of 'data' is a {json_kind(data[row])}, not a list")
        if any(len(row) != width for row in data):
            row = next(i for i, row in enumerate(data) if len(row) != width)
            raise RequestError(400, "RAGGED_ROWS", f"dataframe_split: row {row} has {len(data[row])} values for {width} columns")
        return dict(zip(names, zip(*data, strict=True), strict=True))

    def records(self, name: str, value: object) -> dict[str, list]:
        if not isinstance(value, list):
            raise bad_payload(f"{name} must be a list of objects, one per row; got a {json_kind(value)}")
        self.check_row_count(len(value))
        if not all(type(row) is dict for row in value):
            row = next(i for i, row in enumerate(value) if type(row) is not dict)
            raise bad_payload(f"{name}: row {row} is a {json_kind(value[row])}, not an object (the model takes named columns)")
        names = list(dict.fromkeys(key for row in value for key in row))
        self.check_columns(names)
        columns = {}
        for column in names:
            try:
                columns[column] = [row[column] for row in value]
            except KeyError:
                if column not in self.feature_columns:  # a key column given for some rows only: null for the others
                    columns[column] = [row.get(column) for row in value]
                    continue
                row = next(i for i, row in enumerate(value) if column not in row)
                raise RequestError(400, "RAGGED_ROWS", f"{name}: row {row} lacks column {shown(column)}") from None
        return columns

    def columnar(self, value: dict) -> dict[str, list]:
        """`inputs` as {column: [values]} (or {column: value}: one row)."""
        self.check_columns(list(value))
        lists = [column for column, values in value.items() if type(values) is list]
        if not lists:
            self.check_row_count(1)
            return {column: [values] for column, values in value.items()}
        if len(lists) != len(value):
            single = next(column for column in value if column not in lists)
            raise RequestError(400, "RAGGED_ROWS", f"inputs: column {shown(single)} has one value where the others have lists")
        lengths = {len(values) for values in value.values()}
        if len(lengths) > 1:
            raise RequestError(400, "RAGGED_ROWS", f"inputs: the columns have different lengths ({', '.join(map(str, sorted(lengths)))})")
        self.check_row_count(lengths.pop())
        return dict(value)

    def batch(self, columns: dict[str, list], format_name: str) -> Batch:
        matrix = np.empty((len(next(iter(columns.values()))), len(self.feature_columns)), dtype=np.float64)
        for position, column in enumerate(self.feature_columns):
            matrix[:, position] = json_numbers(column, columns[column])
        keys = {}
        for column in ID_COLUMNS:
            if column in columns:
                keys[column] = json_ids(column, columns[column])
        if TIME_COLUMN in columns:
            keys[TIME_COLUMN] = times(columns[TIME_COLUMN], lambda value: value)
        return Batch(matrix, keys, format_name)

    # -- CSV ----------------------------------------------------------------------------------------------------------

    def parse_csv(self, body: bytes) -> Batch:
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise RequestError(400, "MALFORMED_CSV", "the CSV body is not UTF-8") from None
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
            if not header:
                raise RequestError(400, "EMPTY_BODY", "the CSV body has no header line naming the columns")
            if len(set(header)) != len(header):
                raise bad_payload(f"CSV: duplicate column(s) {shown_names(duplicates(header), self.known)}")
            self.check_columns(header)
            width, rows = len(header), []
            for row in reader:
                if not row:  # a blank line, as pandas skips it
                    continue
                if len(row) != width:
                    raise RequestError(400, "RAGGED_ROWS", f"CSV line {reader.line_num}: {len(row)} fields for {width} columns")
                rows.append(row)
                if len(rows) > self.max_rows:
                    raise RequestError(413, "TOO_MANY_ROWS", f"more than {self.max_rows} rows: at most {self.max_rows} per request")
        except csv.Error as exc:
            raise RequestError(400, "MALFORMED_CSV", f"malformed CSV (line {reader.line_num}): {str(exc)[:80]}") from None
        self.check_row_count(len(rows))
        columns = dict(zip(header, zip(*rows, strict=True), strict=True))
        matrix = np.empty((len(rows), len(self.feature_columns)), dtype=np.float64)
        for position, column in enumerate(self.feature_columns):
            matrix[:, position] = csv_numbers(column, columns[column])
        keys = {}
        for column in ID_COLUMNS:
            if column in columns:
                keys[column] = csv_ids(column, columns[column])
        if TIME_COLUMN in columns:
            keys[TIME_COLUMN] = times(columns[TIME_COLUMN], lambda value: value or None)
        return Batch(matrix, keys, "csv")


def duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    repeated = [name for name in names if name in seen or seen.add(name)]
    return list(dict.fromkeys(repeated))


def non_finite(column: str, values: np.ndarray) -> RequestError:
    row = int(np.flatnonzero(~np.isfinite(values))[0])
    kind = "NaN" if np.isnan(values[row]) else "infinity"
    return RequestError(400, "NON_FINITE_VALUE", f"column {shown(column)}: {kind} in row {row}; every feature must be a finite number")


def json_numbers(column: str, values: list | tuple) -> np.ndarray:
    """The column as float64, once every value is a finite JSON number (not null, a string, a boolean, ...)."""
    if not set(map(type, values)) <= NUMBER_TYPES:
        row, value = next((i, v) for i, v in enumerate(values) if type(v) not in NUMBER_TYPES)
        if value is None:
            raise RequestError(400, "NULL_VALUE", f"column {shown(column)}: null in row {row}; every feature must be a finite number")
        raise RequestError(400, "WRONG_TYPE", f"column {shown(column)}: expected a number, got a {json_kind(value)} in row {row}")
    try:
        array = np.array(values, dtype=np.float64)
    except (OverflowError, ValueError):
        row = next((i for i, v in enumerate(values) if type(v) is int and abs(v) > 1e308), 0)
        raise RequestError(400, "WRONG_TYPE", f"column {shown(column)}: number out of range in row {row}") from None
    if not np.isfinite(array).all():
        raise non_finite(column, array)
    return array


def csv_numbers(column: str, values: tuple) -> np.ndarray:
    """The CSV column as float64 (parsed as Python parses floats: correctly rounded), every value finite."""
    if not all(values):
        row = values.index("")
        raise RequestError(400, "NULL_VALUE", f"column {shown(column)}: empty value in row {row}; every feature must be a finite number")
    array = None
    if set("".join(values)) <= NUMBER_CHARS:
        with contextlib.suppress(ValueError):
            array = np.array(values, dtype=np.float64)
    if array is None:
        row = next((i for i, v in enumerate(values) if not set(v) <= NUMBER_CHARS or not _is_float(v)), 0)
        raise RequestError(400, "WRONG_TYPE", f"column {shown(column)}: expected a number in row {row}")
    if not np.isfinite(array).all():
        raise non_finite(column, array)
    return array


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def json_ids(column: str, values: list | tuple) -> list[int | None]:
    if set(map(type, values)) <= ID_TYPES:
        numbers = [v for v in values if v is not None]
        if not numbers or (min(numbers) >= 0 and max(numbers) <= INT64_MAX):
            return list(values)
    row = next(i for i, v in enumerate(values) if not (v is None or (type(v) is int and 0 <= v <= INT64_MAX)))
    raise RequestError(400, "WRONG_TYPE", f"column {shown(column)}: expected a non-negative integer id or null in row {row}")


def csv_ids(column: str, values: tuple) -> list[int | None]:
    result = []
    for row, value in enumerate(values):
        if not value:
            result.append(None)
            continue
        if not (value.isascii() and value.isdigit()) or int(value) > INT64_MAX:
            raise RequestError(400, "WRONG_TYPE", f"column {shown(column)}: expected a non-negative integer id in row {row}")
        result.append(int(value))
    return result


def times(values: list | tuple, normalize) -> list[datetime | None]:
    """reading_time values as UTC datetimes (naive times are taken as UTC), None where null or empty."""
    parsed: dict[str, datetime] = {}
    result = []
    for row, raw in enumerate(values):
        value = normalize(raw)
        if value is None:
            result.append(None)
            continue
        if type(value) is not str:
            message = f"column {shown(TIME_COLUMN)}: expected an ISO 8601 time, got a {json_kind(value)} in row {row}"
            raise RequestError(400, "WRONG_TYPE", message)
        moment = parsed.get(value)
        if moment is None:
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                message = f"column {shown(TIME_COLUMN)}: row {row} is not an ISO 8601 time (e.g. 2017-04-18 10:00:00)"
                raise RequestError(400, "WRONG_TYPE", message) from None
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
            parsed[value] = moment
        result.append(moment)
    return result
