"""Where the project is, what its dvc.yaml gives each stage, and git as the library calls it.

dvc.yaml is the one home of the pipeline's paths: a command that needs one (the package folder, the features table)
reads it from the stage command that writes it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bts.errors import BtsError
from bts.hashing import dir_manifest, manifest_md5

PIPELINE_FILE = "dvc.yaml"
TRAINING_STAGE = "train"
CODE_FOLDER = "src"


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


def code_deps(root: Path, stage: str = TRAINING_STAGE) -> list[str]:
    """The code a stage depends on as root's dvc.yaml lists it: its files and folders under src/."""
    import yaml

    try:
        deps = yaml.safe_load((root / PIPELINE_FILE).read_text())["stages"][stage]["deps"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise BtsError(f"{root / PIPELINE_FILE}: no stage '{stage}' with deps") from None
    return [dep for dep in deps if isinstance(dep, str) and dep.startswith(f"{CODE_FOLDER}/")]


def code_md5(root: Path, stage: str = TRAINING_STAGE) -> str:
    """md5 (as a DVC folder md5) of the Python sources a stage depends on: for train, the model's code_md5.

    Evaluate and serve find the model's training run by it, and a reproduction proves with it which code ran. A
    layout before src/stages/ kept every dep under src/bts and hashed relative to it: so does this, for its commits.
    """
    deps = code_deps(root, stage)
    base = f"{CODE_FOLDER}/bts" if all(dep.startswith(f"{CODE_FOLDER}/bts/") for dep in deps) else CODE_FOLDER
    parts = [dep.removeprefix(f"{base}/") for dep in deps]
    sources = {path: md5 for path, md5 in dir_manifest(root / base).items() if path.endswith(".py")}
    return manifest_md5({path: md5 for path, md5 in sources.items() if any(path == part or path.startswith(f"{part}/") for part in parts)})
