"""`bts serve` following an alias, without a registry: the options' checks, a swap under a request in flight (a real
app on a real socket), the log rows and metrics of two versions, the metrics of workers on different versions."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

import bts
from bts.cli import build_parser
from bts.errors import ConfigError
from bts.horizons import output_columns
from bts.serving.follow import followed_alias
from bts.serving.metrics import PREDICTION_BUCKETS, PredictionHistogram, ServingMetrics, forget_worker
from bts.serving.model import CurrentModel, ServedModel
from bts.serving.request_log import Entry, MonitoringLog

COLUMNS = ["lag_1", "lag_2"]
OUTPUTS = output_columns([1, 5])


def forecasts(matrix: np.ndarray, offset: float) -> np.ndarray:
    """Rows x OUTPUTS: lag_1 + offset at h1 and lag_1 + 10 * offset at h5, each within 0.5 either side."""
    central = matrix[:, :1] + np.array([offset, 10 * offset])
    return np.column_stack(
        [central[:, 0], central[:, 0] - 0.5, central[:, 0] + 0.5, central[:, 1], central[:, 1] - 0.5, central[:, 1] + 0.5]
    )


def records(matrix: np.ndarray) -> list[dict[str, float]]:
    """The answer's records of these outputs: one per row, keyed by output column."""
    return [dict(zip(OUTPUTS, row, strict=True)) for row in matrix.tolist()]


def serve_args(*given: str) -> object:
    return build_parser().parse_args(["serve", "models:/bts-next-reading@champion", *given])


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "86401", ""])
def test_follow_interval_must_be_seconds_more_than_0_and_at_most_a_day(value: str) -> None:
    from bts.serving.server import check_arguments

    with pytest.raises(ConfigError) as error:
        check_arguments(serve_args(f"--follow-interval={value}"))
    assert str(error.value) == f"--follow-interval {value}: must be a number of seconds more than 0 and at most 86400"


@pytest.mark.parametrize("given", [[], ["--follow-interval", "0.5"], ["--follow-interval", "86400"], ["--no-follow"]])
def test_follow_options_that_are_fine(given: list[str]) -> None:
    from bts.serving.server import check_arguments, follow_seconds

    args = serve_args(*given)
    check_arguments(args)
    assert follow_seconds(args.follow_interval) == (float(given[1]) if given[:1] == ["--follow-interval"] else 10.0)
    assert args.no_follow == (given == ["--no-follow"])


def test_only_an_alias_is_followed() -> None:
    assert followed_alias("models:/bts-next-reading@champion") == ("bts-next-reading", "champion")
    assert followed_alias("models:/bts-next-reading/3") is None
    assert followed_alias("models/package") is None


def served(version: str, predict: Callable[[np.ndarray], np.ndarray]) -> ServedModel:
    return ServedModel(
        reference="models:/m@champion",
        package_md5=f"md5-{version}.dir",
        verified_against="registry tag package.md5",
        lineage={},
        feature_columns=COLUMNS,
        output_columns=OUTPUTS,
        predict=predict,
        name="m",
        version=version,
        aliases=["champion"],
        run_id=f"run{version}",
    )


@contextmanager
def running(app: object) -> Iterator[str]:
    """The app under uvicorn with `bts serve`'s settings, in a thread, on a free port of this host: its URL."""
    import uvicorn

    from bts.serving.server import listen, url_of, uvicorn_config

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, serve_args()))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30  # a failure, not a measure
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.01)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def post(url: str, rows: list[list[float]]) -> list[dict[str, float]]:
    body = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": rows}}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def get(url: str, path: str) -> bytes:
    with urllib.request.urlopen(f"{url}{path}", timeout=60) as response:
        return response.read()


def test_a_request_in_flight_finishes_on_its_version_and_the_version_swapped_out_is_released(tmp_path: Path) -> None:
    from bts.serving.app import create_app
    from bts.serving.payload import PayloadParser

    entered, swapped = threading.Event(), threading.Event()

    def slow_first(matrix: np.ndarray) -> np.ndarray:  # version 1, held mid-request until version 2 is in place
        entered.set()
        assert swapped.wait(60)
        return forecasts(matrix, 1)

    first = served("1", slow_first)
    current = CurrentModel(first)
    log = MonitoringLog(tmp_path, first.log_tags, COLUMNS, OUTPUTS, max_bytes=10**9)
    metrics = ServingMetrics(first.metric_labels, {"package_md5": "md5-1.dir", "run_id": "run1"}, OUTPUTS, log)
    app = create_app(current, PayloadParser(COLUMNS, 100), metrics, log, 10**6)
    released = weakref.ref(first)
    del first
    log.open()
    with running(app) as url:
        answers: list[list[dict[str, float]]] = []
        in_flight = threading.Thread(target=lambda: answers.append(post(url, [[10.0, 0.0]])))
        in_flight.start()
        assert entered.wait(60)
        current.served = served("2", lambda matrix: forecasts(matrix, 2))  # the swap, as the follower makes it
        metrics.serve(current.served.metric_labels, {"package_md5": "md5-2.dir", "run_id": "run2"})
        swapped.set()
        in_flight.join(60)
        assert answers == [records(forecasts(np.array([[10.0, 0.0]]), 1))]  # started on version 1, answered by it
        assert answers[0][0]["forecast_h1"] == 11.0 and answers[0][0]["upper_h5"] == 20.5
        assert post(url, [[10.0, 0.0], [20.0, 0.0]]) == records(forecasts(np.array([[10.0, 0.0], [20.0, 0.0]]), 2))
        assert json.loads(get(url, "/model"))["version"] == "2"
        families = {f.name: f for f in text_string_to_metric_families(get(url, "/metrics").decode())}
    log.close()
    gc.collect()
    assert released() is None  # nothing holds version 1 once its last request is answered

    rows = {s.labels["version"]: s.value for s in families["bts_rows_scored"].samples if s.name == "bts_rows_scored_total"}
    assert rows == {"1": 1, "2": 2}
    assert {s.labels["version"]: s.value for s in families["bts_model_info"].samples} == {"1": 0, "2": 1}
    counts = {
        (s.labels["version"], s.labels["horizon"]): s.value for s in families["bts_prediction"].samples if s.name == "bts_prediction_count"
    }
    assert counts == {("1", "h1"): 1, ("1", "h5"): 1, ("2", "h1"): 2, ("2", "h5"): 2}
    assert {s.labels["version"] for s in families["process_resident_memory_bytes"].samples} == {"2"}  # the version answering now
    requests = pd.read_parquet(tmp_path / "requests").sort_values("rows")
    assert requests[["rows", "model_version", "package_md5", "run_id"]].values.tolist() == [
        [1, "1", "md5-1.dir", "run1"],
        [2, "2", "md5-2.dir", "run2"],
    ]
    predictions = pd.read_parquet(tmp_path / "predictions").sort_values("forecast_h1")
    assert predictions[["forecast_h1", "forecast_h5", "model_version"]].values.tolist() == [
        [11.0, 20.0, "1"],
        [12.0, 30.0, "2"],
        [22.0, 40.0, "2"],
    ]
    assert predictions[OUTPUTS].values.tolist() == [
        *forecasts(np.array([[10.0]]), 1).tolist(),
        *forecasts(np.array([[10.0], [20.0]]), 2).tolist(),
    ]


def test_one_write_of_requests_answered_by_two_versions_names_each_rows_version(tmp_path: Path) -> None:
    old, new = served("1", np.sum), served("2", np.sum)
    log = MonitoringLog(tmp_path, old.log_tags, COLUMNS, OUTPUTS, max_bytes=10**9, flush_seconds=60)
    log.open()
    for request_id, rows, model in (("a", 2, old), ("b", 3, new), ("c", 1, old)):
        features = np.zeros((rows, 2))
        outputs = np.zeros((rows, len(OUTPUTS)))
        log.add(Entry(request_id, time.time_ns(), 1.0, rows, 200, None, "dataframe_split", features, None, outputs, model.log_tags))
    log.flush()  # one write of all three, with a process row of the model answering then
    log.tags = new.log_tags  # the swap: process rows from now on name version 2
    log.close()
    requests = pd.read_parquet(tmp_path / "requests").set_index("request_id")
    assert requests["model_version"].to_dict() == {"a": "1", "b": "2", "c": "1"}
    predictions = pd.read_parquet(tmp_path / "predictions")
    assert predictions.groupby("request_id")["model_version"].agg(lambda v: "".join(v)).to_dict() == {"a": "11", "b": "222", "c": "1"}
    assert (predictions["run_id"] == "run" + predictions["model_version"]).all()
    process = pd.read_parquet(tmp_path / "process").sort_values("time")["model_version"].tolist()
    assert process[0] == "1" and set(process[1:]) == {"2"}


def observe_then_maybe_swap(folder: str, swap: bool, done: Event) -> None:
    """In a fresh interpreter whose PROMETHEUS_MULTIPROC_DIR is folder: a worker answering with version 1, then with
    version 2 when `swap`."""
    labels = {"model": "m", "version": "1"}
    metrics = ServingMetrics(labels, {"package_md5": "md5-1.dir", "run_id": ""}, OUTPUTS, None, Path(folder), os.getppid())
    metrics.observe(200, None, 0.002, forecasts(np.array([[14.0]]), 0), labels)
    if swap:
        metrics.serve({"model": "m", "version": "2"}, {"package_md5": "md5-2.dir", "run_id": ""})
        metrics.observe(200, None, 0.002, forecasts(np.array([[230.5], [3.0]]), 0), {"model": "m", "version": "2"})
    done.set()


def test_workers_on_two_versions_each_count_under_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    # The children import the bts this process did, not a package's copy of it that loading a model put first on the path.
    monkeypatch.syspath_prepend(str(Path(bts.__file__).parents[1]))
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, which import prometheus_client in multiprocess mode
    swapped, behind = spawn.Event(), spawn.Event()
    workers = [
        spawn.Process(target=observe_then_maybe_swap, args=(str(shared), True, swapped)),
        spawn.Process(target=observe_then_maybe_swap, args=(str(shared), False, behind)),  # not swapped yet
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0]

    def info() -> dict[str, float]:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(shared))
        families = {f.name: f for f in text_string_to_metric_families(_exposition(registry))}
        return {s.labels["version"]: s.value for s in families["bts_model_info"].samples}

    assert info() == {"1": 1, "2": 1}  # a worker still answers with version 1
    totals = PredictionHistogram("bts_prediction", "", ["model", "version", "horizon"], PREDICTION_BUCKETS, shared).totals()
    counted = {labels[1:]: (values[:-1].sum(), values[-1]) for labels, values in totals.items()}
    assert counted == {("1", "h1"): (2, 28.0), ("1", "h5"): (2, 28.0), ("2", "h1"): (2, 233.5), ("2", "h5"): (2, 233.5)}
    forget_worker(shared, workers[1].pid)  # the one behind died
    assert info() == {"1": 0, "2": 1}


def _exposition(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()
