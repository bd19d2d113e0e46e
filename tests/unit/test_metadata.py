"""Dataset metadata: DVC md5s, deterministic documents and datasheets."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bts.data.metadata import UNDEFINED, coverage, dataset_document, render_datasheet, series_gaps
from bts.hashing import dvc_md5, file_md5
from tests.conftest import PROJECT

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


def sheet_document(**changes) -> dict:
    """A metadata document as the stages write it, without files behind it (render_datasheet reads only the document)."""
    document = {
        "dataset_id": "bts-features",
        "name": "BTS features",
        "version": "7e77062274bfb15c16bae1b0d0b08e38",
        "url": "data/processed/features.parquet",
        "provider": "BTS monitoring system parameter exports (simulated and/or real, see sources)",
        "description": "Per-series examples.",
        "size": {"value": 4.202, "unit": "MB", "bytes": 4201640, "rows": 3},
        "data_type": "tabular time series (Apache Parquet)",
        "dataset_dependency": [
            {
                "dataset_id": "bts-clean",
                "path": "data/interim/clean.parquet",
                "md5": "8d3a052bb37a06394c83f85ea8979a55",
                "relationship": "input",
            }
        ],
        "quality_of_data": {"completeness": 1.0, "validity": 1.0, "uniqueness": 1.0, "label_ratio": 0.999315},
        "created_time": "2017-04-18T00:00:36Z",
        "last_modified_time": "2017-04-21T23:59:58Z",
        "dvc": {"path": "data/processed/features.parquet", "md5": "7e77062274bfb15c16bae1b0d0b08e38"},
        "rows": 3,
        "time_range": {"first": "2017-04-18T00:00:36Z", "last": "2017-04-21T23:59:58Z"},
        "stations": [1161114011],
        "parameters": [{"parameter_id": 111, "name": "Room temperature", "unit": "degC", "rows": 3}],
        "schema": None,
        "produced_by": {"stage": "featurize", "params": {"featurize": {"n_lags": 6, "holdout_stations": []}}},
        "feature_columns": ["lag_1", "gap_1_seconds"],
        "target_columns": ["target_h1", "target_h5"],
        "splits": {
            "test": {"first_target": "2017-04-21 09:59:05", "last_target": "2017-04-21 23:59:59", "examples": 1},
            "train": {"first_target": "2017-04-18 00:01:40", "last_target": "2017-04-20 18:22:47", "examples": 1},
            "valid": {"first_target": "2017-04-20 18:22:52", "last_target": "2017-04-21 09:58:55", "examples": 1},
        },
        "row_accounting": {"readings_in": 5, "examples_out": 3, "examples_by_split": {"train": 1, "valid": 1, "test": 1, "holdout": 0}},
    }
    document.update(changes)
    return document


def section(sheet: str, title: str) -> list[str]:
    """The lines of one `## title` section, without its heading and the blank lines around it."""
    lines = sheet.split(f"\n## {title}\n\n", 1)[1].split("\n## ", 1)[0]
    return lines.strip("\n").split("\n")


def test_datasheet_defines_each_quality_measure_of_its_stage():
    assert section(render_datasheet(sheet_document()), "Quality") == [
        "Shares run from 0 to 1 (1 = every row or cell); counts are marked as such.",
        "",
        "| measure | value | what it means |",
        "| --- | --- | --- |",
        "| completeness | 1.0 | share of the feature cells (every feature column, every example) that hold a value |",
        "| validity | 1.0 | not measured here: 1 because every example is built from clean readings, which pass the clean schema |",
        "| uniqueness | 1.0 | not measured here: 1 because each example comes from one clean reading (unique by id) |",
        "| label_ratio | 0.999315 | examples / clean readings in: the share of readings that became an example with a target; "
        "the rest lack a full history or a reading ahead (see Row accounting) |",
    ]


def test_datasheet_explains_the_raw_label_ratio_and_links_the_failure_report():
    raw = sheet_document(
        dataset_id="bts-raw",
        rows=176579,
        quality_of_data={"label_ratio": 0.997922, "failing_rows": 2341, "novel": 0.5},
        produced_by={"stage": "ingest", "params": {"data.sources": ["simulated", "data/external/a|b.csv"]}},
        failure_report="metadata/datasets/raw_failures.json",
    )
    for key in ["feature_columns", "target_columns", "splits", "row_accounting"]:
        del raw[key]
    sheet = render_datasheet(raw)
    assert section(sheet, "Quality")[4:] == [
        "| label_ratio | 0.997922 | share of rows whose value (the reading a model learns to forecast) is a number; an empty or "
        'non-numeric value is no label (the 999999 "not set" sentinel still counts as one) |',
        "| failing_rows | 2341 | rows that fail at least one check of the raw schema (a count, not a share) |",
        "| novel | 0.5 | not defined for this stage in bts.data.metadata.QUALITY_MEANINGS |",
    ]
    assert section(sheet, "Failure report") == [
        "The rows that fail the raw schema, counted per column and check with sample rows, are in "
        "`metadata/datasets/raw_failures.json` (path from the repository root). 2341 of the 176579 rows fail at least one check."
    ]
    assert "  - `data.sources` = simulated, data/external/a\\|b.csv" in section(sheet, "Lineage")  # a pipe cannot break a line


def test_datasheet_flattens_nested_quality_into_defined_rows():
    gaps = {"threshold_minutes": 30.0, "gaps_over_threshold": 8, "longest_gap_minutes": 186.72}
    clean = sheet_document(quality_of_data={"kept_ratio": 0.992632, "gaps": gaps}, produced_by={"stage": "clean", "params": {}})
    assert section(render_datasheet(clean), "Quality")[4:] == [
        "| kept_ratio | 0.992632 | rows kept / raw rows in; the rest are quarantined, by reason under Row accounting |",
        "| gaps.threshold_minutes | 30.0 | a silence longer than this between two consecutive readings of one series "
        "(station and parameter) counts as a gap (param clean.gap_threshold_minutes) |",
        "| gaps.gaps_over_threshold | 8 | silences longer than the threshold, over every series (a count) |",
        "| gaps.longest_gap_minutes | 186.72 | longest silence in any series, in minutes |",
    ]


def test_datasheet_writes_splits_in_time_order_and_every_time_in_iso_form():
    sheet = render_datasheet(sheet_document())
    assert section(sheet, "Splits") == [
        "Each station's examples are split in time order of their target (the reading forecast), the newest in test, so every "
        "station is scored; examples of featurize.holdout_stations form the holdout split:",
        "",
        "| split | first target time | last target time | examples |",
        "| --- | --- | --- | --- |",
        "| train | 2017-04-18T00:01:40Z | 2017-04-20T18:22:47Z | 1 |",
        "| valid | 2017-04-20T18:22:52Z | 2017-04-21T09:58:55Z | 1 |",
        "| test | 2017-04-21T09:59:05Z | 2017-04-21T23:59:59Z | 1 |",
    ]
    assert "| created_time | 2017-04-18T00:00:36Z | time of the first reading in the data (not when the file was written) |" in sheet
    assert not re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", sheet)


def test_datasheet_renders_nested_values_as_tables_and_lists_never_json():
    sheet = render_datasheet(sheet_document())
    assert section(sheet, "Row accounting") == [
        "| item | value |",
        "| --- | --- |",
        "| readings_in | 5 |",
        "| examples_out | 3 |",
        "",
        "**Examples by split**",
        "",
        "| item | value |",
        "| --- | --- |",
        "| train | 1 |",
        "| valid | 1 |",
        "| test | 1 |",
        "| holdout | 0 |",
    ]
    assert section(sheet, "Feature columns") == ["2 columns, in the order the model takes them: `lag_1`, `gap_1_seconds`."]
    assert section(sheet, "Target columns") == [
        "The columns the model forecasts, one per horizon (the reading that many steps ahead): `target_h1`, `target_h5`."
    ]
    assert section(sheet, "Lineage") == [
        "- Data: `data/processed/features.parquet`, DVC md5 `7e77062274bfb15c16bae1b0d0b08e38`",
        "- Produced by stage `featurize` with params:",
        "  - `featurize.n_lags` = 6",
        "  - `featurize.holdout_stations` = none",
        "- Depends on `bts-clean` (input): `data/interim/clean.parquet`, DVC md5 `8d3a052bb37a06394c83f85ea8979a55`",
    ]
    for json_mark in ["```", "{", "}", '"test"']:
        assert json_mark not in sheet


def test_datasheet_renders_an_unknown_section_without_json():
    notes = {"checks": [{"column": "value", "failing_rows": 3}], "tags": ["a", "b"], "empty": {}}
    sheet = render_datasheet(sheet_document(extra_notes=notes))
    assert section(sheet, "Extra notes") == [
        "| item | value |",
        "| --- | --- |",
        "| tags | a, b |",
        "| empty | none |",
        "",
        "**Checks**",
        "",
        "| column | failing_rows |",
        "| --- | --- |",
        "| value | 3 |",
    ]


def test_datasheet_quarantine_is_a_sentence_with_path_and_md5():
    clean = sheet_document(
        row_accounting={"rows_in": 5, "rows_out": 4, "rows_quarantined": 1},
        quarantine={"path": "data/interim/quarantine.parquet", "md5": "c56193c6586098d166d182dd03eb5300"},
    )
    assert section(render_datasheet(clean), "Quarantine") == [
        "The 1 quarantined rows, each with its `quarantine_reason`, are in `data/interim/quarantine.parquet` "
        "(DVC md5 `c56193c6586098d166d182dd03eb5300`)."
    ]


@pytest.mark.parametrize("name", ["raw", "clean", "features"])
def test_committed_documents_render_with_every_measure_defined(name):
    """The documents the stages wrote: every quality measure has a meaning, and nothing is JSON."""
    document = json.loads((PROJECT / "metadata" / "datasets" / f"{name}.json").read_text())
    sheet = render_datasheet(document)
    assert UNDEFINED not in sheet
    assert "```" not in sheet and "{" not in sheet
    assert sheet == render_datasheet(json.loads(json.dumps(document)))  # same document, same bytes


def _gaps_by_grouping(frame: pd.DataFrame, threshold: float) -> dict:
    gap = frame.groupby(["station_id", "parameter_id"], sort=False)["reading_time"].diff().dt.total_seconds() / 60
    longest = gap.max()
    return {
        "threshold_minutes": threshold,
        "gaps_over_threshold": int((gap > threshold).sum()),
        "longest_gap_minutes": None if pd.isna(longest) else round(float(longest), 2),
    }


@pytest.mark.parametrize("shuffled", [False, True])
def test_series_gaps_equal_pandas_grouping_whether_rows_come_series_by_series_or_not(shuffled):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "station_id": rng.integers(1, 4, 400),
            "parameter_id": rng.integers(121, 123, 400),
            "reading_time": pd.Timestamp("2017-04-18") + pd.to_timedelta(rng.integers(0, 86_400_000_000, 400), unit="us"),
        }
    ).astype({"reading_time": "datetime64[us]"})
    frame = frame.sort_values(["station_id", "parameter_id", "reading_time"]).reset_index(drop=True)
    if shuffled:
        frame = frame.sample(frac=1, random_state=5).reset_index(drop=True)
    assert series_gaps(frame, 20.0) == _gaps_by_grouping(frame, 20.0)
    assert series_gaps(frame.iloc[:1], 20.0) == _gaps_by_grouping(frame.iloc[:1], 20.0)
