"""Thin DVC stage entry points: read params and inputs, call the library, write outputs."""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bts.errors import BtsError


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage; an expected failure prints one line and exits 1, with no traceback."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # a stage says what it did in a line or two of its own
    started = time.perf_counter()
    try:
        main()
        gc.freeze()  # nothing is left to free: spare the interpreter's final collection over MLflow's objects (about 1 s)
    except BtsError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)


# The code that builds a model, as the train stage's deps in dvc.yaml list it (relative to src/bts): its md5 is the
# model's code_md5, so a package names exactly the code it came from, and a reproduction can prove which code ran.
TRAINING_CODE = [
    "__init__.py",
    "errors.py",
    "files.py",
    "hashing.py",
    "params.py",
    "stages/__init__.py",
    "stages/train.py",
    "model",
    "tracking",
]


def library_path() -> Path:
    """The folder of the `bts` package this process really imported (the workspace's, through PYTHONPATH=src)."""
    import bts

    return Path(bts.__file__).parent


def feature_columns(datasets: str | Path) -> list[str]:
    """The model's input columns, as the features document of the same data version lists them."""
    import json

    return json.loads((Path(datasets) / "features.json").read_text())["feature_columns"]


def lineage_of(model_path: str | Path, datasets: str | Path, tags: dict[str, str] | None = None) -> dict[str, str]:
    """The content lineage of the workspace's model: data and schema md5s, params md5, weights md5, code md5."""
    from bts.hashing import file_md5
    from bts.model.package import code_md5
    from bts.params import load_params
    from bts.tracking.runs import model_lineage
    from bts.tracking.tags import data_tags

    tags = tags or data_tags(Path(datasets))
    return model_lineage(tags, load_params().run_params(), file_md5(model_path), code_md5(library_path(), TRAINING_CODE))
