"""`dvc repro` of the data stages in a temporary git repository: determinism, metadata, real exports, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.workspace import DATASETS, PROJECT, as_first_committed, lock_outs, run, set_params

DATA_STAGES = ["simulate", "ingest", "clean", "featurize"]
REAL_SAMPLE = PROJECT.parent / "shared" / "data" / "bts" / "param-2017-04-18-station-1161114004.csv"
REAL_STATION = 1161114004

pytestmark = pytest.mark.integration


def metadata_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "metadata").rglob("*")) if p.is_file()}


def real_export(tmp_path: Path) -> Path:
    """The real sample when it is beside the project; otherwise a small export in the same format."""
    if REAL_SAMPLE.exists():
        return REAL_SAMPLE
    path = tmp_path / REAL_SAMPLE.name
    rows = [f"{5651437088 + i},{10 + (i % 7) * 1.5},{REAL_STATION},122,2017-04-18 00:{i // 60:02d}:{i % 60:02d}" for i in range(600)]
    path.write_text("id,value,station_id,parameter_id,reading_time\n" + "\n".join(rows) + "\n")
    return path


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


@pytest.mark.parametrize("with_simulated", [True, False], ids=["beside-simulated", "alone"])
def test_real_export_flows_through_every_stage(project_repo: Path, tmp_path: Path, with_simulated: bool) -> None:
    export = project_repo / "data/external" / REAL_SAMPLE.name
    shutil.copy(real_export(tmp_path), export)
    run(["dvc", "add", str(export.relative_to(project_repo))], project_repo)
    sources = ["simulated"] if with_simulated else []
    set_params(project_repo, "data", "sources", [*sources, f"data/external/{REAL_SAMPLE.name}"])
    if with_simulated:  # the model learns the simulated stations alone and forecasts the real one it never saw
        set_params(project_repo, "featurize", "holdout_stations", [REAL_STATION])
    run(["dvc", "repro"], project_repo)
    metrics = json.loads((project_repo / "metrics/metrics.json").read_text())
    if with_simulated:  # the default model beats persistence on the real station held out
        assert metrics["holdout_by_station"][str(REAL_STATION)]["skill"] > 0
        assert metrics["holdout"]["worst_station_skill"] == metrics["holdout"]["skill"] > 0
    else:  # trained on the real export alone, it beats persistence on the export's own test split
        assert list(metrics["test_by_station"]) == [str(REAL_STATION)]
        assert metrics["test"]["skill"] > 0
    for name in ["raw", "clean", "features"]:
        document = json.loads((project_repo / f"metadata/datasets/{name}.json").read_text())
        assert REAL_STATION in document["stations"], name
        assert (len(document["stations"]) > 1) == with_simulated
    raw = json.loads((project_repo / "metadata/datasets/raw.json").read_text())
    real_dependency = [d for d in raw["dataset_dependency"] if d["path"].endswith(REAL_SAMPLE.name)]
    dvc_file = (project_repo / f"data/external/{REAL_SAMPLE.name}.dvc").read_text()
    assert real_dependency and real_dependency[0]["md5"] in dvc_file


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
