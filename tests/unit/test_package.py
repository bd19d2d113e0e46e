"""The packaged model: same model, same bytes; every file checked against the manifest before anything is loaded."""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from skops.io import dumps, loads

from bts.hashing import dvc_md5, file_md5
from bts.model.forecasters import build_model, skops_trusted_types
from bts.model.package import (
    PACKAGE_REQUIREMENTS,
    IntegrityError,
    build_package,
    library_path,
    load_package,
    load_workspace_model,
    normalize_skops,
    tampered_files,
    verify_package,
)
from bts.params import load_params

PROJECT = Path(__file__).resolve().parents[2]
COLUMNS = [f"lag_{k}" for k in range(1, 7)] + [f"gap_{k}_seconds" for k in range(1, 6)] + ["hour_sin", "hour_cos", "day_of_week"]
LINEAGE = {"model_md5": "0123456789abcdef0123456789abcdef", "params_md5": "p", "code_md5": "c", "data.features_md5": "f"}


@pytest.fixture(scope="module")
def model():
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(300, len(COLUMNS))), columns=COLUMNS)
    targets = np.column_stack([frame["lag_1"] * 0.9 + 0.1, frame["lag_1"] * 0.8])
    model = build_model(load_params(PROJECT / "params.yaml").train, [1, 3]).fit(frame, targets).calibrate(frame, targets)
    return model, frame


def package(model, folder: Path) -> str:
    fitted, frame = model
    return build_package(
        fitted,
        folder,
        example=frame.head(3),
        lineage=LINEAGE,
        feature_columns=COLUMNS,
        pip_requirements=PACKAGE_REQUIREMENTS,
        trusted_types=skops_trusted_types(fitted),
        library=library_path(),
    )


def test_normalized_skops_bytes_are_stable_and_load_the_same_model(model) -> None:
    fitted, frame = model
    first, second = normalize_skops(dumps(fitted)), normalize_skops(dumps(fitted))
    assert first == second
    assert {info.date_time for info in zipfile.ZipFile(io.BytesIO(first)).infolist()} == {(1980, 1, 1, 0, 0, 0)}
    back = loads(first, trusted=skops_trusted_types(fitted))
    pd.testing.assert_frame_equal(back.predict(frame), fitted.predict(frame), check_exact=True)


def test_the_same_model_packages_to_the_same_bytes(model, tmp_path: Path) -> None:
    first, second = package(model, tmp_path / "a"), package(model, tmp_path / "b")
    assert first == second == dvc_md5(tmp_path / "a")
    described = yaml.safe_load((tmp_path / "a" / "MLmodel").read_text())
    assert described["utc_time_created"] == "1970-01-01 00:00:00.000000"
    assert described["metadata"]["lineage"] == LINEAGE
    manifest = described["metadata"]["manifest"]
    assert "MLmodel" not in manifest and manifest["model.skops"] == file_md5(tmp_path / "a" / "model.skops")
    assert sorted(p for p in manifest if p.startswith("code/")) == [
        "code/bts/__init__.py",
        "code/bts/horizons.py",
        "code/bts/model/__init__.py",
        "code/bts/model/forecasters.py",
    ]
    assert not list((tmp_path / "a").rglob("__pycache__"))
    assert verify_package(tmp_path / "a", first)["lineage"] == LINEAGE


def test_every_kind_of_tampering_is_named(model, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    md5 = package(model, folder)
    assert tampered_files(folder, md5) == []
    (folder / "code/bts/model/forecasters.py").write_text("raise SystemExit('tampered code ran')\n")
    (folder / "extra.py").write_text("print('planted')\n")
    (folder / "input_example.json").unlink()
    problems = tampered_files(folder, md5)
    assert problems[0] == "input_example.json (missing)"
    assert problems[1] == "extra.py (not in the manifest)"
    assert problems[2].startswith("code/bts/model/forecasters.py (md5 ")
    with pytest.raises(IntegrityError, match=re.escape("TAMPERED: input_example.json (missing)")):
        load_package(folder, md5)  # refused before MLflow imports the planted code


def test_a_changed_mlmodel_is_caught_by_the_package_md5(model, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    md5 = package(model, folder)
    mlmodel = folder / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("predict_fn: predict", "predict_fn: predict_proba"))
    assert tampered_files(folder) == []  # the manifest cannot cover the file that holds it ...
    assert tampered_files(folder, md5)[0].startswith("MLmodel (package md5 ")  # ... the recorded package md5 does


def test_a_workspace_model_is_unpickled_only_when_dvc_lock_records_its_md5(model, tmp_path: Path) -> None:
    import joblib

    fitted, _ = model
    path = tmp_path / "models/model.joblib"
    path.parent.mkdir()
    joblib.dump(fitted, path)
    lock = tmp_path / "dvc.lock"
    lock.write_text(f"schema: '2.0'\nstages:\n  train:\n    outs:\n    - path: models/model.joblib\n      md5: {file_md5(path)}\n")
    recorded = file_md5(path)
    pd.testing.assert_frame_equal(load_workspace_model(path, lock).predict(model[1]), fitted.predict(model[1]), check_exact=True)
    with open(path, "ab") as handle:
        handle.write(b"\x00")
    message = f"md5 {file_md5(path)} does not match {recorded} recorded in dvc.lock; refusing to load it"
    with pytest.raises(IntegrityError, match=re.escape(message)):
        load_workspace_model(path, lock)
    lock.write_text("schema: '2.0'\nstages: {}\n")
    with pytest.raises(IntegrityError, match="no md5 recorded for it"):
        load_workspace_model(path, lock)


def test_code_md5_follows_the_training_code_dvc_yaml_lists_and_nothing_else(tmp_path: Path) -> None:
    from bts.project import code_deps, code_md5

    shutil.copy(PROJECT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(PROJECT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    assert "src/stages/train.py" in code_deps(tmp_path) and "src/bts/model" in code_deps(tmp_path)
    recorded = code_md5(tmp_path)
    assert recorded == code_md5(PROJECT) == code_md5(library_path().parents[1])
    with open(tmp_path / "src" / "bts" / "cli.py", "a") as handle:  # a command's module: not training code
        handle.write("# edited\n")
    assert code_md5(tmp_path) == recorded
    with open(tmp_path / "src" / "bts" / "model" / "profile.py", "a") as handle:
        handle.write("# edited\n")
    assert code_md5(tmp_path) != recorded
