"""Batch scoring's pure parts on tiny frames: features and predictions per reading, the Spark engine's groups against the
whole batch (cleaning by id, scoring by series), the row layout rows cross Spark in, inputs, outputs all or nothing,
the Java check, the session settings and the command line."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bts.batch.command import ENGINES, BatchRequest, add_arguments, parse_conf
from bts.batch.inputs import RAW_COLUMNS, InputFile, input_files, read_input
from bts.batch.output import MANIFEST, MANIFEST_KIND, PREDICTIONS, QUARANTINE, OutputPaths, check_output, staged_output
from bts.batch.scoring import (
    KEY_COLUMNS,
    LINEAGE_COLUMNS,
    batch_columns,
    feature_spec,
    merge_accounting,
    prediction_dtypes,
    row_counts,
    score_readings,
    training_featurize,
    with_lineage,
)
from bts.batch.spark_engine import (
    ACCOUNTING,
    CLEAN,
    CLEANED_DTYPES,
    ERROR,
    FILE,
    QUARANTINED,
    RAW,
    READ_DTYPES,
    clean_group,
    clean_partition,
    ddl,
    decode,
    encode,
    note,
    quarantine_rows,
    read_files,
    score_group,
)
from bts.batch.spark_session import JavaRuntimeError, failure_line, java_major, java_runtime, session_settings
from bts.data.cleaning import SERIES_KEYS, clean_readings
from bts.data.features import FeatureSpec
from bts.data.ingest import read_export
from bts.data.schemas import clean_schema, raw_schema
from bts.errors import BtsError, ConfigError, DataContractError, InputFileError
from bts.hashing import file_md5
from bts.horizons import FORECAST, LOWER, UPPER, output_column, output_columns
from bts.monitoring.field_readings import serving_rows
from tests.unit.test_features import clean_frame

SPEC = FeatureSpec(n_lags=3)
HORIZONS = [1, 4]
OUTPUTS = output_columns(HORIZONS)
EXPORT_ROWS = [  # two series, dirt of every kind the rules catch, a row delivered late and a resent row
    "101,20.0,1161114004,122,2017-04-18 00:00:00",
    "102,21.0,1161114004,122,2017-04-18 00:01:00",
    "201,50.0,1161114004,121,2017-04-18 00:01:30",
    "104,23.0,1161114004,122,2017-04-18 00:03:00",
    "103,22.0,1161114004,122,2017-04-18 00:02:00",
    "105,24.0,1161114004,122,2017-04-18T00:04:00Z",
    "105,24.0,1161114004,122,2017-04-18T00:04:00Z",
    "202,51.0,1161114004,121,2017-04-18 00:02:30",
    "203,999999,1161114004,121,2017-04-18 00:03:30",
    "204,,1161114004,121,2017-04-18 00:04:30",
    "205,53.0,1161114004,121,N/A",
    "206,54.0,1161114004,121,2017-04-18 00:06:30",
    "207,900.0,1161114004,121,2017-04-18 00:07:30",
    "301,1.0,1161114004,9999,2017-04-18 00:00:00",
    ",1.0,1161114004,122,2017-04-18 00:05:00",
    "9223372036854775807,25.0,1161114004,122,2017-04-18 00:06:00",
]


def plus_half(matrix: np.ndarray) -> np.ndarray:
    """A stand-in model of OUTPUTS: h steps ahead, the latest reading plus h / 2, within 1 either side."""
    latest = matrix[:, :1]
    return np.hstack([latest + horizon / 2 + offset for horizon in HORIZONS for offset in (0.0, -1.0, 1.0)])


@pytest.fixture
def export(write_csv) -> Path:
    return write_csv("param-2017-04-18.csv", EXPORT_ROWS)


def raw_of(export: Path) -> pd.DataFrame:
    return read_export(export, export.name)


# --- scoring: one row per reading with full history, the same per group of series as on the whole --------------------


def test_the_features_are_built_with_the_featurize_params_the_model_was_trained_with() -> None:
    logged = {
        "featurize.n_lags": "3",
        "featurize.horizons": "[1, 5, 15]",
        "featurize.valid_fraction": "0.15",
        "featurize.test_fraction": "0.15",
        "featurize.holdout_stations": "[]",
        "train.alpha": "0.1",
    }
    featurize = training_featurize(logged)  # MLflow keeps params as text
    assert featurize == {"n_lags": 3, "horizons": [1, 5, 15], "valid_fraction": 0.15, "test_fraction": 0.15, "holdout_stations": []}
    assert feature_spec(SPEC.feature_columns, featurize) == SPEC
    assert feature_spec(SPEC.feature_columns, {**featurize, "a_param_this_library_lacks": 1}) == SPEC
    with pytest.raises(BtsError, match=r"the model's inputs \(lag_1, .*\) are not the features this library builds .*n_lags=3"):
        feature_spec(FeatureSpec(n_lags=6).feature_columns, featurize)
    with pytest.raises(BtsError, match="not the features this library builds"):
        feature_spec(list(reversed(SPEC.feature_columns)), featurize)
    with pytest.raises(BtsError) as unusable:
        feature_spec(SPEC.feature_columns, {**featurize, "n_lags": 0})
    unusable_line = "the model's featurize params are not usable: featurize.n_lags: Input should be greater than or equal to 1, got 0"
    assert str(unusable.value) == unusable_line


def test_every_reading_with_full_history_is_scored_the_last_of_each_series_included() -> None:
    clean = clean_frame(stations=(1, 2), readings=10)
    scored = score_readings(clean, SPEC, plus_half, OUTPUTS)
    assert list(scored.columns) == KEY_COLUMNS + OUTPUTS and scored.dtypes.astype(str).to_dict() == prediction_dtypes(OUTPUTS)
    assert len(scored) == 2 * (10 - SPEC.n_lags + 1)
    served = serving_rows(clean, SPEC)
    assert scored["reading_id"].tolist() == served["reading_id"].tolist()
    assert (scored["value"] == served["lag_1"]).all()
    for horizon in HORIZONS:  # each answer column lands under its own name
        forecast = scored[output_column(FORECAST, horizon)]
        assert (forecast == scored["value"] + horizon / 2).all()
        assert (scored[output_column(LOWER, horizon)] == forecast - 1).all()
        assert (scored[output_column(UPPER, horizon)] == forecast + 1).all()
    last_ids = clean.groupby(SERIES_KEYS)["id"].max()
    assert set(last_ids) <= set(scored["reading_id"])  # the forecast after each series' last reading


def test_scoring_groups_of_whole_series_gives_the_rows_of_scoring_everything() -> None:
    clean = clean_frame(stations=(1, 2, 3, 4), readings=12)
    whole = score_readings(clean, SPEC, plus_half, OUTPUTS)
    groups = [score_readings(group, SPEC, plus_half, OUTPUTS) for _, group in clean.groupby(clean["station_id"] % 2)]
    parts = pd.concat(groups).sort_values("reading_id").reset_index(drop=True)
    assert parts.equals(whole.sort_values("reading_id").reset_index(drop=True))


def test_series_too_short_to_fill_the_lags_are_left_out() -> None:
    clean = pd.concat([clean_frame(stations=(1,), readings=5), clean_frame(stations=(2,), readings=2).assign(id=lambda f: f["id"] + 100)])
    scored = score_readings(clean, SPEC, plus_half, OUTPUTS)
    assert set(scored["station_id"]) == {1} and len(scored) == 5 - SPEC.n_lags + 1
    empty = score_readings(clean_frame(stations=(1,), readings=2), SPEC, plus_half, OUTPUTS)
    assert empty.empty and empty.dtypes.astype(str).to_dict() == prediction_dtypes(OUTPUTS)


@pytest.mark.parametrize(
    ("answer", "shape"),
    [
        (lambda matrix: plus_half(matrix)[:1], (1, 6)),  # too few rows
        (lambda matrix: plus_half(matrix)[:, :3], (4, 3)),  # one horizon short
        (lambda matrix: matrix[:, 0] + 0.5, (4,)),  # one forecast per row: a single-horizon model
    ],
    ids=["rows", "columns", "one column"],
)
def test_a_model_answering_other_than_rows_by_output_columns_is_an_error(answer, shape) -> None:
    message = f"the model returned {shape} predictions for 4 rows x 6 output columns (forecast_h1, lower_h1, upper_h1, ...)"
    with pytest.raises(BtsError) as wrong:
        score_readings(clean_frame(stations=(1,), readings=6), SPEC, answer, OUTPUTS)
    assert str(wrong.value) == message


def test_the_prediction_columns_are_the_keys_then_the_model_s_outputs_in_both_engines() -> None:
    dtypes = prediction_dtypes(OUTPUTS)
    assert list(dtypes) == [*KEY_COLUMNS, "forecast_h1", "lower_h1", "upper_h1", "forecast_h4", "lower_h4", "upper_h4"]
    assert [dtypes[column] for column in OUTPUTS] == ["float64"] * len(OUTPUTS)
    spark_schema = ddl(dtypes)  # the Spark engine's schema of the scoring UDF
    assert spark_schema.startswith("station_id long, parameter_id long, reading_id long, reading_time timestamp_ntz, value double, ")
    assert spark_schema.endswith("forecast_h4 double, lower_h4 double, upper_h4 double")
    assert batch_columns(OUTPUTS) == [*dtypes, *LINEAGE_COLUMNS]


def test_lineage_columns_are_text_on_every_row() -> None:
    scored = score_readings(clean_frame(readings=5), SPEC, plus_half, OUTPUTS)
    lineage = dict.fromkeys(LINEAGE_COLUMNS, "x") | {"model_name": None}
    marked = with_lineage(scored, lineage)
    assert list(marked.columns) == batch_columns(OUTPUTS)
    assert (marked["run_id"] == "x").all() and marked["model_name"].isna().all()
    assert all(str(marked[column].dtype) == "str" for column in LINEAGE_COLUMNS)


# --- row accounting ---------------------------------------------------------------------------------------------------


def test_accountings_of_parts_add_up_and_the_batch_accounting_is_checked(export, catalogue) -> None:
    raw = raw_of(export)
    whole = clean_readings(raw, catalogue, clean_schema(catalogue)).accounting
    halves = [clean_readings(part, catalogue, clean_schema(catalogue)).accounting for part in (raw.iloc[:8], raw.iloc[8:])]
    merged = merge_accounting(halves)
    assert merged["rows_in"] == whole["rows_in"] == len(raw)
    assert merged["rows_out"] + merged["rows_quarantined"] == len(raw)
    counts = row_counts(len(raw), merge_accounting([whole]), predicted=4, series=2)
    assert counts["in"] == counts["clean"] + counts["quarantined"]
    assert counts["without_full_history"] == counts["clean"] - 4
    with pytest.raises(DataContractError, match="row accounting broken"):
        row_counts(len(raw) + 1, merge_accounting([whole]), predicted=4, series=2)
    with pytest.raises(DataContractError, match="row accounting broken"):
        row_counts(len(raw), merge_accounting([whole]), predicted=whole["rows_out"] + 1, series=2)


# --- the Spark engine's UDFs, as plain pandas -------------------------------------------------------------------------


def test_rows_cross_spark_with_exact_keys_and_missing_ones_flagged(export) -> None:
    raw = raw_of(export).assign(file_index=3, position=lambda f: np.arange(len(f)))
    encoded = encode(raw, RAW, READ_DTYPES)
    assert list(encoded.columns) == list(READ_DTYPES)
    assert encoded["id_missing"].sum() == 1 and encoded["id"].max() == 2**63 - 1
    assert all(encoded[column].dtype == object for column in ("reading_time", "source_file", "note"))  # Python text
    decoded = decode(encoded, ["param-2017-04-18.csv"] * 4)
    assert decoded[RAW_COLUMNS].equals(raw[RAW_COLUMNS])
    assert (decoded["file_index"] == 3).all() and decoded["position"].tolist() == list(range(len(raw)))
    unlabelled = encode(raw.assign(source_file=None), RAW, READ_DTYPES)  # a file's own label crosses as null
    assert unlabelled["source_file"].isna().all()
    assert decode(unlabelled, ["a", "b", "c", "param-2017-04-18.csv"])[RAW_COLUMNS].equals(raw[RAW_COLUMNS])
    record = note(FILE, '{"rows": 1}', READ_DTYPES, file_index=2)
    assert record[["kind", "file_index", "note"]].iloc[0].tolist() == [FILE, 2, '{"rows": 1}']


def test_reading_tasks_hand_over_each_file_and_its_record_or_its_error(export, write_csv, catalogue) -> None:
    bad = write_csv("alarms.csv", "id;value\n1;2\n")
    listing = pd.DataFrame({"file_index": [0, 1], "path": [str(export), str(bad)], "label": ["a.csv", "b.csv"]})
    frames = list(read_files(iter([listing]), catalogue))
    kinds = [frame["kind"].iloc[0] for frame in frames]
    assert kinds == [RAW, FILE, ERROR]
    assert frames[0]["source_file"].isna().all()  # the label is not repeated on every row
    record = json.loads(frames[1]["note"].iloc[0])
    assert record["rows"] == len(EXPORT_ROWS) and record["md5"] == file_md5(export) and record["path"] == "a.csv"
    assert "wrong delimiter" in frames[2]["note"].iloc[0]


def test_cleaning_groups_of_ids_gives_the_result_of_cleaning_everything(export, catalogue) -> None:
    raw = raw_of(export)
    whole = clean_readings(raw, catalogue, clean_schema(catalogue))
    encoded = encode(raw.assign(file_index=0, position=np.arange(len(raw))), RAW, READ_DTYPES)
    record = note(FILE, '{"rows": 16}', READ_DTYPES)  # a reading task's note: handed on as it is
    shuffled = pd.concat([encoded, record]).sample(frac=1, random_state=1)  # arrival order comes from file_index, position
    groups = [clean_group(group, catalogue, [export.name]) for _, group in shuffled.groupby(shuffled["id"] % 3)]
    rows = pd.concat(groups, ignore_index=True)
    assert list(rows.columns) == list(CLEANED_DTYPES)
    assert rows.loc[rows["kind"] == FILE, "note"].tolist() == ['{"rows": 16}']
    clean = rows[rows["kind"] == CLEAN]
    assert sorted(clean["id"]) == sorted(whole.clean["id"])
    assert pd.Series(clean["clean_time"].to_numpy()).sort_values().tolist() == whole.clean["reading_time"].sort_values().tolist()
    quarantined = quarantine_rows(rows[rows["kind"] == QUARANTINED], [export.name])
    assert quarantined.equals(whole.quarantine)
    assert all(rows[column].dtype == object for column in ("reading_time", "source_file", "quarantine_reason", "note"))
    assert rows.loc[rows["kind"] == CLEAN, "source_file"].isna().all()  # text only where needed
    accounting = merge_accounting([json.loads(text) for text in rows.loc[rows["kind"] == ACCOUNTING, "note"]])
    assert accounting == merge_accounting([whole.accounting])


def test_score_group_scores_the_clean_readings_spark_hands_it() -> None:
    clean = clean_frame(readings=6)
    handed = clean[["station_id", "parameter_id", "reading_time", "id", "value"]].astype({"reading_time": "datetime64[ns]"})
    assert score_group(handed, SPEC, plus_half, OUTPUTS).equals(score_readings(clean, SPEC, plus_half, OUTPUTS))


def test_a_partition_is_cleaned_whole_however_spark_batches_it(export, catalogue) -> None:
    raw = raw_of(export)
    encoded = encode(raw.assign(file_index=0, position=np.arange(len(raw))), RAW, READ_DTYPES)
    batches = [encoded.iloc[:5], encoded.iloc[5:11], encoded.iloc[11:]]  # Arrow batches of one partition
    [cleaned] = clean_partition(iter(batches), catalogue, [export.name])
    assert cleaned.equals(clean_group(encoded, catalogue, [export.name]))
    assert list(clean_partition(iter([]), catalogue, [export.name])) == []  # an empty partition


def test_a_spark_failure_is_told_by_the_line_that_names_it() -> None:
    worker = Exception("[PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent call last):\n"
                       '  File "x.py", line 1, in f\nValueError: bad value\n SQLSTATE: 38000\n\tat org.apache.spark.Foo')  # fmt: skip
    assert failure_line(worker) == "ValueError: bad value"
    assert failure_line(Exception("java.io.IOException: no space left\n\tat x")) == "java.io.IOException: no space left"
    assert failure_line(Exception("something odd\nmore")) == "something odd"
    assert len(failure_line(Exception("x" * 1000))) <= 200


# --- Java and the session ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ("no version here", None),
    ],
)
def test_java_major_version(text, major) -> None:
    assert java_major(text) == major


def fake_java(folder: Path, version: str) -> Path:
    java = folder / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2024-01-01' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return java


def test_no_java_is_one_line_saying_how_to_get_one(tmp_path) -> None:
    with pytest.raises(JavaRuntimeError, match=r"no `java` on PATH\); install Java 17 or later, e\.g\. `sudo apt-get install openjdk-17"):
        java_runtime({"PATH": str(tmp_path)})
    with pytest.raises(JavaRuntimeError, match=r"JAVA_HOME=.* has no bin/java"):
        java_runtime({"JAVA_HOME": str(tmp_path), "PATH": os.environ["PATH"]})


def test_an_old_java_is_refused_and_a_new_one_found(tmp_path) -> None:
    old = fake_java(tmp_path / "old", "11.0.2")
    with pytest.raises(JavaRuntimeError, match="Java 11; Spark needs Java 17 or later"):
        java_runtime({"PATH": str(old.parent)})
    new = fake_java(tmp_path / "new", "21.0.1")
    assert java_runtime({"JAVA_HOME": str(tmp_path / "new")}) == (str(new), 21)


def test_session_settings_are_quiet_and_the_user_has_the_last_word(tmp_path) -> None:
    log = tmp_path / "log4j2.properties"
    defaults = session_settings(None, {}, log)
    assert defaults["spark.master"] == "local[*]" and defaults["spark.ui.showConsoleProgress"] == "false"
    assert defaults["spark.sql.session.timeZone"] == "UTC" and log.as_uri() in defaults["spark.driver.extraJavaOptions"]
    conf = {"spark.master": "spark://a:7077", "spark.ui.enabled": "true", "spark.driver.extraJavaOptions": "-Dx=1"}
    configured = session_settings(None, conf, log)
    assert configured["spark.master"] == "spark://a:7077" and configured["spark.ui.enabled"] == "true"
    assert configured["spark.driver.extraJavaOptions"] == f"-Dlog4j2.configurationFile={log.as_uri()} -Dx=1"
    assert session_settings("local[2]", conf, log)["spark.master"] == "local[2]"  # --master over --conf spark.master


# --- inputs -----------------------------------------------------------------------------------------------------------


def test_input_files_are_the_file_or_every_csv_below_a_folder_each_once(tmp_path, write_csv) -> None:
    root = tmp_path / "repo"
    first = write_csv("b/param-2.csv", EXPORT_ROWS, folder=root)
    second = write_csv("a/param-1.csv", EXPORT_ROWS, folder=root)
    (root / "a" / "notes.txt").write_text("not an export")
    (root / "b" / "again.csv").symlink_to(first)
    files = input_files(root, root)
    assert [f.label for f in files] == ["a/param-1.csv", "b/again.csv"]  # the link and its target: one file, read once
    assert input_files(second, root) == [InputFile(second, "a/param-1.csv")]
    outside = write_csv("elsewhere.csv", EXPORT_ROWS)
    assert input_files(outside, root)[0].label == outside.as_posix()  # outside the project: absolute
    with pytest.raises(InputFileError, match="no such file or folder"):
        input_files(root / "missing.csv", root)
    (root / "empty").mkdir()
    with pytest.raises(InputFileError, match=r"folder holds no \.csv export"):
        input_files(root / "empty", root)


def test_a_file_is_read_and_validated_on_its_own(export, catalogue) -> None:
    raw, record = read_input(InputFile(export, "param.csv"), raw_schema(catalogue))
    assert raw.equals(read_export(export, "param.csv"))
    assert record["md5"] == file_md5(export) and record["rows"] == len(EXPORT_ROWS) and record["bytes"] == export.stat().st_size
    failing = {(check["column"], check["check"]) for check in record["raw_schema"]["checks"]}
    assert ("value", "not_sentinel") in failing and record["raw_schema"]["failing_rows"] > 0


def test_parquet_inputs_are_the_ingest_copy_or_an_export(tmp_path, export, catalogue) -> None:
    raw = raw_of(export)
    copy = tmp_path / "raw.parquet"
    raw.to_parquet(copy)
    assert read_input(InputFile(copy, "raw.parquet"), raw_schema(catalogue))[0].equals(raw)
    columns = tmp_path / "export.parquet"
    raw.drop(columns=["source_file", "source_row"]).to_parquet(columns)
    read = read_input(InputFile(columns, "export.parquet"), raw_schema(catalogue))[0]
    assert (read["source_file"] == "export.parquet").all() and read["source_row"].tolist() == list(range(2, len(raw) + 2))
    assert read[RAW_COLUMNS[:5]].equals(raw[RAW_COLUMNS[:5]])
    wrong = tmp_path / "wrong.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(wrong)
    with pytest.raises(InputFileError, match="not raw readings: columns"):
        read_input(InputFile(wrong, "wrong.parquet"), raw_schema(catalogue))
    texts = tmp_path / "texts.parquet"
    raw.drop(columns=["source_file", "source_row"]).astype({"id": "str"}).to_parquet(texts)
    with pytest.raises(InputFileError, match=r"column id: .* expected integers"):
        read_input(InputFile(texts, "texts.parquet"), raw_schema(catalogue))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 not really")
    with pytest.raises(InputFileError, match="not a readable Parquet file"):
        read_input(InputFile(garbage, "garbage.parquet"), raw_schema(catalogue))


# --- outputs: all or nothing, and never over what a batch did not write ----------------------------------------------


def stage(staging: Path, marker: str) -> None:
    (staging / PREDICTIONS).mkdir()
    (staging / PREDICTIONS / "part-0.parquet").write_text(marker)
    (staging / QUARANTINE).write_text(marker)
    (staging / MANIFEST).write_text(json.dumps({"kind": MANIFEST_KIND, "marker": marker}))


def test_a_batch_publishes_its_three_outputs_together_and_replaces_an_earlier_batch(tmp_path) -> None:
    paths = OutputPaths.beside(tmp_path / "out" / "scores")
    assert (paths.quarantine.name, paths.manifest.name) == ("scores.quarantine.parquet", "scores.manifest.json")
    for marker in ("first", "second"):
        check_output(paths)
        with staged_output(paths) as staging:
            stage(staging, marker)
        assert (paths.predictions / "part-0.parquet").read_text() == marker and paths.quarantine.read_text() == marker
        assert json.loads(paths.manifest.read_text())["marker"] == marker
    assert sorted(p.name for p in paths.predictions.parent.iterdir()) == ["scores", "scores.manifest.json", "scores.quarantine.parquet"]


def test_a_failed_batch_leaves_nothing(tmp_path) -> None:
    paths = OutputPaths.beside(tmp_path / "scores")
    with pytest.raises(RuntimeError, match="boom"), staged_output(paths) as staging:
        stage(staging, "half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_no_batch_wrote_is_never_replaced(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ConfigError, match="exists and was not written by `bts batch-predict`"):
        check_output(OutputPaths.beside(data))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        check_output(OutputPaths.beside(tmp_path / "file"))


# --- the command line -------------------------------------------------------------------------------------------------


def test_the_command_line_options() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["models:/m@candidate", "--input", "in.csv", "--output", "out", "--engine", "spark", "--conf", "a.b=c=d"])
    request = BatchRequest.from_args(args)
    assert request == BatchRequest("models:/m@candidate", Path("in.csv"), Path("out"), "spark", None, {"a.b": "c=d"})
    assert parser.parse_args(["m", "--input", "i", "--output", "o"]).engine == ENGINES[0] == "pandas"
    assert parse_conf(" spark.master =local[2]") == ("spark.master", "local[2]")
    for bad in ("spark.master", "=x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
            parse_conf(bad)
