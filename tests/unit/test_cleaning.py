"""Cleaning rules on tiny in-memory raw frames shaped like bts.data.ingest.read_export output."""

from __future__ import annotations

import pandas as pd
import pytest

from bts.data.cleaning import RULES, clean_readings
from bts.data.schemas import clean_schema
from bts.errors import DataContractError

STATION = 1161114004
LOAD = 122  # Load of power grid, A, plausible range 0..60
ROOM = 111  # Room temperature, degC, plausible range -10..60
NA = None


def raw_frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (id, value, station_id, parameter_id, reading_time), typed as read_export types them."""
    ids, values, stations, parameters, times = zip(*rows, strict=True) if rows else ([], [], [], [], [])
    return pd.DataFrame(
        {
            "id": pd.array(ids, dtype="Int64"),
            "value": pd.array([float("nan") if v is None else v for v in values], dtype="float64"),
            "station_id": pd.array(stations, dtype="Int64"),
            "parameter_id": pd.array(parameters, dtype="Int64"),
            "reading_time": pd.Series(times, dtype="str"),
            "source_file": pd.Series(["test.csv"] * len(rows), dtype="str"),
            "source_row": pd.Series(range(2, len(rows) + 2), dtype="int64"),
        }
    )


GOOD = [
    (1, 10.0, STATION, LOAD, "2017-04-18 00:00:01"),
    (2, 10.5, STATION, LOAD, "2017-04-18 00:00:02"),
    (3, 25.0, STATION, ROOM, "2017-04-18 00:00:02"),
]

BREAKERS = {
    "invalid_key": (9, 11.0, NA, LOAD, "2017-04-18 00:00:03"),
    "unparseable_time": (9, 11.0, STATION, LOAD, "18/04/2017 07:00"),
    "missing_value": (9, NA, STATION, LOAD, "2017-04-18 00:00:03"),
    "sentinel_value": (9, 999999.0, STATION, LOAD, "2017-04-18 00:00:03"),
    "unknown_parameter": (9, 11.0, STATION, 999, "2017-04-18 00:00:03"),
    "out_of_range": (9, 60.5, STATION, LOAD, "2017-04-18 00:00:03"),
    "duplicate_id": (2, 11.0, STATION, LOAD, "2017-04-18 00:00:03"),
}


@pytest.fixture
def schema(catalogue):
    return clean_schema(catalogue)


def test_rules_are_the_documented_ones_in_order():
    assert list(RULES) == list(BREAKERS)


@pytest.mark.parametrize("rule", list(BREAKERS))
def test_each_rule_quarantines_its_row_and_keeps_the_good_ones(rule, catalogue, schema):
    raw = raw_frame([*GOOD, BREAKERS[rule]])
    result = clean_readings(raw, catalogue, schema)
    assert result.quarantine["quarantine_reason"].tolist() == [rule]
    assert result.quarantine["source_row"].tolist() == [len(GOOD) + 2]
    assert sorted(result.clean["id"]) == [1, 2, 3]
    assert result.accounting["quarantined_by_reason"] == {code: int(code == rule) for code in RULES}


def test_duplicate_id_keeps_the_first_delivery(catalogue, schema):
    raw = raw_frame([*GOOD, (2, 11.0, STATION, LOAD, "2017-04-18 00:00:03")])
    result = clean_readings(raw, catalogue, schema)
    kept = result.clean.set_index("id")
    assert kept.loc[2, "value"] == 10.5
    assert result.quarantine.loc[0, "value"] == 11.0


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param((9, 999999.0, NA, 999, "garbage"), "invalid_key", id="every-rule-broken"),
        pytest.param((9, NA, STATION, 999, "garbage"), "unparseable_time", id="time-before-value"),
        pytest.param((9, NA, STATION, 999, "2017-04-18 00:00:03"), "missing_value", id="value-before-parameter"),
        pytest.param((9, 999999.0, STATION, 999, "2017-04-18 00:00:03"), "sentinel_value", id="sentinel-before-parameter"),
        pytest.param((9, 999999.0, STATION, LOAD, "2017-04-18 00:00:03"), "sentinel_value", id="sentinel-before-range"),
        pytest.param((1, 75.0, STATION, LOAD, "2017-04-18 00:00:03"), "out_of_range", id="range-before-duplicate"),
        pytest.param((1, 11.0, STATION, 999, "2017-04-18 00:00:03"), "unknown_parameter", id="parameter-before-duplicate"),
    ],
)
def test_first_broken_rule_wins(row, expected, catalogue, schema):
    result = clean_readings(raw_frame([*GOOD, row]), catalogue, schema)
    assert result.quarantine["quarantine_reason"].tolist() == [expected]
    assert sum(result.accounting["quarantined_by_reason"].values()) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017-04-18T00:00:05", "2017-04-18 00:00:05"),
        ("2017-04-18T00:00:05Z", "2017-04-18 00:00:05"),
        ("2017-04-18 00:00:05Z", "2017-04-18 00:00:05"),
        ("2017-04-18T00:00:05.250Z", "2017-04-18 00:00:05"),
        ("2017-04-18T00:00:05+00:00", "2017-04-18 00:00:05"),
        ("2017-04-18T00:00:05-0000", "2017-04-18 00:00:05"),
        ("2017-04-18T00:00:05+00", "2017-04-18 00:00:05"),
        ("2017-04-18 07:00:05+07:00", "2017-04-18 00:00:05"),
        ("2017-04-18T07:00:05+07:00", "2017-04-18 00:00:05"),
        ("2017-04-18T07:00:05+0700", "2017-04-18 00:00:05"),
        ("2017-04-18T07:00:05+07", "2017-04-18 00:00:05"),
        ("2017-04-18T07:00:05.999+07:00", "2017-04-18 00:00:05"),
        ("  2017-04-18T07:00:05+07:00 ", "2017-04-18 00:00:05"),
        ("2017-04-18T06:00:05+05:30", "2017-04-18 00:30:05"),
        ("2017-04-17T19:00:05-05:00", "2017-04-18 00:00:05"),
        ("2017-04-17T23:30:05-0030", "2017-04-18 00:00:05"),
        ("2017-04-19T06:59:59+23:59", "2017-04-18 07:00:59"),
    ],
)
def test_iso_timestamps_are_normalized_and_counted_not_quarantined(text, expected, catalogue, schema):
    raw = raw_frame([*GOOD, (9, 12.0, STATION, LOAD, text)])
    result = clean_readings(raw, catalogue, schema)
    assert result.quarantine.empty
    row = result.clean.set_index("id").loc[9]
    assert row["reading_time"] == pd.Timestamp(expected)
    assert result.accounting["fixed"]["reading_time_normalized"] == 1


def test_an_offset_moves_the_reading_across_midnight(catalogue, schema):
    """Vietnam exports (UTC+7): 03:00 local on the 18th is 20:00 UTC on the 17th."""
    raw = raw_frame([*GOOD, (9, 12.0, STATION, LOAD, "2017-04-18T03:00:00+07:00"), (10, 12.0, STATION, LOAD, "2017-04-18 03:00:00+07:00")])
    result = clean_readings(raw, catalogue, schema)
    assert result.quarantine.empty
    assert result.clean.set_index("id").loc[[9, 10], "reading_time"].tolist() == [pd.Timestamp("2017-04-17 20:00:00")] * 2
    assert result.accounting["fixed"]["reading_time_normalized"] == 2


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2017-04-18T07:00:05+24:00", id="offset-hours-24"),
        pytest.param("2017-04-18T07:00:05+07:60", id="offset-minutes-60"),
        pytest.param("2017-04-18T07:00:05+7:00", id="offset-one-digit-hour"),
        pytest.param("2017-04-18T07:00:05+07:0", id="offset-one-digit-minute"),
        pytest.param("2017-04-18T07:00:05 +07:00", id="space-before-offset"),
        pytest.param("2017-04-18T07:00:05+07:00Z", id="offset-and-z"),
        pytest.param("2017-02-30T07:00:05+07:00", id="february-30-with-offset"),
        pytest.param("2017-04-18T25:00:05+07:00", id="hour-25-with-offset"),
    ],
)
def test_a_malformed_offset_is_unparseable_and_not_counted_as_fixed(text, catalogue, schema):
    result = clean_readings(raw_frame([*GOOD, (9, 12.0, STATION, LOAD, text)]), catalogue, schema)
    assert result.quarantine["quarantine_reason"].tolist() == ["unparseable_time"]
    assert result.quarantine["reading_time"].tolist() == [text]  # quarantined as delivered
    assert result.accounting["fixed"]["reading_time_normalized"] == 0


def test_export_format_timestamps_are_not_counted_as_fixed(catalogue, schema):
    result = clean_readings(raw_frame(GOOD), catalogue, schema)
    assert result.accounting["fixed"]["reading_time_normalized"] == 0


def test_rows_out_of_order_are_sorted_and_counted(catalogue, schema):
    rows = [
        (1, 10.0, STATION, LOAD, "2017-04-18 00:00:10"),
        (2, 11.0, STATION, LOAD, "2017-04-18 00:00:30"),
        (3, 12.0, STATION, LOAD, "2017-04-18 00:00:20"),  # late: older than the row before it in its series
        (4, 25.0, STATION, ROOM, "2017-04-18 00:00:05"),  # another series: older, but not late
        (5, 13.0, STATION, LOAD, "2017-04-18 00:00:40"),
    ]
    result = clean_readings(raw_frame(rows), catalogue, schema)
    assert result.accounting["fixed"]["reordered_late_rows"] == 1
    assert result.quarantine.empty
    assert result.clean["id"].tolist() == [4, 1, 3, 2, 5]  # sorted by station, parameter (111 < 122), time
    for _, series in result.clean.groupby(["station_id", "parameter_id"]):
        assert series["reading_time"].is_monotonic_increasing


def test_in_order_rows_count_no_reordering(catalogue, schema):
    result = clean_readings(raw_frame(GOOD), catalogue, schema)
    assert result.accounting["fixed"]["reordered_late_rows"] == 0


def test_rows_in_equals_rows_out_plus_quarantined(catalogue, schema):
    raw = raw_frame([*GOOD, *BREAKERS.values(), (10, 12.0, STATION, LOAD, "2017-04-18T00:00:09Z")])
    result = clean_readings(raw, catalogue, schema)
    accounting = result.accounting
    assert accounting["rows_in"] == len(raw) == 11
    assert accounting["rows_out"] == len(result.clean) == 4
    assert accounting["rows_quarantined"] == len(result.quarantine) == 7
    assert accounting["rows_in"] == accounting["rows_out"] + accounting["rows_quarantined"]
    assert sum(accounting["quarantined_by_reason"].values()) == accounting["rows_quarantined"]


def test_clean_output_passes_clean_schema_with_exactly_its_columns(catalogue, schema):
    raw = raw_frame([*GOOD, *BREAKERS.values()])
    result = clean_readings(raw, catalogue, schema)
    assert list(result.clean.columns) == list(schema.columns)
    schema.validate(result.clean)  # raises if the output breaks the contract
    assert str(result.clean["reading_time"].dtype) == "datetime64[us]"
    assert list(result.quarantine.columns) == [*raw.columns, "quarantine_reason"]


def test_all_rows_quarantined_gives_an_empty_valid_clean_frame(catalogue, schema):
    raw = raw_frame([BREAKERS["missing_value"], BREAKERS["sentinel_value"]])
    result = clean_readings(raw, catalogue, schema)
    assert result.clean.empty
    assert list(result.clean.columns) == list(schema.columns)
    assert result.accounting["rows_quarantined"] == 2


def test_schema_the_output_cannot_pass_raises_data_contract_error(catalogue):
    """A schema built from a smaller catalogue rejects the room-temperature row that cleaning keeps."""
    narrow = clean_schema({LOAD: catalogue[LOAD]})
    with pytest.raises(DataContractError, match=r"clean output fails schema bts_clean_readings: column parameter_id"):
        clean_readings(raw_frame(GOOD), catalogue, narrow)


def _reasons_rule_by_rule(frame: pd.DataFrame, catalogue) -> pd.Series:
    """Each rule applied to the rows no earlier rule quarantined, one copy of them per rule."""
    reason = pd.Series(pd.NA, index=frame.index, dtype="str")
    for code, rule in RULES.items():
        pending = reason.isna()
        broken = pd.Series(False, index=frame.index)
        broken[pending] = rule(frame[pending], catalogue).to_numpy()
        reason[broken] = code
    return reason


def test_an_id_first_delivered_in_a_quarantined_row_is_no_duplicate_when_it_comes_again(catalogue):
    from bts.data.cleaning import quarantine_reasons

    frame = raw_frame(
        [
            (1, None, STATION, LOAD, "2017-04-18 00:00:01"),  # missing value: quarantined before duplicate_id
            (1, 10.0, STATION, LOAD, "2017-04-18 00:00:02"),  # the first pending delivery of id 1: kept
            (1, 11.0, STATION, LOAD, "2017-04-18 00:00:03"),  # a repeat of a pending one: duplicate
        ]
    )
    reasons = quarantine_reasons(frame, catalogue)
    assert reasons[0] == "missing_value" and pd.isna(reasons[1]) and reasons[2] == "duplicate_id"
    pd.testing.assert_series_equal(quarantine_reasons(frame, catalogue), _reasons_rule_by_rule(frame, catalogue))


def test_quarantine_reasons_equal_the_rules_applied_one_after_the_other(catalogue):
    from bts.data.cleaning import quarantine_reasons

    frame = raw_frame([*GOOD, *BREAKERS.values(), *GOOD])  # id 9 in several breakers, GOOD's ids again at the end
    frame = frame.iloc[::-1].set_axis(range(100, 100 + len(frame)))  # unsorted, with an index of its own
    pd.testing.assert_series_equal(quarantine_reasons(frame, catalogue), _reasons_rule_by_rule(frame, catalogue))


@pytest.mark.parametrize(
    "text",
    [
        ["2017-04-18 00:00:01", "2017-04-18 00:00:01", "2017-02-30 00:00:00", "2017-4-18 0:00:00", None, "", "x", "2017-04-18 23:59:60"],
        [],
    ],
)
def test_parse_times_is_pandas_to_datetime_on_every_row(text):
    from bts.data.schemas import TIME_DTYPE, TIMESTAMP_FORMAT, parse_times

    series = pd.Series(text, dtype="str", index=range(5, 5 + len(text)), name="reading_time")
    want = pd.to_datetime(series, format=TIMESTAMP_FORMAT, errors="coerce").astype(TIME_DTYPE)
    pd.testing.assert_series_equal(parse_times(series), want)


def test_parse_times_parses_an_arrow_column_once_and_each_caller_gets_its_own_copy():
    from bts.data import schemas
    from bts.data.schemas import parse_times

    text = pd.Series(["2024-01-01 00:00:00", "2024-01-01 00:10:00", "nonsense"], dtype="str", name="reading_time")
    first = parse_times(text)
    first.iloc[0] = pd.NaT  # what one caller does to its result reaches no other
    again = parse_times(text.copy())  # a copy shares the immutable Arrow array: the times kept are given again
    assert again.notna().tolist() == [True, True, False]
    assert schemas._last_parse.get(text.array.__arrow_array__(), schemas.TIMESTAMP_FORMAT) is not None
    assert parse_times(text, "%Y-%m-%d").isna().all()  # another format is parsed anew
    other = pd.Series(["2030-06-01 12:00:00"] * 3, dtype="str")
    assert parse_times(other).dt.year.tolist() == [2030] * 3  # another array with other text, its own times

    del text, first, again, other  # once its array is gone, what was kept for it goes too
    import gc

    gc.collect()
    assert schemas._last_parse._times is None


def test_value_in_range_judges_by_the_sensor_and_lets_the_unjudgeable_pass(catalogue):
    from bts.data.catalogue import plausible_ranges
    from bts.data.schemas import value_in_range

    low, high = catalogue[LOAD].min, catalogue[LOAD].max
    frame = pd.DataFrame(
        {
            "parameter_id": pd.array([LOAD, LOAD, LOAD, LOAD, None, 999], dtype="Int64"),
            "value": [low, high, high + 1, float("nan"), 1e9, 1e9],
        },
        index=[4, 3, 2, 1, 0, 9],
    )
    assert value_in_range(frame, plausible_ranges(catalogue)).to_dict() == {4: True, 3: True, 2: False, 1: True, 0: True, 9: True}


@pytest.mark.parametrize("sort", [True, False])
def test_arrival_order_is_judged_per_series_sorted_or_not(sort):
    from bts.data.schemas import arrived_in_order

    frame = pd.DataFrame(
        {
            "station_id": [1, 1, 2, 1, 2],
            "parameter_id": [7, 7, 7, 7, 7],
            "reading_time": pd.to_datetime([5, 9, 1, 7, 0], unit="s").astype("datetime64[us]"),
        }
    )
    if sort:
        frame = frame.sort_values(["station_id", "parameter_id", "reading_time"])
    late = ~arrived_in_order(frame, ["station_id", "parameter_id"])
    expected = {0: False, 1: False, 2: False, 3: not sort, 4: not sort}  # unsorted, rows 3 and 4 are older than their series' previous
    assert late.to_dict() == expected


@pytest.mark.parametrize("shape", ["text key", "text key sorted", "missing key", "uint64 key", "missing time"])
def test_arrival_order_is_pandas_groupby_shift_whatever_the_keys(shape):
    import numpy as np

    from bts.data.schemas import arrived_in_order

    rng = np.random.default_rng(7)
    n = 2000
    frame = pd.DataFrame(
        {
            "source_file": pd.Series(rng.choice(["b.csv", "a.csv", "c/d.csv"], n), dtype="str"),
            "station_id": pd.array(rng.integers(0, 5, n), dtype="Int64"),
            "parameter_id": pd.array(rng.integers(0, 3, n), dtype="Int64"),
            "reading_time": pd.to_datetime(rng.integers(0, 50, n), unit="s").astype("datetime64[us]"),
        }
    )
    keys = ["source_file", "station_id", "parameter_id"]
    if shape == "text key sorted":
        frame = frame.sort_values([*keys, "reading_time"], kind="stable")
    elif shape == "missing key":
        frame.loc[rng.choice(n, 50), "station_id"] = pd.NA
    elif shape == "uint64 key":
        frame["station_id"] = frame["station_id"].to_numpy("int64").astype("uint64") + np.uint64(2**63)
    elif shape == "missing time":
        frame.loc[rng.choice(n, 50), "reading_time"] = pd.NaT
    times = frame["reading_time"]
    previous = times.groupby([frame[k] for k in keys], sort=False, dropna=False).shift()
    want = (times.isna() | previous.isna() | (times >= previous)).astype(bool)
    got = arrived_in_order(frame, keys)
    pd.testing.assert_series_equal(got, want, check_names=False)
    assert got.all() == (shape == "text key sorted")


@pytest.mark.parametrize("dtype", ["int64", "Int64", "float64"])
@pytest.mark.parametrize("report_duplicates", ["all", "exclude_first", "exclude_last"])
def test_uniqueness_by_sorting_fails_the_rows_pandera_itself_fails(dtype, report_duplicates):
    import pandera.pandas as pa
    from pandera.backends.pandas.components import ColumnBackend

    from bts.data.schemas import SortingColumnBackend

    ids = pd.Series([7, 3, 7, 1, 3, 3, 9], dtype=dtype, index=[6, 5, 4, 3, 2, 1, 0])
    frame = pd.DataFrame({"id": ids})
    schema = pa.DataFrameSchema({"id": pa.Column(dtype, unique=True, report_duplicates=report_duplicates)})

    def failures(backend: type) -> tuple[pd.DataFrame, str]:
        pa.Column.register_backend(pd.DataFrame, backend, force=True)
        with pytest.raises(pa.errors.SchemaErrors) as raised:
            schema.validate(frame, lazy=True)
        return raised.value.failure_cases, str(raised.value)

    try:
        assert isinstance(schema.columns["id"].get_backend(frame), SortingColumnBackend)  # the one the schemas use
        sorted_cases, sorted_message = failures(SortingColumnBackend)
        hashed_cases, hashed_message = failures(ColumnBackend)
    finally:
        pa.Column.register_backend(pd.DataFrame, SortingColumnBackend, force=True)
    pd.testing.assert_frame_equal(sorted_cases, hashed_cases)
    assert sorted_message == hashed_message
    assert set(sorted_cases["index"]) <= {6, 5, 4, 2, 1}  # only rows whose id comes again
    schema.validate(frame.drop_duplicates("id"), lazy=True)  # and unique ids pass


def test_the_clean_stage_checks_its_output_while_writing_it_and_keeps_the_last_good_outputs(tmp_path, monkeypatch, catalogue):
    """The stage hands the clean rows to the writer before the schema check; a failed check moves nothing into place."""
    import shutil
    import sys

    from tests.conftest import PROJECT, SENSORS, stage_module

    stage = stage_module("clean")

    monkeypatch.chdir(tmp_path)
    shutil.copy(PROJECT / "params.yaml", "params.yaml")
    raw_frame(GOOD).to_parquet("raw.parquet")
    outputs = {name: f"last good {name}" for name in ["clean.parquet", "quarantine.parquet", "clean.yaml", "clean.json", "clean.md"]}
    for name, text in outputs.items():
        (tmp_path / name).write_text(text)
    argv = ["clean", "--raw", "raw.parquet", "--sensors", str(SENSORS), "--out", "clean.parquet", "--quarantine", "quarantine.parquet"]
    argv += ["--schema", "clean.yaml", "--document", "clean.json", "--datasheet", "clean.md"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(stage, "clean_schema", lambda _: clean_schema({LOAD: catalogue[LOAD]}))  # one the rows cannot pass

    with pytest.raises(DataContractError, match="clean output fails schema bts_clean_readings: column parameter_id"):
        stage.main()
    assert {name: (tmp_path / name).read_text() for name in outputs} == outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*outputs, "params.yaml", "raw.parquet"])  # no temporary left

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", argv)
    stage.main()  # with the project's schema the same rows pass, and every output is replaced
    assert all((tmp_path / name).read_bytes() != text.encode() for name, text in outputs.items())
    assert len(pd.read_parquet("clean.parquet")) == len(GOOD)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("garbage", "not a readable Parquet file"),
        ("no id column", "no column 'id'"),
        ("station_id as text", "types do not match schema bts_raw_readings: expected series 'station_id' to have type Int64, got str"),
        ("reading_time as times", "types do not match schema bts_raw_readings: expected series 'reading_time'"),
    ],
)
def test_the_clean_stage_names_an_unreadable_raw_table_in_one_line_and_keeps_the_last_good_outputs(tmp_path, raw, reason):
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import PROJECT, SENSORS

    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    frame = raw_frame(GOOD)
    if raw == "garbage":
        (tmp_path / "raw.parquet").write_bytes(b"PAR1" + b"\0" * 64)
    elif raw == "no id column":
        frame.drop(columns="id").to_parquet(tmp_path / "raw.parquet")
    elif raw == "station_id as text":
        frame.assign(station_id=frame["station_id"].astype(str)).to_parquet(tmp_path / "raw.parquet")
    else:
        frame.assign(reading_time=pd.to_datetime(frame["reading_time"], errors="coerce")).to_parquet(tmp_path / "raw.parquet")
    outputs = {name: f"last good {name}" for name in ["clean.parquet", "quarantine.parquet", "clean.yaml", "clean.json", "clean.md"]}
    for name, text in outputs.items():
        (tmp_path / name).write_text(text)
    argv = ["--raw", "raw.parquet", "--sensors", str(SENSORS), "--out", "clean.parquet", "--quarantine", "quarantine.parquet"]
    argv += ["--schema", "clean.yaml", "--document", "clean.json", "--datasheet", "clean.md"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}
    done = subprocess.run(
        [sys.executable, str(PROJECT / "src" / "stages" / "clean.py"), *argv], cwd=tmp_path, env=env, capture_output=True, text=True
    )

    assert done.returncode == 1
    assert done.stderr.startswith(f"clean: error: raw.parquet: {reason}")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert {name: (tmp_path / name).read_text() for name in outputs} == outputs


def test_read_table_gives_the_schema_columns_of_a_table_whose_types_match_and_names_the_first_that_does_not(tmp_path, catalogue):
    from bts.data.schemas import read_table
    from bts.errors import InputFileError

    result = clean_readings(raw_frame(GOOD), catalogue, clean_schema(catalogue)).clean
    result.assign(extra=1).to_parquet(tmp_path / "clean.parquet")
    schema = clean_schema(catalogue)
    pd.testing.assert_frame_equal(read_table(tmp_path / "clean.parquet", schema), result)  # the schema's columns only
    subset = read_table(tmp_path / "clean.parquet", schema, ["value", "id"])
    assert list(subset.columns) == ["value", "id"]

    result.assign(value=result["value"].astype("float32")).to_parquet(tmp_path / "narrow.parquet")
    with pytest.raises(InputFileError) as raised:
        read_table(tmp_path / "narrow.parquet", schema, ["id", "value"])
    assert str(raised.value) == (
        f"{tmp_path / 'narrow.parquet'}: types do not match schema bts_clean_readings: "
        "expected series 'value' to have type float64, got float32"
    )
    read_table(tmp_path / "narrow.parquet", schema, ["id"])  # a column not asked for is not judged
