"""Where a batch's results go: the predictions folder, and beside it the quarantine file and the manifest, all or nothing.

Everything is written into one temporary folder beside the output and moved
into place only when the batch has succeeded, so a failed or interrupted batch
leaves no output (its leftovers are removed by the next batch to the same
folder). The manifest is moved last: when it is there, what it describes is
there too. An existing folder is replaced only if an earlier batch made it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bts.errors import ConfigError
from bts.files import normal_permissions, output_place, parquet_file, remove_stale_temporaries, temporary_prefix

QUARANTINE_SUFFIX = ".quarantine.parquet"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_KIND = "bts-batch-predictions"
# Names inside the staging folder.
PREDICTIONS = "predictions"
QUARANTINE = "quarantine.parquet"
MANIFEST = "manifest.json"
PREVIOUS = "previous"
PART_FILE = "part-00000.parquet"  # the pandas engine's one file of predictions (Spark writes one per task)


@dataclass(frozen=True)
class OutputPaths:
    """The predictions folder (--output) and the files beside it."""

    predictions: Path
    quarantine: Path
    manifest: Path

    @classmethod
    def beside(cls, output: Path) -> OutputPaths:
        output = Path(os.path.abspath(output))
        return cls(output, output.with_name(output.name + QUARANTINE_SUFFIX), output.with_name(output.name + MANIFEST_SUFFIX))


def is_batch_output(paths: OutputPaths) -> bool:
    """True when the manifest beside the folder says a batch wrote it."""
    try:
        return json.loads(paths.manifest.read_text(encoding="utf-8")).get("kind") == MANIFEST_KIND
    except (OSError, ValueError, AttributeError):
        return False


def check_output(paths: OutputPaths) -> None:
    """Refuse an --output inside .git or .dvc, or one that would replace something no batch wrote (a typo must not
    delete a data folder)."""
    output = paths.predictions
    output_place(output, "--output")
    if output.parent.exists() and not output.parent.is_dir():
        raise ConfigError(f"--output {output}: {output.parent} is not a folder")
    if output.exists() or output.is_symlink():
        if not output.is_dir() or output.is_symlink():
            raise ConfigError(f"--output {output}: exists and is not a folder")
        if not is_batch_output(paths):
            raise ConfigError(
                f"--output {output}: exists and was not written by `bts batch-predict` (no {paths.manifest.name} beside it); "
                "choose another folder or remove it"
            )


@contextmanager
def staged_output(paths: OutputPaths) -> Iterator[Path]:
    """A new staging folder beside the output to write PREDICTIONS, QUARANTINE and MANIFEST into.

    They are published when the block ends without an error; the staging folder is removed in any case.
    """
    output = paths.predictions
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=temporary_prefix(output), suffix=".tmp"))
    try:
        yield staging
        normal_permissions(staging)
        publish(staging, paths)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, paths: OutputPaths) -> None:
    """Move the staged results into place: the old manifest goes first, the new one comes last."""
    missing = [name for name in (PREDICTIONS, QUARANTINE, MANIFEST) if not (staging / name).exists()]
    if missing:
        raise RuntimeError(f"staging folder {staging} lacks {missing}")  # a bug, not a user error
    paths.manifest.unlink(missing_ok=True)
    os.replace(staging / QUARANTINE, paths.quarantine)
    if paths.predictions.exists():
        os.replace(paths.predictions, staging / PREVIOUS)  # removed with the staging folder
    os.replace(staging / PREDICTIONS, paths.predictions)
    os.replace(staging / MANIFEST, paths.manifest)


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """A frame as one Parquet file (the layout bts.files.write_parquet uses), into a staging folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parquet_file(path, frame)
