"""`dvc repro` of the data stages in a temporary git repository: determinism, metadata, real exports, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import REAL_SAMPLE, REAL_STATION, track_real_sample
from tests.integration.workspace import DATASETS, as_first_committed, lock_outs, run, set_params

DATA_STAGES = ["simulate", "ingest", "clean", "featurize"]

pytestmark = pytest.mark.integration


def metadata_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "metadata").rglob("*")) if p.is_file()}


def test_repro_from_nothing_reproduces_committed_data_versions(built_repo: Path) -> None:
    project_repo = built_repo  # the session's one build from nothing, copied
    assert "up to date" in run(["dvc", "status"], project_repo).stdout
    # Same code and params give the data versions the committed dvc.lock holds, and the same metadata bytes.
    # (the project's, on the simulated defaults: make_project_repo's commit, before any stage ran)
    committed = lock_outs(project_repo / "dvc.lock", DATA_STAGES, text=as_first_committed(project_repo, "dvc.lock")["dvc.lock"].decode())
    assert lock_outs(project_repo / "dvc.lock", DATA_STAGES) == committed
    assert metadata_files(project_repo) == as_first_committed(project_repo, "metadata")
    for name, path in DATASETS.items():
        document = json.loads((project_repo / f"metadata/datasets/{name}.json").read_text())
        assert document["dvc"] == {"path": path, "md5": committed[path]}
        assert document["version"] == committed[path]
    clean = json.loads((project_repo / "metadata/datasets/clean.json").read_text())
    accounting = clean["row_accounting"]
    assert accounting["rows_in"] == accounting["rows_out"] + accounting["rows_quarantined"]
    assert accounting["rows_quarantined"] == sum(accounting["quarantined_by_reason"].values()) > 0

    # A forced second run of the data stages from scratch gives identical md5s for every output.
    for folder in ["data/raw/simulated", "data/interim", "data/processed"]:
        shutil.rmtree(project_repo / folder)
    run(["dvc", "repro", "--force", DATA_STAGES[-1]], project_repo)
    assert lock_outs(project_repo / "dvc.lock", DATA_STAGES) == committed


def assert_real_station_flowed(repo: Path, with_simulated: bool) -> None:
    """The real station is in every dataset's metadata (with the simulated ones or alone), and raw's dependencies name
    its export with the md5 of its .dvc file."""
    for name in ["raw", "clean", "features"]:
        document = json.loads((repo / f"metadata/datasets/{name}.json").read_text())
        assert REAL_STATION in document["stations"], name
        assert (len(document["stations"]) > 1) == with_simulated
    raw = json.loads((repo / "metadata/datasets/raw.json").read_text())
    real_dependency = [d for d in raw["dataset_dependency"] if d["path"].endswith(REAL_SAMPLE.name)]
    dvc_file = (repo / f"data/external/{REAL_SAMPLE.name}.dvc").read_text()
    assert real_dependency and real_dependency[0]["md5"] in dvc_file


def test_a_real_export_beside_the_simulated_stations_is_forecast_on_its_held_out_station(real_export_build: Path) -> None:
    """The session's build with the real sample beside the simulated stations, its station held out (read, not changed)."""
    metrics = json.loads((real_export_build / "metrics/metrics.json").read_text())
    for horizon in ("h1", "h5", "h15"):  # at every horizon the default model beats persistence on it, and its 90% intervals hold
        station = metrics["holdout_by_station"][str(REAL_STATION)][horizon]
        assert station["skill"] > 0, horizon
        assert 0.85 <= station["coverage"] <= 0.95, horizon
        assert metrics["holdout"][horizon]["worst_station_skill"] == metrics["holdout"][horizon]["skill"] == station["skill"]
    assert_real_station_flowed(real_export_build, with_simulated=True)


def test_a_real_export_alone_flows_through_every_stage(project_repo: Path) -> None:
    """Trained on the real export alone, the model beats persistence on the export's own test split."""
    set_params(project_repo, "data", "sources", [track_real_sample(project_repo)])
    run(["dvc", "repro"], project_repo)
    metrics = json.loads((project_repo / "metrics/metrics.json").read_text())
    assert list(metrics["test_by_station"]) == [str(REAL_STATION)]
    assert all(metrics["test"][horizon]["skill"] > 0 for horizon in ("h1", "h5", "h15")), metrics["test"]
    assert_real_station_flowed(project_repo, with_simulated=False)


def test_bad_export_stops_repro_without_outputs(project_repo: Path) -> None:
    bad = project_repo / "data/external/alarms.csv"
    bad.write_text("id;alarm_id;station_id\n1;2;3\n")
    set_params(project_repo, "data", "sources", ["simulated", "data/external/alarms.csv"])
    result = run(["dvc", "repro"], project_repo, check=False)
    assert result.returncode != 0
    assert "ingest: error: data/external/alarms.csv: wrong delimiter ';' in header (expected ',')" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project_repo / "data/interim/raw.parquet").exists()
    assert "ingest" in run(["dvc", "status", "ingest"], project_repo).stdout
