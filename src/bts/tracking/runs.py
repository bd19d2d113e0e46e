"""Opening and recording MLflow runs of the pipeline in the repository's one tracking store."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Run

from bts.tracking.store import artifact_location, repository_root, store_lock, tracking_uri


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


def datasets_to_log(tags: dict[str, str], training_data: pd.DataFrame, names: list[str]) -> list[tuple[Dataset, str]]:
    """Each dataset as a run input (with its context) whose digest is its DVC md5 (MLflow's own is a weak fingerprint).

    Built, schema included, before the store lock is taken: inferring the schema of the training data is the slow part.
    """
    inputs = []
    for name in names:
        md5, path = tags[f"data.{name}_md5"], tags[f"data.{name}_path"]
        with warnings.catch_warnings():  # a plain path matches two equivalent local sources; either is right
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(path)
        if name == "features":
            dataset = mlflow.data.from_pandas(training_data, source=source, targets="target", name=f"bts-{name}", digest=md5)
            _ = dataset.schema  # computed now, outside the lock
            inputs.append((dataset, "training"))
        else:
            inputs.append((MetaDataset(source, name=f"bts-{name}", digest=md5), "upstream"))
    return inputs


def params_md5(params: dict) -> str:
    return hashlib.md5(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


LINEAGE_TAGS = [
    "git.commit", "git.dirty", "git.branch", "dvc.exp_name", "dvc.baseline_rev",
    "data.raw_md5", "data.clean_md5", "data.features_md5",
]  # fmt: skip


def model_lineage(run: Run, experiment: str, tags: dict[str, str], params: dict, model_md5: str) -> dict[str, str]:
    """What a packaged model carries about its origin: run, commit, data md5s, params and weights."""
    lineage = {"run_id": run.info.run_id, "experiment": experiment}
    lineage.update({key: tags[key] for key in LINEAGE_TAGS if key in tags})
    lineage.update({"params_md5": params_md5(params), "model_md5": model_md5})
    return lineage
