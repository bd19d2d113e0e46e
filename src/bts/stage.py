"""Thin DVC stage entry points: read params and inputs, call the library, write outputs."""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable

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
