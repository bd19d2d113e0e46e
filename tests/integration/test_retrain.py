"""Closing the loop: `bts monitor` flags live skill and prints the `bts retrain` to run; that retrain, killed at every
step and run again, ends with one new version promoted only because it beats the champion on the same rows, and the
server running @champion answers with it without failing a request of a concurrent `bts replay`; a candidate that does
not beat it is not promoted.

The served days are simulated with one station whose rhythm shifts (its readings go up and down in turn), which the
champion, trained on the default days, forecasts worse than persistence.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from bts.kill_points import KILL_POINT_VARIABLE
from bts.lifecycle.retrain import RETRAIN_DATA_MD5, RETRAIN_EXPERIMENT, RETRAIN_REPORT, RETRAINED_FROM
from bts.tracking.tags import EXP_NAME, TRANSITION_PREFIX
from tests.integration.test_bts_serve import bts_server
from tests.integration.workspace import bts, lineage_json, lock_outs, run, set_params, store

pytestmark = pytest.mark.integration

MODEL = "bts-next-reading"
SHIFTED_STATION = 1161114011
# Where `bts retrain` is killed, in the order it passes them: after tracking the export, in the experiment's train
# stage, after the experiment, in the registration, after tagging the candidate, after moving the alias.
KILL_POINTS = ["retrain-tracked", "run-started", "retrain-experiment-done", "version-created", "retrain-tagged", "alias-moved"]


def simulated_days(repo: Path, out: Path, start: str, days: int, seed: int, *shifts: str) -> Path:
    shift = [f"--shift={text}" for text in shifts]
    command = ["python", "src/stages/simulate.py", "--sensors", "metadata/sensors.yaml", "--out", str(out)]
    run([*command, "--start-date", start, "--days", str(days), "--seed", str(seed), *shift], repo, env={"PYTHONPATH": "src"})
    return out


def keep_replaying(repo: Path, export: Path, url: str, stop: threading.Event, replays: list) -> None:
    """`bts replay` of the first readings of export, a row per request, again and again until stop is set."""
    while not stop.is_set():
        replays.append(run(["bts", "replay", str(export), "--url", url, "--rows-per-request", "1", "--limit", "500"], repo, check=False))


def champion(repo: Path) -> None:
    bts(["register"], repo)
    bts(["promote", "1", "--to", "champion"], repo)


def test_monitor_asks_for_a_retrain_that_completes_after_a_kill_at_every_step_and_the_running_server_follows_its_winner(
    own_built_repo: Path, tmp_path: Path
) -> None:
    repo = own_built_repo
    champion(repo)
    shifted = simulated_days(repo, tmp_path / "shifted", "2017-04-22", 3, 7, f"{SHIFTED_STATION}:rhythm")
    log_dir = tmp_path / "monitoring"
    with bts_server(repo, f"models:/{MODEL}@champion", "--log-dir", str(log_dir)) as server:
        run(["bts", "replay", str(shifted), "--url", server.url, "--rows-per-request", "500"], repo)
    assert server.returncode in (0, -signal.SIGTERM), server.stderr
    monitored = run(["bts", "monitor", f"models:/{MODEL}@champion", "--actuals", str(shifted), "--log-dir", str(log_dir)], repo)
    flagged = re.search(r"ALERT: live skill below \+0\.0% on \d+ of \d+ series: station (\d+)", monitored.stdout)
    assert flagged and int(flagged.group(1)) == SHIFTED_STATION, monitored.stdout
    hint = re.search(r"to retrain with these readings: (bts retrain .*)", monitored.stdout)
    report = re.search(r"MLflow run ([0-9a-f]{32}) in ", monitored.stdout).group(1)
    assert hint and hint.group(1) == f"bts retrain models:/{MODEL}@champion --with {shifted} --report {report}", monitored.stdout
    page = next(log_dir.glob("reports/*/report.html")).read_text()
    assert f"--report {report}</code>" in page  # the report links to the command

    command = hint.group(1).split()
    stop = threading.Event()
    # The champion serves on, following its alias, while the retrain is killed, run again, and promotes its candidate.
    with bts_server(repo, f"models:/{MODEL}@champion", "--follow-interval", "1", "--log-dir", str(tmp_path / "live")) as live:
        for point in KILL_POINTS:
            killed = run(command, repo, check=False, env={KILL_POINT_VARIABLE: point})
            assert killed.returncode != 0, f"{point}: {killed.stdout}"
            assert "Traceback" not in killed.stderr, killed.stderr
            if killed.returncode > 0:  # the experiment's own stage was killed: one line says so
                assert killed.stderr.strip().splitlines()[-1].startswith("bts: error: dvc exp run retrain-v1-"), killed.stderr
        replays: list = []
        replaying = threading.Thread(target=keep_replaying, args=(repo, shifted, live.url, stop, replays))
        replaying.start()
        try:
            done = run(command, repo)
            swapped = live.wait_for_line("stdout", "@champion now version 2", seconds=30)  # the running server follows
            in_flight = len(replays)
            while len(replays) <= in_flight and replaying.is_alive():  # the replay that ran through the swap, to its end
                time.sleep(0.5)
            assert live.get_json("/model")["version"] == "2", swapped
        finally:
            stop.set()
            replaying.join(300)
    assert len(replays) > in_flight
    for replayed in replays:  # no request failed while the version changed under them
        assert replayed.returncode == 0 and re.search(r"; \d+ ok, 0 failed$", replayed.stdout.strip()), replayed.stdout + replayed.stderr
    decision = done.stdout.strip()
    assert re.fullmatch(
        r"retrain: version 2 from version 1 \(experiment retrain-v1-\d{8}T\d{6}, data/external/shifted md5 [0-9a-f]{32}\.dir\): "
        r"promoted to @champion \(test\.h1\.rmse (\S+) vs (\S+) of version 1, both on the candidate's test split\)",
        decision,
    ), decision
    new, old = map(float, re.search(r"test\.h1\.rmse (\S+) vs (\S+)", decision).groups())
    assert new < old

    client = store(repo)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]  # no duplicate version, whatever was killed
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    experiment = re.search(r"experiment (retrain-v1-\S+),", decision).group(1)
    assert run(["dvc", "exp", "list", "--name-only"], repo).stdout.split() == [experiment]  # one experiment, kept as a ref
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string=f"tags.`{EXP_NAME}` = '{experiment}'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # the killed training's run ended, not left RUNNING
    tags = client.get_model_version(MODEL, "2").tags
    md5 = tags[RETRAIN_DATA_MD5]
    assert (tags[RETRAINED_FROM], tags[RETRAIN_REPORT], tags[RETRAIN_EXPERIMENT]) == ("1", report, experiment)
    assert md5 in (repo / "data/external/shifted.dvc").read_text()
    transitions = [json.loads(v) for k, v in tags.items() if k.startswith(TRANSITION_PREFIX) and k.endswith(".champion")]
    assert len(transitions) == 1 and transitions[0]["reason"].startswith("retrained from version 1: test.h1.rmse")  # recorded once
    assert "retrained from version 1" in bts(["history"], repo).stdout

    # The lineage of the new version names the report, the version it replaced, the experiment and the commit (the
    # experiment's) whose dvc.lock holds its data md5s.
    chain = lineage_json(repo, f"models:/{MODEL}/2")
    assert chain["retrain"] == {RETRAINED_FROM: "1", RETRAIN_REPORT: report, RETRAIN_DATA_MD5: md5, RETRAIN_EXPERIMENT: experiment}
    first = chain["first_commit"]
    assert {"kind": "dvc-experiment", "name": experiment} in [{k: r[k] for k in ("kind", "name")} for r in first["refs"]]
    lock = run(["git", "show", f"{first['commit']}:dvc.lock"], repo).stdout
    assert lock_outs(repo / "dvc.lock", text=lock)["data/processed/features.parquet"] == chain["datasets"]["features"]["md5"]
    shown = bts(["lineage", f"models:/{MODEL}/2"], repo).stdout
    assert f"retrain  retrained from version 1, monitoring report {report}, added data md5 {md5}, experiment {experiment}" in shown
    assert "nothing lost" in bts(["runs", "check"], repo).stdout


def test_a_candidate_that_does_not_beat_the_champion_on_the_same_rows_is_not_promoted(own_built_repo: Path, tmp_path: Path) -> None:
    repo = own_built_repo
    champion(repo)
    new_day = simulated_days(repo, tmp_path / "day", "2017-04-22", 1, 11)
    set_params(repo, "train", "model", "elasticnet")  # what the workspace would train: no match for the champion's boosting
    result = run(["bts", "retrain", f"models:/{MODEL}@champion", "--with", str(new_day)], repo)
    decision = result.stdout.strip()
    assert re.search(
        r"^retrain: version 2 from version 1 .*: not promoted, @champion stays on version 1 \(test\.h1\.rmse (\S+) vs (\S+)", decision
    )
    new, old = map(float, re.search(r"test\.h1\.rmse (\S+) vs (\S+)", decision).groups())
    assert new > old, decision
    client = store(repo)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(MODEL, "candidate").version) == "2"
    card = json.loads((repo / f"models/cards/{MODEL}-1.json").read_text())
    assert card["status"] == ["champion"]
