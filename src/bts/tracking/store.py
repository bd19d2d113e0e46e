"""Where the project is, where its runs are tracked, and git as the tracking code calls it.

The default store is a SQLite database and an artifact folder at the root of
the user's repository. DVC runs queued and `--temp` experiments in copies
under .dvc/tmp but sets DVC_ROOT to the main repository, so every run lands in
the one store; MLFLOW_TRACKING_URI overrides it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from bts.errors import BtsError

STORE_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
LOCK_FILE = ".mlflow.lock"
PIPELINE_FILE = "dvc.yaml"
LOCK_TIMEOUT_SECONDS = 600
REMOTE_SCHEMES = ("http", "postgresql", "mysql", "mssql", "databricks")
# Where a test may stop a process with a real SIGKILL (registration, a training mid-logging), to prove that what
# a killed process leaves behind is reported and completed by the next call.
KILL_POINT_VARIABLE = "BTS_TEST_KILL_AT"


def kill_point(name: str) -> None:
    if os.environ.get(KILL_POINT_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def find_root(cwd: str | Path | None = None) -> Path:
    """The project's main repository: DVC_ROOT under DVC (also in experiment copies), else the nearest folder up with dvc.yaml."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    start = Path(cwd or Path.cwd()).resolve()
    for folder in [start, *start.parents]:
        if (folder / PIPELINE_FILE).is_file():
            return folder
    raise BtsError(f"not inside a BTS project: no {PIPELINE_FILE} in {start} or any folder above it (cd into the repository)")


def pipeline_argument(root: Path, stage: str, option: str) -> str:
    """The value a stage's command in dvc.yaml gives an option (`--package models/package`): dvc.yaml is the one home of paths."""
    import shlex

    import yaml

    try:
        command = yaml.safe_load((root / PIPELINE_FILE).read_text())["stages"][stage]["cmd"]
        words = shlex.split(command)
        return words[words.index(option) + 1]
    except (OSError, KeyError, TypeError, ValueError, IndexError, yaml.YAMLError):
        raise BtsError(f"{root / PIPELINE_FILE}: stage '{stage}' has no {option} argument") from None


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / STORE_DB}"


def artifact_location(root: Path) -> str:
    return (root / ARTIFACT_DIR).as_uri()


def use_store(root: Path | None = None) -> Path:
    """Point MLflow at the project's store; returns the project root."""
    import mlflow

    root = root or find_root()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small packages: a bar per download is noise
    mlflow.set_tracking_uri(tracking_uri(root))
    return root


def is_local_store() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI", "").startswith(REMOTE_SCHEMES)


@contextmanager
def store_lock(root: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Serialize writes to the local store, so parallel experiments never meet a locked SQLite database."""
    if not is_local_store():
        yield
        return
    lock = FileLock(root / LOCK_FILE, timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise BtsError(f"{root / LOCK_FILE}: the tracking store stayed locked by another process for {timeout:.0f} s") from None
    try:
        yield
    finally:
        lock.release()


def store_is_idle(root: Path) -> bool | None:
    """True when no process holds the store lock (so no training is logging now); None for a remote store."""
    if not is_local_store():
        return None
    lock = FileLock(root / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True


def git(root: Path, *args: str, check: bool = True, input_bytes: bytes | None = None) -> bytes | None:
    """git's raw output (bytes: paths and file contents need not be ASCII); None on failure unless check."""
    result = subprocess.run(["git", *args], cwd=root, input=input_bytes, capture_output=True)
    if result.returncode != 0:
        if check:
            raise BtsError(f"git {' '.join(args)}: {result.stderr.decode(errors='replace').strip()}")
        return None
    return result.stdout


def git_text(root: Path, *args: str, check: bool = True) -> str | None:
    output = git(root, *args, check=check)
    return None if output is None else output.decode("utf-8", errors="replace").strip()
