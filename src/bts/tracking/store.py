"""Where runs are tracked, and what a run records about the code, data and machine behind it.

The default store is a SQLite database and an artifact folder at the root of
the user's repository. DVC runs queued and `--temp` experiments in copies
under .dvc/tmp but sets DVC_ROOT to the main repository, so every run lands in
the one store; MLFLOW_TRACKING_URI overrides it.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import metadata as package_metadata
from pathlib import Path

import psutil
import yaml

STORE_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
KEY_PACKAGES = ["mlflow", "dvc", "scikit-learn", "pandas", "pandera", "numpy", "pyarrow"]


def _git(args: list[str], cwd: str | Path) -> str | None:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def repository_root(cwd: str | Path = ".") -> Path:
    """The main repository: DVC_ROOT under DVC (also in experiment copies), else git's top level."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    top = _git(["rev-parse", "--show-toplevel"], cwd)
    return Path(top).resolve() if top else Path(cwd).resolve()


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / STORE_DB}"


def artifact_location(root: Path) -> str:
    return (root / ARTIFACT_DIR).as_uri()


@contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Serialize writes to the local store, so parallel experiments never meet a locked SQLite database."""
    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http", "postgresql")):
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".mlflow.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pipeline_outputs(root: Path) -> list[str]:
    """Every output path dvc.yaml declares, plus dvc.lock."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    outputs = ["dvc.lock"]
    for stage in pipeline.get("stages", {}).values():
        for kind in ("outs", "metrics", "plots"):
            outputs += [next(iter(out)) if isinstance(out, dict) else out for out in stage.get(kind, [])]
    return outputs


def git_tags(cwd: str | Path = ".") -> dict[str, str]:
    """Commit, branch, and whether tracked files other than pipeline outputs differ from the commit."""
    root = Path(cwd).resolve()
    excluded = [f":(exclude){out}" for out in pipeline_outputs(root)] if (root / "dvc.yaml").exists() else []
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", ".", *excluded], cwd)
    return {
        "git.commit": _git(["rev-parse", "HEAD"], cwd) or "unknown",
        "git.branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd) or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
    }


def dvc_tags() -> dict[str, str]:
    """The DVC experiment the stage runs in, when it runs under `dvc exp run`."""
    names = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.baseline_rev", "DVC_STAGE": "dvc.stage"}
    return {tag: os.environ[var] for var, tag in names.items() if os.environ.get(var)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_tags() -> dict[str, str]:
    """CPU, cores, memory, OS, Python and key package versions."""
    tags = {
        "machine.cpu": _cpu_model(),
        "machine.cores": str(os.cpu_count()),
        "machine.memory_gb": f"{psutil.virtual_memory().total / 2**30:.1f}",
        "machine.os": platform.platform(),
        "machine.python": platform.python_version(),
    }
    for package in KEY_PACKAGES:
        with suppress(package_metadata.PackageNotFoundError):
            tags[f"package.{package}"] = package_metadata.version(package)
    return tags


def data_tags(dataset_documents: dict[str, str | Path]) -> dict[str, str]:
    """data.<name>_md5 (as dvc.lock records it) and schema.<name>_md5, from the dataset metadata documents."""
    tags = {}
    for name, path in dataset_documents.items():
        document = json.loads(Path(path).read_text())
        tags[f"data.{name}_md5"] = document["dvc"]["md5"]
        tags[f"data.{name}_path"] = document["dvc"]["path"]
        if document.get("schema"):
            tags[f"schema.{name}_md5"] = document["schema"]["md5"]
    return tags


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    """{'train': {'ridge': {'alpha': 1}}} -> {'train.ridge.alpha': 1}: the names params.yaml and `dvc exp run -S` use."""
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
