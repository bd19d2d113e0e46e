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
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from bts.serving.request_log import MonitoringLog

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Sensor readings: degrees C, volts and amperes, from a few units to a few hundred (no negative bound: Prometheus then
# drops the sum and count).
PREDICTION_BUCKETS = (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 80, 100, 150, 200, 210, 220, 230, 240, 250, 300, 500, 1000)


class PredictionHistogram:
    """A histogram collector fed with arrays: one searchsorted and bincount per request."""

    def __init__(self, name: str, documentation: str, labels: dict[str, str], bounds: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, values: np.ndarray) -> None:
        positions = np.searchsorted(self.bounds, values, side="left")  # bucket i holds values <= bounds[i] (Prometheus' le)
        counts = np.bincount(positions, minlength=len(self.counts))
        with self._lock:
            self.counts += counts
            self.sum += float(np.sum(values))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative, total = np.cumsum(self.counts), self.sum
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
    def __init__(self, log: MonitoringLog, labels: dict[str, str]) -> None:
        self.log, self.labels = log, labels

    def collect(self) -> Iterator[Metric]:
        names, values = list(self.labels), list(self.labels.values())
        figures = [
            ("bts_monitoring_pending_records", "Monitoring records waiting for the writer", self.log.pending_records),
            ("bts_monitoring_request_rows_written", "Request records written to the monitoring log", self.log.written["requests"]),
            ("bts_monitoring_prediction_rows_written", "Prediction records written to the monitoring log", self.log.written["predictions"]),
            ("bts_monitoring_dropped_records", "Monitoring records dropped because the writer could not keep up", self.log.dropped),
            ("bts_monitoring_write_errors", "Failed writes of the monitoring log (retried)", self.log.write_errors),
            ("bts_monitoring_bytes", "Size of the monitoring log folder's Parquet files", self.log.bytes),
        ]
        for name, documentation, value in figures:
            family = GaugeMetricFamily(name, documentation, labels=names)
            family.add_metric(values, value)
            yield family


class ServingMetrics:
    def __init__(self, labels: dict[str, str], info: dict[str, str], log: MonitoringLog | None) -> None:
        self.registry = CollectorRegistry()
        names, values = list(labels), list(labels.values())
        self._values = values
        self.requests = Counter(
            "bts_requests", "Scoring requests (POST /invocations) by HTTP status", [*names, "status", "error_code"], registry=self.registry
        )
        self.latency = Histogram(
            "bts_request_duration_seconds", "Latency of scoring requests", names, buckets=LATENCY_BUCKETS, registry=self.registry
        ).labels(*values)
        self.rows = Counter("bts_rows_scored", "Rows scored by successful requests", names, registry=self.registry).labels(*values)
        self.predictions = PredictionHistogram("bts_prediction", "Predicted values", labels, PREDICTION_BUCKETS)
        self.registry.register(self.predictions)
        model_info = Gauge("bts_model_info", "The served model", [*names, *info], registry=self.registry)
        model_info.labels(*values, *info.values()).set(1)
        self.registry.register(Labelled(ProcessCollector(registry=None), labels))
        if log is not None:
            self.registry.register(MonitoringCollector(log, labels))
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
