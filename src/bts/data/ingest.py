"""Reading raw BTS parameter exports into one typed frame, and reporting what fails the raw schema.

A file that is not a parameter export at all stops ingestion with an
InputFileError naming the file and the reason; dirty rows inside a good file
are kept and reported (cleaning decides their fate).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow
import pyarrow.csv as pacsv

from bts.data.simulate import EXPORT_COLUMNS
from bts.errors import ConfigError, InputFileError

SIMULATED = "simulated"
_MAGIC = {b"PAR1": "a Parquet file", b"\x1f\x8b": "a gzip archive", b"PK\x03\x04": "a zip archive", b"%PDF": "a PDF document"}


def resolve_sources(sources: list[str], simulated_dir: Path, input_dirs: list[Path]) -> list[Path]:
    """The CSV files behind data.sources: 'simulated' and/or paths inside the declared input folders."""
    if not sources:
        raise ConfigError("data.sources: empty; list 'simulated' and/or paths of real exports")
    files: list[Path] = []
    for source in sources:
        path = simulated_dir if source == SIMULATED else Path(source)
        if source != SIMULATED and not any(path.resolve().is_relative_to(d.resolve()) for d in input_dirs):
            declared = ", ".join(str(d) for d in input_dirs)
            raise ConfigError(f"data.sources: {source} is outside {declared}, the folder(s) dvc.yaml declares as ingest inputs")
        if not path.exists():
            raise ConfigError(f"data.sources: {source} does not exist (run `dvc pull` or `dvc checkout` if it is DVC-tracked)")
        found = sorted(path.rglob("*.csv")) if path.is_dir() else [path]
        if not found:
            raise ConfigError(f"data.sources: {source} holds no .csv file")
        files.extend(found)
    duplicates = sorted({str(f) for f in files if files.count(f) > 1})
    if duplicates:
        raise ConfigError(f"data.sources: {duplicates[0]} is listed twice")
    return files


def _check_header(path: Path) -> list[str]:
    """Reject whatever is not a UTF-8 CSV with exactly the export's columns; returns the header's column names."""
    head = path.read_bytes()[:65536]
    if not head:
        raise InputFileError(path, "empty file")
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            raise InputFileError(path, f"{kind}, not a CSV export")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a cut multi-byte character at the end of the sample is fine
            raise InputFileError(path, f"undecodable bytes (not UTF-8) at byte {exc.start}") from exc
        text = head[: exc.start].decode("utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0].lstrip("\ufeff").strip()
    if "," not in header:
        delimiter = next((d for d in (";", "\t", "|") if d in header), None)
        if delimiter:
            raise InputFileError(path, f"wrong delimiter {delimiter!r} in header (expected ',')")
    columns = [c.strip() for c in header.split(",")]
    if any("alarm" in c.lower() for c in columns):
        raise InputFileError(path, f"an alarm export (columns {columns}), not a parameter export")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise InputFileError(path, f"duplicate column(s) {repeated} in header")
    missing = [c for c in EXPORT_COLUMNS if c not in columns]
    if missing:
        raise InputFileError(path, f"missing column(s) {missing}; header is {columns}")
    extra = [c for c in columns if c not in EXPORT_COLUMNS]
    if extra:
        raise InputFileError(path, f"unexpected column(s) {extra}; expected {EXPORT_COLUMNS}")
    if len(lines) == 1 and len(head) < 65536:
        raise InputFileError(path, "header only, no readings")
    return columns


def _to_int(text: pd.Series) -> pd.Series:
    number = pd.to_numeric(text, errors="coerce")
    whole = number.notna() & (number == number.round())
    return number.where(whole).astype("Int64")


def read_export(path: Path, label: str) -> pd.DataFrame:
    """One export as typed columns, with source_file=label and source_row (its line number)."""
    columns = _check_header(path)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(encoding="utf8", skip_rows=1, column_names=columns),
            convert_options=pacsv.ConvertOptions(column_types={c: pyarrow.string() for c in EXPORT_COLUMNS}, strings_can_be_null=False),
        )
    except (pyarrow.ArrowInvalid, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0]
        if "utf8" in reason.lower() or "utf-8" in reason.lower():
            reason = "undecodable bytes (not UTF-8)"
        raise InputFileError(path, reason) from exc
    if table.num_rows == 0:
        raise InputFileError(path, "header only, no readings")
    text = table.to_pandas()
    return pd.DataFrame(
        {
            "id": _to_int(text["id"]),
            "value": pd.to_numeric(text["value"].str.strip(), errors="coerce").astype("float64"),
            "station_id": _to_int(text["station_id"]),
            "parameter_id": _to_int(text["parameter_id"]),
            "reading_time": text["reading_time"].str.strip().astype("str"),
            "source_file": pd.Series(label, index=text.index, dtype="str"),
            "source_row": pd.RangeIndex(2, len(text) + 2).to_numpy(dtype="int64"),
        }
    )


def read_exports(files: list[Path], root: Path) -> pd.DataFrame:
    """Every export, concatenated in file order; source_file is the path relative to root."""
    frames = []
    for path in files:
        label = path.resolve().relative_to(root.resolve()).as_posix() if path.resolve().is_relative_to(root.resolve()) else path.name
        frames.append(read_export(path, label))
    return pd.concat(frames, ignore_index=True)


def failure_report(frame: pd.DataFrame, schema: pa.DataFrameSchema, samples: int = 5) -> dict:
    """Lazy validation of the raw frame: failing rows, counts per column and check, sample rows."""
    try:
        schema.validate(frame, lazy=True)
        cases = pd.DataFrame(columns=["schema_context", "column", "check", "index"])
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    cases = cases[cases["index"].notna()].astype({"index": "int64"})
    row_level = cases["schema_context"] == "DataFrameSchema"  # a whole-row check lists every column; count it once
    cases = cases.assign(
        check=cases["check"].astype(str).str.replace(r"\(.*", "", regex=True),
        column=cases["column"].where(~row_level, "(row)"),
    ).drop_duplicates(["column", "check", "index"])
    checks = []
    for (column, check), group in cases.groupby(["column", "check"], sort=True):
        rows = sorted(set(group["index"]))
        sample = frame.loc[rows[:samples]].astype(object).where(frame.loc[rows[:samples]].notna(), None)
        checks.append({"column": column, "check": check, "failing_rows": len(rows), "sample_rows": sample.to_dict(orient="records")})
    return {
        "schema": schema.name,
        "rows": len(frame),
        "failing_rows": int(cases["index"].nunique()),
        "checks": checks,
    }
