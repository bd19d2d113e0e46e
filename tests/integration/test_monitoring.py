"""`bts serve` -> `bts replay` -> SIGTERM -> `bts monitor` -> `bts lineage`, as a user runs them, with a real browser.

A registered version is served; the last simulated day is replayed through
it (good traffic), then replayed again with lag_1 shifted (drift). The
report must count every request sent, flag lag_1 and nothing else, carry the
served version's lineage as tags, be listed by `bts lineage`, and score live
accuracy at every horizon (error, skill, coverage of the intervals) exactly
as an offline computation on the same rows does. The HTML page is opened in
headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bts.data.features import FeatureSpec, build_features
from bts.horizons import FORECAST, LOWER, UPPER, label, metric_name, output_column, target_column
from bts.monitoring.field_readings import read_readings
from bts.params import load_params
from bts.tracking.tags import MONITOR_REPORT, MONITORED_NAME, MONITORED_RUN, MONITORED_VERSION, PACKAGE_MD5, data_md5_tag
from tests.integration.test_bts_serve import bts_server, environment
from tests.integration.workspace import bts, run, store

pytestmark = pytest.mark.integration

MODEL = "bts-next-reading"
ROWS_PER_REQUEST = 250
SHIFT = 20.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def replay(repo: Path, export: Path, url: str, *options: str) -> str:
    result = run(["bts", "replay", str(export), "--url", url, "--rows-per-request", str(ROWS_PER_REQUEST), *options], repo)
    return result.stdout.strip()


def requests_sent(summary: str) -> int:
    """`replay: N rows in R requests to ...` -> R."""
    return int(summary.split(" rows in ", 1)[1].split(" requests", 1)[0])


def monitor(repo: Path, out: Path, *options: str) -> tuple[str, dict]:
    result = run(["bts", "monitor", f"models:/{MODEL}@candidate", "--out", str(out), *options], repo)
    return result.stdout, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def served(built_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Good traffic, then the same day with lag_1 shifted, through a registered version; then SIGTERM."""
    repo = built_repo
    bts(["register"], repo)
    log_dir = tmp_path_factory.mktemp("monitoring")
    export = sorted((repo / "data/raw/simulated").glob("*.csv"))[-1]  # the last day: the test split's
    with bts_server(repo, f"models:/{MODEL}@candidate", "--log-dir", str(log_dir)) as server:
        good = replay(repo, export, server.url)
        boundary = datetime.now(UTC).isoformat()
        shifted = replay(repo, export, server.url, "--shift", f"lag_1={SHIFT}")
        bad = [server.score(b'{"dataframe_split": {"columns": ["lag_1"], "data": [[1.0]]}}')[0] for _ in range(3)]
    assert server.returncode in (0, -signal.SIGTERM), server.stderr  # uvicorn re-raises the SIGTERM it handled
    assert bad == [400, 400, 400]
    return {"repo": repo, "log_dir": log_dir, "export": export, "good": good, "shifted": shifted, "boundary": boundary, "bad": len(bad)}


def test_monitor_counts_every_request_flags_the_shifted_feature_and_links_the_report(served: dict, tmp_path: Path) -> None:
    repo = served["repo"]
    stdout, report = monitor(repo, tmp_path / "all", "--log-dir", str(served["log_dir"]))
    sent = requests_sent(served["good"]) + requests_sent(served["shifted"]) + served["bad"]
    assert report["service"]["requests"] == sent  # nothing lost between the server and the log
    assert report["service"]["errors_by_code"] == {"MISSING_COLUMNS": served["bad"]}
    assert report["service"]["cost"]["cpu_seconds_per_1000_predictions"] > 0
    assert report["drift"]["drifted"] == ["lag_1"]
    assert "input drift: lag_1" in stdout and f"{sent} requests ({served['bad']} failed)" in stdout

    client = store(repo)
    version = client.get_model_version_by_alias(MODEL, "candidate")
    report_run = client.get_run(version.tags[MONITOR_REPORT])  # the version points at its newest report
    assert client.get_experiment(report_run.info.experiment_id).name == "bts-next-reading-monitoring"
    tags = report_run.data.tags
    assert tags[PACKAGE_MD5] == version.tags[PACKAGE_MD5]
    assert (tags[MONITORED_NAME], tags[MONITORED_VERSION], tags[MONITORED_RUN]) == (MODEL, str(version.version), version.run_id)
    for name in ("raw", "clean", "features"):
        assert tags[data_md5_tag(name)] == version.tags[data_md5_tag(name)]
    assert report_run.data.metrics["drift.features_drifted"] == 1
    artifacts = {a.path for a in client.list_artifacts(report_run.info.run_id, "report")}
    assert artifacts == {"report/report.json", "report/report.html"}

    lineage = bts(["lineage", f"models:/{MODEL}@candidate"], repo).stdout
    assert f"run {report_run.info.run_id} ({sent} requests, 1 feature(s) drifted" in lineage
    chain = json.loads(bts(["lineage", f"models:/{MODEL}@candidate", "--json"], repo).stdout)
    assert chain["monitoring"]["newest"][0]["run_id"] == report_run.info.run_id


def test_live_accuracy_at_every_horizon_equals_an_offline_join_of_the_replay_with_its_later_readings(served: dict, tmp_path: Path) -> None:
    repo, export = served["repo"], served["export"]
    options = ("--log-dir", str(served["log_dir"]), "--until", served["boundary"], "--actuals", str(export))
    stdout, report = monitor(repo, tmp_path / "good", *options)
    live = report["live"]
    assert report["drift"]["drifted"] == []  # the good traffic alone has not drifted
    params = load_params(repo / "params.yaml")
    assert live["horizons"] == params.featurize.horizons == [1, 5, 15] and live["target_coverage"] == params.train.interval_coverage

    predictions = pd.read_parquet(served["log_dir"] / "predictions")
    predictions = predictions[predictions["time"] < pd.Timestamp(served["boundary"])]
    assert len(predictions) == live["predictions"] and live["without_keys"] == 0
    readings = read_readings(export, repo, repo / "metadata/sensors.yaml")
    keys = ["station_id", "parameter_id", "reading_id"]  # each request row named its latest reading
    report_run = store(repo).get_run(re.search(r"MLflow run ([0-9a-f]{32}) in ", stdout).group(1))
    for horizon in live["horizons"]:
        # The examples build_features makes for this horizon alone: each reading with its history and the reading
        # `horizon` steps later in its series (target_h<horizon>), what the model was trained to forecast.
        examples, _ = build_features(readings, FeatureSpec.from_params(params.featurize).but(horizons=[horizon]))
        target = target_column(horizon)
        joined = predictions.astype({key: "int64" for key in keys}).merge(examples[[*keys, target]], on=keys)
        actual, latest = joined[target].to_numpy(), joined["lag_1"].to_numpy()
        forecast, lower, upper = (joined[output_column(kind, horizon)].to_numpy() for kind in (FORECAST, LOWER, UPPER))
        rmse, persistence_rmse = np.sqrt(np.mean((forecast - actual) ** 2)), np.sqrt(np.mean((latest - actual) ** 2))
        inside = (lower <= actual) & (actual <= upper)
        coverage = inside.mean()

        scored = live["by_horizon"][label(horizon)]
        assert scored["horizon"] == horizon and scored["joined"] == len(joined) and scored["joined_share"] >= 0.95
        overall = scored["overall"]
        assert overall["rmse"] == pytest.approx(rmse, abs=1e-6)
        assert overall["skill"] == pytest.approx(1 - rmse / persistence_rmse, abs=1e-6)
        assert overall["coverage"] == pytest.approx(coverage, abs=1e-6) and 0 < coverage < 1
        assert overall["mean_width"] == pytest.approx(np.mean(upper - lower), abs=1e-6)
        by_series = joined.assign(inside=inside).groupby(["station_id", "parameter_id"])["inside"]
        assert [row["rows"] for row in scored["by_series"]] == by_series.size().tolist()
        assert [row["coverage"] for row in scored["by_series"]] == pytest.approx(by_series.mean().tolist(), abs=1e-6)
        assert report["offline"]["by_horizon"][label(horizon)]["coverage"] > 0  # shown beside the run's own test scores
        assert report_run.data.metrics[metric_name("live", horizon, "coverage")] == overall["coverage"]
        assert f"  live {label(horizon)}: {len(joined)} of {len(predictions)} predictions joined; " in stdout
    assert live["by_horizon"]["h1"]["joined"] > live["by_horizon"]["h15"]["joined"]  # a series' last 15 readings have no h15 truth


def test_the_html_report_renders_in_a_headless_browser(served: dict, tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: `make test` installs Debian's chromium package"
    out = tmp_path / "report"
    monitor(served["repo"], out, "--log-dir", str(served["log_dir"]), "--actuals", str(served["export"]))
    page = (out / "report.html").as_uri()
    profile = tmp_path / "browser"
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,2400"]
    env = {**environment(served["repo"]), "HOME": str(tmp_path)}
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120, env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Monitoring report: bts-next-reading version 1" in dom.stdout
    assert dom.stdout.count('src="data:image/png;base64,') == 3  # latency, drift, live against offline
    shot = tmp_path / "report.png"
    result = subprocess.run([*common, f"--screenshot={shot}", page], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, tables and plots drawn: not a blank or error page
    assert os.path.getsize(shot) > 50_000


def test_a_report_inside_git_is_refused_before_anything_is_read(served: dict) -> None:
    repo = served["repo"]
    result = run(
        ["bts", "monitor", f"models:/{MODEL}@candidate", "--log-dir", str(served["log_dir"]), "--out", ".git/objects/evil"],
        repo,
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == "bts: error: --out .git/objects/evil: inside a .git folder, whose files git or DVC own; choose another place\n"
    assert not (repo / ".git/objects/evil").exists()


def test_a_corrupt_log_file_is_named_left_out_and_the_report_still_written(served: dict, tmp_path: Path) -> None:
    repo, log_dir = served["repo"], tmp_path / "log"
    shutil.copytree(served["log_dir"], log_dir)
    day = next((log_dir / "predictions").glob("date=*"))
    (day / "000000000000-1-1.parquet").write_bytes(b"PAR1 not really")
    result = run(["bts", "monitor", f"models:/{MODEL}@candidate", "--log-dir", str(log_dir), "--out", str(tmp_path / "out")], repo)
    assert f"monitor: warning: predictions/{day.name}/000000000000-1-1.parquet: " in result.stderr and "Traceback" not in result.stderr
    assert "  log: 1 unreadable file(s) left out (named above)" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["window"]["skipped_files"] == [f"predictions/{day.name}/000000000000-1-1.parquet"]
    assert report["service"]["requests"] > 0
