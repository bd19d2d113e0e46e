"""benchmarks/experiments_overhead.py: the bare project it measures DVC's floor on has this pipeline's stage graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from experiments_overhead import PARAM, REPO, mirror_files

ENTRIES = ("deps", "params", "outs", "metrics", "plots")


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("floor")
    mirror_files(REPO, folder)
    return folder


def stages(folder: Path) -> dict[str, dict]:
    return yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]


def test_the_floor_has_the_projects_stages_with_the_same_deps_params_and_outs(floor: Path):
    project, mirrored = stages(REPO), stages(floor)
    assert list(mirrored) == list(project)
    for name, stage in project.items():
        assert {entry: mirrored[name].get(entry) for entry in ENTRIES} == {entry: stage.get(entry) for entry in ENTRIES}
        assert mirrored[name]["cmd"] != stage["cmd"]
    assert yaml.safe_load((floor / "dvc.yaml").read_text())["plots"] == yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]


def test_the_floor_params_hold_the_values_dvc_lock_records_and_the_varied_one(floor: Path):
    params = yaml.safe_load((floor / "params.yaml").read_text())
    project = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage in yaml.safe_load((REPO / "dvc.lock").read_text())["stages"].values():
        for key in stage.get("params", {}).get("params.yaml", {}):
            mirrored, original = params, project
            for part in key.split("."):
                mirrored, original = mirrored[part], original[part]
            assert mirrored == original
    node = params
    for part in PARAM.split("."):
        node = node[part]
    assert isinstance(node, float)


def test_each_source_dependency_is_a_small_file_or_a_folder_of_as_many_files_as_the_lock_counts(floor: Path):
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    made = {out["path"] for stage in locked.values() for out in stage["outs"]}
    for stage in locked.values():
        for dep in stage["deps"]:
            path = floor / dep["path"]
            if dep["path"] in made:
                continue
            if "nfiles" in dep:
                assert sum(1 for p in path.rglob("*") if p.is_file()) == dep["nfiles"], dep["path"]
            else:
                assert path.is_file() and path.stat().st_size < 100, dep["path"]


def test_each_stage_command_writes_every_output_small_and_metrics_as_json(floor: Path):
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    for name, stage in stages(floor).items():
        subprocess.run(stage["cmd"], shell=True, cwd=floor, check=True)
        for out in locked[name]["outs"]:
            path = floor / out["path"]
            files = [p for p in path.rglob("*") if p.is_file()] if "nfiles" in out else [path]
            assert len(files) == out.get("nfiles", 1), out["path"]
            assert all(0 < f.stat().st_size < 100 for f in files), out["path"]
        for metric in stage.get("metrics", []):
            (path,) = metric if isinstance(metric, dict) else [metric]
            assert json.loads((floor / path).read_text())["path"] == path


def test_a_stage_output_changes_with_the_params_as_the_projects_do(tmp_path: Path):
    mirror_files(REPO, tmp_path)
    train = stages(tmp_path)["train"]["cmd"]
    subprocess.run(train, shell=True, cwd=tmp_path, check=True)
    before = (tmp_path / "models/model.joblib").read_text()
    params = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("learning_rate: 0.1", "learning_rate: 0.2"))
    subprocess.run(train, shell=True, cwd=tmp_path, check=True)
    assert (tmp_path / "models/model.joblib").read_text() != before
