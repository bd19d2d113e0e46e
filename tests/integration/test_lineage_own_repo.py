"""Lineage and governance that need a repository of their own: reproduction of an older commit's model with its own
code (and of tampered data), a promotion killed half-way, run id prefixes. Apart from test_lineage's chain of tests
on one repository, so that the two run side by side."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from bts.hashing import dvc_md5
from bts.horizons import metric_name
from bts.lifecycle.reproduce import COMPARED_SCORES
from bts.project import code_md5
from tests.integration.conftest import REAL_SAMPLE, REAL_STATION
from tests.integration.test_lineage import NAME
from tests.integration.workspace import bts, commit_all, copy_workspace, lineage_json, run, set_params, store, training_run

pytestmark = pytest.mark.integration


def test_reproduce_runs_the_commits_own_code_and_detects_tampered_data(real_export_build: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy_workspace(real_export_build, repo)  # A: the pipeline with a real export tracked by `dvc add`, committed
    bts(["register"], repo)
    code_a = lineage_json(repo, f"models:/{NAME}/1")["code_md5"]

    # B changes the training code and the model: the workspace's (and installed) code is no longer A's.
    with open(repo / "src/stages/train.py", "a") as handle:
        handle.write("# B's training code\n")
    set_params(repo, "train", "model", "ridge")
    commit_all(repo, "B: other code and model")
    assert code_md5(repo) != code_a

    before = run(["git", "status", "--porcelain"], repo).stdout
    verdict = run(["bts", "reproduce", f"models:/{NAME}/1"], repo)
    assert "verdict: REPRODUCED" in verdict.stdout and "DIFF" not in verdict.stdout
    assert f"ok   {'code_md5 (ran)':<20} {code_a}" in verdict.stdout  # the code the stages imported was A's
    horizons = yaml.safe_load((repo / "params.yaml").read_text())["featurize"]["horizons"]  # A's, which B kept
    compared = [line.split()[1] for line in verdict.stdout.splitlines() if line.split()[1:2] and "." in line.split()[1]]
    assert [name for name in compared if name.startswith(("valid.", "test."))] == [
        metric_name(split, h, score) for split, scores in COMPARED_SCORES.items() for h in horizons for score in scores
    ]  # every horizon's scores, recorded and reproduced alike
    assert run(["git", "status", "--porcelain"], repo).stdout == before  # the user's tree is untouched
    assert len(run(["git", "worktree", "list"], repo).stdout.splitlines()) == 1

    # Tamper with the cached real export: reproduction now fails with a readable diff.
    recorded_md5 = yaml.safe_load((repo / f"data/external/{REAL_SAMPLE.name}.dvc").read_text())["outs"][0]["md5"]
    cached = repo / ".dvc/cache/files/md5" / recorded_md5[:2] / recorded_md5[2:]
    os.chmod(cached, 0o644)
    with open(cached, "a") as handle:
        handle.write(f"9999999999,3.0,{REAL_STATION},122,2017-04-18 23:59:59\n")
    failed = run(["bts", "reproduce", f"models:/{NAME}/1"], repo, check=False)
    assert failed.returncode == 1
    altered = dvc_md5(cached)
    assert [line for line in failed.stdout.splitlines() if line.lstrip().startswith("DIFF")] == [
        f"  DIFF data/external/{REAL_SAMPLE.name} (input) recorded {recorded_md5} != reproduced {altered}"
    ]
    assert failed.stdout.rstrip().endswith("verdict: NOT REPRODUCED (see DIFF lines)")
    assert "nothing rebuilt" in failed.stderr and "rebuilding" not in failed.stderr  # found before any stage ran


def test_a_promotion_killed_after_the_alias_moved_is_reported_and_a_rerun_mends_both_cards(own_built_repo: Path) -> None:
    repo = own_built_repo
    bts(["register"], repo)
    bts(["promote", "1", "--to", "champion"], repo)
    set_params(repo, "train", "model", "ridge")
    run(["dvc", "repro"], repo)
    assert "models:/bts-next-reading/2 (@candidate)" in bts(["register"], repo).stdout

    forced = ["bts", "promote", "2", "--to", "champion", "--force", "--reason", "field test"]
    killed = run(forced, repo, check=False, env={"BTS_TEST_KILL_AT": "alias-moved"})
    assert killed.returncode == -9
    cards = {v: json.loads((repo / f"models/cards/{NAME}-{v}.json").read_text())["status"] for v in ("1", "2")}
    assert cards == {"1": ["champion"], "2": ["candidate"]}  # what the kill left: the registry has moved @champion to 2
    check = bts(["runs", "check"], repo, check=False)
    assert check.returncode == 1
    assert "version 1: model card says champion, the registry registered" in check.stdout
    assert "version 2: model card says candidate, the registry candidate, champion" in check.stdout

    again = run(forced, repo)
    assert "already holds @champion" in again.stdout
    cards = {v: json.loads((repo / f"models/cards/{NAME}-{v}.json").read_text())["status"] for v in ("1", "2")}
    assert cards == {"1": ["registered"], "2": ["candidate", "champion"]}
    assert "nothing lost" in bts(["runs", "check"], repo).stdout


def test_a_run_id_prefix_of_eight_characters_names_its_run_and_an_ambiguous_one_lists_the_candidates(own_built_repo: Path) -> None:
    import sqlite3

    repo = own_built_repo
    trained = training_run(repo).info.run_id
    registered = bts(["register", trained[:8]], repo).stdout  # what `bts compare` shows
    assert registered.startswith(f"registered: models:/{NAME}/1 (@candidate) from run {trained};")
    assert bts(["lineage", trained[:8], "--json"], repo).stdout.count(trained) >= 1

    client = store(repo)
    experiment = client.get_experiment_by_name("bts-next-reading").experiment_id
    twins = [client.create_run(experiment).info.run_id for _ in range(2)]
    with sqlite3.connect(repo / "mlflow.db") as db:  # two runs whose ids share their first 8 characters
        for suffix, run_id in zip(("1" * 24, "2" * 24), twins, strict=True):
            db.execute("update runs set run_uuid = ? where run_uuid = ?", (f"abcdef01{suffix}", run_id))
    result = bts(["register", "abcdef01"], repo, check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr == f"bts: error: abcdef01: 2 runs start with it (abcdef01{'1' * 24}, abcdef01{'2' * 24}); give more characters\n"


def test_register_against_a_store_no_run_of_which_trained_the_model_names_the_command_that_fixes_it(own_built_repo: Path) -> None:
    repo = own_built_repo
    other = {"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'other' / 'mlflow.db'}"}  # a store the pipeline never logged to
    (repo / "other").mkdir()
    refused = bts(["register"], repo, check=False, env=other)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    fix = re.search(r"`(dvc repro [^`]+)` trains them again there", refused.stderr)
    assert fix, refused.stderr
    lock = (repo / "dvc.lock").read_bytes()
    run(fix.group(1).split(), repo, env=other)
    assert (repo / "dvc.lock").read_bytes() == lock  # the same weights, package and metrics
    registered = bts(["register"], repo, env=other).stdout
    assert registered.startswith(f"registered: models:/{NAME}/1 (@candidate)")
    assert "model card models/cards/" in registered and f"model card models/cards/{NAME}-1.md" not in registered
