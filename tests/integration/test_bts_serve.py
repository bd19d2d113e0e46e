"""`bts serve` as a user runs it: a real process over HTTP on the packaged model and on the registry alias.

Predictions (a record per row: every horizon's forecast and interval
bounds, under the output column names of bts.horizons) are compared with
the verified package loaded in this process by MLflow and with stock
`mlflow models serve`; bad requests must each get a short
JSON 4xx (no traceback, no path) and leave the server serving; /metrics must
count what was sent; after SIGTERM (or Ctrl-C) the monitoring Parquet must
hold exactly the requests and predictions served; a tampered package must be
refused with one line.
"""

from __future__ import annotations

import json
import select
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
from prometheus_client.parser import text_string_to_metric_families

from bts.horizons import label, output_columns, output_horizons
from bts.model.package import load_package
from tests.integration.test_serving import examples, horizons, model_server
from tests.integration.workspace import PROJECT, bts, lock_outs, run, set_params, store, training_run, user_env

pytestmark = pytest.mark.integration

FEATURES = ["lag_1", "lag_2", "lag_3", "lag_4", "lag_5", "lag_6"]
NAME = "bts-next-reading"
START_SECONDS = 120


class Server:
    def __init__(self, url: str, process: subprocess.Popen, start_line: str) -> None:
        self.url, self.process, self.start_line = url, process, start_line
        self.sent: list[dict] = []  # every POST /invocations: status and, when scored, the predictions
        self.printed: dict[str, list[str]] = {"stdout": [], "stderr": []}  # the lines after the start line, as they come

    def wait_for_line(self, stream: str, text: str, seconds: float = 60) -> str:
        """The first line printed on stream that holds text, waited for up to `seconds` (a failure, not a measure)."""
        deadline = time.monotonic() + seconds
        while not (found := [line for line in self.printed[stream] if text in line]):
            assert time.monotonic() < deadline and self.process.poll() is None, f"no {text!r} on {stream}: {self.printed}"
            time.sleep(0.1)
        return found[0]

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type} if content_type else {}
        request = urllib.request.Request(f"{self.url}{path}", data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def score(self, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
        headers = {"Content-Type": content_type}
        request = urllib.request.Request(f"{self.url}/invocations", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, content, request_id = response.status, response.read(), response.headers.get("x-request-id")
        except urllib.error.HTTPError as error:
            status, content, request_id = error.code, error.read(), error.headers.get("x-request-id")
        answer = json.loads(content)
        self.sent.append({"status": status, "predictions": answer.get("predictions"), "request_id": request_id})
        return status, answer

    def get_json(self, path: str) -> dict:
        status, content = self.request("GET", path)
        assert status == 200, content
        return json.loads(content)


def environment(repo: Path) -> dict[str, str]:
    return user_env({"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"})


def collect(stream: object, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


@contextmanager
def bts_server(repo: Path, ref: str, *options: str, stop: int = signal.SIGTERM) -> Iterator[Server]:
    """`bts serve <ref> --port 0 ...` in the repository; its start line names the address. Stopped with `stop`."""
    process = subprocess.Popen(
        ["bts", "serve", ref, "--port", "0", *options],
        cwd=repo,
        env=environment(repo),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], START_SECONDS)
        line = process.stdout.readline() if ready else ""
        if "listening on " not in line:
            process.kill()
            raise AssertionError(f"bts serve did not start: {line}{process.stderr.read()[-3000:]}")
        url = line.split("listening on ", 1)[1].split(";", 1)[0]
        server = Server(url, process, line)
        readers = [
            threading.Thread(target=collect, args=(stream, server.printed[name]), daemon=True)
            for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))
        ]
        for reader in readers:
            reader.start()
        assert server.request("GET", "/ping")[0] == 200
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(stop)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    for reader in readers:
        reader.join(60)
    server.returncode = process.returncode
    server.stdout = "".join(server.printed["stdout"])  # after the start line
    server.stderr = "".join(server.printed["stderr"])


def frame_of(repo: Path, rows: int = 50) -> pd.DataFrame:
    return examples(repo, rows)


def expected_predictions(repo: Path, frame: pd.DataFrame) -> list[dict[str, float]]:
    """What MLflow's pyfunc of the verified package predicts, as stock MLflow answers it: a record per row."""
    predicted = load_package(repo / "models/package", lock_outs(repo / "dvc.lock")["models/package"]).predict(frame)
    assert list(predicted.columns) == output_columns(horizons(repo))
    return predicted.to_dict(orient="records")


def logged_records(predictions: pd.DataFrame, outputs: list[str]) -> dict[str, list[dict[str, float]]]:
    """The monitoring log's predictions as the answers gave them: per request id, a record per row, in row order."""
    ordered = predictions.sort_values(["time", "row"], kind="stable")
    return {request_id: rows[outputs].to_dict(orient="records") for request_id, rows in ordered.groupby("request_id", sort=False)}


def assert_forecasts_counted(samples: dict[str, list], answers: list[list[dict[str, float]]], outputs: list[str]) -> None:
    """bts_prediction counts each row's central forecast under its horizon (the bounds not counted), summing them."""
    families = samples["bts_prediction"]
    labels = [label(horizon) for horizon in output_horizons(outputs)]
    counts = {s.labels["horizon"]: s.value for s in families if s.name == "bts_prediction_count"}
    assert counts == {horizon: sum(len(answer) for answer in answers) for horizon in labels}
    sums = {s.labels["horizon"]: s.value for s in families if s.name == "bts_prediction_sum"}
    served = {horizon: sum(record[f"forecast_{horizon}"] for answer in answers for record in answer) for horizon in labels}
    assert sums == pytest.approx(served, rel=1e-9)


def split(frame: pd.DataFrame) -> bytes:
    return json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()


def payloads(frame: pd.DataFrame) -> dict[str, tuple[bytes, str]]:
    """Every format MLflow's scoring protocol has for a frame, as (body, content type)."""
    records = frame.to_dict(orient="records")
    keyed = frame.assign(station_id=1161114004, parameter_id=122, reading_time="2017-04-18 10:00:00")
    return {
        "dataframe_split": (split(frame), "application/json"),
        "dataframe_records": (json.dumps({"dataframe_records": records}).encode(), "application/json"),
        "instances": (json.dumps({"instances": records}).encode(), "application/json"),
        "inputs (columns)": (json.dumps({"inputs": frame.to_dict(orient="list")}).encode(), "application/json"),
        "inputs (records)": (json.dumps({"inputs": records}).encode(), "application/json; charset=utf-8"),
        "csv": (frame.to_csv(index=False).encode(), "text/csv"),
        "dataframe_split with keys": (split(keyed), "application/json"),
        "csv with keys": (keyed.to_csv(index=False).encode(), "text/csv"),
    }


def bad_requests(frame: pd.DataFrame, max_rows: int) -> dict[str, tuple[bytes, str, int]]:
    one = frame.head(1)
    as_text = one.astype(object)
    as_text.iloc[0, 2] = "not a number"
    split_one = one.to_dict(orient="split", index=False)
    deep = b"[" * 1000 + b"]" * 1000
    return {
        "malformed JSON": (b'{"dataframe_split": {"columns": [', "application/json", 400),
        "unsupported content type": (b"lag_1=1", "text/plain", 415),
        "empty body": (b"", "application/json", 400),
        "unknown payload key": (json.dumps({"rows": one.to_dict(orient="records")}).encode(), "application/json", 400),
        "missing column": (split(one.drop(columns=["lag_3", "step_scale"])), "application/json", 400),
        "extra column": (split(one.assign(humidity=3.0)), "application/json", 400),
        "wrong type": (split(as_text), "application/json", 400),
        "null": (split(one.assign(lag_1=None)), "application/json", 400),
        "NaN": (
            json.dumps({"dataframe_split": {**split_one, "data": [[float("nan"), *split_one["data"][0][1:]]]}}).encode(),
            "application/json",
            400,
        ),
        "infinity": (b'{"inputs": {' + b", ".join(f'"{c}": 1e999'.encode() for c in one.columns) + b"}}", "application/json", 400),
        "ragged rows": (
            json.dumps({"dataframe_split": {"columns": list(one.columns), "data": [[1.0, 2.0]]}}).encode(),
            "application/json",
            400,
        ),
        "too many rows": (split(pd.concat([one] * (max_rows + 1), ignore_index=True)), "application/json", 413),
        "body too large": (b'{"inputs": "' + b"x" * (6 * 1024 * 1024) + b'"}', "application/json", 413),
        "JSON 1000 levels deep": (deep, "application/json", 400),
        "JSON 1000 levels deep in data": (b'{"dataframe_split": {"columns": ["lag_1"], "data": ' + deep + b"}}", "application/json", 400),
        "JSON 100000 levels deep": (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
        "CSV with text": (one.astype(object).assign(lag_2="abc").to_csv(index=False).encode(), "text/csv", 400),
        "no rows": (split(one.head(0)), "application/json", 400),
    }


def assert_short_error(body: dict, repo: Path, kind: str) -> None:
    assert set(body) == {"error_code", "message"}, f"{kind}: {body}"
    text = json.dumps(body)
    for leak in ("Traceback", 'File "', str(repo), str(PROJECT), "site-packages", ".py", "/tmp", "/home", "/usr"):
        assert leak not in text, f"{kind}: {leak!r} in {text}"
    assert len(text) < 500, f"{kind}: {text}"


def metric_samples(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def assert_log_holds(log_dir: Path, server: Server, tags: dict[str, str | None], outputs: list[str]) -> None:
    """The monitoring Parquet holds exactly the requests sent (in order, with their status) and every prediction served:
    each output column of the model (every horizon's forecast and bounds) as a float64 column of its own."""
    requests = pd.read_parquet(log_dir / "requests").sort_values("time", kind="stable").reset_index(drop=True)
    assert requests["status"].tolist() == [sent["status"] for sent in server.sent]
    answered = [sent["request_id"] for sent in server.sent if sent.get("request_id")]  # the id each response carried
    assert len(answered) >= len(server.sent) - 1 and set(answered) <= set(requests["request_id"])
    assert requests["request_id"].is_unique
    served = [sent for sent in server.sent if sent["status"] == 200]
    assert requests["rows"].tolist() == [len(sent["predictions"]) if sent["status"] == 200 else 0 for sent in server.sent]
    assert requests.loc[requests["status"] != 200, "error_code"].notna().all()
    assert requests.loc[requests["status"] == 200, "error_code"].isna().all()
    predictions = pd.read_parquet(log_dir / "predictions")
    assert "prediction" not in predictions.columns and (predictions[outputs].dtypes == "float64").all()
    by_request = logged_records(predictions, outputs)
    ordered = requests.loc[requests["status"] == 200, "request_id"]
    assert [by_request[request_id] for request_id in ordered] == [sent["predictions"] for sent in served]
    for name, value in tags.items():
        assert (predictions[name] == value).all() if value is not None else predictions[name].isna().all(), name
        assert (requests[name] == value).all() if value is not None else requests[name].isna().all(), name


def test_package_folder_serves_every_format_refuses_bad_requests_and_logs_everything(built_repo: Path, tmp_path: Path) -> None:
    repo, log_dir = built_repo, tmp_path / "monitoring"
    frame = frame_of(repo)
    expected = expected_predictions(repo, frame)
    outputs = output_columns(horizons(repo))
    package_md5 = lock_outs(repo / "dvc.lock")["models/package"]
    with bts_server(repo, "models/package", "--log-dir", str(log_dir), "--max-rows", "200") as server:
        assert f"package md5 {package_md5} (verified against dvc.lock)" in server.start_line
        for kind, (body, content_type) in payloads(frame).items():
            status, answer = server.score(body, content_type)
            assert status == 200, f"{kind}: {answer}"
            assert answer["predictions"] == expected, kind  # every horizon's forecast and bounds, exactly, not approximately
            assert all(list(record) == outputs for record in answer["predictions"]), kind  # in the signature's order
        status, answer = server.score(split(frame.head(1)))
        assert answer["predictions"] == expected[:1]
        host, port = server.url.removeprefix("http://").split(":")
        client = ScoringServerClient(host, int(port))  # MLflow's own client of a scoring server
        client.wait_server_ready(timeout=10)
        through_mlflow = client.invoke(frame).get_predictions(predictions_format="dataframe").to_dict(orient="records")
        assert through_mlflow == expected
        server.sent.append({"status": 200, "predictions": through_mlflow})

        for kind, (body, content_type, wanted) in bad_requests(frame, max_rows=200).items():
            status, answer = server.score(body, content_type)
            assert status == wanted, f"{kind}: {status} {answer}"
            assert_short_error(answer, repo, kind)
            status, answer = server.score(split(frame.head(2)))
            assert status == 200 and answer["predictions"] == expected[:2], f"server stopped serving after: {kind}"
        status, content = server.request("GET", "/nowhere")
        assert status == 404 and set(json.loads(content)) == {"error_code", "message"}
        status, content = server.request("GET", "/invocations")
        assert status == 405

        model = server.get_json("/model")
        run_id = training_run(repo).info.run_id
        assert model["package_md5"] == package_md5 and model["name"] is None and model["reference"] == "models/package"
        assert model["run_id"] == run_id
        assert model["git_commit"] == training_run(repo).data.tags["git.commit"]  # the commit it was trained at
        assert run(["git", "cat-file", "-t", model["git_commit"]], repo).stdout.strip() == "commit"
        assert model["lineage"]["data_md5"]["features"] == lock_outs(repo / "dvc.lock")["data/processed/features.parquet"]
        assert model["lineage"]["model_md5"] == lock_outs(repo / "dvc.lock")["models/model.joblib"]
        assert model["lineage"]["params_md5"] and model["lineage"]["code_md5"].endswith(".dir")
        versions = server.get_json("/version")
        assert versions["bts"] == "0.1.0" and versions["mlflow"] == __import__("mlflow").__version__

        status, content = server.request("GET", "/metrics")
        samples = metric_samples(content.decode())
        counted: dict[str, float] = {}
        for sample in samples["bts_requests"]:
            if sample.name == "bts_requests_total":
                assert sample.labels["model"] == "models/package" and sample.labels["version"] == package_md5
                counted[sample.labels["status"]] = counted.get(sample.labels["status"], 0) + sample.value
        sent_by_status: dict[str, float] = {}
        for sent in server.sent:
            sent_by_status[str(sent["status"])] = sent_by_status.get(str(sent["status"]), 0) + 1
        assert counted == sent_by_status
        rows = sum(len(sent["predictions"]) for sent in server.sent if sent["status"] == 200)
        assert next(s.value for s in samples["bts_rows_scored"] if s.name == "bts_rows_scored_total") == rows
        assert_forecasts_counted(samples, [sent["predictions"] for sent in server.sent if sent["status"] == 200], outputs)
        latency_count = next(s.value for s in samples["bts_request_duration_seconds"] if s.name == "bts_request_duration_seconds_count")
        assert latency_count == len(server.sent)
        assert next(s.value for s in samples["process_resident_memory_bytes"]) > 0
        assert any(s.name == "process_cpu_seconds_total" for s in samples["process_cpu_seconds"])

        with model_server(repo, "models/package") as stock_url:  # stock MLflow on the same package: the same answer
            stock = Server(stock_url, None, "")
            for rows in (frame, frame.head(1)):
                status, content = stock.request("POST", "/invocations", split(rows), "application/json")
                our_status, ours = server.score(split(rows))
                assert status == our_status == 200 and json.loads(content)["predictions"] == expected[: len(rows)]
                assert ours == json.loads(content)  # the whole body: a record per row, every output column
                assert [list(record) for record in ours["predictions"]] == [outputs] * len(rows)
    assert server.returncode in (0, -signal.SIGTERM), server.stderr
    assert "Traceback" not in server.stderr, server.stderr
    lineage = model["lineage"]["data_md5"]
    tags = {
        "package_md5": package_md5,
        "model_name": None,
        "model_version": None,
        "run_id": run_id,
        "data_features_md5": lineage["features"],
    }
    assert_log_holds(log_dir, server, tags, outputs)
    keyed = pd.read_parquet(log_dir / "predictions").dropna(subset=["station_id"])
    assert len(keyed) == 2 * len(frame) and (keyed["station_id"] == 1161114004).all() and (keyed["parameter_id"] == 122).all()
    assert (keyed["reading_time"] == pd.Timestamp("2017-04-18 10:00:00", tz="UTC")).all()
    logged = pd.read_parquet(log_dir / "predictions")
    first = logged.sort_values(["time", "row"]).head(len(frame))
    assert first[list(frame.columns)].reset_index(drop=True).equals(frame)  # the feature values as sent


def test_registry_alias_serves_the_same_model_and_tampering_is_refused(built_repo: Path, tmp_path: Path) -> None:
    repo = built_repo
    bts(["register"], repo)
    bts(["promote", "1", "--to", "champion"], repo)
    frame = frame_of(repo, 20)
    expected = expected_predictions(repo, frame)
    package_md5 = lock_outs(repo / "dvc.lock")["models/package"]
    shutil.rmtree(repo / "monitoring", ignore_errors=True)
    with bts_server(repo, "models:/bts-next-reading@champion", stop=signal.SIGINT) as server:  # Ctrl-C, default log folder
        assert "bts-next-reading version 1, @candidate, @champion" in server.start_line
        assert "verified against registry tag package.md5" in server.start_line
        for kind, (body, content_type) in payloads(frame).items():
            status, answer = server.score(body, content_type)
            assert status == 200 and answer["predictions"] == expected, kind
        status, answer = server.score(b"{", "application/json")
        assert status == 400
        model = server.get_json("/model")
        assert (model["name"], model["version"], model["package_md5"]) == ("bts-next-reading", "1", package_md5)
        assert "champion" in model["aliases"] and model["run_id"] == training_run(repo).info.run_id
        labels = {
            s.labels["model"] + "/" + s.labels["version"]
            for s in metric_samples(server.request("GET", "/metrics")[1].decode())["bts_rows_scored"]
        }
        assert labels == {"bts-next-reading/1"}
        busy_port = server.url.rsplit(":", 1)[1]
        taken = run(["bts", "serve", "models/package", "--port", busy_port, "--no-log"], repo, check=False, env=environment(repo))
        assert taken.returncode == 1 and taken.stderr.strip().count("\n") == 0
        assert taken.stderr.startswith(f"bts: error: cannot listen on 127.0.0.1:{busy_port}"), taken.stderr
    assert "Traceback" not in server.stderr, server.stderr
    tags = {"package_md5": package_md5, "model_name": "bts-next-reading", "model_version": "1", "run_id": model["run_id"]}
    assert_log_holds(repo / "monitoring", server, tags, output_columns(horizons(repo)))

    tampered = tmp_path / "package"
    shutil.copytree(repo / "models/package", tampered)
    with (tampered / "model.skops").open("ab") as skops:
        skops.write(b"\0")
    refused = run(["bts", "serve", str(tampered), "--port", "0"], repo, check=False, env=environment(repo))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("bts: error: "), refused.stderr
    assert "TAMPERED" in refused.stderr and "model.skops" in refused.stderr and not refused.stdout

    registered = next((repo / "mlartifacts").rglob("package/model.skops"))
    original = registered.read_bytes()
    registered.write_bytes(original + b"\0")
    try:
        refused = run(["bts", "serve", "models:/bts-next-reading/1", "--port", "0"], repo, check=False, env=environment(repo))
    finally:
        registered.write_bytes(original)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "TAMPERED" in refused.stderr and "model.skops" in refused.stderr


def test_a_stalled_client_is_cut_off_while_others_are_served(built_repo: Path) -> None:
    """Headers that promise a body, then nothing: a 408 and a closed connection after --read-timeout; a connection that
    sends nothing, and one that sends half a request head, are closed after --read-timeout too; an idle keep-alive
    connection is closed after --keep-alive; meanwhile other clients are answered as usual."""
    import http.client
    import socket
    import time
    from urllib.parse import urlsplit

    body = split(frame_of(built_repo, 1))
    with bts_server(built_repo, "models/package", "--no-log", "--read-timeout", "2", "--keep-alive", "1") as server:
        address = urlsplit(server.url)
        stalled = socket.create_connection((address.hostname, address.port))
        stalled.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        silent = socket.create_connection((address.hostname, address.port))
        half_head = socket.create_connection((address.hostname, address.port))
        half_head.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        idle = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        idle.request("GET", "/ping")  # one request, read whole; then the connection is kept alive, idle
        pinged = idle.getresponse()
        assert pinged.status == 200 and pinged.read()
        answered = [server.score(body)[0] for _ in range(5)]  # served while the stalled connection waits
        stalled.settimeout(30)
        reply = b""
        while chunk := stalled.recv(65536):  # until the server closes it
            reply += chunk
        cut_after = time.monotonic() - started
        assert idle.sock.recv(1) == b""  # closed by the server after --keep-alive
        idle_after = time.monotonic() - started
        for cut in (silent, half_head):
            cut.settimeout(30)
            assert cut.recv(65536) == b""  # closed by the server, nothing answered (a socket timeout fails the test)
    assert answered == [200] * 5
    assert reply.startswith(b"HTTP/1.1 408 ") and b'"error_code":"REQUEST_TIMEOUT"' in reply
    assert b"100000" not in reply.split(b"\r\n\r\n", 1)[1]  # nothing of what the client sent comes back
    assert 1.5 < cut_after < 15 and idle_after < 15


def test_serving_limits_out_of_range_and_a_log_dir_inside_git_are_one_line(built_repo: Path) -> None:
    for option, value in (("--read-timeout", "0"), ("--keep-alive", "-1"), ("--max-connections", "0")):
        result = run(["bts", "serve", "models/package", "--port", "0", option, value], built_repo, check=False)
        assert result.returncode == 1 and result.stderr.startswith(f"bts: error: {option} ") and result.stderr.count("\n") == 1
    # The place to log to is checked before any model is looked for, let alone loaded.
    result = run(["bts", "serve", "no/such/package", "--port", "0", "--log-dir", ".git/requests"], built_repo, check=False)
    assert result.returncode == 1 and result.stderr.startswith("bts: error: --log-dir .git/requests: inside a .git folder")
    assert not (built_repo / ".git/requests").exists()


def stalled_request(url: str) -> bytes:
    """Headers that promise a body, then one byte of it: what the server sends back before it closes the connection."""
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port)) as stalled:
        stalled.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        stalled.settimeout(60)  # a failure, not a measure: --read-timeout is 1 s
        reply = b""
        while chunk := stalled.recv(65536):  # until the server closes it
            reply += chunk
    return reply


def assert_metrics_count(server: Server, outputs: list[str]) -> None:
    """/metrics counts every request sent, by status, and every row scored and its forecasts, whichever worker answers
    the scrape."""
    samples = metric_samples(server.request("GET", "/metrics")[1].decode())
    counted: dict[str, float] = {}
    for sample in samples["bts_requests"]:
        if sample.name == "bts_requests_total":
            counted[sample.labels["status"]] = counted.get(sample.labels["status"], 0) + sample.value
    sent: dict[str, float] = {}
    for request in server.sent:
        sent[str(request["status"])] = sent.get(str(request["status"]), 0) + 1
    assert counted == sent
    rows = sum(len(request["predictions"]) for request in server.sent if request["status"] == 200)
    assert next(s.value for s in samples["bts_rows_scored"] if s.name == "bts_rows_scored_total") == rows
    assert_forecasts_counted(samples, [request["predictions"] for request in server.sent if request["status"] == 200], outputs)
    latency = next(s.value for s in samples["bts_request_duration_seconds"] if s.name == "bts_request_duration_seconds_count")
    assert latency == len(server.sent)
    assert next(s.value for s in samples["bts_model_info"]) == 1
    assert next(s.value for s in samples["process_resident_memory_bytes"]) > 0


def test_workers_share_the_port_the_metrics_and_the_log(built_repo: Path, tmp_path: Path) -> None:
    """`bts serve --workers 2`: a killed worker is reported and replaced; each worker answers (requests and /metrics) while
    the other is paused, and cuts a stalled client off; /metrics counts every request whichever worker answers; the log
    holds every request and prediction; SIGTERM stops them all and removes the shared metrics folder."""
    import os
    import re
    import time
    from concurrent.futures import ThreadPoolExecutor

    import psutil

    repo, log_dir = built_repo, tmp_path / "monitoring"
    frame = frame_of(repo, 5)
    outputs = output_columns(horizons(repo))
    expected = expected_predictions(repo, frame)  # what every worker must answer

    def score_concurrently(server: Server, count: int) -> None:
        sizes = [1 + i % len(frame) for i in range(count)]
        with ThreadPoolExecutor(4) as pool:  # a connection per request, four at a time
            answers = list(pool.map(lambda rows: server.score(split(frame.head(rows))), sizes))
        assert [(status, answer["predictions"]) for status, answer in answers] == [(200, expected[:rows]) for rows in sizes]

    with bts_server(repo, "models/package", "--workers", "2", "--log-dir", str(log_dir), "--read-timeout", "1") as server:
        assert "; 2 workers; " in server.start_line
        supervisor = psutil.Process(server.process.pid)
        first = sorted(child.pid for child in supervisor.children())
        assert len(first) == 2
        shared = next(Path(f.path).parent for f in psutil.Process(first[1]).open_files() if "bts-serve-metrics-" in f.path)
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 60  # a failure, not a measure
        while (workers := sorted(child.pid for child in supervisor.children())) == first or len(workers) != 2:
            assert time.monotonic() < deadline, f"no worker in place of {first[0]}: {workers}"
            time.sleep(0.05)
        assert first[0] not in workers and first[1] in workers
        status, answer = server.score(split(frame))
        assert status == 200 and answer["predictions"] == expected

        for paused in workers:  # all connections go to the other one meanwhile
            os.kill(paused, signal.SIGSTOP)
            try:
                score_concurrently(server, 8)
                assert_metrics_count(server, outputs)
                reply = stalled_request(server.url)
                assert reply.startswith(b"HTTP/1.1 408 ") and b'"error_code":"REQUEST_TIMEOUT"' in reply
                request_id = re.search(rb"x-request-id: (\w+)", reply).group(1).decode()
                server.sent.append({"status": 408, "predictions": None, "request_id": request_id})
            finally:
                os.kill(paused, signal.SIGCONT)
        score_concurrently(server, 12)
        for _ in range(4):
            assert_metrics_count(server, outputs)
    assert server.returncode == 0, server.stderr
    assert f"bts serve: worker {first[0]} was killed by SIGKILL; starting another" in server.stderr
    assert "Traceback" not in server.stderr, server.stderr
    assert not any(psutil.pid_exists(pid) for pid in [*first, *workers]) and not shared.exists()
    stopped = dict(re.findall(r"bts serve: worker (\d+) stopped after (\d+) scoring requests", server.stdout))
    assert set(stopped) == {str(pid) for pid in workers} and all(int(count) > 0 for count in stopped.values())
    assert sum(int(count) for count in stopped.values()) == len(server.sent)

    requests = pd.read_parquet(log_dir / "requests").set_index("request_id")
    assert requests.index.is_unique and len(requests) == len(server.sent)
    assert requests.loc[[sent["request_id"] for sent in server.sent], "status"].tolist() == [sent["status"] for sent in server.sent]
    predictions = pd.read_parquet(log_dir / "predictions")
    by_request = logged_records(predictions, outputs)
    served = [sent for sent in server.sent if sent["status"] == 200]
    assert len(predictions) == sum(len(sent["predictions"]) for sent in served)
    assert [by_request[sent["request_id"]] for sent in served] == [sent["predictions"] for sent in served]


def keep_scoring(server: Server, body: bytes, stop: threading.Event) -> None:
    """The same request again and again until stop is set, each answer kept in server.sent (one that never came too)."""
    while not stop.is_set():
        try:
            server.score(body)
        except Exception as exc:  # refused, reset, timed out: a request failed
            server.sent.append({"status": None, "predictions": None, "request_id": None, "error": repr(exc)})
        time.sleep(0.02)


def wait_for_more_answers(server: Server, count: int) -> None:
    answered = len(server.sent)
    deadline = time.monotonic() + 60  # a failure, not a measure
    while len(server.sent) < answered + count:
        assert time.monotonic() < deadline, "the requests stopped being answered"
        time.sleep(0.05)


def test_a_followed_alias_swaps_versions_under_load_and_refuses_a_tampered_one(own_built_repo: Path, tmp_path: Path) -> None:
    """`bts serve models:/...@champion --follow-interval 1` under a steady stream of requests: version 2, trained,
    registered and promoted meanwhile, answers within 30 s, no request fails, and every log row and metric names the
    version whose predictions it holds; @champion moved (as stock MLflow does) to a version whose stored package was
    tampered with is refused with one line, and version 2 answers on."""
    repo, log_dir = own_built_repo, tmp_path / "monitoring"
    client = store(repo)
    bts(["register"], repo)
    client.set_registered_model_alias(NAME, "champion", "1")
    frame = frame_of(repo, 5)
    by_version = {"1": expected_predictions(repo, frame)}
    md5s = {"1": lock_outs(repo / "dvc.lock")["models/package"]}
    set_params(repo, "train", "model", "ridge")
    # Another model, trained and packaged (not evaluated: not needed here) while the server starts and answers.
    retraining = subprocess.Popen(["dvc", "repro", "serve"], cwd=repo, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stop = threading.Event()
    with bts_server(repo, f"models:/{NAME}@champion", "--follow-interval", "1", "--log-dir", str(log_dir)) as server:
        scoring = threading.Thread(target=keep_scoring, args=(server, split(frame), stop))
        scoring.start()
        try:
            output = retraining.communicate(timeout=600)[0].decode()
            assert retraining.returncode == 0, output
            by_version["2"], md5s["2"] = expected_predictions(repo, frame), lock_outs(repo / "dvc.lock")["models/package"]
            assert by_version["2"] != by_version["1"]
            assert bts(["register"], repo).stdout.startswith(f"registered: models:/{NAME}/2")
            client.set_registered_model_alias(NAME, "champion", "2")
            swapped = server.wait_for_line("stdout", "@champion now version 2", seconds=30)
            assert swapped == f"bts serve: @champion now version 2 (package md5 {md5s['2']}), was version 1\n"
            model = server.get_json("/model")
            assert (model["reference"], model["version"], model["package_md5"]) == (f"models:/{NAME}@champion", "2", md5s["2"])
            wait_for_more_answers(server, 5)

            first = client.get_model_version(NAME, "1")
            third = client.create_model_version(NAME, first.source, first.run_id, tags={"package.md5": first.tags["package.md5"]})
            stored = next(path for path in (repo / "mlartifacts").rglob("package/model.skops") if first.run_id in path.parts)
            stored.write_bytes(stored.read_bytes() + b"\0")
            client.set_registered_model_alias(NAME, "champion", third.version)
            refused = server.wait_for_line("stderr", f"now names version {third.version}: refused", seconds=30)
            assert "TAMPERED" in refused and "model.skops" in refused and "version 2 goes on serving" in refused
            time.sleep(3)  # three more looks at the alias: the refused version is not tried again
            wait_for_more_answers(server, 5)
            assert server.get_json("/model")["version"] == "2"
        finally:
            stop.set()
            scoring.join(60)
            if retraining.poll() is None:
                retraining.kill()
                retraining.wait()
        samples = metric_samples(server.request("GET", "/metrics")[1].decode())
    assert server.returncode in (0, -signal.SIGTERM), server.stderr
    assert "Traceback" not in server.stderr, server.stderr
    assert server.stderr.count("refused") == 1, server.stderr

    failed = [sent for sent in server.sent if sent["status"] != 200]
    assert not failed, failed[:3]
    answered_by = [next(v for v, expected in by_version.items() if sent["predictions"] == expected) for sent in server.sent]
    assert "1" in answered_by and "2" in answered_by and answered_by == sorted(answered_by)  # swapped once, never back
    scored = {
        s.labels["version"]: s.value for s in samples["bts_rows_scored"] if s.name == "bts_rows_scored_total" and s.labels["model"] == NAME
    }
    assert scored == {version: len(frame) * answered_by.count(version) for version in ("1", "2")}
    info = {s.labels["version"]: (s.labels["package_md5"], s.value) for s in samples["bts_model_info"]}
    assert info == {"1": (md5s["1"], 0), "2": (md5s["2"], 1)}

    requests = pd.read_parquet(log_dir / "requests").set_index("request_id")
    logged = requests.loc[[sent["request_id"] for sent in server.sent]]
    assert logged["model_version"].tolist() == answered_by  # each request logged under the version that answered it
    assert logged["package_md5"].tolist() == [md5s[version] for version in answered_by]  # what bts monitor selects by
    predictions = pd.read_parquet(log_dir / "predictions")
    assert len(predictions) == len(frame) * len(server.sent)
    assert (predictions["model_version"] == predictions["request_id"].map(requests["model_version"])).all()
    assert (predictions["package_md5"] == predictions["model_version"].map(md5s)).all()
    expected = [by_version[version][row] for version, row in zip(predictions["model_version"], predictions["row"], strict=True)]
    outputs = output_columns(horizons(repo))
    assert predictions[outputs].to_dict(orient="records") == expected  # each row's forecasts are those of the version it names
