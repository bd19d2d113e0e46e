"""Field readings as requests: serving_rows against build_features, read_readings on exports and clean Parquet, and the
replay client's bodies, options and counting against a tiny in-process HTTP server."""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from bts.data.cleaning import SERIES_KEYS, clean_readings
from bts.data.features import FeatureSpec, build_features
from bts.data.ingest import read_exports
from bts.data.schemas import clean_schema
from bts.errors import BtsError, ConfigError
from bts.files import write_parquet
from bts.monitoring.field_readings import read_readings, serving_rows
from bts.monitoring.replay import add_arguments, encode, replay, served_model, shifted, wire_rows
from bts.serving.payload import KEY_COLUMNS, PayloadParser
from tests.unit.test_features import clean_frame

SPEC = FeatureSpec(n_lags=3, horizons=[1])  # build_features then makes an example of every reading with history and a next one
KEYS = list(KEY_COLUMNS)
EXPORT_ROWS = [  # two series of 5 readings, one out of order, plus a sentinel and an unknown parameter (quarantined)
    "101,20.0,1161114004,122,2017-04-18 00:00:00",
    "102,21.0,1161114004,122,2017-04-18 00:01:00",
    "201,50.0,1161114004,121,2017-04-18 00:01:30",
    "104,23.0,1161114004,122,2017-04-18 00:03:00",
    "103,22.0,1161114004,122,2017-04-18 00:02:00",
    "105,24.0,1161114004,122,2017-04-18T00:04:00Z",
    "202,51.0,1161114004,121,2017-04-18 00:02:30",
    "203,999999,1161114004,121,2017-04-18 00:03:30",
    "204,52.0,1161114004,121,2017-04-18 00:04:30",
    "205,53.0,1161114004,121,2017-04-18 00:05:30",
    "206,54.0,1161114004,121,2017-04-18 00:06:30",
    "301,1.0,1161114004,9999,2017-04-18 00:00:00",
]


def serving_and_training(clean: pd.DataFrame, spec: FeatureSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """serving_rows, and build_features' rows in serving_rows' columns and order."""
    features, _ = build_features(clean, spec)
    training = features[[*KEYS, *spec.feature_columns]].sort_values(["reading_time", *SERIES_KEYS], kind="stable")
    return serving_rows(clean, spec), training.reset_index(drop=True)


def latest_of_series(served: pd.DataFrame, readings: int) -> pd.Series:
    """Rows of clean_frame's last reading per series (its value is 1000 * station + position)."""
    return served["lag_1"] % 1000 == readings - 1


# --- serving_rows: build_features' rows, plus each series' last reading ----------------------------------------------


@pytest.mark.parametrize(
    "spec", [SPEC, FeatureSpec(n_lags=5, horizons=[3, 7], holdout_stations=(2,))], ids=["n_lags 3", "horizons 3 and 7, holdout"]
)
def test_serving_rows_are_build_features_rows_plus_the_last_reading_of_each_series(spec):
    clean = clean_frame(stations=(1, 2, 3), readings=25).sample(frac=1, random_state=1)  # input order must not matter
    served, _ = serving_and_training(clean, spec)
    _, training = serving_and_training(clean, SPEC.but(n_lags=spec.n_lags))  # every reading with a next one
    assert list(served.columns) == [*KEYS, *spec.feature_columns]
    assert served["reading_time"].is_monotonic_increasing
    latest = latest_of_series(served, 25)
    pd.testing.assert_frame_equal(served[~latest].reset_index(drop=True), training)
    last = served[latest].set_index("station_id")
    assert sorted(last.index) == [1, 2, 3]
    expected_last = clean.sort_values("id").groupby("station_id")["reading_time"].max()  # id breaks a tie of times
    assert (last["reading_time"] == expected_last[last.index]).all()
    assert (last[f"lag_{spec.n_lags}"] == 1000.0 * last.index + 25 - spec.n_lags).all()


def test_a_long_silence_is_spanned_as_build_features_spans_it():
    clean = clean_frame(stations=(1, 2), readings=12)
    later = (clean["station_id"] == 1) & (clean["reading_time"] > clean["reading_time"].median())
    clean.loc[later, "reading_time"] += pd.Timedelta(hours=5)  # far beyond clean.gap_threshold_minutes
    served, training = serving_and_training(clean, SPEC)
    pd.testing.assert_frame_equal(served[~latest_of_series(served, 12)].reset_index(drop=True), training)
    assert served["gap_1_seconds"].max() >= 5 * 3600 and len(served) == len(training) + 2


def test_short_series_give_no_rows_and_none_at_all_is_an_error():
    clean = pd.concat([clean_frame(stations=(1,), readings=6), clean_frame(stations=(2,), readings=2).assign(id=lambda f: f["id"] + 100)])
    served = serving_rows(clean, SPEC)
    assert set(served["station_id"]) == {1} and len(served) == 6 - SPEC.n_lags + 1
    with pytest.raises(BtsError, match="no series has the 3 readings"):
        serving_rows(clean_frame(stations=(1, 2), readings=2), SPEC)


# --- read_readings: exports through ingest and cleaning, clean Parquet as it is --------------------------------------


def test_an_export_is_read_and_cleaned_as_the_ingest_and_clean_stages_do(write_csv, tmp_path, sensors_path, catalogue):
    path = write_csv("exports/param-2017-04-18.csv", EXPORT_ROWS)
    clean = read_readings(path, tmp_path, sensors_path)
    expected = clean_readings(read_exports([path], tmp_path), catalogue, clean_schema(catalogue)).clean
    pd.testing.assert_frame_equal(clean, expected)
    assert list(clean.columns) == list(clean_schema(catalogue).columns) and str(clean["reading_time"].dtype) == "datetime64[us]"
    assert len(clean) == 10 and set(clean["source_file"]) == {"exports/param-2017-04-18.csv"}  # sentinel, unknown parameter out
    assert clean.groupby(SERIES_KEYS)["reading_time"].is_monotonic_increasing.all()
    pd.testing.assert_frame_equal(read_readings(path.parent, tmp_path, sensors_path), clean)  # a folder of exports
    served = serving_rows(clean, SPEC)
    assert len(served) == (5 - 2) + (5 - 2)
    first = served.iloc[0]
    assert (first["lag_1"], first["lag_2"], first["lag_3"], first["gap_1_seconds"]) == (22.0, 21.0, 20.0, 60.0)


def test_clean_parquet_is_read_back_unchanged(write_csv, tmp_path, sensors_path):
    clean = read_readings(write_csv("param.csv", EXPORT_ROWS), tmp_path, sensors_path)
    write_parquet(tmp_path / "clean.parquet", clean)
    pd.testing.assert_frame_equal(read_readings(tmp_path / "clean.parquet", tmp_path, sensors_path), clean)


def bad_inputs(tmp_path: Path, write_csv, sensors_path: Path) -> dict[str, tuple[Path, str]]:
    clean = read_readings(write_csv("param.csv", EXPORT_ROWS), tmp_path, sensors_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 but not really")
    clean[clean.columns[::-1]].to_parquet(tmp_path / "reordered.parquet")
    clean.drop(columns="id").to_parquet(tmp_path / "no_id.parquet")
    clean.assign(reading_time=clean["reading_time"].astype(str)).to_parquet(tmp_path / "text_times.parquet")
    clean.assign(id=1).to_parquet(tmp_path / "same_id.parquet")
    os.mkfifo(tmp_path / "pipe.csv")  # opening it would wait for a writer forever
    return {
        "a pipe": (tmp_path / "pipe.csv", "not a regular file or folder"),
        "missing": (tmp_path / "nowhere.csv", "no such file or folder"),
        "folder without exports": (tmp_path / "empty", "folder holds no .csv export"),
        "not Parquet": (tmp_path / "junk.parquet", "not a readable Parquet file"),
        "columns reordered": (tmp_path / "reordered.parquet", "not clean readings: columns"),
        "column missing": (tmp_path / "no_id.parquet", "not clean readings: columns"),
        "times as text": (tmp_path / "text_times.parquet", "not clean readings: expected series 'reading_time'"),
        "duplicate ids": (tmp_path / "same_id.parquet", "not clean readings: series 'id' contains duplicate values"),
        "not an export": (write_csv("alarms.csv", "when,what\n1,2\n"), "missing column(s)"),
    }


def test_bad_inputs_are_one_line_naming_the_file(write_csv, tmp_path, sensors_path):
    for kind, (path, reason) in bad_inputs(tmp_path, write_csv, sensors_path).items():
        with pytest.raises(BtsError) as caught:
            read_readings(path, tmp_path, sensors_path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and reason in message, f"{kind}: {message}"
        assert "\n" not in message and len(message) - len(str(path)) < 250, f"{kind}: {message}"  # short, whatever the path


# --- the replay client: bodies the server parses exactly, options, counting over one connection ----------------------


@pytest.fixture
def rows() -> pd.DataFrame:
    return serving_rows(clean_frame(stations=(1, 2), readings=8), SPEC)


@pytest.mark.parametrize(("format_name", "content_type"), [("json", "application/json"), ("csv", "text/csv")])
def test_bodies_carry_keys_and_features_exactly(rows, format_name, content_type):
    rows = rows.assign(lag_1=rows["lag_1"] + 0.1, hour_sin=np.sin(rows.index.to_numpy() + 0.3))  # floats without a short form
    body = encode([*KEYS, *SPEC.feature_columns], wire_rows(rows, SPEC.feature_columns), format_name)
    batch = PayloadParser(SPEC.feature_columns, max_rows=100).parse(body, content_type)
    assert np.array_equal(batch.features, rows[SPEC.feature_columns].to_numpy())
    assert batch.keys["station_id"] == rows["station_id"].tolist() and batch.keys["parameter_id"] == rows["parameter_id"].tolist()
    assert batch.keys["reading_time"] == [t.to_pydatetime().replace(tzinfo=UTC) for t in rows["reading_time"]]
    assert batch.keys["reading_id"] == rows["reading_id"].tolist()
    assert wire_rows(rows, SPEC.feature_columns)[0][3] == rows["reading_time"][0].strftime("%Y-%m-%dT%H:%M:%SZ")


def test_shift_adds_to_one_feature_and_refuses_other_columns(rows):
    moved = shifted(rows, [("lag_2", 1.5), ("lag_2", 1.0), ("gap_1_seconds", -1.0)], SPEC.feature_columns)
    assert (moved["lag_2"] == rows["lag_2"] + 2.5).all() and (moved["gap_1_seconds"] == rows["gap_1_seconds"] - 1).all()
    assert moved.drop(columns=["lag_2", "gap_1_seconds"]).equals(rows.drop(columns=["lag_2", "gap_1_seconds"]))
    with pytest.raises(ConfigError, match="'station_id' is not a feature column"):
        shifted(rows, [("station_id", 1.0)], SPEC.feature_columns)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bts replay")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_options_and_their_defaults():
    args = parse("export.csv")
    assert (args.url, args.rows_per_request, args.speed, args.limit, args.shift, args.format) == (
        "http://127.0.0.1:5002",
        1,
        0.0,
        None,
        [],
        "json",
    )
    args = parse("x", "--shift", "lag_1=2.5", "--shift", "hour_sin = -1e-3", "--speed", "60", "--limit", "10", "--format", "csv")
    assert args.shift == [("lag_1", 2.5), ("hour_sin", -0.001)] and (args.speed, args.limit, args.format) == (60.0, 10, "csv")
    for bad in (["--shift", "lag_1"], ["--shift", "lag_1=a"], ["--speed", "-1"], ["--speed", "inf"], ["--rows-per-request", "0"]):
        with pytest.raises(SystemExit):
            parse("x", *bad)


class Answers(BaseHTTPRequestHandler):
    """Keep-alive server answering 400 to every third request; remembers paths, bodies and client ports."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, int, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.client_address[1], body))
        status, answer = (400, b'{"error_code":"WRONG_TYPE"}') if len(self.seen) % 3 == 0 else (200, b'{"predictions":[1.0]}')
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def local_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on loopback, answering with handler in a thread; its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def answering_server() -> AbstractContextManager[str]:
    Answers.seen = []
    return local_server(Answers)


def test_failures_are_counted_and_the_first_is_shown_once_over_one_connection(rows):
    progress = io.StringIO()
    with answering_server() as url:
        result = replay(rows, SPEC.feature_columns, url, rows_per_request=2, progress=progress)
    assert (result.rows, result.requests, result.failed) == (len(rows), 6, 2) and result.statuses == {200: 4, 400: 2}
    assert {path for path, _, _ in Answers.seen} == {"/invocations"} and len({port for _, port, _ in Answers.seen}) == 1
    assert progress.getvalue() == 'replay: first failure: HTTP 400: {"error_code":"WRONG_TYPE"}\n'
    assert result.summary().startswith(f"replay: 12 rows in 6 requests to {url} in ")
    assert result.summary().endswith("; 4 ok, 2 failed (HTTP 400: 2)")


def test_speed_waits_as_the_readings_do(rows):
    rows = rows.head(3).assign(reading_time=[datetime(2017, 4, 18, 0, 0, s) for s in (0, 0, 4)])
    with answering_server() as url:
        result = replay(rows, SPEC.feature_columns, url, speed=10.0, progress=io.StringIO())
    assert 0.4 <= result.seconds < 1.5 and result.requests == 3


def test_nothing_listening_is_one_error_line(rows):
    with answering_server() as url:
        pass  # the port is free again
    with pytest.raises(BtsError) as caught:
        replay(rows, SPEC.feature_columns, url)
    assert str(caught.value) == f"{url}: connection refused (is `bts serve` running there?); 0 of {len(rows)} rows sent"
    with pytest.raises(ConfigError, match="expected http://HOST:PORT"):
        replay(rows, SPEC.feature_columns, "localhost:5002")


class Describes(BaseHTTPRequestHandler):
    """Answers GET with `answer` (status, body); remembers the paths asked."""

    answer: ClassVar[tuple[int, bytes]] = (200, b"{}")
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        status, body = self.answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def describing_server(status: int, body: bytes) -> AbstractContextManager[str]:
    Describes.answer, Describes.paths = (status, body), []
    return local_server(Describes)


def test_the_served_model_is_asked_for_at_the_servers_model_endpoint() -> None:
    described = {"run_id": "a" * 32, "feature_columns": SPEC.feature_columns, "name": None}
    with describing_server(200, json.dumps(described).encode()) as url:
        assert served_model(url) == described
        assert served_model(f"{url}/invocations") == described  # --url may name the scoring endpoint
        assert served_model(f"{url}/") == described
    assert Describes.paths == ["/model"] * 3
    no_run = {**described, "run_id": None}  # a server that found no training run of its model
    with describing_server(200, json.dumps(no_run).encode()) as url:
        assert served_model(url)["run_id"] is None


@pytest.mark.parametrize(
    ("status", "body", "shown"),
    [
        (404, b'{"error_code": "NOT_FOUND"}', 'HTTP 404: {"error_code": "NOT_FOUND"}'),
        (200, b"<html>\n<p>hello</p>\n</html>", "HTTP 200: <html> <p>hello</p> </html>"),
        (200, b"", "HTTP 200: (empty)"),
        (200, b'{"run_id": null}', 'HTTP 200: {"run_id": null}'),
        (200, b'{"run_id": 7, "feature_columns": ["lag_1"]}', 'HTTP 200: {"run_id": 7, "feature_columns": ["lag_1"]}'),
        (200, b'{"run_id": null, "feature_columns": []}', 'HTTP 200: {"run_id": null, "feature_columns": []}'),
        (200, b'["lag_1"]', 'HTTP 200: ["lag_1"]'),
        (200, b"\xff\xfe", "HTTP 200: \ufffd\ufffd"),
    ],
    ids=["not found", "html", "empty", "no columns", "run id a number", "columns empty", "a list", "not utf-8"],
)
def test_a_server_that_does_not_describe_its_model_is_one_error_line(status, body, shown) -> None:
    with describing_server(status, body) as url, pytest.raises(BtsError) as caught:
        served_model(url)
    assert str(caught.value) == f"{url}: GET /model answered {shown}; not what `bts serve` answers (is it running there?)"


def test_a_model_description_from_nothing_listening_is_one_error_line() -> None:
    with describing_server(200, b"{}") as url:
        pass  # the port is free again
    with pytest.raises(BtsError) as caught:
        served_model(url)
    assert str(caught.value) == f"{url}: connection refused (is `bts serve` running there?)"
    with pytest.raises(ConfigError, match="expected http://HOST:PORT"):
        served_model("localhost:5002")
