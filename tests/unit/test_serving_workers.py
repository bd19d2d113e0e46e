"""`bts serve --workers N` without a server: the option's check, the metrics every worker shares, the log's leftovers."""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import bts
from bts.errors import ConfigError
from bts.horizons import output_columns
from bts.serving.metrics import MonitoringCollector, forget_worker
from bts.serving.request_log import FIGURES, Entry, MonitoringLog

LABELS = {"model": "bts-next-reading", "version": "2"}
INFO = {"package_md5": "abc.dir", "run_id": ""}
OUTPUTS = output_columns([1, 5])  # forecast_h1, lower_h1, upper_h1, forecast_h5, lower_h5, upper_h5
TAGS = {"package_md5": "abc.dir", "model_name": "m", "model_version": "2", "run_id": "r" * 32, "data_features_md5": "f" * 32}


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two", "", "65", " 2"])
def test_workers_must_be_a_whole_number_from_1_to_64(value: str) -> None:
    from bts.cli import build_parser
    from bts.serving.server import check_arguments

    args = build_parser().parse_args(["serve", "models/package", f"--workers={value}"])
    with pytest.raises(ConfigError) as error:
        check_arguments(args)
    assert str(error.value) == f"--workers {value}: must be a whole number of processes from 1 to 64"


@pytest.mark.parametrize("given", [[], ["--workers", "1"], ["--workers", "64"]])
def test_one_worker_is_the_default_and_64_the_most(given: list[str]) -> None:
    from bts.cli import build_parser
    from bts.serving.server import check_arguments

    check_arguments(build_parser().parse_args(["serve", "models/package", *given]))


def outputs(forecasts: list[float]) -> np.ndarray:
    """Rows x OUTPUTS: the forecast at h1, 100 more at h5, bounds 1000 apart (none of them in a bucket of a forecast)."""
    h1, h5 = np.array(forecasts), np.array(forecasts) + 100
    return np.column_stack([h1, h1 - 1000, h1 + 1000, h5, h5 - 1000, h5 + 1000])


def observe_and_scrape(folder: str, supervisor: int, forecasts: list[float], observed: Event, scrape: tuple[Event, str] | None) -> None:
    """In a fresh interpreter whose PROMETHEUS_MULTIPROC_DIR is folder: one worker's requests; then, once the other
    worker has observed its own, a scrape written to a file."""
    from bts.serving.metrics import ServingMetrics

    metrics = ServingMetrics(LABELS, INFO, OUTPUTS, None, Path(folder), supervisor)
    metrics.observe(200, None, 0.004, outputs(forecasts))
    metrics.observe(400, "WRONG_TYPE", 0.001, None)
    observed.set()
    if scrape is not None:
        other_observed, path = scrape
        assert other_observed.wait(120)
        Path(path).write_bytes(metrics.exposition())


def test_the_metrics_of_two_workers_are_summed_whichever_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    # The children import the bts this process did, not a package's copy of it that loading a model put first on the path.
    monkeypatch.syspath_prepend(str(Path(bts.__file__).parents[1]))
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, which import prometheus_client in multiprocess mode
    first_done, second_done = spawn.Event(), spawn.Event()
    scrape = tmp_path / "scrape.txt"
    workers = [
        spawn.Process(target=observe_and_scrape, args=(str(shared), os.getpid(), [14.0, 230.5], first_done, None)),
        spawn.Process(target=observe_and_scrape, args=(str(shared), os.getpid(), [3.0], second_done, (first_done, str(scrape)))),
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    families = {f.name: f for f in text_string_to_metric_families(scrape.read_text())}

    def value(family: str, sample: str, **labels: str) -> float:
        return next(s.value for s in families[family].samples if s.name == sample and labels.items() <= s.labels.items())

    assert value("bts_requests", "bts_requests_total", status="200") == 2
    assert value("bts_requests", "bts_requests_total", status="400", error_code="WRONG_TYPE") == 2
    assert value("bts_rows_scored", "bts_rows_scored_total") == 3
    assert value("bts_request_duration_seconds", "bts_request_duration_seconds_count") == 4
    assert (
        value("bts_prediction", "bts_prediction_count", horizon="h1") == 3
        and value("bts_prediction", "bts_prediction_sum", horizon="h1") == 247.5
    )
    assert (
        value("bts_prediction", "bts_prediction_count", horizon="h5") == 3
        and value("bts_prediction", "bts_prediction_sum", horizon="h5") == 547.5
    )
    assert [value("bts_prediction", "bts_prediction_bucket", le=bound, horizon="h1") for bound in ("5.0", "230.0", "+Inf")] == [1, 2, 3]
    assert [value("bts_prediction", "bts_prediction_bucket", le=bound, horizon="h5") for bound in ("5.0", "150.0", "+Inf")] == [0, 2, 3]
    assert {s.labels["horizon"] for s in families["bts_prediction"].samples} == {"h1", "h5"}
    assert [s.value for s in families["bts_model_info"].samples] == [1]
    assert value("process_cpu_seconds", "process_cpu_seconds_total") > 0  # this process and its two workers
    for family in families.values():
        for sample in family.samples:
            assert sample.labels["model"] == "bts-next-reading" and sample.labels["version"] == "2", sample


def test_the_monitoring_figures_of_all_workers_and_of_one_that_died(tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    dead = np.zeros(len(FIGURES))
    dead[FIGURES.index("pending_records")], dead[FIGURES.index("request_rows_written")], dead[FIGURES.index("bytes")] = 7, 40, 9000
    dead.tofile(shared / "bts_monitoring-111.f64")
    log = MonitoringLog(tmp_path / "log", TAGS, ["lag_1"], OUTPUTS, max_bytes=10**9)
    collector = MonitoringCollector(log, lambda: LABELS, shared)
    log.add(Entry("r1", time.time_ns(), 1.0, 2, 200, None, "dataframe_split", np.zeros((2, 1)), None, np.zeros((2, len(OUTPUTS)))))
    log.bytes = 5000

    def figures() -> dict[str, float]:
        return {family.name.removeprefix("bts_monitoring_"): family.samples[0].value for family in collector.collect()}

    assert figures()["pending_records"] == 7 + 3 and figures()["request_rows_written"] == 40
    log._publish()  # as the writer does after each write
    assert figures()["bytes"] == 9000  # the largest count of the folder
    forget_worker(shared, 111)
    assert figures() == {name: 0 for name in FIGURES} | {"pending_records": 3, "request_rows_written": 40, "bytes": 5000}


def test_a_killed_writers_leftover_goes_and_a_running_writers_file_stays(tmp_path: Path) -> None:
    finished = multiprocessing.get_context("spawn").Process(target=int)
    finished.start()
    finished.join()
    day = tmp_path / "requests" / "date=2026-01-01"
    day.mkdir(parents=True)
    killed = day / f".120000000000-{finished.pid}-000001.parquet.tmp"
    running = day / f".120000000000-{os.getppid()}-000001.parquet.tmp"
    for path in (killed, running):
        path.write_bytes(b"PAR1")
    log = MonitoringLog(tmp_path, TAGS, ["lag_1"], OUTPUTS, max_bytes=10**9)
    log.prepare()
    assert not killed.exists() and running.exists()
    assert log.bytes == 4  # the running writer's file counts in the folder's size
