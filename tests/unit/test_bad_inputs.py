"""Malformed inputs: each must fail with a message that names the file (or source) and says what is wrong.

File-level problems stop ingestion (InputFileError / ConfigError); row-level
problems go through ingest and clean and end in quarantine with their reason.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bts.data.cleaning import clean_readings
from bts.data.ingest import read_export, read_exports, resolve_sources
from bts.data.schemas import clean_schema
from bts.errors import ConfigError, InputFileError

PROJECT = Path(__file__).resolve().parents[2]
HEADER = "id,value,station_id,parameter_id,reading_time"
ROW = "5651437088,1.0,1161114004,122,2017-04-18 00:24:19"
GOOD_ROWS = [
    "5651437088,1.0,1161114004,122,2017-04-18 00:24:19",
    "5651437089,1.5,1161114004,122,2017-04-18 00:24:20",
    "5651437090,2.0,1161114004,122,2017-04-18 00:24:21",
]


def good_export(rows: int = 1) -> str:
    return "\n".join([HEADER, *[f"{5651437088 + i},1.0,1161114004,122,2017-04-18 00:24:19" for i in range(rows)]]) + "\n"


def _parquet_bytes() -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame({"id": [5651437088], "value": [1.0]}).to_parquet(buffer)
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("param-2017-04-18.csv", good_export())
    return buffer.getvalue()


def _latin1_past_first_64_kib() -> bytes:
    text = good_export(rows=2000)  # about 100 KB of good rows
    assert len(text) > 65536
    return (text + "5651440000,1.0,1161114004,122,2017-04-18 23:59:59 café\n").encode("latin-1")


FILE_CASES = [
    pytest.param(b"", "empty file", id="empty-file"),
    pytest.param(f"{HEADER}\n".encode(), "header only, no readings", id="header-only"),
    pytest.param(HEADER.encode(), "header only, no readings", id="header-only-no-newline"),
    pytest.param(good_export().replace(",", ";").encode(), "wrong delimiter ';' in header (expected ',')", id="semicolon-delimiter"),
    pytest.param(good_export().replace(",", "\t").encode(), "wrong delimiter '\\t' in header (expected ',')", id="tab-delimiter"),
    pytest.param(good_export().replace(",", "|").encode(), "wrong delimiter '|' in header (expected ',')", id="pipe-delimiter"),
    pytest.param(
        b"id,value,station_id,reading_time\n5651437088,1.0,1161114004,2017-04-18 00:24:19\n",
        "missing column(s) ['parameter_id']; header is ['id', 'value', 'station_id', 'reading_time']",
        id="missing-column",
    ),
    pytest.param(
        f"{HEADER},unit\n{ROW},A\n".encode(),
        "unexpected column(s) ['unit']; expected ['id', 'value', 'station_id', 'parameter_id', 'reading_time']",
        id="extra-column",
    ),
    pytest.param(
        f"id,val,station_id,parameter_id,reading_time\n{ROW}\n".encode(),
        "missing column(s) ['value']; header is ['id', 'val', 'station_id', 'parameter_id', 'reading_time']",
        id="renamed-column",
    ),
    pytest.param(
        f"{HEADER}\n{ROW}\n5651437089,1.0,Tr\xe0 Vinh,122,2017-04-18 00:24:20\n{ROW}\n".encode("latin-1"),
        "line 3: undecodable bytes (not UTF-8)",
        id="latin1-mid-file",
    ),
    pytest.param(_latin1_past_first_64_kib(), "line 2002: undecodable bytes (not UTF-8)", id="latin1-past-64KiB"),
    pytest.param(good_export().encode("utf-16"), "undecodable bytes (not UTF-8) at byte 0", id="utf16-file"),
    pytest.param(gzip.compress(good_export().encode()), "a gzip archive, not a CSV export", id="gzip-renamed-csv"),
    pytest.param(_parquet_bytes(), "a Parquet file, not a CSV export", id="parquet-renamed-csv"),
    pytest.param(_zip_bytes(), "a zip archive, not a CSV export", id="zip-renamed-csv"),
    pytest.param(b"%PDF-1.4\n%binary\n", "a PDF document, not a CSV export", id="pdf-renamed-csv"),
    pytest.param(
        b"id,alarm_id,station_id,threshold,alarm_time\n1,7,1161114004,999999,2017-04-18 00:24:19\n",
        "an alarm export (columns ['id', 'alarm_id', 'station_id', 'threshold', 'alarm_time']), not a parameter export",
        id="alarm-export",
    ),
    pytest.param(
        f"{HEADER}\n{ROW}\n5651437089,1.0,1161114004,122,2017-04-18 00:24:20,extra\n".encode(),
        "line 3: 6 fields, expected 5",
        id="ragged-row-too-many-fields",
    ),
    pytest.param(
        f"{HEADER}\n{ROW}\n5651437089,1.0,1161114004\n".encode(),
        "line 3: 3 fields, expected 5",
        id="ragged-row-too-few-fields",
    ),
]


@pytest.mark.parametrize(("content", "reason"), FILE_CASES)
def test_read_export_rejects_malformed_file(content, reason, write_csv):
    path = write_csv("param-2017-04-18.csv", content)
    with pytest.raises(InputFileError) as caught:
        read_export(path, "param-2017-04-18.csv")
    assert caught.value.path == str(path)
    assert caught.value.reason == reason
    assert str(caught.value) == f"{path}: {reason}"


def test_read_exports_names_the_bad_file_not_its_neighbour(write_csv):
    good = write_csv("a/param-2017-04-18.csv", good_export())
    bad = write_csv("b/param-2017-04-19.csv", good_export().replace(",", ";"))
    with pytest.raises(InputFileError) as caught:
        read_exports([good, bad], root=good.parents[1])
    assert str(caught.value) == f"{bad}: wrong delimiter ';' in header (expected ',')"


def test_read_exports_reads_good_files_with_relative_labels(write_csv):
    first = write_csv("sim/param-2017-04-18.csv", good_export(2))
    second = write_csv("sim/param-2017-04-19.csv", good_export(3))
    raw = read_exports([first, second], root=first.parents[1])
    assert raw["source_file"].tolist() == ["sim/param-2017-04-18.csv"] * 2 + ["sim/param-2017-04-19.csv"] * 3
    assert raw["source_row"].tolist() == [2, 3, 2, 3, 4]


def test_a_utf8_bom_and_crlf_line_ends_are_accepted(write_csv):
    path = write_csv("bom.csv", b"\xef\xbb\xbf" + good_export(2).replace("\n", "\r\n").encode())
    raw = read_export(path, "bom.csv")
    assert raw["id"].tolist() == [5651437088, 5651437089]
    assert raw["reading_time"].tolist() == ["2017-04-18 00:24:19"] * 2


def test_duplicate_header_column_is_an_input_file_error(write_csv):
    """A header naming a column twice is not the export format: it must be refused with a message, not crash."""
    path = write_csv("dup.csv", f"{HEADER},id\n{ROW},5651437099\n")
    with pytest.raises(InputFileError) as caught:
        read_export(path, "dup.csv")
    assert caught.value.path == str(path)
    assert caught.value.reason == "duplicate column(s) ['id'] in header"


def test_header_padded_with_spaces_is_read_like_the_plain_header(write_csv):
    """_check_header strips column names and read_export renames with str.strip, so padded names are meant to be accepted."""
    path = write_csv("padded.csv", f"id, value, station_id, parameter_id, reading_time\n{ROW}\n")
    raw = read_export(path, "padded.csv")
    assert raw["value"].tolist() == [1.0]
    assert raw["reading_time"].tolist() == ["2017-04-18 00:24:19"]


# --- sources (params.yaml data.sources) --------------------------------------------------------


@pytest.fixture
def layout(tmp_path, write_csv):
    """A project-like folder: simulated/ with one export, external/ (declared input) with one, elsewhere/ outside."""
    write_csv("simulated/param-2017-04-18.csv", good_export())
    write_csv("external/real/param-2017-04-18-station-1161114004.csv", good_export())
    write_csv("elsewhere/param-2017-04-18.csv", good_export())
    (tmp_path / "external" / "empty").mkdir()
    (tmp_path / "external" / "notes").mkdir()
    (tmp_path / "external" / "notes" / "README.txt").write_text("no exports here\n")
    return tmp_path


def resolve(root: Path, sources: list[str]) -> list[Path]:
    return resolve_sources(sources, root / "simulated", [root / "external"], root=root)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        pytest.param("{root}/elsewhere/param-2017-04-18.csv", "is outside {root}/external", id="file-outside-inputs"),
        pytest.param("{root}/elsewhere", "is outside {root}/external", id="folder-outside-inputs"),
        pytest.param("{root}/external/../elsewhere/param-2017-04-18.csv", "is outside {root}/external", id="dot-dot-escape"),
        pytest.param("{root}/external/missing.csv", "does not exist", id="missing-file"),
        pytest.param("{root}/external/missing", "does not exist", id="missing-folder"),
        pytest.param("{root}/external/empty", "holds no .csv file", id="empty-folder"),
        pytest.param("{root}/external/notes", "holds no .csv file", id="folder-without-csv"),
    ],
)
def test_resolve_sources_rejects_bad_source(source, reason, layout):
    source = source.format(root=layout)
    tails = {
        "is outside": ", the folder(s) dvc.yaml declares as ingest inputs",
        "does not exist": " (run `dvc pull` or `dvc checkout` if it is DVC-tracked)",
        "holds no .csv file": "",
    }
    with pytest.raises(ConfigError) as caught:
        resolve(layout, [source])
    tail = next(t for start, t in tails.items() if reason.startswith(start))
    assert str(caught.value) == f"data.sources: {source} {reason.format(root=layout)}{tail}"


def test_resolve_sources_rejects_missing_simulated_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.sources: simulated does not exist"):
        resolve_sources(["simulated"], tmp_path / "simulated", [tmp_path / "external"], root=tmp_path)


def test_resolve_sources_rejects_empty_list(layout):
    with pytest.raises(ConfigError, match=r"^data\.sources: empty"):
        resolve(layout, [])


def test_resolve_sources_rejects_a_file_listed_twice(layout):
    real = f"{layout}/external/real"
    file = f"{real}/param-2017-04-18-station-1161114004.csv"
    with pytest.raises(ConfigError) as caught:
        resolve(layout, [real, file])
    assert str(caught.value) == f"data.sources: {file} is listed twice"


def test_resolve_sources_finds_simulated_and_declared_exports(layout):
    files = resolve(layout, ["simulated", f"{layout}/external"])
    assert [f.relative_to(layout).as_posix() for f in files] == [
        "simulated/param-2017-04-18.csv",
        "external/real/param-2017-04-18-station-1161114004.csv",
    ]


# --- row-level dirt: ingest, then clean, then the row's quarantine_reason -------------------------


ROW_CASES = [
    pytest.param("5651437099,abc,1161114004,122,2017-04-18 00:25:00", "missing_value", id="non-numeric-value"),
    pytest.param("5651437099,,1161114004,122,2017-04-18 00:25:00", "missing_value", id="empty-value"),
    pytest.param("5651437099,999999,1161114004,122,2017-04-18 00:25:00", "sentinel_value", id="sentinel-999999"),
    pytest.param("5651437099,999999.0,1161114004,122,2017-04-18 00:25:00", "sentinel_value", id="sentinel-999999.0"),
    pytest.param("5651437099,187.5,1161114004,122,2017-04-18 00:25:00", "out_of_range", id="spike-above-range"),
    pytest.param("5651437099,-3.0,1161114004,122,2017-04-18 00:25:00", "out_of_range", id="negative-value"),
    pytest.param("5651437099,inf,1161114004,122,2017-04-18 00:25:00", "out_of_range", id="infinite-value"),
    pytest.param("5651437099,1.0,1161114004,122,N/A", "unparseable_time", id="garbage-timestamp"),
    pytest.param("5651437099,1.0,1161114004,122,", "unparseable_time", id="empty-timestamp"),
    pytest.param("5651437099,1.0,1161114004,122,2017-13-45 25:61:00", "unparseable_time", id="impossible-date"),
    pytest.param("5651437099,1.0,1161114004,122,2017-02-30 00:25:00", "unparseable_time", id="february-30"),
    pytest.param("5651437099,1.0,1161114004,122,18/04/2017 07:00", "unparseable_time", id="day-first-timestamp"),
    pytest.param("5651437099,1.0,1161114004,122,2017-04-18T00:25:00+25:00", "unparseable_time", id="impossible-utc-offset"),
    pytest.param("5651437099,1.0,,122,2017-04-18 00:25:00", "invalid_key", id="missing-station-id"),
    pytest.param("5651437099,1.0,1161114004,,2017-04-18 00:25:00", "invalid_key", id="missing-parameter-id"),
    pytest.param("abc,1.0,1161114004,122,2017-04-18 00:25:00", "invalid_key", id="non-integer-id-text"),
    pytest.param("5651437099.5,1.0,1161114004,122,2017-04-18 00:25:00", "invalid_key", id="non-integer-id-fraction"),
    pytest.param("99999999999999999999,1.0,1161114004,122,2017-04-18 00:25:00", "invalid_key", id="id-beyond-int64"),
    pytest.param("9223372036854775808,1.0,1161114004,122,2017-04-18 00:25:00", "invalid_key", id="id-just-beyond-int64"),
    pytest.param("5651437099,1.0,99999999999999999999,122,2017-04-18 00:25:00", "invalid_key", id="station-id-beyond-int64"),
    pytest.param("5651437099,1.0,1161114004,99999999999999999999,2017-04-18 00:25:00", "invalid_key", id="parameter-id-beyond-int64"),
    pytest.param("-99999999999999999999,1.0,1161114004,122,2017-04-18 00:25:00", "invalid_key", id="id-below-int64"),
    pytest.param("5651437099,1.0,1161114004,999,2017-04-18 00:25:00", "unknown_parameter", id="unknown-parameter-id"),
    pytest.param("5651437089,9.0,1161114004,122,2017-04-18 00:25:00", "duplicate_id", id="repeated-id"),
]


def ingest_and_clean(path: Path, catalogue):
    raw = read_export(path, path.name)
    return clean_readings(raw, catalogue, clean_schema(catalogue))


@pytest.mark.parametrize(("bad_row", "reason"), ROW_CASES)
def test_dirty_row_is_quarantined_with_its_reason(bad_row, reason, write_csv, catalogue):
    path = write_csv("param-2017-04-18.csv", [*GOOD_ROWS, bad_row])
    result = ingest_and_clean(path, catalogue)
    assert result.quarantine["quarantine_reason"].tolist() == [reason]
    assert result.quarantine["source_row"].tolist() == [len(GOOD_ROWS) + 2]  # its line in the file
    assert result.quarantine["source_file"].tolist() == ["param-2017-04-18.csv"]
    assert result.clean["id"].tolist() == [5651437088, 5651437089, 5651437090]


@pytest.mark.parametrize(
    "bad_row",
    [
        pytest.param("-5651437099,1.0,1161114004,122,2017-04-18 00:25:00", id="negative-id"),
        pytest.param("5651437099,1.0,-1161114004,122,2017-04-18 00:25:00", id="negative-station-id"),
    ],
)
def test_negative_key_is_quarantined_not_fatal(bad_row, write_csv, catalogue):
    """The raw and clean schemas require id and station_id >= 0; a dirty row must be quarantined, not fail the stage."""
    path = write_csv("param-2017-04-18.csv", [*GOOD_ROWS, bad_row])
    result = ingest_and_clean(path, catalogue)
    assert result.quarantine["quarantine_reason"].tolist() == ["invalid_key"]
    assert result.clean["id"].tolist() == [5651437088, 5651437089, 5651437090]


# --- the stage entry point fails cleanly ----------------------------------------------------------


STAGE_OUTPUTS = ["data/raw.parquet", "meta/raw.yaml", "meta/raw_failures.json", "meta/raw.json", "meta/raw.md"]


def write_params(cwd: Path, sources: list[str]) -> None:
    """The project's params.yaml (every section is required) with data.sources replaced."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["sources"] = sources
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def run_ingest_stage(cwd: Path) -> subprocess.CompletedProcess:
    command = [
        str(PROJECT / ".venv" / "bin" / "python"),
        str(PROJECT / "src" / "stages" / "ingest.py"),
        "--simulated",
        "simulated",
        "--inputs",
        "external",
        "--sensors",
        str(PROJECT / "metadata" / "sensors.yaml"),
        "--out",
        STAGE_OUTPUTS[0],
        "--schema",
        STAGE_OUTPUTS[1],
        "--failures",
        STAGE_OUTPUTS[2],
        "--document",
        STAGE_OUTPUTS[3],
        "--datasheet",
        STAGE_OUTPUTS[4],
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("sources", "files", "expected"),
    [
        pytest.param(
            ["simulated"],
            {"simulated/param-2017-04-18.csv": good_export().replace(",", ";").encode()},
            "ingest: error: simulated/param-2017-04-18.csv: wrong delimiter ';' in header (expected ',')",
            id="wrong-delimiter",
        ),
        pytest.param(
            ["simulated"],
            {
                "simulated/param-2017-04-18.csv": good_export().encode(),
                "simulated/param-2017-04-19.csv": gzip.compress(good_export().encode()),
            },
            "ingest: error: simulated/param-2017-04-19.csv: a gzip archive, not a CSV export",
            id="gzip-after-good-file",
        ),
        pytest.param(
            ["simulated", "elsewhere/x.csv"],
            {"simulated/param-2017-04-18.csv": good_export().encode(), "elsewhere/x.csv": good_export().encode()},
            "ingest: error: data.sources: elsewhere/x.csv is outside external",
            id="source-outside-inputs",
        ),
    ],
)
def test_ingest_stage_fails_with_one_line_and_writes_nothing(sources, files, expected, tmp_path):
    write_params(tmp_path, sources)
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))

    completed = run_ingest_stage(tmp_path)

    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith(expected)
    for output in STAGE_OUTPUTS:
        assert not (tmp_path / output).exists()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before  # not even a temp file


def test_ingest_stage_succeeds_on_a_good_export(tmp_path):
    """The same harness on a good file: proves the failure cases fail for their input, not for the harness."""
    write_params(tmp_path, ["simulated"])
    (tmp_path / "simulated").mkdir()
    (tmp_path / "simulated" / "param-2017-04-18.csv").write_text("\n".join([HEADER, *GOOD_ROWS]) + "\n")
    completed = run_ingest_stage(tmp_path)
    assert completed.returncode == 0, completed.stderr
    for output in STAGE_OUTPUTS:
        assert (tmp_path / output).is_file()
    assert len(pd.read_parquet(tmp_path / STAGE_OUTPUTS[0])) == len(GOOD_ROWS)
