"""The files a batch scores, each read as the ingest stage reads an export and checked against the raw schema on its own.

An export is a unit of delivery, so each file is validated alone (the same
report whichever engine reads it, and whatever else is in the batch); the
cleaning rules then see every file together. A file that is not an export
stops the batch with the InputFileError read_export raises.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from bts.data.ingest import failure_report, read_export
from bts.data.simulate import EXPORT_COLUMNS
from bts.errors import InputFileError, quoted
from bts.files import read_parquet
from bts.hashing import file_md5
from bts.monitoring.field_readings import PARQUET

CSV = ".csv"
# The typed raw readings the ingest stage writes (and read_export returns), with their dtypes.
RAW_DTYPES = {
    "id": "Int64",
    "value": "float64",
    "station_id": "Int64",
    "parameter_id": "Int64",
    "reading_time": "str",
    "source_file": "str",
    "source_row": "int64",
}
RAW_COLUMNS = list(RAW_DTYPES)
FIRST_DATA_LINE = 2  # what source_row a reading would have as the first row of a CSV export (line 1 is the header)


@dataclass(frozen=True)
class InputFile:
    """One file of the batch: where it is, and the source_file its rows carry."""

    path: Path
    label: str


def input_files(path: Path, root: Path) -> list[InputFile]:
    """The files behind --input: a file (CSV export or Parquet), or every .csv below a folder, each once, in path order.

    A file's label is its path relative to the project root when it lies inside it, else its absolute path, so
    labels are unique and a quarantined row names the file it came from.
    """
    if not path.exists():
        raise InputFileError(path, "no such file or folder")
    if path.is_dir():
        found = sorted(f for f in path.rglob(f"*{CSV}") if f.is_file())
        if not found:
            raise InputFileError(path, f"folder holds no {CSV} export")
    elif path.is_file():
        found = [path]
    else:
        raise InputFileError(path, "not a regular file or folder")
    files, seen = [], set()
    for file in found:
        real = file.resolve()
        if real not in seen:
            seen.add(real)
            files.append(InputFile(Path(os.path.abspath(file)), file_label(file, root)))
    return files


def file_label(path: Path, root: Path) -> str:
    """path relative to root when inside it (as spelled, links not followed), else absolute."""
    spelled, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return spelled.relative_to(base).as_posix() if spelled.is_relative_to(base) else spelled.as_posix()


def read_input(file: InputFile, schema: pa.DataFrameSchema) -> tuple[pd.DataFrame, dict]:
    """The file's raw readings (RAW_COLUMNS) and its record for the manifest: md5, size, rows, raw schema failures."""
    raw = read_raw_parquet(file) if file.path.suffix == PARQUET else read_export(file.path, file.label)
    report = failure_report(raw, schema, samples=0)
    record = {
        "path": file.label,
        "md5": file_md5(file.path),
        "bytes": file.path.stat().st_size,
        "rows": len(raw),
        "raw_schema": {
            "failing_rows": report["failing_rows"],
            "checks": [{"column": c["column"], "check": c["check"], "failing_rows": c["failing_rows"]} for c in report["checks"]],
        },
    }
    return raw, record


def read_raw_parquet(file: InputFile) -> pd.DataFrame:
    """Raw readings from Parquet: the ingest stage's typed copy (RAW_COLUMNS), or an export's five columns.

    An export's rows get the file's label as source_file and the line they would have in a CSV as source_row.
    """
    frame = read_parquet(file.path)
    columns = list(frame.columns)
    if columns == EXPORT_COLUMNS:
        frame = frame.assign(source_file=file.label, source_row=range(FIRST_DATA_LINE, FIRST_DATA_LINE + len(frame)))
    elif columns != RAW_COLUMNS:
        raise InputFileError(
            file.path,
            f"not raw readings: columns {quoted(str(columns))}; expected {EXPORT_COLUMNS} (an export) or the ingest stage's {RAW_COLUMNS}",
        )
    typed = {}
    for column, dtype in RAW_DTYPES.items():
        values = frame[column]
        if dtype in ("Int64", "int64") and not pd.api.types.is_integer_dtype(values):
            raise InputFileError(file.path, f"column {column}: {values.dtype} values, expected integers")
        if dtype == "float64" and not pd.api.types.is_numeric_dtype(values):
            raise InputFileError(file.path, f"column {column}: {values.dtype} values, expected numbers")
        typed[column] = values.astype(dtype)
    return pd.DataFrame(typed).reset_index(drop=True)
