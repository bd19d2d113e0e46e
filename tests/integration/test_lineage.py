"""Registry, governance, lineage and reproduction with real dvc, git and MLflow in a temporary repository."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.integration.test_data_pipeline import REAL_SAMPLE, real_export
from tests.integration.workspace import DATASETS, lock_outs, run, set_params, store

pytestmark = pytest.mark.integration

NAME = "bts-next-reading"


def commit_all(repo: Path, message: str) -> str:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)
    return run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


def lineage_json(repo: Path, ref: str) -> dict:
    return json.loads(run(["bts", "lineage", ref, "--json"], repo).stdout)


def test_registry_lineage_promotion_and_past_results(project_repo: Path) -> None:
    repo = project_repo
    run(["dvc", "repro"], repo)
    commit_a = commit_all(repo, "A: default params")
    md5s = lock_outs(repo / "dvc.lock")
    record = json.loads((repo / "models/run.json").read_text())
    registration = json.loads((repo / "models/registration.json").read_text())
    client = store(repo)

    # The registered version and the packaged MLmodel carry the same lineage: run id and dvc.lock's md5s.
    version = client.get_model_version(NAME, registration["version"])
    number = str(version.version)
    assert registration["created"] and version.run_id == record["run_id"]
    assert "candidate" in version.aliases
    packaged = yaml.safe_load((repo / "models/package/MLmodel").read_text())["metadata"]["lineage"]
    for name, path in DATASETS.items():
        assert version.tags[f"data.{name}_md5"] == packaged[f"data.{name}_md5"] == md5s[path]
    assert version.tags["run_id"] == packaged["run_id"] == record["run_id"]
    assert version.tags["model_md5"] == packaged["model_md5"] == md5s["models/model.joblib"]
    card = json.loads((repo / "models/model_card.json").read_text())
    assert card["model_id"] == f"{NAME}/{number}" and card["artefact"]["url"] == f"models:/{NAME}/{number}"
    assert {d["md5"] for d in card["dataset_dependency"]} == {md5s[p] for p in DATASETS.values()}

    # Registering happens only when the packaged model changed.
    run(["dvc", "repro", "--force", "--single-item", "serve"], repo)
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1

    # First promotion, then lineage of the champion names commit A.
    run(["bts", "promote", number, "--to", "champion"], repo)
    chain = lineage_json(repo, f"models:/{NAME}@champion")
    assert commit_a in [c["commit"] for c in chain["commits"]]
    assert not chain["uncommitted"]
    assert chain["datasets"]["raw"]["md5"] == md5s[DATASETS["raw"]] and chain["datasets"]["raw"]["quality"]["completeness"] > 0.99
    assert chain["run"]["run_id"] == record["run_id"] and chain["run"]["machine"]["machine.cores"]
    text = run(["bts", "lineage", "models/package"], repo).stdout
    assert commit_a in text and "branch main" in text

    # A worse model from a DVC experiment: registered as candidate, traced to its experiment ref, refused as champion.
    run(["dvc", "exp", "run", "-S", "train.alpha=1", "-S", "train.l1_ratio=0.8"], repo)
    worse = json.loads((repo / "models/registration.json").read_text())["version"]
    assert worse != number
    chain = lineage_json(repo, f"models:/{NAME}/{worse}")
    experiment_refs = [r for c in chain["commits"] for r in c["refs"] if r["kind"] == "dvc-experiment"]
    assert experiment_refs and experiment_refs[0]["name"] == chain["run"]["dvc_experiment"]
    refused = run(["bts", "promote", worse, "--to", "champion"], repo, check=False)
    assert refused.returncode == 1 and "does not beat @champion" in refused.stderr
    assert "needs --reason" in run(["bts", "promote", worse, "--to", "champion", "--force"], repo, check=False).stderr
    run(["bts", "promote", worse, "--to", "champion", "--force", "--reason", "field test on station 42"], repo)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == worse
    history = run(["bts", "history"], repo).stdout
    assert history.count("@candidate") == 2 and history.count("@champion") == 2
    assert "FORCED: field test on station 42" in history and f"(was {number}" in history

    # B: other params, committed. Checking out A brings back A's model and metrics, and nothing needs rebuilding.
    run(["git", "checkout", "--", "."], repo)
    set_params(repo, "train", "alpha", 0.1)
    run(["dvc", "repro"], repo)
    commit_all(repo, "B: alpha 0.1")
    metrics_b = (repo / "metrics/metrics.json").read_text()
    run(["git", "checkout", "-q", commit_a], repo)
    run(["dvc", "checkout"], repo)
    assert lock_outs(repo / "dvc.lock")["models/model.joblib"] == md5s["models/model.joblib"]
    assert run(["md5sum", "models/model.joblib"], repo).stdout.split()[0] == md5s["models/model.joblib"]
    assert (repo / "metrics/metrics.json").read_text() != metrics_b
    assert "Stage 'train' didn't change" in run(["dvc", "repro"], repo).stdout
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout == ""


def test_uncommitted_model_is_reported_as_such(project_repo: Path) -> None:
    set_params(project_repo, "train", "alpha", 0.05)
    run(["dvc", "repro"], project_repo)
    chain = lineage_json(project_repo, "models/package")
    assert chain["uncommitted"] and chain["commits"] == []
    assert chain["git"]["dirty"] and chain["git"]["base_commit"]
    assert "uncommitted state" in run(["bts", "lineage", "models/package"], project_repo).stdout
    refused = run(["bts", "reproduce", "models/package"], project_repo, check=False)
    assert refused.returncode == 1 and "uncommitted state" in refused.stderr


def test_reproduce_matches_and_detects_tampered_data(project_repo: Path, tmp_path: Path) -> None:
    repo = project_repo
    export = repo / "data/external" / REAL_SAMPLE.name
    shutil.copy(real_export(tmp_path), export)
    run(["dvc", "add", str(export.relative_to(repo))], repo)
    set_params(repo, "data", "sources", ["simulated", f"data/external/{REAL_SAMPLE.name}"])
    run(["dvc", "repro"], repo)
    commit_all(repo, "A: with a real export")
    version = json.loads((repo / "models/registration.json").read_text())["version"]
    set_params(repo, "train", "alpha", 0.1)
    run(["dvc", "repro"], repo)
    commit_all(repo, "B: alpha 0.1")

    before = run(["git", "status", "--porcelain"], repo).stdout
    verdict = run(["bts", "reproduce", f"models:/{NAME}/{version}"], repo)
    assert "verdict: REPRODUCED" in verdict.stdout and "DIFF" not in verdict.stdout
    assert run(["git", "status", "--porcelain"], repo).stdout == before  # the user's tree is untouched
    assert "worktree" not in run(["git", "worktree", "list"], repo).stdout.split("\n", 1)[-1]

    # Tamper with the cached real export: reproduction now fails with a readable diff.
    dvc_md5 = yaml.safe_load((repo / f"data/external/{REAL_SAMPLE.name}.dvc").read_text())["outs"][0]["md5"]
    cached = repo / ".dvc/cache/files/md5" / dvc_md5[:2] / dvc_md5[2:]
    os.chmod(cached, 0o644)
    with open(cached, "a") as handle:
        handle.write("9999999999,3.0,1161114004,122,2017-04-18 23:59:59\n")
    failed = run(["bts", "reproduce", f"models:/{NAME}/{version}"], repo, check=False)
    assert failed.returncode == 1
    assert "DIFF data.raw_md5" in failed.stdout and "verdict: NOT REPRODUCED" in failed.stdout
