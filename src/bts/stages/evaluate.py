"""Stage evaluate: score the model and persistence on valid/test (and holdout), write DVC metrics and plots, log them to the run."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import mlflow
import pandas as pd

from bts.data.catalogue import load_catalogue
from bts.files import write_csv, write_json, write_parquet
from bts.model.evaluation import evaluate, residual_histogram
from bts.model.package import load_workspace_model
from bts.params import flatten, load_params
from bts.stages import run_stage
from bts.tracking.runs import find_training_run, resumed_run, training_run, workspace_lineage
from bts.tracking.store import use_store
from bts.tracking.tags import MODEL_MD5, data_tags, dvc_tags, feature_columns, git_tags

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SPLITS = ["valid", "test", "holdout"]


def plot_evaluation(series: pd.DataFrame, sample: pd.DataFrame, histogram: pd.DataFrame, title: str, path: Path) -> None:
    """One PNG with a forecast over time, predicted vs actual, and the residual distribution."""
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    times = pd.to_datetime(series["target_time"])
    axes[0].plot(times, series["actual"], label="actual", linewidth=1)
    axes[0].plot(times, series["predicted"], label="predicted", linewidth=1)
    axes[0].plot(times, series["persistence"], label="persistence", linewidth=0.8, linestyle=":")
    axes[0].set_title("test: one series over time")
    axes[0].legend()
    axes[0].tick_params(axis="x", labelrotation=30)
    axes[1].scatter(sample["actual"], sample["predicted"], s=3, alpha=0.4)
    axes[1].set_xlabel("actual")
    axes[1].set_ylabel("predicted")
    axes[1].set_title("test: predicted vs actual")
    axes[2].bar(histogram["residual"], histogram["count"], width=(histogram["residual"].diff().median() or 1) * 0.9)
    axes[2].set_xlabel("residual (predicted - actual)")
    axes[2].set_title("test: residual distribution")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(figure)


def name_sensors(by_parameter: dict, catalogue: dict) -> dict:
    """{split_by_parameter: {parameter_id: {sensor, unit, scores...}}}: per-sensor scores a reader can place."""
    named = {}
    for split, scores in by_parameter.items():
        named[split] = {}
        for pid, values in scores.items():
            sensor = catalogue.get(int(pid))
            named[split][pid] = {"sensor": sensor.name if sensor else "unknown", "unit": sensor.unit if sensor else None, **values}
    return named


def finite_or_none(report: dict) -> dict:
    """The report with undefined scores (NaN) as null: JSON has no NaN."""
    return {k: finite_or_none(v) if isinstance(v, dict) else (None if v != v else v) for k, v in report.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", required=True)
    parser.add_argument("--datasets", required=True, help="folder of the dataset metadata documents")
    parser.add_argument("--model", required=True)
    parser.add_argument("--sensors", required=True, help="sensor catalogue: names and units of the per-sensor scores")
    parser.add_argument("--predictions", required=True, help="every scored example with its forecast and persistence's (Parquet)")
    parser.add_argument("--metrics", required=True, help="DVC metrics file (JSON)")
    parser.add_argument("--by-parameter", required=True, help="the same scores per sensor parameter (JSON)")
    parser.add_argument("--plots", required=True, help="folder for DVC plots")
    args = parser.parse_args()
    params = load_params()
    columns = feature_columns(Path(args.datasets))
    features = pd.read_parquet(args.features)
    scored = features[features["split"].isin(SPLITS)].copy()
    model = load_workspace_model(Path(args.model))  # verified against dvc.lock before it is unpickled
    scored["predicted"] = model.predict(scored[columns])
    report = evaluate(scored, scored["predicted"].to_numpy(), SPLITS)
    keys = ["station_id", "parameter_id", "reading_time", "target_time", "split", "target", "lag_1", "predicted"]
    write_parquet(args.predictions, scored[keys].rename(columns={"lag_1": "persistence"}).reset_index(drop=True))
    by_sensor = name_sensors({split: scores for split, scores in report.items() if split not in SPLITS}, load_catalogue(args.sensors))

    test = scored[scored["split"] == "test"]
    first_series = test.groupby(["station_id", "parameter_id"], sort=True).ngroup() == 0
    series = test[first_series].tail(300).rename(columns={"target": "actual"})[["target_time", "actual", "predicted", "lag_1"]]
    series = series.rename(columns={"lag_1": "persistence"}).astype({"target_time": "str"})
    sample = test.sample(n=min(2000, len(test)), random_state=0).rename(columns={"target": "actual"})[["actual", "predicted"]]
    histogram = residual_histogram((test["predicted"] - test["target"]).to_numpy())
    plots = Path(args.plots)
    write_csv(plots / "forecast.csv", series)
    write_csv(plots / "predicted_vs_actual.csv", sample)
    write_csv(plots / "residuals.csv", histogram)
    station, parameter = test[first_series].iloc[0][["station_id", "parameter_id"]]
    plot_evaluation(series, sample, histogram, f"station {station}, parameter {parameter}", plots / "evaluation.png")
    write_json(args.metrics, finite_or_none({split: scores for split, scores in report.items() if split in SPLITS}))
    write_json(args.by_parameter, finite_or_none(by_sensor))

    lineage = workspace_lineage(Path(args.model), Path(args.datasets), params.run_params())
    use_store()
    run = find_training_run(lineage)
    if run is None:  # the model came from a cache or another store: its evaluation still gets a run
        with training_run(params.train.experiment, f"evaluation-{lineage[MODEL_MD5][:8]}") as run:
            mlflow.set_tags({**git_tags(Path.cwd()), **dvc_tags(), **data_tags(Path(args.datasets)), **lineage})
        note = f"no run trained this model in {mlflow.get_tracking_uri()}: logged to new run {run.info.run_id}"
    else:
        note = f"logged to run {run.info.run_id}"
    with resumed_run(run.info.run_id):
        numbers = {k: v for k, v in flatten(report).items() if isinstance(v, float | int) and v == v}  # NaN is undefined: left out
        mlflow.log_metrics(numbers)
        mlflow.log_dict(report, "evaluation/metrics.json")
        mlflow.log_artifacts(str(plots), artifact_path="evaluation")
    test_scores = report["test"]
    print(
        f"evaluate: test rmse {test_scores['rmse']:.4f} vs persistence {test_scores['persistence_rmse']:.4f} "
        f"(skill {test_scores['skill']:+.1%}); {note}"
    )
    for pid, scores in by_sensor.get("test_by_parameter", {}).items():
        if scores["skill"] < 0:
            print(
                f"evaluate: warning: {scores['sensor']} (parameter {pid}) loses to persistence on test: "
                f"rmse {scores['rmse']:.4g} vs {scores['persistence_rmse']:.4g} {scores['unit']} (skill {scores['skill']:+.1%})"
            )


if __name__ == "__main__":
    run_stage("evaluate", main)
