"""Opening, finding and describing MLflow runs of the pipeline in the project's one tracking store.

A run is found again by its content tags (the md5s of the model, its params
and its training data), so no tracked file has to carry a run id.
"""

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
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.types import ColSpec, Schema

from bts.errors import BtsError
from bts.tracking.store import artifact_location, is_local_store, shown_store, store_failure, store_lock, use_store
from bts.tracking.tags import (
    CODE_MD5,
    DATASETS,
    EXP_NAME,
    MODEL_MD5,
    PARAMS_MD5,
    SCHEMAS,
    TRAINING_PROCESS,
    data_md5_tag,
    data_path_tag,
    dvc_tags,
    schema_md5_tag,
    training_process_tag,
)


def params_md5(params: dict) -> str:
    return hashlib.md5(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def experiment_id(name: str, root: Path) -> str:
    """The experiment's id, creating it with its artifacts under the project root."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=f"{artifact_location(root)}/{name}")
    except MlflowException as exc:  # another client (a colleague, a parallel queue worker) created it meanwhile
        experiment = mlflow.get_experiment_by_name(name)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" or experiment is None:
            raise
        return experiment.experiment_id


@contextmanager
def training_run(experiment: str, run_name: str) -> Iterator[Run]:
    """A new run in the experiment, holding the store lock.

    Also under `mlflow run`: its entry points hand the stages no run of their own (bts.mlproject).
    A remote store that fails mid-run (its server or database gone) is one line naming the run it leaves RUNNING there;
    the run's TRAINING_PROCESS tag lets `bts runs check` tell it from a live training once the store answers again.
    """
    import requests

    root = use_store()
    started = None
    with store_lock(root):
        try:
            tags = {TRAINING_PROCESS: training_process_tag(), **dvc_tags()}  # from the start: a killed run names its experiment
            with mlflow.start_run(experiment_id=experiment_id(experiment, root), run_name=run_name, tags=tags) as started:
                yield started
        except (MlflowException, requests.RequestException) as exc:
            if started is None or is_local_store():
                raise
            uri = mlflow.get_tracking_uri()
            failure = store_failure(exc, uri)
            raise BtsError(
                f"MLflow tracking store {shown_store(uri, root)} {failure} during run {started.info.run_id}, left RUNNING there: "
                "once the store answers, `bts runs check` reports it and `--mark-failed` ends it"
            ) from None


@contextmanager
def resumed_run(run_id: str) -> Iterator[Run]:
    """Reopen a finished run to add to it (evaluation logs into the training run)."""
    root = use_store()
    with store_lock(root), mlflow.start_run(run_id=run_id) as run:
        yield run


def content_tags(lineage: dict[str, str]) -> dict[str, str]:
    """The tags that identify what a run built: its model, params, code and training data."""
    keys = [MODEL_MD5, PARAMS_MD5, CODE_MD5, data_md5_tag("features")]
    return {key: lineage[key] for key in keys if lineage.get(key)}


def find_training_run(lineage: dict[str, str]) -> Run | None:
    """The run that trained this model (same content tags), preferring this DVC experiment's, then the newest."""
    wanted = content_tags(lineage)
    if MODEL_MD5 not in wanted:
        return None
    filter_string = " AND ".join(f"tags.`{key}` = '{value}'" for key, value in wanted.items())
    try:
        runs = mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list")
    except MlflowException as exc:
        raise BtsError(f"cannot search runs in {mlflow.get_tracking_uri()}: {exc.message.splitlines()[0]}") from None
    if not runs:
        return None
    experiment_name = os.environ.get("DVC_EXP_NAME")
    return max(runs, key=lambda run: (run.data.tags.get(EXP_NAME) == experiment_name, run.info.start_time))


def datasets_to_log(tags: dict[str, str], training_data: pd.DataFrame, targets: list[str]) -> list:
    """Each dataset as a run input (with its context) whose digest is its DVC md5 (MLflow's own is a weak fingerprint).
    MLflow's dataset names one target column: the shortest horizon's (the others are in its schema).

    Built, schema included, before the store lock is taken: inferring the schema of the training data is the slow part.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    inputs = []
    for name in DATASETS:
        md5, path = tags[data_md5_tag(name)], tags[data_path_tag(name)]
        with warnings.catch_warnings():  # a plain path matches two equivalent local sources; either is right
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(path)
        if name == "features":
            dataset = mlflow.data.from_pandas(training_data, source=source, targets=targets[0], name=f"bts-{name}", digest=md5)
            dataset.__dict__["schema"] = table_schema(training_data)  # the cached_property, set with the same value
            inputs.append((dataset, "training"))
        else:
            inputs.append((MetaDataset(source, name=f"bts-{name}", digest=md5), "upstream"))
    return inputs


def table_schema(frame: pd.DataFrame) -> Schema:
    """The MLflow schema of a table, as MLflow infers it, in a second instead of a minute at a million rows.

    MLflow checks each value of each column for a missing one in Python; here the types are inferred from the empty
    table and a column is required when pandas finds no missing value in it.
    """
    from mlflow.models import infer_signature

    missing = frame.isna().any()
    specs = infer_signature(frame.head(0)).inputs.inputs
    return Schema([ColSpec(spec.type, spec.name, required=not missing[spec.name]) for spec in specs])


def model_lineage(tags: dict[str, str], params: dict, model_md5: str, code: str) -> dict[str, str]:
    """What a packaged model carries about its origin: content hashes only (the commit and run are found from them)."""
    lineage = {data_md5_tag(name): tags[data_md5_tag(name)] for name in DATASETS}
    lineage.update({schema_md5_tag(name): tags[schema_md5_tag(name)] for name in SCHEMAS if schema_md5_tag(name) in tags})
    lineage.update({PARAMS_MD5: params_md5(params), MODEL_MD5: model_md5, CODE_MD5: code})
    return lineage


def workspace_lineage(model_path: Path, datasets_dir: Path, run_params: dict, tags: dict[str, str] | None = None) -> dict[str, str]:
    """The content lineage of the workspace's model: data and schema md5s, params md5, weights md5, and the md5 of
    the training code this process imported."""
    from bts.hashing import file_md5
    from bts.model.package import library_path
    from bts.project import code_md5
    from bts.tracking.tags import data_tags

    return model_lineage(
        tags or data_tags(datasets_dir), run_params, file_md5(model_path), code_md5(library_path().parents[1])
    )  # the workspace whose code this process runs
