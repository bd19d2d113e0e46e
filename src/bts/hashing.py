"""Content hashes as DVC computes them and as dvc.lock records them: the one way this project names a file's version."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from bts.errors import BtsError, first_line

# libyaml's loader where PyYAML has it: a dvc.lock parses in a tenth of the time, and `bts lineage` reads one per commit.
LOCK_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dir_manifest(path: str | Path) -> dict[str, str]:
    """{relative path: md5} of every file below a folder, sorted by path."""
    path = Path(path)
    files = sorted((f for f in path.rglob("*") if f.is_file()), key=lambda f: f.relative_to(path).as_posix())
    return {f.relative_to(path).as_posix(): file_md5(f) for f in files}


def manifest_md5(manifest: dict[str, str]) -> str:
    """The md5 DVC gives a folder with these files: the md5 of its '.dir' listing, suffixed '.dir'."""
    entries = [{"md5": md5, "relpath": relpath} for relpath, md5 in sorted(manifest.items())]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def dvc_md5(path: str | Path) -> str:
    """The md5 DVC records in dvc.lock: the file's md5, or for a folder the md5 of its '.dir' listing."""
    path = Path(path)
    return file_md5(path) if path.is_file() else manifest_md5(dir_manifest(path))


def lock_md5s(lock_text: str | bytes) -> dict[str, str]:
    """{output path: md5} for every stage output a dvc.lock text records; BtsError when the text is no dvc.lock
    (a merge conflict left in it, say)."""
    try:
        lock = yaml.load(lock_text, Loader=LOCK_LOADER) or {}
        return {out["path"]: out.get("md5", "") for stage in lock.get("stages", {}).values() for out in stage.get("outs", [])}
    except yaml.YAMLError as exc:
        raise BtsError(f"dvc.lock is not valid YAML: {first_line(exc)}") from None
    except (AttributeError, KeyError, TypeError):  # any level of it shaped otherwise than stages -> outs -> path, md5
        raise BtsError("dvc.lock holds no mapping of stages with their outputs") from None
