"""Reading raw BTS parameter exports into one typed frame, and reporting what fails the raw schema.

A file that is not a parameter export at all stops ingestion with an
InputFileError naming the file and the reason; dirty rows inside a good file
are kept and reported (cleaning decides their fate). A message quotes at most
80 characters of a file, never a whole line of it.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from bts.data.readings import labels
from bts.data.simulate import EXPORT_COLUMNS
from bts.errors import ConfigError, InputFileError, quoted

SIMULATED = "simulated"
MAX_LINE_BYTES = 65536  # a reading is about 60 bytes: a longer header or row is not an export's
_MAGIC = {b"PAR1": "a Parquet file", b"\x1f\x8b": "a gzip archive", b"PK\x03\x04": "a zip archive", b"%PDF": "a PDF document"}
_BOM = b"\xef\xbb\xbf"
_NOT_BLANK = re.compile(rb"\S")
_NEWLINE, _CARRIAGE_RETURN, _QUOTE, _COMMA = (ord(c) for c in '\n\r",')
_INTEGER = r"^(?P<sign>[+-]?)0*(?P<digits>[0-9]+?)(?:\.0*)?$"
_INT64 = {pyarrow.int64(): pd.Int64Dtype()}
_INT64_MAX = str(2**63 - 1)
# A plain decimal of at most 15 digits: below 2**53 as an integer, over a power of ten no greater than 10**15.
_SHORT_DECIMAL = r"^-?[0-9]+\.[0-9]+$"
_SHORT_DECIMAL_LENGTH = 16


def _real_path(path: Path) -> Path | None:
    """path with every link followed (None for a loop of links)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # Python before 3.13 raises RuntimeError on a loop
        return None


def _inside(path: Path, folders: list[Path]) -> bool:
    """path lies in one of folders, as spelled (.. folded, links not followed) or as resolved."""
    spelled, real = Path(os.path.abspath(path)), _real_path(path)
    return any(spelled.is_relative_to(os.path.abspath(d)) or (real is not None and real.is_relative_to(d.resolve())) for d in folders)


def resolve_sources(sources: list[str], simulated_dir: Path, input_dirs: list[Path], root: Path) -> list[Path]:
    """The CSV files behind data.sources: 'simulated' and/or paths inside the declared input folders, each once.

    Files are told apart by real path, so one file under two spellings (or listed and inside a listed folder)
    is refused naming both; a link whose target lies outside the repository (root) is refused before it is read.
    """
    if not sources:
        raise ConfigError("data.sources: empty; list 'simulated' and/or paths of real exports")
    repository = root.resolve()
    files: list[Path] = []
    spellings: dict[Path, str] = {}  # real path -> the spelling it was first reached by
    for source in sources:
        path = simulated_dir if source == SIMULATED else Path(source)
        if source != SIMULATED and not _inside(path, input_dirs):
            declared = ", ".join(str(d) for d in input_dirs)
            raise ConfigError(f"data.sources: {source} is outside {declared}, the folder(s) dvc.yaml declares as ingest inputs")
        if not path.exists():
            raise ConfigError(f"data.sources: {source} does not exist (run `dvc pull` or `dvc checkout` if it is DVC-tracked)")
        found = sorted(f for f in path.rglob("*.csv") if not f.is_dir()) if path.is_dir() else [path]
        if not found:
            raise ConfigError(f"data.sources: {source} holds no .csv file")
        for file in found:
            spelling = source if file == path else file.as_posix()
            real = _real_path(file)
            if real is None or not real.exists():
                raise ConfigError(f"data.sources: {spelling} is a broken link")
            if not real.is_relative_to(repository):  # never read: it could be any file of the machine
                kind = "a file" if real == Path(os.path.abspath(file)) else "a link to a file"
                raise ConfigError(f"data.sources: {spelling} is {kind} outside the repository ({real})")
            if not real.is_file():
                raise ConfigError(f"data.sources: {spelling} is not a regular file")
            if real in spellings:
                also = "" if spellings[real] == spelling else f" (also as {spelling})"
                raise ConfigError(f"data.sources: {spellings[real]} is listed twice{also}")
            spellings[real] = spelling
            files.append(file)
    return files


def _check_header(path: Path, data: bytes) -> tuple[list[str], int]:
    """Reject whatever is not a UTF-8 CSV with exactly the export's columns.

    Returns the header's column names and the offset just past the header line (blank lines before it are skipped).
    """
    if not data:
        raise InputFileError(path, "empty file")
    for magic, kind in _MAGIC.items():
        if data.startswith(magic):
            raise InputFileError(path, f"{kind}, not a CSV export")
    first = _NOT_BLANK.search(data, len(_BOM) if data.startswith(_BOM) else 0)
    if first is None:
        raise InputFileError(path, "empty file (blank lines only)")
    begin = first.start()
    limit = begin + MAX_LINE_BYTES + 1  # no need to look further for the end of the header
    end = min((i for i in (data.find(b"\n", begin, limit), data.find(b"\r", begin, limit)) if i >= 0), default=len(data))
    if end - begin > MAX_LINE_BYTES:
        raise InputFileError(path, f"header line longer than {MAX_LINE_BYTES // 1024} KiB: not a CSV export")
    try:
        header = data[begin:end].decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"undecodable bytes (not UTF-8) at byte {begin + exc.start}") from exc
    if "," not in header:
        delimiter = next((d for d in (";", "\t", "|") if d in header), None)
        if delimiter:
            raise InputFileError(path, f"wrong delimiter {delimiter!r} in header (expected ',')")
    columns = [c.strip() for c in header.split(",")]
    if any("alarm" in c.lower() for c in columns):
        raise InputFileError(path, f"an alarm export (columns {quoted(str(columns))}), not a parameter export")
    repeated = sorted(c for c, n in Counter(columns).items() if n > 1)
    if repeated:
        raise InputFileError(path, f"duplicate column(s) {quoted(str(repeated))} in header")
    missing = [c for c in EXPORT_COLUMNS if c not in columns]
    if missing:
        raise InputFileError(path, f"missing column(s) {missing}; header is {quoted(str(columns))}")
    extra = [c for c in columns if c not in EXPORT_COLUMNS]
    if extra:
        raise InputFileError(path, f"unexpected column(s) {quoted(str(extra))}; expected {EXPORT_COLUMNS}")
    return columns, min(end + (2 if data[end : end + 2] == b"\r\n" else 1), len(data))


def _line_breaks(raw: np.ndarray, data: bytes) -> np.ndarray:
    """Offsets of the line breaks: every LF, and every CR not followed by LF (pyarrow ends a line at both)."""
    breaks = np.flatnonzero(raw == _NEWLINE)
    if data.find(b"\r") >= 0:
        returns = np.flatnonzero(raw == _CARRIAGE_RETURN)
        lone = returns[(returns + 1 == len(raw)) | (raw[np.minimum(returns + 1, len(raw) - 1)] != _NEWLINE)]
        breaks = np.union1d(breaks, lone)
    return breaks


def _quotes(raw: np.ndarray, data: bytes, start: int) -> np.ndarray | None:
    """Offsets of the quote characters from start on (None if there are none, the usual case)."""
    return np.flatnonzero(raw[start:] == _QUOTE) + start if data.find(b'"', start) >= 0 else None


def _rows(path: Path, data: bytes, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte offsets where each row from start on begins and ends, and the file line (1-based) it begins on.

    Vectorized over the bytes. Empty lines are no rows (pyarrow skips them), and a line break inside a quoted field
    does not end a row: a line break ends one when an even number of quotes precedes it (quotes come in pairs
    in a CSV, "" inside a quoted field included), so a row's line number is the one an editor shows.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    breaks = _line_breaks(raw, data)
    first = int(np.searchsorted(breaks, start))
    index = np.arange(first, len(breaks))  # the breaks after the header, as indexes into breaks
    quotes = _quotes(raw, data, start)
    if quotes is not None:
        index = index[np.searchsorted(quotes, breaks[index]) % 2 == 0]
    starts = np.concatenate(([start], breaks[index] + 1))
    ends = np.append(breaks[index], len(raw))
    lines = np.concatenate(([first], index + 1)) + 1  # 1 + the number of line breaks before the row
    if quotes is not None and len(quotes) % 2:
        raise InputFileError(path, f'line {lines[-1]}: a quote (") that is never closed')
    length = ends - starts
    empty = (length == 0) | ((length == 1) & (raw[np.minimum(starts, len(raw) - 1)] == _CARRIAGE_RETURN))  # or just the CR of a CRLF
    return starts[~empty], ends[~empty], lines[~empty]


def _parse_error(data: bytes, start: int, starts: np.ndarray, lines: np.ndarray, columns: int, exc: Exception) -> str:
    """pyarrow's complaint about a file, as a short reason naming the line (pyarrow's own names no line and quotes the row)."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "utf8" in message.lower() or "utf-8" in message.lower():
        try:
            data[start:].decode("utf-8")
        except UnicodeDecodeError as error:
            line = lines[max(int(np.searchsorted(starts, start + error.start, side="right")) - 1, 0)]
            return f"line {line}: undecodable bytes (not UTF-8)"
        return "undecodable bytes (not UTF-8)"
    if "Expected" in message and "columns" in message:
        raw = np.frombuffer(data, dtype=np.uint8)
        commas = np.flatnonzero(raw[start:] == _COMMA) + start
        quotes = _quotes(raw, data, start)
        if quotes is not None:
            commas = commas[np.searchsorted(quotes, commas) % 2 == 0]
        fields = np.bincount(np.searchsorted(starts, commas, side="right") - 1, minlength=len(starts)) + 1
        ragged = np.flatnonzero(fields != columns)
        if ragged.size:
            count = int(fields[ragged[0]])
            return f"line {lines[ragged[0]]}: {count} field{'s' if count != 1 else ''}, expected {columns}"
    return quoted(message)


def _to_int(text: pyarrow.ChunkedArray) -> pd.Series:
    """Integer fields as exact Int64, parsed as text (never through float, so all of int64 survives); anything else is NA.

    Surrounding spaces, a sign, leading zeros and a '.0' fraction are allowed; an integer beyond int64 is NA.
    """
    plain = pc.and_(pc.ascii_is_decimal(text), pc.less(pc.utf8_length(text), 19))  # 18 digits always fit in int64
    if pc.all(plain).as_py():  # the usual case (not a bare cast: pyarrow's would also take '0x10' as 16)
        return pc.cast(text, pyarrow.int64()).to_pandas(types_mapper=_INT64.get)
    plain = plain.to_numpy(zero_copy_only=False)
    number = pd.Series(pd.NA, index=range(len(text)), dtype="Int64")
    number[plain] = pc.cast(pc.filter(text, plain), pyarrow.int64()).to_numpy()
    parts = pc.extract_regex(pc.utf8_trim_whitespace(pc.filter(text, ~plain)), _INTEGER)
    digits = pc.struct_field(parts, "digits")
    length = pc.utf8_length(digits)
    fits = pc.or_(pc.less(length, 19), pc.and_(pc.equal(length, 19), pc.less_equal(digits, _INT64_MAX)))  # same length: text order
    signed = pc.binary_join_element_wise(pc.replace_substring(pc.struct_field(parts, "sign"), "+", ""), digits, "")
    number[~plain] = pc.cast(pc.if_else(pc.fill_null(fits, False), signed, None), pyarrow.int64()).to_pandas(types_mapper=_INT64.get).array
    return number


def _to_float(text: pyarrow.ChunkedArray) -> pd.Series:
    """Number fields as float64, exactly as pandas' to_numeric reads them once stripped; anything else is NaN.

    The usual field, a short plain decimal, is cast by Arrow: pandas divides its digits (an exact integer) by a
    power of ten (exact too), which rounds as Arrow's correctly rounded parse does, so both give the same double.
    The other fields go to pandas, beside a decimal whenever the column has one: pandas reads a column of integers
    as integers, and holding one decimal it reads the column as floats, as it did the whole column.
    """
    stripped = text.to_pandas().str.strip()
    strings = pyarrow.array(stripped)
    short = pc.and_(pc.match_substring_regex(strings, _SHORT_DECIMAL), pc.less_equal(pc.utf8_length(strings), _SHORT_DECIMAL_LENGTH))
    short = short.fill_null(False).to_numpy(zero_copy_only=False)
    if not short.any():
        return pd.to_numeric(stripped, errors="coerce").astype("float64")
    number = np.full(len(stripped), np.nan)
    number[short] = pc.cast(strings.filter(pyarrow.array(short)), pyarrow.float64()).to_numpy()
    if not short.all():
        rest = pd.concat([stripped[~short], pd.Series(["0.5"], dtype=stripped.dtype)], ignore_index=True)
        number[~short] = pd.to_numeric(rest, errors="coerce").astype("float64").to_numpy()[:-1]
    return pd.Series(number, index=stripped.index)


SCAN_BLOCK_BYTES = 1 << 20


def _lines_fit(path: Path) -> bool:
    """No line of the file is longer than MAX_LINE_BYTES, read a block at a time. From each line break it looks back
    from the farthest place the next one may be, so a file of short lines costs a search per MAX_LINE_BYTES, not a
    look at every byte."""
    since = 0  # bytes of the current line read before this block
    with open(path, "rb") as handle:
        while block := handle.read(SCAN_BLOCK_BYTES):
            last = -1 - since  # the last line break seen, as an offset into this block
            while last + MAX_LINE_BYTES + 1 < len(block):  # the next break is due inside this block
                start, end = max(last + 1, 0), last + MAX_LINE_BYTES + 2
                found = max(block.rfind(b"\n", start, end), block.rfind(b"\r", start, end))
                if found < 0:
                    return False
                last = found
            start = max(last + 1, 0)
            last = max(last, block.rfind(b"\n", start), block.rfind(b"\r", start))
            since = len(block) - 1 - last
    return since <= MAX_LINE_BYTES


def _refuse_endless_lines(path: Path) -> None:
    """Read the file block by block and stop at the first line over MAX_LINE_BYTES: a file that is one endless line
    (binary data, a sparse file of gigabytes) is refused after its first blocks, not after being read whole. The
    messages are those of the checks on the whole file (_check_header, read_export)."""

    def refuse(line: int, header: bool) -> None:
        if header:
            raise InputFileError(path, f"header line longer than {MAX_LINE_BYTES // 1024} KiB: not a CSV export")
        raise InputFileError(path, f"line {line}: row longer than {MAX_LINE_BYTES // 1024} KiB: not a reading")

    if _lines_fit(path):
        return
    since_break, lines, header_seen = 0, 1, False  # bytes since the last line break; the line the next byte is on
    with open(path, "rb") as handle:
        while block := handle.read(SCAN_BLOCK_BYTES):
            raw = np.frombuffer(block, dtype=np.uint8)
            breaks = np.flatnonzero((raw == _NEWLINE) | (raw == _CARRIAGE_RETURN))
            if not breaks.size:
                since_break += len(block)
                if since_break > MAX_LINE_BYTES:
                    refuse(lines, not header_seen)
                continue
            gaps = np.diff(breaks, prepend=-1 - since_break) - 1  # the length of each line this block ends
            if (gaps > MAX_LINE_BYTES).any():
                ending = int(np.argmax(gaps > MAX_LINE_BYTES))
                line = lines + (int(np.count_nonzero(raw[: breaks[ending - 1] + 1] == _NEWLINE)) if ending else 0)
                refuse(line, not (header_seen or (gaps[:ending] > 0).any()))  # the first line with text is the header
            header_seen = header_seen or bool((gaps > 0).any())
            since_break = len(block) - 1 - int(breaks[-1])
            lines += int(np.count_nonzero(raw == _NEWLINE))
    if since_break > MAX_LINE_BYTES:
        refuse(lines, not header_seen)


def read_export(path: Path, label: str) -> pd.DataFrame:
    """One export as typed columns, with source_file=label and source_row (the file line the row starts on)."""
    try:
        _refuse_endless_lines(path)
        data = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot be read ({exc.strerror or exc})") from exc
    columns, start = _check_header(path, data)
    # The usual export has one row a line: no quotes, no carriage returns, no empty lines. Its rows' lines then follow
    # from the header's, and the byte offsets of its rows are needed only to explain a parse error.
    # (_refuse_endless_lines has seen that no line is too long.)
    plain = data.find(b"\r") < 0 and all(data.find(mark, start - 1) < 0 for mark in (b'"', b"\n\n"))
    starts, ends, lines = (None, None, None) if plain else _rows(path, data, start)
    if (start >= len(data)) if plain else not len(starts):
        raise InputFileError(path, "header only, no readings")
    long = None if plain else np.flatnonzero(ends - starts > MAX_LINE_BYTES)
    if long is not None and long.size:  # keeps every row within one of pyarrow's blocks (1 MiB), or it fails with "straddling object"
        raise InputFileError(path, f"line {lines[long[0]]}: row longer than {MAX_LINE_BYTES // 1024} KiB: not a reading")
    try:
        table = pacsv.read_csv(
            pyarrow.BufferReader(pyarrow.py_buffer(data).slice(start)),
            read_options=pacsv.ReadOptions(encoding="utf8", column_names=columns),
            convert_options=pacsv.ConvertOptions(column_types={c: pyarrow.string() for c in EXPORT_COLUMNS}, strings_can_be_null=False),
        )
    except (pyarrow.ArrowInvalid, UnicodeDecodeError) as exc:
        if plain:
            starts, ends, lines = _rows(path, data, start)
        raise InputFileError(path, _parse_error(data, start, starts, lines, len(columns), exc)) from exc
    if plain:
        lines = np.arange(table.num_rows) + data.count(b"\n", 0, start) + 1
    elif table.num_rows != len(starts):
        raise InputFileError(path, 'quotes (") inside unquoted fields: cannot tell which line each row starts on')
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bts-columns") as pool:  # Arrow leaves Python's lock: two cores
        converted = {
            "id": pool.submit(_to_int, table.column("id")),
            "value": pool.submit(_to_float, table.column("value")),
            "station_id": pool.submit(_to_int, table.column("station_id")),
            "parameter_id": pool.submit(_to_int, table.column("parameter_id")),
            "reading_time": pool.submit(lambda text: text.to_pandas().str.strip().astype("str"), table.column("reading_time")),
            "source_file": pool.submit(labels, np.zeros(table.num_rows, dtype=np.int32), [label]),
        }
        columns = {name: column.result() for name, column in converted.items()}
    return pd.DataFrame({**columns, "source_row": lines.astype("int64")}, copy=False)


def read_exports(files: list[Path], root: Path) -> pd.DataFrame:
    """Every export, concatenated in file order; source_file is the path relative to root as spelled (links not followed)."""
    frames = []
    for path in files:
        spelled, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
        if not spelled.is_relative_to(base):  # root or the file reached through a link
            spelled, base = path.resolve(), root.resolve()
        label = spelled.relative_to(base).as_posix() if spelled.is_relative_to(base) else path.name
        frames.append(read_export(path, label))
    return pd.concat(frames, ignore_index=True)


def _json_cell(value: object) -> object:
    """A sample cell as JSON can hold it: NA and NaN as null, an infinity as the string 'inf' or '-inf'."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def failure_report(frame: pd.DataFrame, schema: pa.DataFrameSchema, samples: int = 5) -> dict:
    """Lazy validation of the raw frame: failing rows, counts per column and check, sample rows (valid JSON)."""
    try:
        schema.validate(frame, lazy=True)
        cases = pd.DataFrame(columns=["schema_context", "column", "check", "index"])
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    cases = cases[cases["index"].notna()].astype({"index": "int64"})
    row_level = cases["schema_context"] == "DataFrameSchema"  # a whole-row check lists every column; count it once
    names = cases["check"].astype(str)
    cases = cases.assign(
        check=names.map({name: name.partition("(")[0] for name in names.unique()}),  # a check's name, without its arguments
        column=cases["column"].where(~row_level, "(row)"),
    ).drop_duplicates(["column", "check", "index"])
    checks = []
    for (column, check), group in cases.groupby(["column", "check"], sort=True):
        rows = sorted(set(group["index"]))
        sample = frame.loc[rows[:samples]].astype(object).map(_json_cell)
        checks.append({"column": column, "check": check, "failing_rows": len(rows), "sample_rows": sample.to_dict(orient="records")})
    return {
        "schema": schema.name,
        "rows": len(frame),
        "failing_rows": int(cases["index"].nunique()),
        "checks": checks,
    }
