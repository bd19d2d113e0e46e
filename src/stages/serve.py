"""Stage serve: package the trained model with its lineage and file manifest, byte for byte the same for the same model.

The registry is not touched: `bts register` makes a version of a package,
`bts promote` moves an alias. The package is also logged to the run that
trained the model, so `bts register <run id>` finds it there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow

from bts.files import atomic_folder, read_parquet
from bts.model.forecasters import skops_trusted_types
from bts.model.package import PACKAGE_ARTIFACT, PACKAGE_REQUIREMENTS, build_package, library_path, load_workspace_model
from bts.params import load_params
from bts.stage import run_stage
from bts.tracking.runs import find_training_run, resumed_run, workspace_lineage
from bts.tracking.store import use_store
from bts.tracking.tags import feature_columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", required=True, help="feature table (its first train rows are the input example)")
    parser.add_argument("--datasets", required=True, help="folder of the dataset metadata documents")
    parser.add_argument("--model", required=True, help="fitted pipeline (joblib), verified against dvc.lock")
    parser.add_argument("--package", required=True, help="folder for the packaged MLflow model")
    args = parser.parse_args()
    params = load_params()
    use_store()  # a tracking store that is down or refusing stops the stage here, in seconds, before it writes anything
    columns = feature_columns(Path(args.datasets))
    model = load_workspace_model(Path(args.model))
    features = read_parquet(args.features, [*columns, "split"])
    example = features[features["split"] == "train"][columns].head(5).reset_index(drop=True)
    lineage = workspace_lineage(Path(args.model), Path(args.datasets), params.run_params())
    built: dict[str, str] = {}

    def write(folder: Path) -> None:
        built["md5"] = build_package(
            model,
            folder,
            example=example,
            lineage=lineage,
            feature_columns=columns,
            pip_requirements=PACKAGE_REQUIREMENTS,
            trusted_types=skops_trusted_types(model),
            library=library_path(),
        )

    atomic_folder(args.package, write)
    run = find_training_run(lineage)
    if run is None:
        note = f"no run trained this model in {mlflow.get_tracking_uri()}: the package is not logged"
    else:
        with resumed_run(run.info.run_id):
            mlflow.log_artifacts(args.package, artifact_path=PACKAGE_ARTIFACT)
        note = f"logged to run {run.info.run_id}; register it with `bts register {args.package}`"
    print(f"serve: {args.package} md5 {built['md5']}; {note}")


if __name__ == "__main__":
    run_stage("serve", main)
