"""`bts replay` against a real `bts serve`: every row sent is scored once, logged with its keys, and scored as in-process."""

from __future__ import annotations

import json
import re
import signal
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bts.data.features import FeatureSpec
from bts.model.package import load_package
from bts.monitoring.field_readings import read_readings, serving_rows
from bts.params import load_params
from tests.integration.test_bts_serve import bts_server, environment
from tests.integration.workspace import lock_outs, run

pytestmark = pytest.mark.integration

EXPORT = "data/raw/simulated/param-2017-04-18.csv"
LIMIT = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_replayed_rows_are_each_scored_once_logged_with_their_keys_and_scored_as_in_process(built_repo: Path, tmp_path: Path) -> None:
    repo, log_dir = built_repo, tmp_path / "monitoring"
    with bts_server(repo, "models/package", "--log-dir", str(log_dir)) as server:
        replayed = run(["bts", "replay", EXPORT, "--url", server.url, "--limit", str(LIMIT)], repo, env=environment(repo))
    assert server.returncode in (0, -signal.SIGTERM) and "Traceback" not in server.stderr, server.stderr
    summary = rf"replay: {LIMIT} rows in {LIMIT} requests to {re.escape(server.url)} in [0-9.]+ s \([0-9]+ rows/s\); {LIMIT} ok, 0 failed"
    assert re.fullmatch(summary, replayed.stdout.strip()), replayed.stdout

    spec = FeatureSpec(n_lags=load_params(repo / "params.yaml").featurize.n_lags)
    assert spec.feature_columns == json.loads((repo / "metadata/datasets/features.json").read_text())["feature_columns"]
    sent = serving_rows(read_readings(repo / EXPORT, repo, repo / "metadata/sensors.yaml"), spec).head(LIMIT)
    logged = pd.read_parquet(log_dir / "predictions").sort_values(["time", "row"], kind="stable").reset_index(drop=True)
    assert len(logged) == LIMIT
    assert logged["station_id"].tolist() == sent["station_id"].tolist()
    assert logged["parameter_id"].tolist() == sent["parameter_id"].tolist()
    assert (logged["reading_time"] == sent["reading_time"].dt.tz_localize("UTC")).all()
    assert logged[spec.feature_columns].equals(sent[spec.feature_columns])  # the features arrive exactly
    model = load_package(repo / "models/package", lock_outs(repo / "dvc.lock")["models/package"])
    assert np.allclose(logged["prediction"], model.predict(sent[spec.feature_columns]))


def test_nothing_listening_is_one_error_line(built_repo: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run(["bts", "replay", EXPORT, "--url", url], built_repo, check=False, env=environment(built_repo))
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"bts: error: {url}: connection refused"), result.stderr
