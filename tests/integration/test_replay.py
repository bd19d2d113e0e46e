"""`bts replay` against a real `bts serve`: every row sent is scored once, logged with its keys, and scored as in-process."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bts.data.features import FeatureSpec
from bts.horizons import output_columns
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

    spec = FeatureSpec.from_params(load_params(repo / "params.yaml").featurize)
    assert spec.feature_columns == json.loads((repo / "metadata/datasets/features.json").read_text())["feature_columns"]
    sent = serving_rows(read_readings(repo / EXPORT, repo, repo / "metadata/sensors.yaml"), spec).head(LIMIT)
    logged = pd.read_parquet(log_dir / "predictions").sort_values(["time", "row"], kind="stable").reset_index(drop=True)
    assert len(logged) == LIMIT
    assert logged["station_id"].tolist() == sent["station_id"].tolist()
    assert logged["parameter_id"].tolist() == sent["parameter_id"].tolist()
    assert (logged["reading_time"] == sent["reading_time"].dt.tz_localize("UTC")).all()
    assert logged[spec.feature_columns].equals(sent[spec.feature_columns])  # the features arrive exactly
    model = load_package(repo / "models/package", lock_outs(repo / "dvc.lock")["models/package"])
    expected = model.predict(sent[spec.feature_columns])
    assert list(expected.columns) == output_columns(spec.horizons)  # forecast, lower, upper of every horizon
    assert np.allclose(logged[list(expected.columns)], expected)  # each logged in its own column


def said(result: subprocess.CompletedProcess) -> list[str]:
    """The lines a command printed on stderr, but replay's progress (every second)."""
    return [line for line in result.stderr.splitlines() if not re.fullmatch(r"replay: \d+/\d+ rows sent", line)]


def test_the_features_are_built_with_the_served_models_training_params_not_the_workspaces(built_repo: Path, tmp_path: Path) -> None:
    """The model was trained with featurize.n_lags 6; the workspace now says 4: replay sends the model's 6 lags, read from
    its training run, and falls back to params.yaml (saying so) only with a tracking store that lacks the run."""
    repo, log_dir, limit = built_repo, tmp_path / "monitoring", 50
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    trained = load_params(params_file).featurize
    assert trained.n_lags == 6
    changed, count = re.subn(r"(?m)^  n_lags: 6$", "  n_lags: 4", original)
    assert count == 1
    command = ["bts", "replay", EXPORT, "--limit", str(limit)]
    other_store = f"sqlite:///{tmp_path / 'other-store.db'}"
    MlflowClient(tracking_uri=other_store).search_experiments()  # made now: a new store's first use logs its creation
    without_the_run = {**environment(repo), "MLFLOW_TRACKING_URI": other_store}
    try:
        params_file.write_text(changed)
        assert load_params(params_file).featurize.n_lags == 4
        with bts_server(repo, "models/package", "--log-dir", str(log_dir)) as server:
            run_id = server.get_json("/model")["run_id"]
            replayed = run([*command, "--url", server.url], repo, env=environment(repo))
            unfit = run([*command, "--url", server.url], repo, check=False, env=without_the_run)
            params_file.write_text(original)
            fallback = run([*command, "--url", server.url], repo, env=without_the_run)
    finally:
        params_file.write_text(original)
    assert run_id and "Traceback" not in server.stderr, server.stderr

    assert said(replayed) == [f"replay: featurize params from the training run {run_id}"], replayed.stderr
    assert replayed.stdout.strip().endswith(f"; {limit} ok, 0 failed"), replayed.stdout  # the server refuses rows without its columns
    logged = pd.read_parquet(log_dir / "predictions")
    lags = FeatureSpec.from_params(trained).feature_columns
    assert "lag_6" in lags and len(logged) == 2 * limit and logged[lags].notna().all().all()

    not_there = f"params.yaml (the model's training run {run_id} is not in the tracking store)"
    assert unfit.returncode == 1 and unfit.stdout == "" and unfit.stderr.count("\n") == 1, unfit.stderr
    assert unfit.stderr.startswith("bts: error: the model's inputs (lag_1, "), unfit.stderr
    assert "n_lags=4" in unfit.stderr and unfit.stderr.rstrip().endswith(f"; featurize params from {not_there}"), unfit.stderr
    assert said(fallback) == [f"replay: featurize params from {not_there}"], fallback.stderr
    assert fallback.stdout.strip().endswith(f"; {limit} ok, 0 failed"), fallback.stdout


def test_nothing_listening_is_one_error_line(built_repo: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run(["bts", "replay", EXPORT, "--url", url], built_repo, check=False, env=environment(built_repo))
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"bts: error: {url}: connection refused"), result.stderr
