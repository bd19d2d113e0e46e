"""Stage train: fit the model chosen in params on the train split, one per horizon, calibrate its intervals on the
valid split, and log one MLflow run."""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import joblib
import mlflow

from bts.errors import ConfigError
from bts.files import atomic_write, read_parquet
from bts.kill_points import kill_point
from bts.model.forecasters import build_model
from bts.model.profile import PROFILE_ARTIFACT, feature_profile
from bts.params import PARAMS_FILE, load_params
from bts.stage import run_stage
from bts.tracking.runs import datasets_to_log, training_run, workspace_lineage
from bts.tracking.store import use_store
from bts.tracking.tags import GIT_COMMIT, data_tags, dvc_tags, feature_columns, git_tags, machine_tags, target_columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", required=True)
    parser.add_argument("--datasets", required=True, help="folder of the dataset metadata documents")
    parser.add_argument("--model", required=True, help="fitted pipeline (joblib)")
    args = parser.parse_args()
    params = load_params()
    use_store()  # a tracking store that is down or refusing stops the stage here, in seconds, before it fits or writes
    columns, targets = feature_columns(Path(args.datasets)), target_columns(Path(args.datasets))
    features = read_parquet(args.features)
    train_rows = features[features["split"] == "train"]
    valid_rows = features[features["split"] == "valid"]
    model = build_model(params.train, params.featurize.horizons)

    started, cpu_started = time.perf_counter(), time.process_time()
    model.fit(train_rows[columns], train_rows[targets], groups=train_rows["station_id"])
    try:
        model.calibrate(valid_rows[columns], valid_rows[targets], groups=valid_rows["station_id"])
    except ValueError as exc:
        raise ConfigError(f"train.interval_coverage: {exc} (the valid split; raise featurize.valid_fraction or add data)") from None
    cost = {
        "training.seconds": round(time.perf_counter() - started, 3),
        "training.cpu_seconds": round(time.process_time() - cpu_started, 3),
        "training.peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "training.rows": len(train_rows),
    }
    atomic_write(args.model, lambda tmp: joblib.dump(model, tmp))
    cost["model.size_bytes"] = Path(args.model).stat().st_size

    datasets = data_tags(Path(args.datasets))
    lineage = workspace_lineage(Path(args.model), Path(args.datasets), params.run_params(), datasets)
    tags = {**git_tags(Path.cwd()), **dvc_tags(), **machine_tags(), **datasets, **lineage}
    run_name = os.environ.get("DVC_EXP_NAME") or f"{params.train.model}-{tags[GIT_COMMIT][:7]}"
    inputs = datasets_to_log(tags, train_rows[[*columns, *targets]], targets)  # slow part prepared before the store lock
    profile = feature_profile(train_rows, columns, seed=params.train.seed)  # what `bts monitor` measures drift against
    with training_run(params.train.experiment, run_name) as run:
        kill_point("run-started")
        mlflow.log_params(params.run_params())
        mlflow.set_tags(tags)
        for dataset, context in inputs:
            mlflow.log_input(dataset, context=context)
        mlflow.log_metrics(cost)
        mlflow.log_artifacts(args.datasets, artifact_path="metadata")
        mlflow.log_artifact(str(PARAMS_FILE))
        mlflow.log_dict(profile, PROFILE_ARTIFACT)
    print(
        f"train: {params.train.model} on {len(train_rows)} rows for horizons {', '.join(map(str, params.featurize.horizons))}, "
        f"intervals calibrated on {len(valid_rows)} valid rows, in {cost['training.seconds']} s; MLflow run {run.info.run_id}"
    )


if __name__ == "__main__":
    run_stage("train", main)
