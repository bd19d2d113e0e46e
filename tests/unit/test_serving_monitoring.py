"""The monitoring log of `bts serve`: what it writes, where, when, and the size cap; and the metrics it feeds."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import Histogram
from prometheus_client.parser import text_string_to_metric_families

from bts.horizons import output_columns
from bts.serving.metrics import PredictionHistogram, ServingMetrics
from bts.serving.request_log import Entry, MonitoringLog

FEATURES = ["lag_1", "lag_2"]
OUTPUTS = output_columns([1, 5])  # forecast_h1, lower_h1, upper_h1, forecast_h5, lower_h5, upper_h5
TAGS = {"package_md5": "abc.dir", "model_name": "m", "model_version": "3", "run_id": "r" * 32, "data_features_md5": "f" * 32}
DAY_NS = 86_400 * 10**9


def forecast(features: np.ndarray) -> np.ndarray:
    """Rows x OUTPUTS: lag_1 + 0.5 at h1 and lag_1 + 5.5 at h5, each within 1 either side."""
    central = features[:, :1] + np.array([0.5, 5.5])
    return np.column_stack([central[:, 0], central[:, 0] - 1, central[:, 0] + 1, central[:, 1], central[:, 1] - 1, central[:, 1] + 1])


def entry(time_ns: int, rows: int = 2, status: int = 200, keys: dict | None = None) -> Entry:
    ok = status == 200
    features = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)
    return Entry(
        request_id=f"r{time_ns}",
        time_ns=time_ns,
        latency_ms=1.5,
        rows=rows if ok else 0,
        status=status,
        error_code=None if ok else "WRONG_TYPE",
        format="dataframe_split",
        features=features if ok else None,
        keys=keys if ok else None,
        predictions=forecast(features) if ok else None,
    )


def test_close_writes_every_request_and_prediction(tmp_path: Path) -> None:
    log = MonitoringLog(tmp_path, TAGS, FEATURES, OUTPUTS, max_bytes=10**9, flush_seconds=60)
    log.open()
    now = time.time_ns()
    reading = datetime(2017, 4, 18, 10, tzinfo=UTC)
    log.add(entry(now, rows=2, keys={"station_id": [7, None], "reading_time": [reading, None]}))
    log.add(entry(now + 1000, status=400))
    log.add(entry(now + 2000, rows=3))
    log.close()
    requests = pd.read_parquet(tmp_path / "requests").sort_values("time")
    assert requests["status"].tolist() == [200, 400, 200]
    assert requests["rows"].tolist() == [2, 0, 3]
    assert requests["error_code"].tolist()[1] == "WRONG_TYPE" and requests["error_code"].isna().tolist() == [True, False, True]
    assert (requests["package_md5"] == "abc.dir").all() and (requests["model_version"] == "3").all()
    predictions = pd.read_parquet(tmp_path / "predictions").sort_values(["time", "row"])
    assert len(predictions) == 5
    assert predictions["row"].tolist() == [0, 1, 0, 1, 2]
    assert predictions["lag_1"].tolist() == [0.0, 2.0, 0.0, 2.0, 4.0]
    assert "prediction" not in predictions.columns
    logged = predictions[OUTPUTS]  # one float64 column per output column of the model, in its order
    assert list(logged.columns) == OUTPUTS and (logged.dtypes == np.float64).all()
    assert logged["forecast_h1"].tolist() == [0.5, 2.5, 0.5, 2.5, 4.5]
    assert logged["forecast_h5"].tolist() == [5.5, 7.5, 5.5, 7.5, 9.5]
    assert (logged["lower_h1"] == logged["forecast_h1"] - 1).all() and (logged["upper_h5"] == logged["forecast_h5"] + 1).all()
    assert logged.values.tolist() == forecast(predictions[FEATURES].to_numpy()).tolist()
    assert predictions["station_id"].iloc[0] == 7 and predictions["station_id"].iloc[1:].isna().all()
    assert predictions["reading_time"].iloc[0] == pd.Timestamp(reading)
    assert predictions["request_id"].nunique() == 2 and (predictions["run_id"] == "r" * 32).all()
    day = datetime.fromtimestamp(now / 1e9, UTC).strftime("%Y-%m-%d")
    assert [p.name for p in (tmp_path / "requests").iterdir()] == [f"date={day}"]
    assert not list(tmp_path.rglob(".*.tmp"))
    process = pd.read_parquet(tmp_path / "process")  # the server's cost: a row per write
    assert len(process) >= 1 and (process["cpu_seconds"] > 0).all() and (process["peak_rss_bytes"] >= process["rss_bytes"]).all()
    assert (process["package_md5"] == "abc.dir").all()


def test_the_process_is_sampled_when_it_starts_and_at_each_write(tmp_path: Path) -> None:
    log = MonitoringLog(tmp_path, TAGS, FEATURES, OUTPUTS, max_bytes=10**9, flush_seconds=0.05, roll_seconds=0)
    log.open()
    deadline = time.monotonic() + 10
    while log.written["process"] < 1 and time.monotonic() < deadline:  # the baseline, before any request
        time.sleep(0.02)
    assert log.written["requests"] == 0 and log.written["process"] == 1
    log.add(entry(time.time_ns()))
    while log.written["requests"] < 1 and time.monotonic() < deadline:  # the writer's own write, not the one at close
        time.sleep(0.02)
    log.close()
    process = pd.read_parquet(tmp_path / "process").sort_values("time")
    assert len(process) == 3  # start, the request's write, the stop
    assert process["cpu_seconds"].is_monotonic_increasing


def test_the_writer_thread_writes_row_groups_and_rolls_files(tmp_path: Path) -> None:
    """Each flush is a row group of the open file; a file shows (renamed from its hidden name) once it is old enough."""
    import pyarrow.parquet as pq

    log = MonitoringLog(tmp_path, TAGS, FEATURES, OUTPUTS, max_bytes=10**9, flush_seconds=0.05, roll_seconds=2.0)
    log.open()
    log.add(entry(time.time_ns()))
    deadline = time.monotonic() + 10
    while log.written["predictions"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    with log._write_lock:  # between two flushes: the write that counted the predictions has written its process row too
        assert log.written["requests"] == 1 and log.written["predictions"] == 2
        assert not list(tmp_path.rglob("*.parquet")) and len(list(tmp_path.rglob(".*.tmp"))) == 3  # open, hidden (with process)
    log.add(entry(time.time_ns(), rows=3))
    while log.written["predictions"] < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    while len(list(tmp_path.rglob("*.parquet"))) < 3 and time.monotonic() < deadline:  # the three files roll one by one
        time.sleep(0.05)
    files = sorted(tmp_path.rglob("*.parquet"))
    assert len(files) == 3 and not list(tmp_path.rglob(".*.tmp"))
    logged = [f for f in files if f.parts[-3] != "process"]
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in logged] == [2, 2]
    assert len(pd.read_parquet(tmp_path / "predictions")) == 5
    assert log.bytes == sum(f.stat().st_size for f in files)
    log.close()


def test_a_batch_across_midnight_goes_to_two_days(tmp_path: Path) -> None:
    log = MonitoringLog(tmp_path, TAGS, FEATURES, OUTPUTS, max_bytes=10**9, flush_seconds=60)
    log.open()
    midnight = (time.time_ns() // DAY_NS) * DAY_NS
    log.add(entry(midnight - 1000))
    log.add(entry(midnight + 1000))
    log.close()
    assert len(list((tmp_path / "predictions").iterdir())) == 2
    assert len(pd.read_parquet(tmp_path / "requests")) == 2


def test_the_size_cap_deletes_the_oldest_days_first(tmp_path: Path) -> None:
    log = MonitoringLog(tmp_path, TAGS, FEATURES, OUTPUTS, max_bytes=10**9, flush_seconds=60, roll_seconds=0)  # a file per flush
    log.open()
    today = (time.time_ns() // DAY_NS) * DAY_NS
    for days_ago in (3, 2, 1, 0):  # large entries: the process samples (all dated today) weigh little beside them
        log.add(entry(today - days_ago * DAY_NS + 10**9, rows=5_000))
        log.flush()
    one_day = log.bytes / 4
    log.max_bytes = int(one_day * 3.5)  # 5 days worth after the next write: the two oldest days go
    log.add(entry(today + 2 * 10**9, rows=5_000))
    log.flush()
    log.close()
    kept = sorted(p.name for p in (tmp_path / "requests").iterdir())
    assert len(kept) == 2 and kept[-1] == datetime.fromtimestamp(today / 1e9, UTC).strftime("date=%Y-%m-%d")
    assert log.bytes <= log.max_bytes
    assert log.bytes == sum(p.stat().st_size for p in tmp_path.rglob("*.parquet"))


def test_when_only_today_is_left_its_oldest_files_go(tmp_path: Path) -> None:
    log = MonitoringLog(tmp_path, TAGS, FEATURES, OUTPUTS, max_bytes=10**9, flush_seconds=60, roll_seconds=0)
    log.open()
    now = time.time_ns()
    for second in range(3):
        log.add(entry(now + second))
        log.flush()
        time.sleep(0.002)  # file names carry the write time
    log.max_bytes = int(log.bytes / 3 * 1.5)
    log.add(entry(now + 3))
    log.flush()
    log.close()
    assert log.bytes <= log.max_bytes
    assert sorted(pd.read_parquet(tmp_path / "requests")["time"]) == [pd.Timestamp(now + 3, unit="ns", tz="UTC").floor("us")]


def test_an_unwritable_folder_is_one_error(tmp_path: Path) -> None:
    from bts.errors import BtsError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BtsError, match="cannot write there"):
        MonitoringLog(blocker / "log", TAGS, FEATURES, OUTPUTS, max_bytes=1).open()


def test_prediction_histogram_matches_prometheus_own_for_each_series() -> None:
    """Each column of what it observes counts under its own series, as prometheus-client's histogram of that series would."""
    values = np.array([-20.0, 0.0, 0.5, 5.0, 5.0001, 219.9, 230.0, 1e6, 25.0, 4.0])
    columns = np.column_stack([values, values[::-1] * 2])  # two series, each with values of every bucket
    ours = PredictionHistogram("x", "x", ["model", "horizon"], (0.0, 5.0, 230.0))
    series = [("m", "h1"), ("m", "h5")]
    ours.observe(columns[:4], series)
    ours.observe(columns[4:], series)
    reference = Histogram("y", "y", ["model", "horizon"], buckets=(0.0, 5.0, 230.0), registry=None)
    for row in columns:
        for value, labels in zip(row, series, strict=True):
            reference.labels(*labels).observe(value)

    def samples(histogram: object, name: str) -> dict[tuple[str, str], float]:
        family = next(iter(histogram.collect()))
        return {
            (s.labels["horizon"], s.labels.get("le", "")): s.value for s in family.samples if s.name in (f"{name}_bucket", f"{name}_sum")
        }

    ours_samples, reference_samples = samples(ours, "x"), samples(reference, "y")
    assert ours_samples == pytest.approx(reference_samples, rel=1e-12)
    assert ours_samples[("h1", "5.0")] == 5 and ours_samples[("h5", "5.0")] == 3  # the series are apart
    assert ours_samples[("h1", "")] == pytest.approx(values.sum()) and ours_samples[("h5", "")] == pytest.approx(2 * values.sum())


def test_metrics_are_labelled_with_the_model_and_parse() -> None:
    metrics = ServingMetrics({"model": "bts-next-reading", "version": "2"}, {"package_md5": "abc.dir", "run_id": ""}, OUTPUTS, None)
    metrics.observe(200, None, 0.004, forecast(np.array([[14.0, 0.0], [230.0, 0.0]])))
    metrics.observe(400, "WRONG_TYPE", 0.001, None)
    metrics.observe(400, "WRONG_TYPE", 0.001, None)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    requests = {
        (s.labels["status"], s.labels["error_code"]): s.value for s in families["bts_requests"].samples if s.name == "bts_requests_total"
    }
    assert requests == {("200", ""): 1, ("400", "WRONG_TYPE"): 2}
    assert next(s.value for s in families["bts_rows_scored"].samples if s.name == "bts_rows_scored_total") == 2
    forecasts = families["bts_prediction"].samples  # the central forecasts of each horizon, the bounds not counted
    assert {s.labels["horizon"]: s.value for s in forecasts if s.name == "bts_prediction_count"} == {"h1": 2, "h5": 2}
    assert {s.labels["horizon"]: s.value for s in forecasts if s.name == "bts_prediction_sum"} == {"h1": 245.0, "h5": 255.0}
    assert {s.labels["horizon"]: s.value for s in forecasts if s.name == "bts_prediction_bucket" and s.labels["le"] == "15.0"} == {
        "h1": 1,
        "h5": 0,
    }
    assert "process_cpu_seconds" in families
    for family in families.values():
        for sample in family.samples:
            assert sample.labels["model"] == "bts-next-reading" and sample.labels["version"] == "2", sample
