"""Registry, governance, integrity, lineage and reproduction with real dvc, git and MLflow in temporary repositories."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bts.hashing import file_md5
from bts.horizons import label, metric_name
from tests.integration.workspace import bts, commit_all, lineage_json, lock_outs, run, set_params, store, training_run

pytestmark = pytest.mark.integration

NAME = "bts-next-reading"


def registered_file(repo: Path, version: str, name: str) -> Path:
    """A file of a registered version's package, where the local artifact store keeps it."""
    source = store(repo).get_model_version(NAME, version).source
    return Path(source.removeprefix("file://")) / name


@pytest.fixture(scope="module")
def repo(built_repo: Path) -> Path:
    """The pipeline built and committed (commit A) in a fresh repository; the tests of this module build on it in order."""
    assert run(["git", "rev-list", "--count", "HEAD"], built_repo).stdout.strip() == "2"  # the project, then A: its results
    return built_repo


def test_registration_is_explicit_idempotent_and_completes_after_a_kill(repo: Path) -> None:
    client = store(repo)
    assert not client.search_registered_models()  # `dvc repro` registered nothing
    killed = run(["bts", "register"], repo, check=False, env={"BTS_TEST_KILL_AT": "version-created"})
    assert killed.returncode == -9
    version = client.get_model_version(NAME, "1")
    assert version.aliases == [] and "registration.complete" not in version.tags
    check = bts(["runs", "check"], repo, check=False)
    assert check.returncode == 1 and "version 1: registration incomplete" in check.stdout
    assert "registration incomplete" in bts(["lineage", f"models:/{NAME}/1"], repo).stdout

    completed = bts(["register"], repo).stdout
    assert completed.startswith(f"completed an interrupted registration: models:/{NAME}/1 (@candidate)")
    again = bts(["register"], repo).stdout
    assert again.startswith(f"already registered: models:/{NAME}/1 (@candidate)")
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    assert "nothing lost" in bts(["runs", "check"], repo).stdout

    # The version carries the package md5 that dvc.lock records, and the data md5s; its card follows the registry.
    md5s = lock_outs(repo / "dvc.lock")
    version = client.get_model_version(NAME, "1")
    assert version.tags["package.md5"] == md5s["models/package"]
    assert version.tags["data.features_md5"] == md5s["data/processed/features.parquet"]
    assert version.run_id == training_run(repo).info.run_id
    card = json.loads((repo / f"models/cards/{NAME}-1.json").read_text())
    assert card["status"] == ["candidate"] and card["artefact"]["package_md5"] == md5s["models/package"]
    registered = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")
    trained = datetime.fromtimestamp(client.get_run(version.run_id).info.start_time / 1000, UTC).isoformat(timespec="seconds")
    assert (card["time_created"], card["training_run_started"]) == (registered, trained)  # the version's time, then the run's
    metrics = json.loads((repo / "metrics/metrics.json").read_text())  # every station scored, on how many rows
    for split in ("valid", "test"):
        scored = {int(station): scores["rows"] for station, scores in metrics[f"{split}_by_station"].items()}
        assert {row["station_id"]: row[f"{split}_rows"] for row in card["stations_scored"]} == scored
    assert "## Stations scored" in (repo / f"models/cards/{NAME}-1.md").read_text()
    check_scores_per_horizon(repo, client, card, version)
    bts(["promote", "1", "--to", "champion"], repo)
    card = json.loads((repo / f"models/cards/{NAME}-1.json").read_text())
    assert card["status"] == ["candidate", "champion"]
    assert any(a.path.startswith("model_card") for a in client.list_artifacts(version.run_id))


def check_scores_per_horizon(repo: Path, client: object, card: dict, version: object) -> None:
    """The card, the version's description and `bts lineage` give the scores of every horizon the pipeline forecasts, as
    the run logged them and metrics/metrics.json holds them."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    horizons = params["featurize"]["horizons"]
    metrics = client.get_run(version.run_id).data.metrics
    test = json.loads((repo / "metrics/metrics.json").read_text())["test"]
    assert card["horizons"] == horizons and card["interval_coverage"] == params["train"]["interval_coverage"]
    assert [row["horizon"] for row in card["quality_by_horizon"]] == horizons
    for row in card["quality_by_horizon"]:
        assert row["rmse"] == metrics[metric_name("test", row["horizon"], "rmse")] == test[label(row["horizon"])]["rmse"]
        assert 0.8 < row["coverage"] < 1 and row["winkler"] > row["mean_width"] > 0  # the intervals hold about 90% of readings
    by_parameter = json.loads((repo / "metrics/by_parameter.json").read_text())["test_by_parameter"]
    assert {str(row["parameter_id"]): list(row["by_horizon"]) for row in card["quality_by_sensor"]} == {
        pid: [label(h) for h in horizons] for pid in by_parameter
    }
    for row in card["quality_by_sensor"]:
        pid = str(row["parameter_id"])
        assert [row["by_horizon"][label(h)]["skill"] for h in horizons] == [by_parameter[pid][label(h)]["skill"] for h in horizons]
    assert all(list(row["test_skill"]) == [label(h) for h in horizons] for row in card["stations_scored"])
    markdown = (repo / f"models/cards/{NAME}-1.md").read_text()
    table = markdown.split("## Quality by horizon (test split)")[1].split("##")[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("|")][2:]  # after the header and rule
    assert rows == [label(h) for h in horizons]
    shown = ", ".join(f"{label(h)} {test[label(h)]['rmse']:.4g}" for h in horizons)
    assert f"test RMSE {shown}; skill over persistence " in version.description
    assert f"metrics: test RMSE {shown}; skill over persistence " in bts(["lineage", f"models:/{NAME}/1"], repo).stdout


def test_tampered_models_are_refused_before_anything_is_loaded(repo: Path) -> None:
    # (b) a registered version's model.skops swapped for other bytes.
    skops = registered_file(repo, "1", "model.skops")
    original = skops.read_bytes()
    skops.write_bytes(original[:-10] + b"0123456789")
    lineage = bts(["lineage", f"models:/{NAME}@champion"], repo, check=False)
    assert lineage.returncode == 1 and "TAMPERED: model.skops (md5 " in lineage.stdout
    refused = bts(["reproduce", f"models:/{NAME}/1"], repo, check=False)
    assert refused.returncode == 1 and "package TAMPERED: model.skops" in refused.stderr and "nothing was reproduced" in refused.stderr
    refused = bts(["promote", "1", "--to", "production"], repo, check=False)
    assert refused.returncode == 1 and "package TAMPERED: model.skops" in refused.stderr
    verdict = bts(["verify", f"models:/{NAME}@champion"], repo, check=False)  # what to run before stock serving
    assert verdict.returncode == 1 and verdict.stdout.startswith(f"models:/{NAME}@champion: TAMPERED: model.skops (md5 ")
    # The stored MLmodel turned to cloudpickle, which stock `mlflow models serve` would load and run: refused too.
    mlmodel = registered_file(repo, "1", "MLmodel")
    saved_mlmodel = mlmodel.read_bytes()
    mlmodel.write_text(saved_mlmodel.decode().replace("skops", "cloudpickle"))
    skops.write_bytes(original)
    verdict = bts(["verify", f"models:/{NAME}/1"], repo, check=False)
    assert verdict.returncode == 1 and verdict.stdout.startswith(f"models:/{NAME}/1: TAMPERED: "), verdict.stdout
    mlmodel.write_bytes(saved_mlmodel)
    verdict = bts(["verify", f"models:/{NAME}/1"], repo)
    assert verdict.stdout.startswith(f"models:/{NAME}/1: verified: package md5 ") and "the version's package.md5 tag" in verdict.stdout

    # (c) a line of code appended to the package's copy of the library: it would run on load.
    code = repo / "models/package/code/bts/model/forecasters.py"
    code.chmod(0o644)
    with open(code, "a") as handle:
        handle.write("raise SystemExit('code from a tampered package ran')\n")
    lineage = bts(["lineage", "models/package"], repo, check=False)
    assert lineage.returncode == 1 and "TAMPERED: code/bts/model/forecasters.py (md5 " in lineage.stdout
    verdict = bts(["verify", "models/package"], repo, check=False)
    assert verdict.returncode == 1 and "TAMPERED: code/bts/model/forecasters.py (md5 " in verdict.stdout
    refused = bts(["register", "models/package"], repo, check=False)
    assert refused.returncode == 1 and "not registered" in refused.stderr and "tampered package ran" not in refused.stderr
    run(["dvc", "checkout", "--force", "models/package"], repo)

    # (a) the cached model.joblib replaced: `dvc checkout` restores it silently, evaluate and serve refuse to unpickle it.
    md5 = lock_outs(repo / "dvc.lock")["models/model.joblib"]
    cached = repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    saved = cached.read_bytes()
    cached.chmod(0o644)
    cached.write_bytes(saved + b"\x00")
    (repo / "models/model.joblib").unlink()
    run(["dvc", "checkout", "models/model.joblib"], repo)
    for stage in ["evaluate", "serve"]:
        result = run(["dvc", "repro", "--force", "--single-item", stage], repo, check=False)
        assert result.returncode != 0
        expected = (
            f"{stage}: error: models/model.joblib: md5 {file_md5(repo / 'models/model.joblib')} does not match {md5} recorded in dvc.lock"
        )
        assert expected in result.stderr and "Traceback" not in result.stderr
    assert run(["git", "status", "--porcelain", "--", "metrics", "plots", "metadata"], repo).stdout == ""  # last good outputs kept
    cached.write_bytes(saved)
    (repo / "models/model.joblib").unlink()
    run(["dvc", "checkout", "--force"], repo)
    assert "up to date" in run(["dvc", "status"], repo).stdout


def test_the_gate_compares_like_with_like(repo: Path) -> None:
    client = store(repo)
    # A worse model from a DVC experiment on the same data: registered on request, traced to its experiment, refused.
    run(["dvc", "exp", "run", "-S", "train.model=elasticnet", "-S", "train.alpha=1"], repo)
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1  # the experiment registered nothing
    assert bts(["register"], repo).stdout.startswith(f"registered: models:/{NAME}/2 (@candidate)")
    chain = lineage_json(repo, f"models:/{NAME}/2")
    experiment_refs = [r for r in chain["first_commit"]["refs"] if r["kind"] == "dvc-experiment"]
    assert experiment_refs and experiment_refs[0]["name"] == chain["run"]["dvc_experiment"]
    refused = bts(["promote", "2", "--to", "champion"], repo, check=False)
    assert refused.returncode == 1 and "does not beat @champion (version 1) on test.h1.rmse (lower is better)" in refused.stderr
    assert "both scored on features" in refused.stderr
    assert "needs --reason" in bts(["promote", "2", "--to", "champion", "--force"], repo, check=False).stderr

    # A model scored on other data (another test split) cannot be compared on its recorded metrics.
    run(["git", "checkout", "--", "."], repo)
    set_params(repo, "featurize", "test_fraction", 0.2)
    run(["dvc", "repro"], repo)
    assert bts(["register"], repo).stdout.startswith(f"registered: models:/{NAME}/3")
    refused = bts(["promote", "3", "--to", "champion"], repo, check=False)
    assert refused.returncode == 1
    assert "are not comparable; score both on the same data with --evaluate-on" in refused.stderr
    decided = bts(["promote", "3", "--to", "champion", "--evaluate-on", "data/processed/features.parquet"], repo, check=False)
    assert "both scored on data/processed/features.parquet" in decided.stdout + decided.stderr
    bts(["promote", "2", "--to", "champion", "--force", "--reason", "field test on station 42"], repo)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    history = bts(["history"], repo).stdout
    assert "FORCED: field test on station 42" in history and "(was 1" in history
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout", "--force"], repo)


def test_bad_references_and_places_give_one_line(repo: Path, tmp_path: Path) -> None:
    cases = {
        ("promote", "1", "--to", "bad alias!"): "bts: error: alias 'bad alias!': use a lowercase word",
        ("promote", "1", "--to", "latest"): "bts: error: alias 'latest': use a lowercase word",
        ("promote", "99"): f"bts: error: registered model '{NAME}' has no version 99",
        ("promote", "x1"): "bts: error: version 'x1': give a version number",
        ("lineage", "nonsense"): "bts: error: nonsense: not a model reference",
        ("lineage", f"models:/{NAME}/nine"): f"bts: error: models:/{NAME}/nine: version 'nine' is not a number",
        ("lineage", f"models:/{NAME}@nobody"): f"bts: error: models:/{NAME}@nobody: not found in",
        ("lineage", "0" * 32): "bts: error: " + "0" * 32 + ": not found in",
        ("lineage", "0" * 8): "bts: error: 00000000: no run id starts with it in",
        ("lineage", "0" * 7): "bts: error: 0000000: not a model reference",
        ("lineage", "metadata"): "bts: error: metadata: not a model package (no MLmodel file)",
    }
    for args, message in cases.items():
        result = bts(list(args), repo, check=False)
        assert result.returncode == 1, args
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
    broken = tmp_path / "broken"
    shutil.copytree(repo / "models/package", broken)
    (broken / "MLmodel").write_text("flavors: [unclosed\n")
    result = bts(["lineage", str(broken)], repo, check=False)
    assert result.returncode == 1 and "not a readable MLmodel file" in result.stderr and "Traceback" not in result.stderr
    (broken / "MLmodel").write_text("flavors: {}\n")
    result = bts(["lineage", str(broken)], repo, check=False)
    assert "no lineage in the model metadata" in result.stderr

    # From a subfolder the project is found; outside any project, one line and no mlflow.db left behind.
    assert bts(["history"], repo / "src").stdout.startswith(f"alias transitions of {NAME}:")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = bts(["lineage", "models/package"], outside, check=False)
    assert result.returncode == 1 and result.stderr.startswith("bts: error: not inside a BTS project")
    assert list(outside.iterdir()) == []
    piped = run(["bash", "-c", f"bts lineage models:/{NAME}/1 | head -1"], repo)
    assert piped.stdout.startswith("model") and "Traceback" not in piped.stderr


def test_an_earlier_commit_comes_back_with_git_checkout_and_dvc_checkout(repo: Path) -> None:
    """The plain way back to a past result: its commit checked out, `dvc checkout` restores its model, package and
    metrics from the cache, and the pipeline is up to date there. (With no cache, `dvc repro` rebuilds a commit byte for
    byte: the session's build from nothing, test_training, and CI's `make repro` on its clean clone.)"""
    commit_a = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    model_a = lock_outs(repo / "dvc.lock")["models/model.joblib"]
    set_params(repo, "train", "model", "ridge")
    run(["dvc", "repro"], repo)
    commit_all(repo, "B: ridge")
    assert file_md5(repo / "models/model.joblib") != model_a
    run(["git", "checkout", "-q", commit_a], repo)
    restored = run(["dvc", "checkout"], repo)
    assert "Traceback" not in restored.stderr
    assert file_md5(repo / "models/model.joblib") == model_a
    assert "Data and pipelines are up to date." in run(["dvc", "status"], repo).stdout
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    run(["git", "checkout", "-q", "main"], repo)  # back to B for the tests that follow
    run(["dvc", "checkout"], repo)


def test_uncommitted_model_is_reported_as_such(repo: Path) -> None:
    set_params(repo, "train", "model", "elasticnet")  # neither the first commit's model nor the one B committed
    run(["dvc", "repro"], repo)
    chain = lineage_json(repo, "models/package")
    assert chain["uncommitted"] and chain["commits"] == []
    assert chain["run"]["git_dirty"] and chain["run"]["git_commit"]
    assert "uncommitted state" in bts(["lineage", "models/package"], repo).stdout
    refused = bts(["reproduce", "models/package"], repo, check=False)
    assert refused.returncode == 1 and "uncommitted state" in refused.stderr
    run(["git", "checkout", "--", "."], repo)
