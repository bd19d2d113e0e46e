"""bts.hashing against hashlib and against what the real `dvc` records."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bts.errors import BtsError
from bts.hashing import dir_manifest, dvc_md5, file_md5, lock_md5s, manifest_md5

BIN = Path(sys.executable).parent  # the virtual environment running the tests, with its `dvc`


def test_file_md5_is_hashlib_md5_of_the_bytes(tmp_path):
    path = tmp_path / "export.csv"
    data = b"id,value\r\n" + bytes(range(256)) * 5000  # binary, CRLF, larger than one 1 MiB read block
    path.write_bytes(data)
    assert len(data) > 1 << 20
    assert file_md5(path) == hashlib.md5(data).hexdigest()
    assert file_md5(str(path)) == hashlib.md5(data).hexdigest()


def test_file_md5_of_an_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert file_md5(path) == "d41d8cd98f00b204e9800998ecf8427e"


def run(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}: {result.stderr}"


def test_dvc_md5_of_a_folder_is_what_dvc_add_records(tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub.csv").write_bytes(b"1,2.5\n")  # 'sub.csv' sorts before 'sub/inner.csv' as a string, after it as path parts
    (folder / "sub" / "inner.csv").write_bytes(b"2,3.5\r\n")
    (folder / "zé.txt").write_text("non-ASCII name\n", encoding="utf-8")
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    run(["dvc", "add", "-q", "folder"], tmp_path)
    recorded = yaml.safe_load((tmp_path / "folder.dvc").read_text(encoding="utf-8"))["outs"][0]
    assert recorded["path"] == "folder" and recorded["nfiles"] == 3
    assert dvc_md5(folder) == recorded["md5"]
    assert manifest_md5(dir_manifest(folder)) == recorded["md5"]


def test_dir_manifest_lists_every_file_by_posix_path(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.bin").write_bytes(b"deep")
    (tmp_path / "top.txt").write_bytes(b"top")
    assert dir_manifest(tmp_path) == {"a/b/deep.bin": hashlib.md5(b"deep").hexdigest(), "top.txt": hashlib.md5(b"top").hexdigest()}


def test_manifest_md5_does_not_depend_on_the_manifest_order():
    forward = {"a.csv": "0" * 32, "b/c.csv": "1" * 32}
    assert manifest_md5(forward) == manifest_md5(dict(reversed(forward.items())))
    assert manifest_md5({}) == hashlib.md5(b"[]").hexdigest() + ".dir"


def test_dvc_md5_of_a_file_is_its_md5(tmp_path):
    path = tmp_path / "model.joblib"
    path.write_bytes(b"\x00weights")
    assert dvc_md5(path) == hashlib.md5(b"\x00weights").hexdigest()


LOCK = """\
schema: '2.0'
stages:
  ingest:
    cmd: python src/stages/ingest.py
    deps:
    - path: src/bts/data
      md5: 1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a.dir
    outs:
    - path: data/interim/raw.parquet
      hash: md5
      md5: 0187a0c23cf739ff3b5451687acf3e4b
      size: 10
    - path: metadata/datasets/données.json
      hash: md5
      md5: 2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b
  simulate:
    cmd: python src/stages/simulate.py
    outs:
    - path: data/raw/simulated
      hash: md5
      md5: 3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c.dir
      nfiles: 4
  check:
    cmd: true
"""

LOCK_MD5S = {
    "data/interim/raw.parquet": "0187a0c23cf739ff3b5451687acf3e4b",
    "metadata/datasets/données.json": "2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b",
    "data/raw/simulated": "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c.dir",
}


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_lock_md5s_reads_every_stage_output(as_bytes):
    text = LOCK.encode("utf-8") if as_bytes else LOCK
    assert lock_md5s(text) == LOCK_MD5S  # deps are not outputs; a stage without outs adds nothing


def test_lock_md5s_of_an_empty_lock():
    assert lock_md5s("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LOCK.replace("  simulate:", "<<<<<<< HEAD\n  simulate:"), "dvc.lock is not valid YAML: "),
        ("- one\n- two\n", "dvc.lock holds no mapping of stages"),
        ("stages: [train]\n", "dvc.lock holds no mapping of stages"),
    ],
    ids=["merge-conflict", "a-list", "stages-a-list"],
)
def test_lock_md5s_of_a_text_that_is_no_dvc_lock_is_one_error(text, message):
    with pytest.raises(BtsError) as raised:
        lock_md5s(text)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert lock_md5s(b"schema: '2.0'\nstages: {}\n") == {}
