"""Stage train: fit the model chosen in params on the train split and log one MLflow run."""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import joblib
import mlflow
import pandas as pd
from mlflow.models import infer_signature

import bts
from bts.files import atomic_write, write_json
from bts.hashing import file_md5
from bts.model.forecasters import build_model, model_params, skops_trusted_types
from bts.params import PARAMS_FILE, load_params
from bts.stages import run_stage
from bts.tracking.runs import datasets_to_log, model_lineage, training_run
from bts.tracking.store import data_tags, dvc_tags, flatten, git_tags, machine_tags

DATASETS = ["raw", "clean", "features"]


def pip_requirements() -> list[str]:
    """Pinned requirements of the logged model (given, so MLflow need not infer them)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ["mlflow", "scikit-learn", "pandas", "numpy", "scipy", "pyarrow"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", required=True)
    parser.add_argument("--datasets", required=True, help="folder of the dataset metadata documents")
    parser.add_argument("--model", required=True, help="fitted pipeline (joblib)")
    parser.add_argument("--run", required=True, help="record of the MLflow run (JSON)")
    parser.add_argument("--metrics", required=True, help="training cost metrics (JSON)")
    args = parser.parse_args()
    params = load_params()
    train, featurize = params["train"], params["featurize"]
    documents = {name: Path(args.datasets) / f"{name}.json" for name in DATASETS}
    feature_columns = json.loads(documents["features"].read_text())["feature_columns"]
    features = pd.read_parquet(args.features)
    train_rows = features[features["split"] == "train"]
    model = build_model(train)

    started, cpu_started = time.perf_counter(), time.process_time()
    model.fit(train_rows[feature_columns], train_rows["target"])
    cost = {
        "training.seconds": round(time.perf_counter() - started, 3),
        "training.cpu_seconds": round(time.process_time() - cpu_started, 3),
        "training.peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "training.rows": len(train_rows),
    }
    atomic_write(args.model, lambda tmp: joblib.dump(model, tmp))
    cost["model.size_bytes"] = Path(args.model).stat().st_size

    tags = {**git_tags(), **dvc_tags(), **machine_tags(), **data_tags(documents)}
    run_name = os.environ.get("DVC_EXP_NAME") or f"{train['model']}-{tags['git.commit'][:7]}"
    example = train_rows[feature_columns].head(5)
    # Everything slow that needs no store is prepared before the run takes the store lock.
    inputs = datasets_to_log(tags, train_rows[[*feature_columns, "target"]], DATASETS)
    signature = infer_signature(example, model.predict(example))
    trusted_types = skops_trusted_types(model)
    logged_params = flatten({"train": model_params(train), "featurize": featurize})
    with training_run(train["experiment"], run_name) as run:
        mlflow.log_params(logged_params)
        mlflow.set_tags(tags)
        experiment = mlflow.get_experiment(run.info.experiment_id).name
        lineage = model_lineage(run, experiment, tags, logged_params, file_md5(args.model))
        mlflow.set_tags({"model_md5": lineage["model_md5"], "params_md5": lineage["params_md5"]})
        for dataset, context in inputs:
            mlflow.log_input(dataset, context=context)
        mlflow.log_metrics(cost)
        logged = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata={"feature_columns": feature_columns, "lineage": lineage},
            skops_trusted_types=trusted_types,
            code_paths=[str(Path(bts.__file__).parent)],  # the model's own classes travel with it
        )
        mlflow.log_artifacts(args.datasets, artifact_path="metadata")
        mlflow.log_artifact(str(PARAMS_FILE))
        record = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": logged.model_uri,
            "lineage": lineage,
        }
    write_json(args.metrics, cost)
    write_json(args.run, record)
    print(f"train: {train['model']} on {len(train_rows)} rows in {cost['training.seconds']} s; MLflow run {record['run_id']}")


if __name__ == "__main__":
    run_stage("train", main)
