"""Prometheus metrics of `bts serve` (GET /metrics), every series labelled with the served model.

    bts_requests_total{model, version, status, error_code}   scoring requests (POST /invocations) by HTTP status
    bts_request_duration_seconds{model, version}             histogram of their latency, body read to response ready
    bts_rows_scored_total{model, version}                    rows of the successful requests
    bts_prediction{model, version, horizon}                  histogram of the central forecasts, per horizon (h1, h5, ...)
    bts_model_info{model, version, package_md5, run_id}      1 (0: a version answering here before)
    bts_monitoring_*{model, version}                         the monitoring log: records pending, written, dropped, bytes
    process_*{model, version}                                CPU seconds, resident and virtual memory, open fds, start time

A request is counted under the version that answered it: when a followed
alias moves, the new version's series start beside the old one's, and
bts_model_info, bts_monitoring_* and process_* name the version answering
now. The prediction histogram counts each row's central forecast of every
horizon the model forecasts (its `forecast_h5` column under horizon="h5"; the
interval bounds are not counted), a whole request at once (numpy), not one
Python call per row or per horizon.

With several workers (`bts serve --workers N`) every worker keeps its figures
in files of its own in a folder they share, and whichever worker answers a
scrape reads them all: counters and histograms are summed (prometheus-client's
multiprocess mode; the prediction histogram, a file per series of model,
version and horizon, and the monitoring figures in numpy files of the same
kind), bts_model_info is the live workers' maximum, bts_monitoring_bytes the
largest worker's count of the folder (each counts it anew every minute), and
process_* describe the server as one, read from /proc at the scrape: the
supervisor and its workers' CPU seconds (those of workers that died included),
memory and open files summed (pages they share are counted in each), the
supervisor's start time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from bts.horizons import FORECAST, label, output_column, output_horizons
from bts.serving.request_log import FIGURES, MonitoringLog

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Sensor readings: degrees C, volts and amperes, from a few units to a few hundred (no negative bound: Prometheus then
# drops the sum and count).
PREDICTION_BUCKETS = (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 80, 100, 150, 200, 210, 220, 230, 240, 250, 300, 500, 1000)
MONITORING_FIGURES = "bts_monitoring"  # the workers' files of the monitoring log's figures
MONITORING_DOCUMENTATION = {
    "pending_records": "Monitoring records waiting for the writer",
    "request_rows_written": "Request records written to the monitoring log",
    "prediction_rows_written": "Prediction records written to the monitoring log",
    "dropped_records": "Monitoring records dropped because the writer could not keep up",
    "write_errors": "Failed writes of the monitoring log (retried)",
    "bytes": "Size of the monitoring log folder's Parquet files",
}
GONE_WITH_THEIR_WORKER = ("pending_records", "bytes")  # figures a dead worker no longer has


def worker_figures(folder: Path | None, name: str, size: int, series: str | None = None) -> np.ndarray:
    """Zeros: in memory, or in this process's own file under the workers' shared folder (read by all_figures), one per
    series when the figures have several."""
    if folder is None:
        return np.zeros(size)
    suffix = f"-{series}" if series is not None else ""
    return np.memmap(folder / f"{name}-{os.getpid()}{suffix}.f64", dtype=np.float64, mode="w+", shape=(size,))


def all_figures(folder: Path, name: str, size: int) -> list[np.ndarray]:
    """Every worker's figures of that name, those of workers that have died included."""
    arrays = [np.fromfile(path, dtype=np.float64) for path in sorted(folder.glob(f"{name}-*.f64"))]
    return [array for array in arrays if len(array) == size]  # not one being created this very moment


def forget_worker(folder: Path, pid: int) -> None:
    """A worker has died: its records pending are lost, its count of the folder is old, and the version it served is
    served no more (bts_model_info); what it wrote and answered stays counted."""
    mark_process_dead(pid, str(folder))
    path = folder / f"{MONITORING_FIGURES}-{pid}.f64"
    if path.is_file() and path.stat().st_size == len(FIGURES) * 8:
        figures = np.memmap(path, dtype=np.float64, mode="r+", shape=(len(FIGURES),))
        for name in GONE_WITH_THEIR_WORKER:
            figures[FIGURES.index(name)] = 0
        figures.flush()


class PredictionHistogram:
    """A histogram collector fed with matrices: one searchsorted and bincount per request for all its series (a series
    per column: per model version and horizon).

    A series' counts per bucket (+Inf last) and sum are one array; with `shared`, a file of this worker's per series
    (its labels in a file beside it, named by their md5), which every worker's collect() sums.
    """

    def __init__(
        self, name: str, documentation: str, label_names: list[str], bounds: tuple[float, ...], shared: Path | None = None
    ) -> None:
        self.name, self.documentation, self.shared = name, documentation, shared
        self.label_names = list(label_names)
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.size = len(bounds) + 2
        self._series: dict[tuple[str, ...], np.ndarray] = {}
        self._shared_labels: dict[str, tuple[str, ...]] = {}  # series file key -> label values, as read
        self._lock = threading.Lock()

    def series(self, labels: tuple[str, ...]) -> np.ndarray:
        """The counts and sum of the series of these label values, made at 0 when new."""
        values = self._series.get(labels)
        if values is None:
            with self._lock:
                values = self._series.get(labels)
                if values is None:
                    values = self._series[labels] = self._new_series(labels)
        return values

    def _new_series(self, labels: tuple[str, ...]) -> np.ndarray:
        if self.shared is None:
            return np.zeros(self.size)
        key = hashlib.md5(json.dumps(labels).encode()).hexdigest()[:16]
        named = self.shared / f"{self.name}-{key}.labels"
        if not named.exists():  # the same content whichever worker writes it
            temporary = named.with_name(f".{named.name}.{os.getpid()}")
            temporary.write_text(json.dumps(labels))
            os.replace(temporary, named)
        return worker_figures(self.shared, self.name, self.size, key)

    def observe(self, values: np.ndarray, labels: list[tuple[str, ...]]) -> None:
        """Count each column of values (rows x series) under the series of its label values in `labels`."""
        series = [self.series(values_of) for values_of in labels]
        buckets = len(self.bounds) + 1
        positions = np.searchsorted(self.bounds, values, side="left")  # bucket i holds values <= bounds[i] (Prometheus' le)
        positions += buckets * np.arange(len(series))  # each column's buckets apart: one bincount counts them all
        counts = np.bincount(positions.ravel(), minlength=buckets * len(series)).reshape(len(series), buckets)
        sums = values.sum(axis=0)
        with self._lock:
            for values_of, counted, total in zip(series, counts, sums, strict=True):
                values_of[:-1] += counted
                values_of[-1] += total

    def totals(self) -> dict[tuple[str, ...], np.ndarray]:
        """Each series' counts and sum: this process's, or with `shared` every worker's (those that died included)."""
        if self.shared is None:
            with self._lock:
                return {labels: values.copy() for labels, values in self._series.items()}
        totals: dict[tuple[str, ...], np.ndarray] = {}
        for path in sorted(self.shared.glob(f"{self.name}-*-*.f64")):
            key = path.stem.rsplit("-", 1)[1]
            labels = self._shared_labels.get(key)
            if labels is None:
                try:
                    labels = self._shared_labels[key] = tuple(json.loads((self.shared / f"{self.name}-{key}.labels").read_text()))
                except (OSError, ValueError):  # its labels are being written this very moment
                    continue
            values = np.fromfile(path, dtype=np.float64)
            if len(values) == self.size:  # not one being created this very moment
                totals[labels] = totals[labels] + values if labels in totals else values
        return totals

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        for labels, totals in sorted(self.totals().items()):
            cumulative, total = np.cumsum(totals[:-1]), float(totals[-1])
            buckets = [(_bound(b), int(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)] + [("+Inf", int(cumulative[-1]))]
            family.add_metric(list(labels), buckets, total)
        yield family


def _bound(value: float) -> str:
    return str(float(value))


class Labelled:
    """Another collector's metrics with the labels of the model answering now added to every sample (the process
    collector has none)."""

    def __init__(self, inner: object, labels: Callable[[], dict[str, str]]) -> None:
        self.inner, self.labels = inner, labels

    def collect(self) -> Iterator[Metric]:
        labels = self.labels()
        for family in self.inner.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labelled.add_sample(sample.name, {**sample.labels, **labels}, sample.value, sample.timestamp, sample.exemplar)
            yield labelled


class MonitoringCollector:
    """The monitoring log's figures: this process's, or with `shared` every worker's (summed; the folder's size: the largest),
    labelled with the model answering now."""

    def __init__(self, log: MonitoringLog, labels: Callable[[], dict[str, str]], shared: Path | None = None) -> None:
        self.log, self.labels, self.shared = log, labels, shared
        if shared is not None:
            log.published = worker_figures(shared, MONITORING_FIGURES, len(FIGURES))

    def collect(self) -> Iterator[Metric]:
        labels = self.labels()
        names, values = list(labels), list(labels.values())
        if self.shared is None:
            figures = self.log.figures()
        else:
            workers = np.array(all_figures(self.shared, MONITORING_FIGURES, len(FIGURES))).reshape(-1, len(FIGURES))
            figures = [workers[:, i].max(initial=0) if name == "bytes" else workers[:, i].sum() for i, name in enumerate(FIGURES)]
        for name, value in zip(FIGURES, figures, strict=True):
            family = GaugeMetricFamily(f"bts_monitoring_{name}", MONITORING_DOCUMENTATION[name], labels=names)
            family.add_metric(values, value)
            yield family


class ServerProcesses:
    """process_* (ProcessCollector's names) of a server of several processes as one: its supervisor and workers."""

    def __init__(self, supervisor: int) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        import psutil

        try:
            root = psutil.Process(self.supervisor)
            processes, reaped = [root, *root.children()], root.cpu_times()
        except psutil.NoSuchProcess:  # the supervisor is gone: this worker is stopping
            root = psutil.Process()
            processes, reaped = [root], None
        cpu = (reaped.children_user + reaped.children_system) if reaped is not None else 0.0  # workers that died
        resident = virtual = fds = 0
        for process in processes:
            try:
                with process.oneshot():
                    times, memory, files = process.cpu_times(), process.memory_info(), process.num_fds()
            except psutil.NoSuchProcess:
                continue
            cpu += times.user + times.system
            resident, virtual, fds = resident + memory.rss, virtual + memory.vms, fds + files
        summed = ", summed over the server's processes"
        yield GaugeMetricFamily("process_virtual_memory_bytes", f"Virtual memory size in bytes{summed}.", value=virtual)
        yield GaugeMetricFamily("process_resident_memory_bytes", f"Resident memory size in bytes{summed}.", value=resident)
        yield GaugeMetricFamily(
            "process_start_time_seconds", "Start time of the server's first process since unix epoch in seconds.", value=root.create_time()
        )
        yield CounterMetricFamily("process_cpu_seconds", f"Total user and system CPU time spent in seconds{summed}.", value=cpu)
        yield GaugeMetricFamily("process_open_fds", f"Number of open file descriptors{summed}.", value=fds)
        yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=root.rlimit(psutil.RLIMIT_NOFILE)[0])


class ServingMetrics:
    """The metrics of one server process; with `shared` (the workers' folder, PROMETHEUS_MULTIPROC_DIR), of all workers.

    `labels` and `info` are the first model's; serve() names the next one. `output_columns` are those of every model
    served (a follower swaps in no other): the central forecast of each horizon is what bts_prediction counts.
    """

    def __init__(
        self,
        labels: dict[str, str],
        info: dict[str, str],
        output_columns: list[str],
        log: MonitoringLog | None,
        shared: Path | None = None,
        supervisor: int | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        own = self.registry  # with shared, prometheus-client writes each worker's values to its files: they are read from there
        if shared is not None:
            if not prometheus_values.ValueClass._multiprocess:
                raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
            MultiProcessCollector(self.registry, path=str(shared))
            own = None
        names = list(labels)
        self.requests = Counter(
            "bts_requests", "Scoring requests (POST /invocations) by HTTP status", [*names, "status", "error_code"], registry=own
        )
        self.latency = Histogram(
            "bts_request_duration_seconds", "Latency of scoring requests", names, buckets=LATENCY_BUCKETS, registry=own
        )
        self.rows = Counter("bts_rows_scored", "Rows scored by successful requests", names, registry=own)
        horizons = output_horizons(output_columns)
        self._forecasts = [output_columns.index(output_column(FORECAST, horizon)) for horizon in horizons]  # their positions
        self._horizons = [label(horizon) for horizon in horizons]
        self.predictions = PredictionHistogram(
            "bts_prediction", "Central forecasts, by horizon", [*names, "horizon"], PREDICTION_BUCKETS, shared
        )
        self.registry.register(self.predictions)
        # livemax: a version is 1 while a live worker answers with it (forget_worker drops a dead worker's)
        self.model_info = Gauge("bts_model_info", "The served model", [*names, *info], registry=own, multiprocess_mode="livemax")
        self._children: dict[tuple[tuple[str, ...], int, str], object] = {}  # (labels, status, error code) -> its counter
        self._series: dict[tuple[str, ...], tuple[object, object, list]] = {}  # labels -> (latency, rows, forecast series)
        self._info: tuple[str, ...] | None = None
        self.labels = labels  # the model answering now
        self.serve(labels, info)
        processes = ProcessCollector(registry=None) if shared is None else ServerProcesses(supervisor or os.getppid())
        self.registry.register(Labelled(processes, lambda: self.labels))
        if log is not None:
            self.registry.register(MonitoringCollector(log, lambda: self.labels, shared))
        self.requests_served = 0

    def serve(self, labels: dict[str, str], info: dict[str, str]) -> None:
        """The model answering from now on: bts_model_info is 1 for it (0 for the one before), and its series are there at
        0 before its first request."""
        if self._info is not None:
            self.model_info.labels(*self._info).set(0)
        self._info = (*labels.values(), *info.values())
        self.model_info.labels(*self._info).set(1)
        for series in self._series_of(tuple(labels.values()))[2]:
            self.predictions.series(series)
        self.labels = labels

    def _series_of(self, values: tuple[str, ...]) -> tuple[object, object, list[tuple[str, ...]]]:
        series = self._series.get(values)
        if series is None:
            forecasts = [(*values, horizon) for horizon in self._horizons]
            series = self._series[values] = (self.latency.labels(*values), self.rows.labels(*values), forecasts)
        return series

    def observe(
        self, status: int, error_code: str | None, seconds: float, predictions: np.ndarray | None, labels: dict[str, str] | None = None
    ) -> None:
        """One scoring request, counted under the labels of the model that answered it (the one answering now when None);
        predictions: its rows x output columns."""
        values = tuple((labels or self.labels).values())
        key = (values, status, error_code or "")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(*values, str(status), error_code or "")
        child.inc()
        self.requests_served += 1
        latency, rows, forecasts = self._series_of(values)
        latency.observe(seconds)
        if predictions is not None and len(predictions):
            rows.inc(len(predictions))
            self.predictions.observe(predictions[:, self._forecasts], forecasts)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
