"""The monitoring log of `bts serve`: every scoring request and every prediction, as Parquet partitioned by day.

    <log dir>/requests/date=YYYY-MM-DD/<HHMMSSffffff>-<pid>-<seq>.parquet      one row per POST /invocations
    <log dir>/predictions/date=YYYY-MM-DD/<HHMMSSffffff>-<pid>-<seq>.parquet   one row per scored row
    <log dir>/process/date=YYYY-MM-DD/<HHMMSSffffff>-<pid>-<seq>.parquet       one row per write: the server's cost

A request row holds its id, UTC time, latency in ms, rows, HTTP status, error
code (null when it succeeded) and payload format; a prediction row its request
id and time, its row in the request, the key columns (station_id,
parameter_id, reading_id, reading_time: null when not given), every feature
value and the model's forecast: one float64 column per output column of the
model, named as its signature and the answer name them (`forecast_h1`,
`lower_h1`, `upper_h1`, ... per horizon: bts.horizons.output_columns); a
process row the server's pid, CPU seconds and resident and peak memory when it
started, at each write and when it stopped (what `bts monitor` reports as
cost). All carry the package md5, registered name and version, training run id
and data md5s of the model that answered the request (a process row: of the
model answering when it was written), so a server following an alias logs each
version's rows under its own name.

The request path only appends to a list in memory. A background thread
writes what has gathered every second (sooner once 50,000 records wait) as
one row group of the day's open file per table; a file is closed and renamed
from its hidden temporary name after a minute (or a million rows, or when
its day is over), so a day holds a few thousand files at most, not one per
second, and a reader (`pandas.read_parquet("<log dir>/predictions")`) never
sees half a file: it sees what is at most a minute old. close() writes
everything pending and closes every file: a clean stop loses nothing (a
SIGKILL loses the open minute). The folder is kept under a size cap: past
it, the oldest days are deleted first (and, when only today is left, today's
oldest files).

Several processes may write to one folder (`bts serve --workers N`): each
names its files after its pid, leaves the others' open files alone, and
counts the folder's size anew every minute, so the cap holds for all of them
within a minute's writes.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bts.errors import BtsError
from bts.serving.payload import ID_COLUMNS, TIME_COLUMN

REQUESTS = "requests"
PREDICTIONS = "predictions"
PROCESS = "process"
TABLES = (REQUESTS, PREDICTIONS, PROCESS)
DAY_NS = 86_400 * 10**9
TIMESTAMP = pa.timestamp("us", tz="UTC")
# What /metrics shows of the log, in the order of MonitoringLog.figures().
FIGURES = ("pending_records", "request_rows_written", "prediction_rows_written", "dropped_records", "write_errors", "bytes")


def memory_bytes() -> tuple[int, int]:
    """This process's resident memory now and at its peak (Linux /proc; the peak twice where /proc is missing)."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024
    except (OSError, ValueError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak, peak


def writer_alive(pid: int) -> bool:
    """Whether a process with this pid runs (a leftover file's writer may still be writing it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def leftover_writer(path: Path) -> int | None:
    """The pid in a temporary file's name (`.<time>-<pid>-<seq>.parquet.tmp`), None when it has none."""
    parts = path.name.split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def folder_bytes(folder: Path) -> int:
    """The size of the log's Parquet files under folder, those being written included."""
    total = 0
    for path in [*folder.glob("*/date=*/*.parquet"), *folder.glob("*/date=*/.*.tmp")]:
        with contextlib.suppress(OSError):  # closed, renamed or deleted by another writer meanwhile
            total += path.stat().st_size
    return total


@dataclass
class OpenFile:
    """A Parquet file being written under a hidden temporary name, renamed to `final` once closed."""

    writer: pq.ParquetWriter
    temporary: Path
    final: Path
    opened: float  # time.monotonic()
    rows: int = 0
    counted: int = 0  # its bytes as counted in MonitoringLog.bytes


@dataclass
class Entry:
    """One scoring request as the request path hands it over (arrays are not copied)."""

    request_id: str
    time_ns: int
    latency_ms: float
    rows: int
    status: int
    error_code: str | None
    format: str | None
    features: np.ndarray | None = None  # rows x feature columns
    keys: dict | None = None
    predictions: np.ndarray | None = None  # rows x output columns
    tags: dict[str, str | None] | None = None  # of the model that answered it (ServedModel.log_tags); None: the log's


class MonitoringLog:
    def __init__(
        self,
        folder: Path,
        tags: dict[str, str | None],
        feature_columns: list[str],
        output_columns: list[str],
        max_bytes: int,
        flush_seconds: float = 1.0,
        flush_records: int = 50_000,
        max_pending_records: int = 2_000_000,
        roll_seconds: float = 60.0,
        roll_rows: int = 1_000_000,
    ) -> None:
        self.folder = Path(folder)
        self.tags = tags  # of the model answering now: the process rows', and a request's given none of its own
        self.feature_columns = list(feature_columns)
        self.output_columns = list(output_columns)  # those of every model answering: a follower swaps in no other
        self.max_bytes = max_bytes
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self.max_pending_records = max_pending_records
        self.roll_seconds = roll_seconds
        self.roll_rows = roll_rows
        self._open: dict[tuple[str, str], OpenFile] = {}  # (table, date) -> the file being written
        self._pending: list[Entry] = []
        self._pending_records = 0
        self._lock = threading.Lock()  # guards _pending
        self._write_lock = threading.Lock()  # one writer at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sequence = 0
        self.bytes = 0
        self.written = {table: 0 for table in TABLES}
        self._sample_process = True  # the first write records the server's cost before it served anything
        self.dropped = 0
        self.write_errors = 0
        self.deleted_files = 0
        self._closed = False
        # Set when other processes write to the folder too (workers of one server): figures() is copied there at each
        # change, for the metrics of whichever process answers a scrape; and the folder's size is counted anew each minute.
        self.published: np.ndarray | None = None
        self._counted = time.monotonic()

    # -- request path -------------------------------------------------------------------------------------------------

    def add(self, entry: Entry) -> None:
        records = 1 + (entry.rows if entry.predictions is not None else 0)
        with self._lock:
            if self._pending_records + records > self.max_pending_records:  # the disk cannot keep up: count, do not grow
                self.dropped += records
                self._publish()
                return
            self._pending.append(entry)
            self._pending_records += records
            full = self._pending_records >= self.flush_records
            self._publish()
        if full:
            self._wake.set()

    @property
    def pending_records(self) -> int:
        return self._pending_records

    def figures(self) -> tuple[int, ...]:
        """Records pending, request and prediction rows written, records dropped, write errors, bytes (FIGURES)."""
        return (self._pending_records, self.written[REQUESTS], self.written[PREDICTIONS], self.dropped, self.write_errors, self.bytes)

    def _publish(self) -> None:
        if self.published is not None:
            self.published[:] = self.figures()

    # -- life cycle ---------------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the folder (checking it is writable), remove what killed writers left, count what it holds."""
        try:
            for table in TABLES:
                (self.folder / table).mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise BtsError(f"monitoring log {self.folder}: cannot write there ({exc.strerror}); use --log-dir or --no-log") from None
        for leftover in self.folder.glob("*/date=*/.*.tmp"):  # a writer killed mid-file; another one's open file stays
            writer = leftover_writer(leftover)
            if writer is None or writer == os.getpid() or not writer_alive(writer):
                leftover.unlink(missing_ok=True)
        self.bytes = folder_bytes(self.folder)

    def open(self) -> None:
        """Prepare the folder, then start the writer thread."""
        self.prepare()
        self._counted = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bts-monitoring", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the writer and write everything still pending (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush(close_all=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    # -- writing ------------------------------------------------------------------------------------------------------

    def flush(self, close_all: bool = False) -> None:
        """Write what is pending as row groups of the open files; close the files that are old enough (or all)."""
        with self._write_lock:
            with self._lock:
                entries, self._pending = self._pending, []
                records, self._pending_records = self._pending_records, 0
            try:
                if entries or close_all or self._sample_process:
                    self._write(entries)
                self._roll(close_all)
            except Exception as exc:  # a full disk must not stop the serving: count what is lost, start new files
                self.write_errors += 1
                self.dropped += records
                print(f"bts serve: monitoring log {self.folder}: write failed ({exc}); {records} records dropped", file=sys.stderr)
                self._close_after_error()
                with self._lock:
                    self._publish()
                return
            if self.published is not None and time.monotonic() - self._counted >= self.roll_seconds:
                self.bytes, self._counted = folder_bytes(self.folder), time.monotonic()  # the other writers' files too
            self._enforce_cap()
            with self._lock:
                self._publish()

    def _write(self, entries: list[Entry]) -> None:
        self._sample_process = False
        tables = ((REQUESTS, self.requests_table(entries)), (PREDICTIONS, self.predictions_table(entries)), (PROCESS, self.process_table()))
        for table_name, table in tables:
            if table.num_rows == 0:
                continue
            days = pc.cast(table["time"], pa.int64()).to_numpy() // (DAY_NS // 1000)
            unique = np.unique(days)
            for day in unique:
                part = table.filter(pa.array(days == day)) if len(unique) > 1 else table
                self._append(table_name, datetime.fromtimestamp(int(day) * 86_400, UTC).strftime("%Y-%m-%d"), part)

    def _append(self, table_name: str, date: str, table: pa.Table) -> None:
        current = self._open.get((table_name, date))
        if current is None:
            folder = self.folder / table_name / f"date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            self._sequence += 1
            name = f"{datetime.now(UTC):%H%M%S%f}-{os.getpid()}-{self._sequence:06d}.parquet"
            temporary = folder / f".{name}.tmp"
            writer = pq.ParquetWriter(temporary, table.schema, compression="zstd")
            current = self._open[(table_name, date)] = OpenFile(writer, temporary, folder / name, time.monotonic())
        if not table.schema.equals(current.writer.schema):
            table = table.cast(current.writer.schema)
        current.writer.write_table(table)
        current.rows += table.num_rows
        self.written[table_name] += table.num_rows
        size = current.temporary.stat().st_size
        self.bytes += size - current.counted
        current.counted = size

    def _roll(self, close_all: bool = False) -> None:
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        for key, current in list(self._open.items()):
            old = time.monotonic() - current.opened >= self.roll_seconds or current.rows >= self.roll_rows
            if close_all or old or key[1] < today:
                current.writer.close()
                os.replace(current.temporary, current.final)
                size = current.final.stat().st_size
                self.bytes += size - current.counted
                del self._open[key]

    def _close_after_error(self) -> None:
        """Close what can be closed (its row groups are good); remove what cannot."""
        for current in self._open.values():
            try:
                current.writer.close()
                os.replace(current.temporary, current.final)
            except Exception:
                with contextlib.suppress(OSError):
                    current.temporary.unlink()
                self.bytes -= current.counted
        self._open.clear()

    def _tag_columns(self, entries: list[Entry], rows: list[int] | None = None) -> dict[str, pa.Array]:
        """The model columns of the entries' rows (`rows`: how many each has; one when None), each row with the tags of
        the model that answered its request."""
        default = self.tags
        models = [e.tags if e.tags is not None else default for e in entries]
        first = models[0] if models else default
        if all(model is first for model in models):  # one model answered them all: as cheap as it gets
            total = sum(rows) if rows is not None else len(entries)
            return {name: pa.repeat(pa.scalar(value, pa.string()), total) for name, value in first.items()}
        repeats = np.asarray(rows if rows is not None else [1] * len(entries), dtype=np.int64)
        return {
            name: pa.array(np.repeat(np.array([model.get(name) for model in models], dtype=object), repeats), pa.string())
            for name in default
        }

    def requests_table(self, entries: list[Entry]) -> pa.Table:
        columns = {
            "request_id": pa.array([e.request_id for e in entries], pa.string()),
            "time": pa.array([e.time_ns // 1000 for e in entries], pa.int64()).cast(TIMESTAMP),
            "latency_ms": pa.array([e.latency_ms for e in entries], pa.float64()),
            "rows": pa.array([e.rows for e in entries], pa.int32()),
            "status": pa.array([e.status for e in entries], pa.int16()),
            "error_code": pa.array([e.error_code for e in entries], pa.string()),
            "format": pa.array([e.format for e in entries], pa.string()),
        }
        return pa.table({**columns, **self._tag_columns(entries)})

    def process_table(self) -> pa.Table:
        """One row: this process's CPU seconds so far (every thread), resident and peak memory, now."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        resident, peak = memory_bytes()
        columns = {
            "time": pa.array([time.time_ns() // 1000], pa.int64()).cast(TIMESTAMP),
            "pid": pa.array([os.getpid()], pa.int32()),
            "cpu_seconds": pa.array([usage.ru_utime + usage.ru_stime], pa.float64()),
            "rss_bytes": pa.array([resident], pa.int64()),
            "peak_rss_bytes": pa.array([peak], pa.int64()),
        }
        tags = self.tags  # of the model answering now
        return pa.table({**columns, **{name: pa.array([value], pa.string()) for name, value in tags.items()}})

    def predictions_table(self, entries: list[Entry]) -> pa.Table:
        scored = [e for e in entries if e.predictions is not None and e.rows]
        request_ids, times, positions = [], [], []
        keys: dict[str, list] = {column: [] for column in (*ID_COLUMNS, TIME_COLUMN)}
        for e in scored:
            request_ids.append(np.full(e.rows, e.request_id, dtype=object))
            times.append(np.full(e.rows, e.time_ns // 1000, dtype=np.int64))
            positions.append(np.arange(e.rows, dtype=np.int32))
            for column, values in keys.items():
                given = (e.keys or {}).get(column)
                values.extend(given if given is not None else [None] * e.rows)
        features = np.concatenate([e.features for e in scored]) if scored else np.empty((0, len(self.feature_columns)))
        outputs = np.concatenate([e.predictions for e in scored]) if scored else np.empty((0, len(self.output_columns)))
        columns = {
            "request_id": pa.array(np.concatenate(request_ids) if scored else [], pa.string()),
            "time": pa.array(np.concatenate(times) if scored else [], pa.int64()).cast(TIMESTAMP),
            "row": pa.array(np.concatenate(positions) if scored else [], pa.int32()),
            **{column: pa.array(keys[column], pa.int64()) for column in ID_COLUMNS},
            TIME_COLUMN: pa.array(keys[TIME_COLUMN], TIMESTAMP),
            **{column: pa.array(features[:, i]) for i, column in enumerate(self.feature_columns)},
            **{column: pa.array(outputs[:, i], pa.float64()) for i, column in enumerate(self.output_columns)},
        }
        return pa.table({**columns, **self._tag_columns(scored, [e.rows for e in scored])})

    # -- size cap -----------------------------------------------------------------------------------------------------

    def _enforce_cap(self) -> None:
        if self.bytes <= self.max_bytes:
            return
        days = sorted({d.name for table in TABLES for d in (self.folder / table).glob("date=*") if d.is_dir()})
        while self.bytes > self.max_bytes and days:
            oldest = days.pop(0)
            if days:  # an older day: all of it goes
                for table in TABLES:
                    folder = self.folder / table / oldest
                    if folder.is_dir():
                        self.bytes -= sum(p.stat().st_size for p in folder.glob("*.parquet"))
                        self.deleted_files += len(list(folder.glob("*.parquet")))
                        shutil.rmtree(folder, ignore_errors=True)
                print(f"bts serve: monitoring log over {self.max_bytes} bytes: deleted {oldest}", file=sys.stderr)
                continue
            files = sorted((p for table in TABLES for p in (self.folder / table / oldest).glob("*.parquet")), key=lambda p: p.name)
            while self.bytes > self.max_bytes and files:
                path = files.pop(0)
                self.bytes -= path.stat().st_size
                path.unlink(missing_ok=True)
                self.deleted_files += 1
            print(f"bts serve: monitoring log over {self.max_bytes} bytes: deleted today's oldest files", file=sys.stderr)
        self.bytes = max(self.bytes, 0)
