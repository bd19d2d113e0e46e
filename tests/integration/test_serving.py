"""Stock `mlflow models serve` on the packaged model and on the registry alias, over real HTTP: a record per row, every
horizon's forecast and interval bounds under the output column names of bts.horizons."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bts.horizons import output_columns
from bts.model.package import load_package
from tests.integration.workspace import bts, lock_outs, user_env

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def model_server(repo: Path, model_uri: str) -> Iterator[str]:
    port = free_port()
    env = user_env({"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"})
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise AssertionError(f"server exited: {server.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("server did not answer /ping within 90 s")
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def examples(repo: Path, rows: int = 50) -> pd.DataFrame:
    columns = json.loads((repo / "metadata/datasets/features.json").read_text())["feature_columns"]
    features = pd.read_parquet(repo / "data/processed/features.parquet")
    return features[features["split"] == "test"][columns].head(rows).reset_index(drop=True)


def split_payload(frame: pd.DataFrame) -> bytes:
    return json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()


def bad_requests(frame: pd.DataFrame) -> dict[str, tuple[bytes, str]]:
    one = frame.head(1)
    as_text = one.astype(object)
    as_text.iloc[0, 0] = "not a number"
    return {
        "missing column": (split_payload(one.drop(columns=["lag_3"])), "application/json"),
        "wrong type": (split_payload(as_text), "application/json"),
        "malformed JSON": (b'{"dataframe_split": {"columns": [', "application/json"),
        "empty body": (b"", "application/json"),
        "unknown payload key": (json.dumps({"rows": one.to_dict(orient="records")}).encode(), "application/json"),
        "ragged rows": (json.dumps({"dataframe_split": {"columns": list(one.columns), "data": [[1.0, 2.0]]}}).encode(), "application/json"),
        "unsupported content type": (b"lag_1=1", "text/plain"),
        "null in a required column": (split_payload(one.assign(lag_1=None)), "application/json"),
    }


def horizons(repo: Path) -> list[int]:
    return [int(h) for h in yaml.safe_load((repo / "params.yaml").read_text())["featurize"]["horizons"]]


def assert_serves(url: str, repo: Path) -> None:
    frame = examples(repo)
    predicted = load_package(repo / "models/package", lock_outs(repo / "dvc.lock")["models/package"]).predict(frame)
    assert list(predicted.columns) == output_columns(horizons(repo))  # forecast, lower, upper of every horizon of params.yaml
    expected = predicted.to_dict(orient="records")
    status, body = post(url, split_payload(frame))
    assert status == 200, body
    assert json.loads(body)["predictions"] == expected  # a record per row: every horizon's forecast and bounds, exactly
    records = json.dumps({"dataframe_records": frame.head(3).to_dict(orient="records")}).encode()
    status, body = post(url, records)
    assert status == 200 and json.loads(body)["predictions"] == expected[:3]
    status, body = post(url, frame.head(3).to_csv(index=False).encode(), "text/csv")
    assert status == 200
    answered = pd.DataFrame(json.loads(body)["predictions"])  # MLflow's CSV reader may round a feature's last digit
    assert list(answered.columns) == list(predicted.columns)
    assert answered.to_numpy() == pytest.approx(predicted.head(3).to_numpy(), rel=1e-12)

    for kind, (payload, content_type) in bad_requests(frame).items():
        status, body = post(url, payload, content_type)
        assert 400 <= status < 500, f"{kind}: {status} {body}"
        assert body, kind
        status, _ = post(url, split_payload(frame.head(2)))
        assert status == 200, f"server stopped serving after: {kind}"


def test_packaged_model_serves_with_signature_checks(built_repo: Path) -> None:
    with model_server(built_repo, "models/package") as url:
        assert_serves(url, built_repo)


def test_registry_alias_serves_the_same_model(built_repo: Path) -> None:
    bts(["register"], built_repo)
    bts(["promote", "1", "--to", "champion"], built_repo)
    with model_server(built_repo, "models:/bts-next-reading@champion") as url:
        assert_serves(url, built_repo)
