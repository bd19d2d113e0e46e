"""Dataset metadata: DVC md5s, deterministic documents and datasheets."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from bts.data.metadata import coverage, dataset_document, render_datasheet, series_gaps
from bts.hashing import dvc_md5, file_md5

EXPORT = "id,value,station_id,parameter_id,reading_time\n5651437088,1.0,1161114004,122,2017-04-18 00:24:19\n"


def test_dvc_md5_of_a_file_is_its_plain_md5(tmp_path):
    path = tmp_path / "raw.csv"
    path.write_bytes(EXPORT.encode() + bytes(range(256)) + b"\r\n")  # binary and CRLF bytes are hashed as they are
    expected = hashlib.md5(path.read_bytes()).hexdigest()
    assert dvc_md5(path) == expected
    assert file_md5(path) == expected


def test_dvc_md5_of_a_file_larger_than_one_read_block(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom((1 << 20) + 123))
    assert dvc_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "simulated"
    (root / "sub").mkdir(parents=True)
    (root / "param-2017-04-18.csv").write_text(EXPORT)
    (root / "sub" / "param-2017-04-19.csv").write_text(EXPORT.replace("00:24:19", "00:24:20"))
    return root


def test_dvc_md5_of_a_folder_is_the_md5_of_its_dir_listing(folder):
    """DVC's .dir object: a JSON list of {md5, relpath}, sorted by relpath."""
    listing = [
        {"md5": hashlib.md5((folder / name).read_bytes()).hexdigest(), "relpath": name}
        for name in ["param-2017-04-18.csv", "sub/param-2017-04-19.csv"]
    ]
    expected = hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"
    assert dvc_md5(folder) == expected


def test_dvc_md5_of_a_folder_ends_with_dir_and_is_stable(folder):
    md5 = dvc_md5(folder)
    assert md5.endswith(".dir")
    assert len(md5.removesuffix(".dir")) == 32
    os.utime(folder / "param-2017-04-18.csv", (0, 0))  # timestamps are not content
    assert dvc_md5(folder) == md5


@pytest.mark.parametrize("change", ["edit", "add", "rename", "remove"])
def test_dvc_md5_of_a_folder_changes_when_a_file_changes(change, folder):
    before = dvc_md5(folder)
    target = folder / "param-2017-04-18.csv"
    if change == "edit":
        target.write_text(EXPORT.replace("1.0", "1.5"))
    elif change == "add":
        (folder / "param-2017-04-20.csv").write_text(EXPORT)
    elif change == "rename":
        target.rename(folder / "param-2017-04-17.csv")
    else:
        target.unlink()
    assert dvc_md5(folder) != before


def clean_readings_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "station_id": [1161114004, 1161114004, 1161114004, 1161114005],
            "parameter_id": [122, 122, 122, 111],
            "reading_time": pd.to_datetime(["2017-04-18 00:00:00", "2017-04-18 00:10:00", "2017-04-18 01:00:00", "2017-04-18 00:05:00"]),
            "value": [1.0, 1.5, 2.0, 25.0],
        }
    )


def make_document(path: Path, catalogue, schema_path: Path | None = None) -> dict:
    frame = clean_readings_frame()
    return dataset_document(
        dataset_id="bts-clean",
        name="BTS clean readings",
        description="Readings that pass every cleaning rule.",
        path=path,
        rows=len(frame),
        coverage_fields=coverage(frame, catalogue, frame["reading_time"]),
        quality={"completeness": 1.0, "gaps": series_gaps(frame, 30.0)},
        dependencies=[{"dataset_id": "bts-raw", "path": "raw.parquet", "md5": "0" * 32, "relationship": "input"}],
        stage="clean",
        params={"clean": {"gap_threshold_minutes": 30}},
        schema_path=schema_path,
        extra={"row_accounting": {"rows_in": 5, "rows_out": 4, "rows_quarantined": 1}},
    )


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "clean.parquet"
    clean_readings_frame().to_parquet(path, index=False)
    return path


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "clean.yaml"
    path.write_text("schema_type: dataframe\nname: bts_clean_readings\n")
    return path


def as_text(document: dict) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def test_dataset_document_is_deterministic(data_file, schema_file, catalogue):
    first = as_text(make_document(data_file, catalogue, schema_file))
    os.utime(data_file, (0, 0))  # neither the clock nor file times may leak in
    second = as_text(make_document(data_file, catalogue, schema_file))
    assert first == second


def test_dataset_document_version_is_the_dvc_md5_of_the_data(data_file, schema_file, catalogue):
    document = make_document(data_file, catalogue, schema_file)
    md5 = hashlib.md5(data_file.read_bytes()).hexdigest()
    assert document["version"] == document["dvc"]["md5"] == md5
    assert document["schema"]["md5"] == hashlib.md5(schema_file.read_bytes()).hexdigest()
    assert document["size"]["bytes"] == data_file.stat().st_size
    assert document["data_type"] == "tabular time series (Apache Parquet)"
    data_file.write_bytes(data_file.read_bytes() + b"\n")
    assert make_document(data_file, catalogue, schema_file)["version"] != md5


def test_dataset_document_coverage_comes_from_the_data(data_file, catalogue):
    document = make_document(data_file, catalogue)
    assert document["time_range"] == {"first": "2017-04-18T00:00:00Z", "last": "2017-04-18T01:00:00Z"}
    assert document["created_time"] == "2017-04-18T00:00:00Z"
    assert document["last_modified_time"] == "2017-04-18T01:00:00Z"
    assert document["stations"] == [1161114004, 1161114005]
    assert document["parameters"] == [
        {"parameter_id": 111, "name": "Room temperature", "unit": "degC", "rows": 1},
        {"parameter_id": 122, "name": "Load of power grid", "unit": "A", "rows": 3},
    ]
    assert document["quality_of_data"]["gaps"] == {"threshold_minutes": 30.0, "gaps_over_threshold": 1, "longest_gap_minutes": 50.0}
    assert document["schema"] is None


def test_dataset_document_of_a_folder_uses_its_dir_md5(folder, catalogue):
    document = make_document(folder, catalogue)
    assert document["version"] == dvc_md5(folder)
    assert document["version"].endswith(".dir")
    assert document["size"]["bytes"] == sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_render_datasheet_contains_the_md5_and_headline_fields(data_file, schema_file, catalogue):
    document = make_document(data_file, catalogue, schema_file)
    sheet = render_datasheet(document)
    assert sheet.startswith("# BTS clean readings\n")
    assert f"| version | {document['version']} |" in sheet
    assert f"md5 `{document['dvc']['md5']}`" in sheet
    assert f"md5 `{document['schema']['md5']}`" in sheet
    assert "| 122 | Load of power grid | A | 3 |" in sheet
    assert "## Row accounting" in sheet
    assert sheet == render_datasheet(make_document(data_file, catalogue, schema_file))
