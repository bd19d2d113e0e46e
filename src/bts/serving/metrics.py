"""Prometheus metrics of `bts serve` (GET /metrics), every series labelled with the served model.

    bts_requests_total{model, version, status, error_code}   scoring requests (POST /invocations) by HTTP status
    bts_request_duration_seconds{model, version}             histogram of their latency, body read to response ready
    bts_rows_scored_total{model, version}                    rows of the successful requests
    bts_prediction{model, version}                           histogram of the predicted values
    bts_model_info{model, version, package_md5, run_id}      1
    bts_monitoring_*{model, version}                         the monitoring log: records pending, written, dropped, bytes
    process_*{model, version}                                CPU seconds, resident and virtual memory, open fds, start time

The prediction histogram takes a whole request's predictions at once (numpy),
not one Python call per row.

With several workers (`bts serve --workers N`) every worker keeps its figures
in files of its own in a folder they share, and whichever worker answers a
scrape reads them all: counters and histograms are summed
(prometheus-client's multiprocess mode; the prediction histogram and the
monitoring figures in numpy files of the same kind), bts_model_info is the
workers' maximum (1), bts_monitoring_bytes the largest worker's count of the
folder (each counts it anew every minute), and process_* describe the server
as one, read from /proc at the scrape: the supervisor and its workers'
CPU seconds (those of workers that died included), memory and open files
summed (pages they share are counted in each), the supervisor's start time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

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


def worker_figures(folder: Path | None, name: str, size: int) -> np.ndarray:
    """Zeros: in memory, or in this process's own file under the workers' shared folder (read by all_figures)."""
    if folder is None:
        return np.zeros(size)
    return np.memmap(folder / f"{name}-{os.getpid()}.f64", dtype=np.float64, mode="w+", shape=(size,))


def all_figures(folder: Path, name: str, size: int) -> list[np.ndarray]:
    """Every worker's figures of that name, those of workers that have died included."""
    arrays = [np.fromfile(path, dtype=np.float64) for path in sorted(folder.glob(f"{name}-*.f64"))]
    return [array for array in arrays if len(array) == size]  # not one being created this very moment


def forget_worker(folder: Path, pid: int) -> None:
    """A worker has died: its records pending are lost and its count of the folder is old; what it wrote stays counted."""
    path = folder / f"{MONITORING_FIGURES}-{pid}.f64"
    if path.is_file() and path.stat().st_size == len(FIGURES) * 8:
        figures = np.memmap(path, dtype=np.float64, mode="r+", shape=(len(FIGURES),))
        for name in GONE_WITH_THEIR_WORKER:
            figures[FIGURES.index(name)] = 0
        figures.flush()


class PredictionHistogram:
    """A histogram collector fed with arrays: one searchsorted and bincount per request.

    The counts per bucket (+Inf last) and the sum are one array; with `shared`, a file of this worker's that every
    worker's collect() sums.
    """

    def __init__(
        self, name: str, documentation: str, labels: dict[str, str], bounds: tuple[float, ...], shared: Path | None = None
    ) -> None:
        self.name, self.documentation, self.labels, self.shared = name, documentation, labels, shared
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.values = worker_figures(shared, name, len(bounds) + 2)
        self._lock = threading.Lock()

    def observe(self, values: np.ndarray) -> None:
        positions = np.searchsorted(self.bounds, values, side="left")  # bucket i holds values <= bounds[i] (Prometheus' le)
        counts = np.bincount(positions, minlength=len(self.bounds) + 1)
        with self._lock:
            self.values[:-1] += counts
            self.values[-1] += float(np.sum(values))

    def collect(self) -> Iterator[Metric]:
        if self.shared is None:
            with self._lock:
                totals = self.values.copy()
        else:
            totals = np.sum(all_figures(self.shared, self.name, len(self.values)), axis=0)
        cumulative, total = np.cumsum(totals[:-1]), float(totals[-1])
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        buckets = [(_bound(b), int(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)] + [("+Inf", int(cumulative[-1]))]
        family.add_metric(list(self.labels.values()), buckets, total)
        yield family


def _bound(value: float) -> str:
    return str(float(value))


class Labelled:
    """Another collector's metrics with the model's labels added to every sample (the process collector has none)."""

    def __init__(self, inner: object, labels: dict[str, str]) -> None:
        self.inner, self.labels = inner, labels

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labelled.add_sample(sample.name, {**sample.labels, **self.labels}, sample.value, sample.timestamp, sample.exemplar)
            yield labelled


class MonitoringCollector:
    """The monitoring log's figures: this process's, or with `shared` every worker's (summed; the folder's size: the largest)."""

    def __init__(self, log: MonitoringLog, labels: dict[str, str], shared: Path | None = None) -> None:
        self.log, self.labels, self.shared = log, labels, shared
        if shared is not None:
            log.published = worker_figures(shared, MONITORING_FIGURES, len(FIGURES))

    def collect(self) -> Iterator[Metric]:
        names, values = list(self.labels), list(self.labels.values())
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
    """The metrics of one server process; with `shared` (the workers' folder, PROMETHEUS_MULTIPROC_DIR), of all workers."""

    def __init__(
        self,
        labels: dict[str, str],
        info: dict[str, str],
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
        names, values = list(labels), list(labels.values())
        self._values = values
        self.requests = Counter(
            "bts_requests", "Scoring requests (POST /invocations) by HTTP status", [*names, "status", "error_code"], registry=own
        )
        self.latency = Histogram(
            "bts_request_duration_seconds", "Latency of scoring requests", names, buckets=LATENCY_BUCKETS, registry=own
        ).labels(*values)
        self.rows = Counter("bts_rows_scored", "Rows scored by successful requests", names, registry=own).labels(*values)
        self.predictions = PredictionHistogram("bts_prediction", "Predicted values", labels, PREDICTION_BUCKETS, shared)
        self.registry.register(self.predictions)
        model_info = Gauge("bts_model_info", "The served model", [*names, *info], registry=own, multiprocess_mode="max")
        model_info.labels(*values, *info.values()).set(1)
        processes = ProcessCollector(registry=None) if shared is None else ServerProcesses(supervisor or os.getppid())
        self.registry.register(Labelled(processes, labels))
        if log is not None:
            self.registry.register(MonitoringCollector(log, labels, shared))
        self._children: dict[tuple[int, str], object] = {}
        self.requests_served = 0

    def observe(self, status: int, error_code: str | None, seconds: float, predictions: np.ndarray | None) -> None:
        key = (status, error_code or "")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(*self._values, str(status), error_code or "")
        child.inc()
        self.requests_served += 1
        self.latency.observe(seconds)
        if predictions is not None and len(predictions):
            self.rows.inc(len(predictions))
            self.predictions.observe(predictions)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
