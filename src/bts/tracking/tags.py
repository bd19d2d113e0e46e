"""The one home of run and version tag names, and of what a run records about its code, data and machine.

A run is found by its content (model, params, code and data md5s), never by
an id kept in a tracked file: the same commit then gives the same tracked
bytes, and run ids live only in MLflow.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from contextlib import suppress
from importlib import metadata as package_metadata
from pathlib import Path

import yaml

from bts.project import PIPELINE_FILE, git_text, pipeline_argument

DATASETS = ["raw", "clean", "features"]
DATASET_STAGES = {"raw": "ingest", "clean": "clean", "features": "featurize"}  # the stage whose --document describes it
SCHEMAS = ["raw", "clean"]
KEY_PACKAGES = ["mlflow", "dvc", "scikit-learn", "pandas", "pandera", "numpy", "pyarrow", "skops"]

MODEL_MD5 = "model_md5"
PARAMS_MD5 = "params_md5"
CODE_MD5 = "code_md5"
PACKAGE_MD5 = "package.md5"
EXP_NAME = "dvc.exp_name"
BASELINE_REV = "dvc.baseline_rev"
GIT_COMMIT = "git.commit"
GIT_DIRTY = "git.dirty"
GIT_BRANCH = "git.branch"
REGISTRATION_COMPLETE = "registration.complete"
TRANSITION_PREFIX = "transition."
# host:pid:process start time of the training that logs a run, set when the run starts: on a remote store, where no
# lock tells a live training from a dead one, a RUNNING run whose process is gone from this host is known dead.
TRAINING_PROCESS = "training.process"
# A `bts monitor` report run names the model it watched; the model's version names its newest report.
MONITORED_NAME = "monitor.model_name"
MONITORED_VERSION = "monitor.model_version"
MONITORED_RUN = "monitor.training_run_id"
MONITOR_REPORT = "monitor.latest_report"
MONITORING_SUFFIX = "-monitoring"  # reports on a model live in the experiment `<its training experiment>-monitoring`


def data_md5_tag(name: str) -> str:
    return f"data.{name}_md5"


def data_path_tag(name: str) -> str:
    return f"data.{name}_path"


def schema_md5_tag(name: str) -> str:
    return f"schema.{name}_md5"


def pipeline_outputs(root: Path) -> list[str]:
    """Every output path dvc.yaml declares, plus dvc.lock."""
    pipeline = yaml.safe_load((root / PIPELINE_FILE).read_text())
    outputs = ["dvc.lock"]
    for stage in pipeline.get("stages", {}).values():
        for kind in ("outs", "metrics", "plots"):
            outputs += [next(iter(out)) if isinstance(out, dict) else out for out in stage.get(kind, [])]
    return outputs


def git_tags(cwd: Path) -> dict[str, str]:
    """Commit, branch, and whether tracked files other than pipeline outputs differ from the commit."""
    excluded = [f":(exclude){out}" for out in pipeline_outputs(cwd)] if (cwd / PIPELINE_FILE).exists() else []
    status = git_text(cwd, "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded, check=False)
    return {
        GIT_COMMIT: git_text(cwd, "rev-parse", "HEAD", check=False) or "unknown",
        GIT_BRANCH: git_text(cwd, "rev-parse", "--abbrev-ref", "HEAD", check=False) or "unknown",
        GIT_DIRTY: "unknown" if status is None else str(bool(status)).lower(),
    }


def dvc_tags() -> dict[str, str]:
    """The DVC experiment the stage runs in, when it runs under `dvc exp run`."""
    names = {"DVC_EXP_NAME": EXP_NAME, "DVC_EXP_BASELINE_REV": BASELINE_REV}
    return {tag: os.environ[var] for var, tag in names.items() if os.environ.get(var)}


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_tags() -> dict[str, str]:
    """CPU, cores, memory, OS, Python and key package versions."""
    import psutil

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


def data_tags(datasets_dir: Path) -> dict[str, str]:
    """data.<name>_md5 (as dvc.lock records it), data.<name>_path and schema.<name>_md5, from the dataset documents."""
    tags = {}
    for name in DATASETS:
        document = json.loads((datasets_dir / f"{name}.json").read_text())
        tags[data_md5_tag(name)] = document["dvc"]["md5"]
        tags[data_path_tag(name)] = document["dvc"]["path"]
        if document.get("schema"):
            tags[schema_md5_tag(name)] = document["schema"]["md5"]
    return tags


def feature_columns(datasets_dir: Path) -> list[str]:
    """The model's input columns, as the features document of the same data version lists them."""
    return json.loads((datasets_dir / "features.json").read_text())["feature_columns"]


def target_columns(datasets_dir: Path) -> list[str]:
    """The columns the model forecasts (one per horizon), as the features document of the same data version lists them."""
    return json.loads((datasets_dir / "features.json").read_text())["target_columns"]


def dataset_document_path(root: Path, name: str) -> str:
    """Where dvc.yaml has the metadata document of a dataset written (relative to the project root)."""
    return pipeline_argument(root, DATASET_STAGES[name], "--document")


def training_process_tag() -> str:
    """This process as TRAINING_PROCESS records it."""
    import psutil

    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.3f}"


def training_process_gone(tag: str | None) -> bool:
    """True when the tag names a process of this host that no longer runs (a recycled pid started later is not it)."""
    import psutil

    host, _, rest = (tag or "").partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        return f"{psutil.Process(int(pid)).create_time():.3f}" != started
    except psutil.NoSuchProcess:
        return True
