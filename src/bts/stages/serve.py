"""Stage serve: package the trained model with its lineage, register it as a new version, write its model card."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from bts.files import write_json, write_text
from bts.params import load_params
from bts.stages import run_stage
from bts.tracking.model_card import model_card, render_model_card
from bts.tracking.registry import register
from bts.tracking.runs import read_run_record, use_store
from bts.tracking.store import store_lock


def describe(run: mlflow.entities.Run) -> str:
    params, metrics = run.data.params, run.data.metrics
    settings = ", ".join(
        f"{k.removeprefix('train.')}={v}"
        for k, v in sorted(params.items())
        if k.startswith("train.") and k not in ("train.seed", "train.model")
    )
    return (
        f"{params.get('train.model')} ({settings}) forecasting the next BTS reading from the last {params.get('featurize.n_lags')}; "
        f"test RMSE {metrics.get('test.rmse', float('nan')):.4f}, skill {metrics.get('test.skill', float('nan')):+.1%} over persistence; "
        f"features md5 {run.data.tags.get('data.features_md5')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True, help="record of the training run (JSON)")
    parser.add_argument("--package", required=True, help="folder for the packaged MLflow model")
    parser.add_argument("--registration", required=True, help="record of the registered version (JSON)")
    parser.add_argument("--card", required=True, help="model card (JSON)")
    parser.add_argument("--card-markdown", required=True, help="model card (Markdown)")
    args = parser.parse_args()
    params = load_params("serve")
    record = read_run_record(args.run)
    root = use_store()
    client = MlflowClient()

    run = client.get_run(record["run_id"])
    with store_lock(root):
        version, created = register(client, params["registered_model"], record["model_uri"], record["lineage"], describe(run))
    if not created:
        run = client.get_run(version.run_id)  # the registered twin of this model came from an earlier run

    package = Path(args.package)
    staging = Path(tempfile.mkdtemp(dir=package.parent, prefix=f".{package.name}."))
    try:  # the package is the registered version's artifact, byte for byte: what is registered is what is served
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(staging))
        shutil.rmtree(package, ignore_errors=True)
        staging.rename(package)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    card = model_card(version, run, package, params["license"])
    write_json(args.card, card)
    write_text(args.card_markdown, render_model_card(card))
    write_json(args.registration, {"name": version.name, "version": str(version.version), "run_id": version.run_id, "created": created})
    state = "registered as new version" if created else "unchanged; already registered as version"
    print(f"serve: {args.package} {state} {version.name}/{version.version} (aliases: {', '.join(version.aliases) or 'none'})")


if __name__ == "__main__":
    run_stage("serve", main)
