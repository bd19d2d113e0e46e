"""Ingestion edge cases: exact integer keys, links and spellings in data.sources, line numbers, oversized lines, JSON-safe reports.

Each case either reads correctly (exact values, the file's real line numbers) or fails with one exact, short
message naming the file or the data.sources entry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from bts.data.cleaning import clean_readings
from bts.data.ingest import MAX_LINE_BYTES, failure_report, read_export, read_exports, resolve_sources
from bts.data.schemas import clean_schema, raw_schema
from bts.errors import ConfigError, InputFileError
from tests.unit.test_bad_inputs import HEADER, run_ingest_stage, write_params

ROW = "5651437088,1.0,1161114004,122,2017-04-18 00:24:19"
FILE = "param-2017-04-18-station-1161114004.csv"


def rows(count: int, first_id: int = 5651437088) -> list[str]:
    return [f"{first_id + i},1.0,1161114004,122,2017-04-18 00:24:{19 + i:02d}" for i in range(count)]


def read_error(path: Path) -> str:
    with pytest.raises(InputFileError) as caught:
        read_export(path, path.name)
    assert caught.value.path == str(path)
    return caught.value.reason


# --- 1. integer keys are parsed as text: exact up to 2**63-1, NA beyond (quarantined as invalid_key) ---------------


def test_ids_up_to_int64_max_stay_exact(write_csv):
    path = write_csv(
        "ids.csv", [f"{2**63 - 1},1.0,1161114004,122,2017-04-18 00:24:19", f"{2**53 + 1},1.0,{2**63 - 1},122,2017-04-18 00:24:20"]
    )
    raw = read_export(path, "ids.csv")
    assert str(raw["id"].dtype) == "Int64"
    assert raw["id"].tolist() == [2**63 - 1, 2**53 + 1]  # 2**53 + 1 is not a float: a detour through float64 would round it
    assert raw["station_id"].tolist() == [1161114004, 2**63 - 1]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        pytest.param("9223372036854775807", 2**63 - 1, id="int64-max"),
        pytest.param("9223372036854775808", None, id="int64-max-plus-one"),
        pytest.param("99999999999999999999", None, id="twenty-digits"),
        pytest.param("18446744073709551616", None, id="beyond-uint64"),
        pytest.param("-99999999999999999999", None, id="below-int64"),
        pytest.param("-5651437099", -5651437099, id="negative-kept-for-invalid-key"),
        pytest.param(" 5651437099 ", 5651437099, id="padded"),
        pytest.param("+5651437099", 5651437099, id="plus-sign"),
        pytest.param("0005651437099", 5651437099, id="leading-zeros"),
        pytest.param("00000000009223372036854775807", 2**63 - 1, id="leading-zeros-int64-max"),
        pytest.param("5651437099.0", 5651437099, id="whole-decimal"),
        pytest.param("9223372036854775807.000", 2**63 - 1, id="whole-decimal-int64-max"),
        pytest.param("5651437099.5", None, id="fraction"),
        pytest.param("5.651437099e9", None, id="exponent"),
        pytest.param("0x10", None, id="hexadecimal"),
        pytest.param("", None, id="empty"),
        pytest.param("abc", None, id="text"),
    ],
)
def test_an_id_field_is_read_exactly_or_as_na(field, expected, write_csv):
    path = write_csv("ids.csv", [f"{field},1.0,1161114004,122,2017-04-18 00:24:19", ROW])  # one plain row beside it
    raw = read_export(path, "ids.csv")
    value = raw["id"].iloc[0]
    assert (None if pd.isna(value) else int(value)) == expected
    assert raw["id"].iloc[1] == 5651437088


@pytest.mark.parametrize("column", ["id", "station_id", "parameter_id"])
def test_a_key_beyond_int64_is_quarantined_as_invalid_key(column, write_csv, catalogue):
    fields = dict(zip(HEADER.split(","), rows(1, first_id=5651437099)[0].split(","), strict=True))
    fields[column] = "99999999999999999999"
    path = write_csv("big.csv", [*rows(2), ",".join(fields.values())])
    result = clean_readings(read_export(path, "big.csv"), catalogue, clean_schema(catalogue))
    assert result.quarantine["quarantine_reason"].tolist() == ["invalid_key"]
    assert result.quarantine["source_row"].tolist() == [4]
    assert result.clean["id"].tolist() == [5651437088, 5651437089]


# --- 2. and 3. data.sources: links out of the repository, one file under two spellings ----------------------------


@pytest.fixture
def repo(tmp_path, write_csv):
    """A repository folder with external/real/<FILE> (a declared input), simulated/, and a secret file outside it."""
    root = tmp_path / "repo"
    write_csv(f"repo/external/real/{FILE}", "\n".join([HEADER, *rows(2)]) + "\n")
    write_csv("repo/simulated/param-2017-04-18.csv", "\n".join([HEADER, *rows(2)]) + "\n")
    (tmp_path / "secret.csv").write_text("id,value,station_id,parameter_id,reading_time\nsecret,1,2,3,4\n")
    return root


def resolve(root: Path, sources: list[str]) -> list[Path]:
    return resolve_sources(sources, root / "simulated", [root / "external"], root=root)


def config_error(root: Path, sources: list[str]) -> str:
    with pytest.raises(ConfigError) as caught:
        resolve(root, sources)
    return str(caught.value)


def test_a_listed_link_out_of_the_repository_is_refused(repo):
    (repo / "external" / "x.csv").symlink_to(repo.parent / "secret.csv")
    message = config_error(repo, [f"{repo}/external/x.csv"])
    assert message == f"data.sources: {repo}/external/x.csv is a link to a file outside the repository ({repo.parent}/secret.csv)"


def test_a_link_out_of_the_repository_inside_a_listed_folder_is_refused(repo):
    (repo / "external" / "real" / "x.csv").symlink_to(repo.parent / "secret.csv")
    message = config_error(repo, [f"{repo}/external/real"])
    assert message == f"data.sources: {repo}/external/real/x.csv is a link to a file outside the repository ({repo.parent}/secret.csv)"


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="needs /etc/passwd")
def test_a_link_to_etc_passwd_is_refused_by_the_stage_in_one_line_without_its_content(tmp_path):
    (tmp_path / "simulated").mkdir()
    (tmp_path / "simulated" / "param-2017-04-18.csv").write_text("\n".join([HEADER, *rows(2)]) + "\n")
    (tmp_path / "external").mkdir()
    (tmp_path / "external" / "x.csv").symlink_to("/etc/passwd")
    write_params(tmp_path, ["simulated", "external"])
    completed = run_ingest_stage(tmp_path)
    assert completed.returncode == 1
    assert completed.stderr == "ingest: error: data.sources: external/x.csv is a link to a file outside the repository (/etc/passwd)\n"
    assert not (tmp_path / "data").exists()


def test_a_declared_input_folder_outside_the_repository_is_refused(repo):
    outside = repo.parent / "elsewhere"
    (outside / "x.csv").parent.mkdir()
    (outside / "x.csv").write_text("\n".join([HEADER, *rows(1)]) + "\n")
    with pytest.raises(ConfigError) as caught:
        resolve_sources([f"{outside}/x.csv"], repo / "simulated", [outside], root=repo)
    assert str(caught.value) == f"data.sources: {outside}/x.csv is a file outside the repository ({outside}/x.csv)"


def test_links_that_stay_inside_the_inputs_are_read(repo):
    (repo / "external" / "latest.csv").symlink_to(repo / "external" / "real" / FILE)
    files = resolve(repo, [f"{repo}/external/latest.csv"])
    assert files == [repo / "external" / "latest.csv"]
    raw = read_exports(files, root=repo)
    assert raw["source_file"].tolist() == ["external/latest.csv"] * 2  # the path as listed, not the link's target


def test_a_broken_link_in_a_listed_folder_is_refused(repo):
    (repo / "external" / "real" / "gone.csv").symlink_to(repo / "external" / "nowhere.csv")
    assert config_error(repo, [f"{repo}/external/real"]) == f"data.sources: {repo}/external/real/gone.csv is a broken link"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("{root}/external/real/" + FILE, "{root}/external/../external/real/" + FILE, id="dot-dot"),
        pytest.param("{root}/external/real/" + FILE, "{root}/external/./real//" + FILE, id="dot-and-double-slash"),
        pytest.param("{root}/external/real/" + FILE, "external/real/" + FILE, id="absolute-and-relative"),
        pytest.param("{root}/external/real/" + FILE, "{root}/external/latest.csv", id="link-to-it"),
    ],
)
def test_one_file_under_two_spellings_is_listed_twice(first, second, repo, monkeypatch):
    monkeypatch.chdir(repo)
    (repo / "external" / "latest.csv").symlink_to(repo / "external" / "real" / FILE)
    first, second = first.format(root=repo), second.format(root=repo)
    assert config_error(repo, [first, second]) == f"data.sources: {first} is listed twice (also as {second})"


def test_a_file_listed_and_inside_a_listed_folder_is_listed_twice(repo):
    file = f"{repo}/external/real/{FILE}"
    assert config_error(repo, [f"{repo}/external/../external", file]) == (
        f"data.sources: {repo}/external/../external/real/{FILE} is listed twice (also as {file})"
    )


def test_a_folder_holding_a_file_and_a_link_to_it_is_listed_twice(repo):
    (repo / "external" / "real" / "latest.csv").symlink_to(repo / "external" / "real" / FILE)
    assert config_error(repo, [f"{repo}/external"]) == (
        f"data.sources: {repo}/external/real/latest.csv is listed twice (also as {repo}/external/real/{FILE})"
    )


def test_the_same_spelling_twice_is_listed_twice(repo):
    file = f"{repo}/external/real/{FILE}"
    assert config_error(repo, [file, file]) == f"data.sources: {file} is listed twice"


# --- 4. and 5. source_row is the file's real line number ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        pytest.param(f"\n{HEADER}\n{ROW}\n", [3], id="blank-first-line"),
        pytest.param(f"\n\n  \n{HEADER}\n{ROW}\n", [5], id="blank-and-space-lines-first"),
        pytest.param(f"\r\n\r\n{HEADER}\r\n{ROW}\r\n", [4], id="blank-crlf-lines-first"),
        pytest.param(f"\ufeff\n{HEADER}\n{ROW}\n", [3], id="bom-then-blank-line"),
        pytest.param(f"{HEADER}\n\n{ROW}\n\n\n{ROW}\n", [3, 6], id="blank-lines-between-rows"),
        pytest.param(f"{HEADER}\r\n\r\n{ROW}\r\n\r\n{ROW}\r\n", [3, 5], id="blank-crlf-lines-between-rows"),
        pytest.param(f"{HEADER}\r{ROW}\r\r{ROW}", [2, 4], id="old-mac-line-ends"),
        pytest.param(f'{HEADER}\n5651437088,"1.0\n\n",1161114004,122,2017-04-18 00:24:19\n{ROW}\n', [2, 5], id="quoted-newlines"),
        pytest.param(f'{HEADER}\n5651437088,"say ""hi""\nthere",1161114004,122,x\n{ROW}\n', [2, 4], id="escaped-quotes-and-newline"),
        pytest.param(f"{HEADER}\n{ROW}\n{ROW}", [2, 3], id="no-final-newline"),
    ],
)
def test_source_row_is_the_line_the_row_starts_on(content, lines, write_csv):
    path = write_csv("lines.csv", content)
    raw = read_export(path, "lines.csv")
    assert raw["source_row"].tolist() == lines
    assert raw["id"].tolist() == [5651437088] * len(lines)


def test_a_blank_first_line_does_not_make_the_header_a_reading(write_csv, catalogue):
    path = write_csv("blank.csv", "\n" + "\n".join([HEADER, *rows(3)]) + "\n")
    raw = read_export(path, "blank.csv")
    assert raw["id"].tolist() == [5651437088, 5651437089, 5651437090]
    result = clean_readings(raw, catalogue, clean_schema(catalogue))
    assert result.quarantine.empty
    assert result.clean["source_row"].tolist() == [3, 4, 5]


def test_a_quarantined_row_after_blank_lines_names_its_real_line(write_csv, catalogue):
    path = write_csv("dirty.csv", "\n".join([HEADER, *rows(2), "", "", "5651437099,abc,1161114004,122,2017-04-18 00:25:00"]) + "\n")
    result = clean_readings(read_export(path, "dirty.csv"), catalogue, clean_schema(catalogue))
    assert result.quarantine["source_row"].tolist() == [6]


def test_line_numbers_of_many_rows_with_blank_lines_and_quoted_newlines(write_csv):
    """Every 3rd row is followed by a blank line, every 5th holds a quoted line break: line numbers follow both."""
    lines, expected, line = [HEADER], [], 2
    for i in range(3000):
        expected.append(line)
        value = '"1.0\n"' if i % 5 == 0 else "1.0"
        lines.append(f"{5651437088 + i},{value},1161114004,122,2017-04-18 00:24:19")
        line += 2 if i % 5 == 0 else 1
        if i % 3 == 0:
            lines.append("")
            line += 1
    raw = read_export(write_csv("many.csv", "\n".join(lines) + "\n"), "many.csv")
    assert raw["source_row"].tolist() == expected


# --- 6. and 7. oversized lines: a short message, never the content ----------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(b"x" * 10_000_000, "header line longer than 64 KiB: not a CSV export", id="10-MB-single-line"),
        pytest.param(b"id," * 30_000, "header line longer than 64 KiB: not a CSV export", id="90-KB-header-line"),
        pytest.param(
            b"\n\n" + b"a" * (MAX_LINE_BYTES + 1) + b"\n", "header line longer than 64 KiB: not a CSV export", id="after-blank-lines"
        ),
        pytest.param(
            f"{HEADER}\n{ROW}\n5651437089,1.0,1161114004,122,".encode() + b"x" * 10_000_000 + b"\n",
            "line 3: row longer than 64 KiB: not a reading",
            id="10-MB-single-field",
        ),
        pytest.param(
            f'{HEADER}\n{ROW}\n\n5651437089,"'.encode() + b"x\n" * 40_000 + b'",1161114004,122,x\n',
            "line 4: row longer than 64 KiB: not a reading",
            id="80-KB-quoted-multiline-field",
        ),
    ],
)
def test_an_oversized_line_fails_with_a_short_message(content, reason, write_csv):
    path = write_csv("huge.csv", content)
    assert read_error(path) == reason


def test_a_row_just_under_the_limit_is_read(write_csv):
    long_time = "x" * (MAX_LINE_BYTES - 100)
    raw = read_export(write_csv("long.csv", "\n".join([HEADER, ROW, f"5651437089,1.0,1161114004,122,{long_time}"]) + "\n"), "long.csv")
    assert raw["reading_time"].str.len().tolist() == [19, len(long_time)]


@pytest.mark.parametrize("offset", [-2, -1, 0, 1, 2])
@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n", b""])
def test_the_quick_line_length_check_agrees_with_the_line_by_line_one(offset, extra, end, tmp_path):
    """A line at the limit or one byte over it, ending anywhere near a block boundary, with every kind of line end."""
    from bts.data.ingest import SCAN_BLOCK_BYTES, _lines_fit

    short = b"x" * 50 + end
    before = short * ((SCAN_BLOCK_BYTES + offset - MAX_LINE_BYTES) // len(short))
    path = tmp_path / "lines.csv"
    path.write_bytes(before + b"y" * (MAX_LINE_BYTES + extra) + end + short * 3)
    longest = max(len(line) for line in path.read_bytes().replace(b"\r", b"\n").split(b"\n"))
    assert _lines_fit(path) == (longest <= MAX_LINE_BYTES)


def test_a_long_header_is_not_echoed(write_csv):
    columns = ",".join(f"column_{i}" for i in range(2000))  # about 22 KB: under the limit, so its columns are checked
    reason = read_error(write_csv("wide.csv", f"{columns}\n1,2\n"))
    assert reason.startswith("missing column(s) ['id', 'value', 'station_id', 'parameter_id', 'reading_time']; header is ['column_0', ")
    assert reason.endswith("...")
    assert len(reason) < 200


# --- malformed CSV inside a good header: one line, with the line number ---------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(f"{HEADER}\n{ROW}\n\n\n{ROW},extra\n", "line 5: 6 fields, expected 5", id="ragged-after-blank-lines"),
        pytest.param(f'{HEADER}\n5651437088,"1\n2",1161114004,122\n', "line 2: 4 fields, expected 5", id="ragged-quoted-newline"),
        pytest.param(f"{HEADER}\n{ROW}\n   \n", "line 3: 1 field, expected 5", id="line-of-spaces"),
        pytest.param(
            f'{HEADER}\n{ROW}\n5651437089,"1.0,1161114004,122,x\n{ROW}\n', 'line 3: a quote (") that is never closed', id="unclosed-quote"
        ),
        pytest.param(
            f'{HEADER}\n{ROW}\n5651437089,1"0,1161114004,122,x\n5651437090,1"0,1161114004,122,x\n',
            'quotes (") inside unquoted fields: cannot tell which line each row starts on',
            id="stray-quotes",
        ),
        pytest.param(
            f"{HEADER}\n{ROW}\n\n".encode() + b"5651437089,\xe9,1161114004,122,x\n", "line 4: undecodable bytes (not UTF-8)", id="latin1"
        ),
        pytest.param(b"\n\n  \n", "empty file (blank lines only)", id="blank-lines-only"),
        pytest.param(f"\n{HEADER}\n\n".encode(), "header only, no readings", id="header-between-blank-lines"),
    ],
)
def test_a_malformed_file_names_the_line(content, reason, write_csv):
    assert read_error(write_csv("bad.csv", content)) == reason


# --- 8. the failure report is valid JSON ------------------------------------------------------------------------


def test_failure_report_samples_are_valid_json(write_csv, catalogue):
    path = write_csv(
        "dirty.csv",
        [
            "5651437088,inf,1161114004,122,2017-04-18 00:24:19",
            "5651437089,-inf,1161114004,122,2017-04-18 00:24:20",
            "5651437090,,1161114004,122,2017-04-18 00:24:21",
            "99999999999999999999,1.0,1161114004,122,2017-04-18 00:24:22",
        ],
    )
    report = failure_report(read_export(path, "dirty.csv"), raw_schema(catalogue))
    text = json.dumps(report, allow_nan=False)  # what bts.files.write_json does: raises on a bare NaN or Infinity
    samples = {(check["column"], check["check"]): check["sample_rows"] for check in json.loads(text)["checks"]}
    assert [row["value"] for row in samples["(row)", "within_sensor_range"]] == ["inf", "-inf"]
    assert [(row["id"], row["value"]) for row in samples["value", "not_nullable"]] == [(5651437090, None)]
    assert [(row["id"], row["source_row"]) for row in samples["id", "not_nullable"]] == [(None, 5)]


# --- a file that cannot be read at all ----------------------------------------------------------------------------


def test_a_folder_given_as_a_file_is_an_input_file_error(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    assert read_error(tmp_path / "folder.csv") == "cannot be read (Is a directory)"


def as_unprivileged_user(function, *args) -> str:
    """function(*args) in a forked child that gave up root for `nobody` (root reads any file); its result as text."""
    if os.geteuid() != 0:
        return function(*args)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and never returns
        os.close(reader)
        try:
            os.setgid(65534)
            os.setuid(65534)
            result = str(function(*args))
        except BaseException as exc:
            result = f"child failed: {exc!r}"
        os.write(writer, result.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        result = pipe.read()
    os.waitpid(child, 0)
    return result


def test_an_unreadable_file_is_an_input_file_error(write_csv):
    path = write_csv("locked.csv", f"{HEADER}\n{ROW}\n")
    path.chmod(0)
    assert as_unprivileged_user(read_error, path) == "cannot be read (Permission denied)"


@pytest.mark.parametrize(
    "fields",
    [
        ["1.5", " 2.25 ", "-0.0", "0.0", "007.50", "123456789012345.6", "0.1234567890123456"],  # short decimals and longer ones
        ["", "x", "1e5", "inf", "-inf", "NaN", "+1.5", "1.", ".5", "-0", "1,5"],  # what pandas reads its own way
        ["1", "2", "99999999999999999999"],  # integers only: pandas reads them as integers
        ["1.5", "99999999999999999999", "-5"],  # integers beside a decimal: read as floats
        [],
    ],
)
def test_values_are_read_as_pandas_to_numeric_reads_them(fields):
    import numpy as np
    import pyarrow

    from bts.data.ingest import _to_float

    column = pyarrow.chunked_array([pyarrow.array(fields, type=pyarrow.string())])
    want = pd.to_numeric(column.to_pandas().str.strip(), errors="coerce").astype("float64")
    got = _to_float(column)
    assert got.index.equals(want.index) and got.dtype == want.dtype
    assert np.array_equal(got.to_numpy().view(np.int64), want.to_numpy().view(np.int64))  # bit for bit, -0.0 and NaN included


def test_a_sparse_file_of_two_gigabytes_is_refused_without_being_read_whole(tmp_path) -> None:
    """One endless line of zero bytes: refused after its first blocks, with the memory of a small file."""
    import subprocess
    import sys

    path = tmp_path / "huge.csv"
    with open(path, "wb") as handle:
        handle.truncate(2 * 1024**3)  # sparse: no disk used
    script = f"""
import resource
from pathlib import Path
from bts.data.ingest import read_export
from bts.errors import InputFileError
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
try:
    read_export(Path({str(path)!r}), "huge.csv")
except InputFileError as exc:
    print(exc)
print(loaded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    message, peaks = done.stdout.splitlines()
    loaded_mb, peak_mb = map(int, peaks.split())
    assert message.endswith("header line longer than 64 KiB: not a CSV export")
    # Beyond what the libraries take once imported (their footprint varies with the machine): a few blocks, where
    # reading the file whole would take 2 GB more.
    assert peak_mb - loaded_mb < 256, (loaded_mb, peak_mb)
