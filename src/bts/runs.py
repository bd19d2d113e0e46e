"""Opening and recording MLflow runs of the pipeline in the repository's one tracking store."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities import Run

from bts.tracking import artifact_location, repository_root, store_lock, tracking_uri


def use_store(root: Path | None = None) -> Path:
    """Point MLflow at the repository's store; returns the repository root."""
    root = root or repository_root()
    mlflow.set_tracking_uri(tracking_uri(root))
    return root


def experiment_id(name: str, root: Path) -> str:
    """The experiment's id, creating it with its artifacts under the repository root."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=f"{artifact_location(root)}/{name}")


@contextmanager
def training_run(experiment: str, run_name: str) -> Iterator[Run]:
    """A new run (or the one `mlflow run` created for us, named by MLFLOW_RUN_ID), holding the store lock."""
    root = use_store()
    with store_lock(root):
        if os.environ.get("MLFLOW_RUN_ID"):
            with mlflow.start_run(log_system_metrics=True) as run:
                yield run
            return
        with mlflow.start_run(experiment_id=experiment_id(experiment, root), run_name=run_name, log_system_metrics=True) as run:
            yield run


@contextmanager
def resumed_run(run_id: str) -> Iterator[Run]:
    """Reopen a finished run to add to it (evaluation logs into the training run)."""
    root = use_store()
    with store_lock(root), mlflow.start_run(run_id=run_id) as run:
        yield run


def read_run_record(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
