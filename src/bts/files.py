"""Writing outputs all-or-nothing, so a failed stage never leaves a file DVC could cache."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
import pyarrow
import pyarrow.parquet as pq

from bts.errors import ConfigError, InputFileError, first_line, quoted


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_prefix(path: Path) -> str:
    """Temporaries of `path` are named .<name>.<random>.tmp beside it."""
    return f".{path.name}."


def remove_stale_temporaries(path: Path) -> None:
    """Temporaries left by a writer of `path` that was killed (only one stage ever writes a given path)."""
    prefix = temporary_prefix(path)
    for stale in path.parent.glob(f"{prefix}*.tmp"):
        if "." in stale.name.removeprefix(prefix).removesuffix(".tmp"):
            continue  # the temporary of a sibling whose name extends this one (.plots.png.<random>.tmp for plots)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def normal_permissions(path: Path) -> None:
    """What a plain open() or mkdir() would have given (mkstemp and mkdtemp make files 0600 and folders 0700)."""
    mask = _umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def temporary_beside(path: Path) -> Path:
    """A new empty temporary file beside path (its folder made if need be), stale ones of path removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Run write(tmp) on a temporary file beside path, then move it into place (or remove it on failure)."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        write(tmp)
        normal_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_folder(path: str | Path, write: Callable[[Path], None]) -> None:
    """Run write(tmp) on a new temporary folder beside path, then put it in path's place (the old one goes only then)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp"))
    try:
        write(staging)
        normal_permissions(staging)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp"))
            os.replace(path, old / path.name)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, document: Any) -> None:
    """JSON that any parser reads: a NaN or infinity is an error here, not a bare `NaN` in the file."""
    write_text(path, json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n")


PARQUET_COMPRESSION = "zstd"
ROW_GROUP_ROWS = 1_000_000


class ParquetParts:
    """A Parquet file with a fixed layout (so the same frame gives the same bytes), written a part at a time.

    Each part is a frame of the file's next rows. A row group is encoded on its own, so parts of ROW_GROUP_ROWS
    rows each (the last one shorter) give the bytes of the whole frame written as one part. The bytes are those
    of pandas' to_parquet(index=False, engine="pyarrow") too: that is pyarrow's writer given the same table.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer: pq.ParquetWriter | None = None

    def write(self, frame: pd.DataFrame) -> None:
        table = pyarrow.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._path, table.schema, compression=PARQUET_COMPRESSION)
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)

    def close(self) -> None:
        if self._writer is None:
            raise ValueError(f"{self._path}: no part was written (a Parquet file needs one to know its columns)")
        self._writer.close()


def parquet_file(path: Path, frame: pd.DataFrame) -> None:
    """frame as one Parquet file at path, in the fixed layout of ParquetParts (written in place: see write_parquet)."""
    parts = ParquetParts(path)
    parts.write(frame)
    parts.close()


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: parquet_file(tmp, frame))


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file's rows (only `columns`, when given); a missing or unreadable file, or a missing column, is one
    InputFileError naming the file."""
    try:
        names = pq.read_schema(path).names
        missing = [column for column in columns or [] if column not in names]
        if missing:
            raise InputFileError(path, f"no column {missing[0]!r} (it has {quoted(str(names))})")
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputFileError(path, f"not a readable Parquet file ({first_line(exc)})") from None


class BackgroundWrites:
    """Outputs encoded on a second thread while the stage goes on computing, moved into place together at the end.

    Arrow encodes and compresses Parquet, and hashlib hashes, without holding Python's lock, so on a second core
    they overlap the pandas work of the rest of the stage. Each file is written to a temporary beside its path;
    only when the `with` block ends without an error, and every task handed over succeeded, do they all replace
    their paths. Otherwise the tasks not yet started are dropped, the temporaries removed, and the last good
    outputs stay as they were. Both threads read the frames handed over; pandas' copy-on-write keeps that safe.
    A Parquet file too large to build whole first can be handed over in parts (parquet_parts), each encoded while
    the next is built.

        with BackgroundWrites() as background:
            background.parquet(args.out, frame)
            digest = background.submit(dvc_md5, args.raw)
            ...  # the rest of the stage's work
        # here args.out is in place; digest.result() is ready
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bts-writes")
        self._files: list[tuple[Path, Path]] = []
        self._parts: list[ParquetParts] = []
        self._tasks: list[Future] = []

    def parquet(self, path: str | Path, frame: pd.DataFrame) -> None:
        self.submit(parquet_file, self._temporary(path), frame)

    def parquet_parts(self, path: str | Path) -> Callable[[pd.DataFrame], None]:
        """A function that hands over the next part of a Parquet file (ParquetParts); the file is closed at the end.

        A part waits for the one before it to be written, so at most one is kept waiting while the next is built.
        """
        parts = ParquetParts(self._temporary(path))
        self._parts.append(parts)
        written: list[Future] = []

        def add(frame: pd.DataFrame) -> None:
            if written:
                written.pop().result()
            written.append(self.submit(parts.write, frame))

        return add

    def _temporary(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = temporary_beside(path)
        self._files.append((path, tmp))
        return tmp

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        """Run function(*args) on the background thread, after the tasks handed over before it."""
        task = self._pool.submit(function, *args)
        self._tasks.append(task)
        return task

    def __enter__(self) -> BackgroundWrites:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        try:
            if kind is None:
                for parts in self._parts:
                    self.submit(parts.close)
                self._pool.shutdown(wait=True)
                for task in self._tasks:
                    task.result()  # the first failed task raises here, before any file is moved
                for path, tmp in self._files:
                    normal_permissions(tmp)
                    os.replace(tmp, path)
        finally:
            for task in self._tasks:
                task.cancel()  # on an error, or an interrupt while waiting: what has not started never runs
            self._finish_running_task()
            for parts in self._parts:
                with contextlib.suppress(Exception):
                    parts.close()  # after a failure: the file is removed below, its writer is only let go
            for _, tmp in self._files:
                tmp.unlink(missing_ok=True)  # after a success there is none left

    def _finish_running_task(self) -> None:
        """Wait for the task under way, through further interrupts: a temporary goes only once nothing writes it."""
        while True:
            try:
                self._pool.shutdown(wait=True)
                return
            except KeyboardInterrupt:
                continue


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))


# Git's and DVC's own folders: a command's output there could corrupt a repository or a cache.
PROTECTED_FOLDERS = (".git", ".dvc")


def output_place(path: str | Path, option: str) -> Path:
    """path as a place a command may write to (absolute, links followed); never inside .git or .dvc, however spelled."""
    resolved = Path(path).resolve()
    protected = next((part for part in resolved.parts if part in PROTECTED_FOLDERS), None)
    if protected:
        raise ConfigError(f"{option} {path}: inside a {protected} folder, whose files git or DVC own; choose another place")
    return resolved


def shown_path(path: Path) -> str:
    """A path as a user would type it: relative to the current folder when inside it, else absolute."""
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(absolute)
