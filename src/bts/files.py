"""Writing outputs all-or-nothing, so a failed stage never leaves a file DVC could cache."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Run write(tmp) on a temporary file beside path, then move it into place (or remove it on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, document: Any) -> None:
    write_text(path, json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    """Parquet with a fixed layout, so the same frame gives the same bytes."""
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd", row_group_size=1_000_000))


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))
