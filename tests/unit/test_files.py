"""All-or-nothing writes: no temporaries left, files and folders with the permissions a plain write gives."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bts import files
from bts.errors import InputFileError
from bts.files import BackgroundWrites, atomic_folder, atomic_write, read_parquet, write_json, write_parquet


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class Boom(RuntimeError):
    pass


def test_atomic_write_moves_the_written_file_into_place(tmp_path):
    target = tmp_path / "out" / "model.joblib"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"weights"))
    assert target.read_bytes() == b"weights"
    assert entries(target.parent) == ["model.joblib"]


def test_atomic_write_leaves_no_temporary_and_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half written")
        raise Boom("disk full")

    with pytest.raises(Boom, match="disk full"):
        atomic_write(target, fail)
    assert entries(tmp_path) == ["metrics.json"]
    assert target.read_text() == "old"


def test_atomic_write_removes_stale_temporaries_of_its_target(tmp_path):
    target = tmp_path / "raw.parquet"
    (tmp_path / ".raw.parquet.abc123.tmp").write_bytes(b"killed writer")
    (tmp_path / ".raw.parquet.def456.tmp").mkdir()
    (tmp_path / ".other.parquet.abc123.tmp").write_bytes(b"another target's")
    atomic_write(target, lambda tmp: tmp.write_bytes(b"data"))
    assert entries(tmp_path) == [".other.parquet.abc123.tmp", "raw.parquet"]


def test_atomic_write_gives_the_permissions_of_the_umask(tmp_path, umask_022):
    target = tmp_path / "metrics.json"
    atomic_write(target, lambda tmp: tmp.write_text("{}"))
    assert mode(target) == 0o644


def test_atomic_write_follows_a_stricter_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        atomic_write(tmp_path / "secret.json", lambda tmp: tmp.write_text("{}"))
    finally:
        os.umask(previous)
    assert mode(tmp_path / "secret.json") == 0o600


def write_package(files: dict[str, str]):
    def write(folder: Path) -> None:
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)

    return write


def test_atomic_folder_replaces_the_folder_whole(tmp_path, umask_022):
    target = tmp_path / "package"
    atomic_folder(target, write_package({"MLmodel": "v1", "old_only.txt": "stale", "data/model.pkl": "w1"}))
    atomic_folder(target, write_package({"MLmodel": "v2", "data/model.pkl": "w2"}))
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["MLmodel", "data", "data/model.pkl"]
    assert (target / "MLmodel").read_text() == "v2"
    assert entries(tmp_path) == ["package"]  # neither staging nor the old folder is left beside it


def test_atomic_folder_gives_normal_folder_and_file_permissions(tmp_path, umask_022):
    target = tmp_path / "package"
    atomic_folder(target, write_package({"MLmodel": "v1", "data/model.pkl": "w1"}))
    assert mode(target) == 0o755  # not mkdtemp's 0o700
    assert mode(target / "data") == 0o755
    assert mode(target / "MLmodel") == 0o644
    assert mode(target / "data" / "model.pkl") == 0o644


def test_atomic_folder_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "plots"
    atomic_folder(target, write_package({"forecast.csv": "old"}))

    def fail(folder: Path) -> None:
        (folder / "forecast.csv").write_text("half")
        raise Boom("plotting failed")

    with pytest.raises(Boom, match="plotting failed"):
        atomic_folder(target, fail)
    assert entries(tmp_path) == ["plots"]
    assert entries(target) == ["forecast.csv"]
    assert (target / "forecast.csv").read_text() == "old"


def test_atomic_folder_removes_stale_temporaries_of_its_target(tmp_path):
    (tmp_path / ".plots.x1.tmp").mkdir()
    (tmp_path / ".plots.x1.tmp" / "forecast.csv").write_text("killed")
    (tmp_path / ".plots.x2.tmp").write_text("killed")
    atomic_folder(tmp_path / "plots", write_package({"forecast.csv": "new"}))
    assert entries(tmp_path) == ["plots"]


def test_write_json_writes_readable_json(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"test": {"rmse": 0.5}, "station": "Zürich"})
    assert target.read_text(encoding="utf-8") == '{\n  "test": {\n    "rmse": 0.5\n  },\n  "station": "Zürich"\n}\n'
    assert json.loads(target.read_text(encoding="utf-8")) == {"test": {"rmse": 0.5}, "station": "Zürich"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_write_json_refuses_nan_and_infinity(tmp_path, value):
    target = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(target, {"test": {"skill": value}})
    assert entries(tmp_path) == []


def test_stale_temporaries_of_a_sibling_whose_name_extends_the_target_are_not_touched(tmp_path):
    """`.plots.*.tmp` must not match `.plots.png.<random>.tmp`, the (maybe live) temporary of plots.png."""
    sibling_temporary = tmp_path / ".plots.png.k9x2.tmp"
    sibling_temporary.write_bytes(b"being written by the writer of plots.png")
    atomic_folder(tmp_path / "plots", write_package({"forecast.csv": "new"}))
    assert entries(tmp_path) == [".plots.png.k9x2.tmp", "plots"]


def test_background_writes_put_every_file_in_place_at_the_end_with_the_bytes_of_a_plain_write(tmp_path, umask_022):
    frame = pd.DataFrame({"id": [3, 1, 2], "value": [0.5, None, 2.0], "label": ["a", "b", None]})
    write_parquet(tmp_path / "plain.parquet", frame)
    with BackgroundWrites() as background:
        background.parquet(tmp_path / "out" / "a.parquet", frame)
        background.parquet(tmp_path / "out" / "b.parquet", frame.iloc[:1])
        size = background.submit(len, "four")
        assert not (tmp_path / "out" / "a.parquet").exists()  # nothing is in place before the block ends
    assert size.result() == 4
    assert entries(tmp_path / "out") == ["a.parquet", "b.parquet"]
    assert (tmp_path / "out" / "a.parquet").read_bytes() == (tmp_path / "plain.parquet").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "b.parquet"), frame.iloc[:1])
    assert mode(tmp_path / "out" / "a.parquet") == 0o644


@pytest.mark.parametrize("sizes", [[4, 4, 3], [4, 4], [2]], ids=["last-part-shorter", "whole-row-groups", "one-part"])
def test_a_parquet_file_written_in_parts_of_a_row_group_has_the_bytes_of_the_whole_frame(tmp_path, monkeypatch, sizes):
    monkeypatch.setattr(files, "ROW_GROUP_ROWS", 4)  # several row groups from a few rows
    rows = sum(sizes)
    frame = pd.DataFrame(
        {
            "id": range(rows),
            "value": [None if i % 3 == 0 else i / 7 for i in range(rows)],
            "time": pd.date_range("2017-04-18", periods=rows, freq="37s").astype("datetime64[us]"),
            "label": pd.array(["a", None, "ccc"] * rows, dtype="str")[:rows],
        }
    )
    write_parquet(tmp_path / "whole.parquet", frame)
    with BackgroundWrites() as background:
        add = background.parquet_parts(tmp_path / "parts.parquet")
        start = 0
        for size in sizes:
            add(frame.iloc[start : start + size])
            start += size
        assert not (tmp_path / "parts.parquet").exists()  # in place only once the block ends
    assert pq.ParquetFile(tmp_path / "whole.parquet").num_row_groups == len(sizes)
    assert (tmp_path / "parts.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()


def test_a_parquet_file_in_parts_is_not_moved_into_place_when_the_block_fails_after_some_parts(tmp_path):
    (tmp_path / "a.parquet").write_text("last good")
    with pytest.raises(Boom, match="second part failed"), BackgroundWrites() as background:
        add = background.parquet_parts(tmp_path / "a.parquet")
        add(pd.DataFrame({"x": [1, 2]}))
        raise Boom("second part failed")
    assert entries(tmp_path) == ["a.parquet"]
    assert (tmp_path / "a.parquet").read_text() == "last good"


def test_a_parquet_file_given_no_part_is_an_error_not_an_empty_file(tmp_path):
    with pytest.raises(ValueError, match="no part was written"), BackgroundWrites() as background:
        background.parquet_parts(tmp_path / "a.parquet")
    assert entries(tmp_path) == []


def test_an_error_in_the_block_leaves_the_last_good_files_and_no_temporary(tmp_path):
    (tmp_path / "a.parquet").write_text("last good")
    with pytest.raises(Boom, match="validation failed"), BackgroundWrites() as background:
        background.parquet(tmp_path / "a.parquet", pd.DataFrame({"x": [1]}))
        background.parquet(tmp_path / "b.parquet", pd.DataFrame({"x": [2]}))
        raise Boom("validation failed")
    assert entries(tmp_path) == ["a.parquet"]
    assert (tmp_path / "a.parquet").read_text() == "last good"


def test_a_failed_write_moves_no_file_not_even_those_written_well(tmp_path):
    (tmp_path / "b.parquet").write_text("last good")
    unwritable = pd.DataFrame({"x": [1, "text", 2.5]}, dtype=object)  # Arrow cannot type a column of mixed objects
    with pytest.raises(Exception, match="x"), BackgroundWrites() as background:
        background.parquet(tmp_path / "a.parquet", pd.DataFrame({"x": [1]}))
        background.parquet(tmp_path / "b.parquet", unwritable)
    assert entries(tmp_path) == ["b.parquet"]
    assert (tmp_path / "b.parquet").read_text() == "last good"


def test_a_failed_task_moves_no_file(tmp_path):
    def unreadable() -> None:
        raise Boom("input vanished")

    with pytest.raises(Boom, match="input vanished"), BackgroundWrites() as background:
        background.parquet(tmp_path / "a.parquet", pd.DataFrame({"x": [1]}))
        background.submit(unreadable)
    assert entries(tmp_path) == []


def test_an_interrupt_drops_the_writes_not_started_and_waits_for_the_running_task(tmp_path):
    started, finished = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.3)
        finished.set()

    with pytest.raises(KeyboardInterrupt), BackgroundWrites() as background:
        background.submit(slow)
        background.parquet(tmp_path / "a.parquet", pd.DataFrame({"x": [1]}))
        started.wait(5)
        raise KeyboardInterrupt
    assert finished.is_set()  # the block did not end while the task was still running
    assert entries(tmp_path) == []  # the write queued behind it never ran, and its temporary is gone


def test_read_parquet_gives_the_rows_or_only_the_columns_asked_for(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    write_parquet(tmp_path / "t.parquet", frame)
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "t.parquet"), frame)
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "t.parquet", ["b"]), frame[["b"]])


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no such file"),
        (b"", "not a readable Parquet file"),
        (b"PAR1 not really", "not a readable Parquet file"),
        ("truncated", "not a readable Parquet file"),
        ("folder", "not a readable Parquet file"),
        ("no column", "no column 'c' (it has ['a', 'b'])"),
    ],
)
def test_read_parquet_names_the_file_and_the_reason_when_it_cannot_give_the_rows(tmp_path, content, reason):
    path = tmp_path / "t.parquet"
    whole = tmp_path / "whole.parquet"
    write_parquet(whole, pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    if content == "truncated":
        path.write_bytes(whole.read_bytes()[:-20])
    elif content == "folder":
        path.mkdir()
        (path / "part.txt").write_text("not Parquet")
    elif content == "no column":
        path = whole
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputFileError) as raised:
        read_parquet(path, ["a", "c"] if content == "no column" else None)
    assert str(raised.value).startswith(f"{path}: {reason}")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("given", [".git", ".git/objects/evil", "a/../.git/x", "link/x", ".dvc/cache", "repo/.git/y"])
def test_an_output_place_inside_git_or_dvc_is_refused_however_spelled(tmp_path, monkeypatch, given) -> None:
    from bts.errors import ConfigError
    from bts.files import output_place

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / ".git")
    with pytest.raises(ConfigError, match=r"inside a \.(git|dvc) folder, whose files git or DVC own; choose another place$"):
        output_place(given, "--out")


@pytest.mark.parametrize("given", ["scores", "reports/2026", "a.git/x", "gitlab/.gitignore-like"])
def test_an_ordinary_output_place_is_given_back_absolute(tmp_path, monkeypatch, given) -> None:
    from bts.files import output_place

    monkeypatch.chdir(tmp_path)
    assert output_place(given, "--out") == tmp_path / given
