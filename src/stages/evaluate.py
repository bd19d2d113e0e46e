"""Stage evaluate: score the model and persistence on valid/test (and holdout), every horizon, overall, per sensor and
per station, with the coverage, width and interval score of the intervals; write DVC metrics and plots, log them to the run."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow

from bts.data.catalogue import load_catalogue
from bts.files import read_parquet, write_csv, write_json, write_parquet
from bts.horizons import label, output_columns, target_column, target_time_column
from bts.model.evaluation import BY_PARAMETER, BY_STATION, FEW_ROWS, SCORED_SPLITS, dvc_metrics, evaluate, worst
from bts.model.package import load_workspace_model
from bts.model.plots import horizon_view, name_sensors, plot_evaluation, plot_tables
from bts.params import flatten, load_params
from bts.stage import run_stage
from bts.tracking.runs import find_training_run, resumed_run, training_run, workspace_lineage
from bts.tracking.store import use_store
from bts.tracking.tags import MODEL_MD5, data_tags, dvc_tags, feature_columns, git_tags


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
    use_store()  # a tracking store that is down or refusing stops the stage here, in seconds, before it writes anything
    columns = feature_columns(Path(args.datasets))
    features = read_parquet(args.features)
    horizons, coverage = params.featurize.horizons, params.train.interval_coverage
    scored = features[features["split"].isin(SCORED_SPLITS)]
    model = load_workspace_model(Path(args.model))  # verified against dvc.lock before it is unpickled
    scored = scored.join(model.predict(scored[columns]))
    report = evaluate(scored, SCORED_SPLITS, horizons, coverage)
    keys = ["station_id", "parameter_id", "reading_time", "split", "lag_1"]
    targets = [column for h in horizons for column in (target_time_column(h), target_column(h))]
    predictions = scored[[*keys, *targets, *output_columns(horizons)]].rename(columns={"lag_1": "persistence"})
    write_parquet(args.predictions, predictions.reset_index(drop=True))
    catalogue = load_catalogue(args.sensors)
    by_sensor = name_sensors({split: scores for split, scores in report.items() if split.endswith(BY_PARAMETER)}, catalogue)

    shortest = horizons[0]  # the figure and the plots show the shortest horizon; the scores of every one are in the metrics
    test = horizon_view(scored[scored["split"] == "test"], shortest)
    tables, series_key = plot_tables(test, catalogue)
    plots = Path(args.plots)
    for name, table in tables.items():
        write_csv(plots / name, table)
    scores = {pid: values[label(shortest)] for pid, values in by_sensor.get("test_by_parameter", {}).items()}
    plot_evaluation(test, tables["forecast.csv"], series_key, catalogue, scores, params.train.model, plots / "evaluation.png", shortest)
    write_json(args.metrics, finite_or_none(dvc_metrics(report, SCORED_SPLITS)))
    write_json(args.by_parameter, finite_or_none(by_sensor))

    lineage = workspace_lineage(Path(args.model), Path(args.datasets), params.run_params())
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
    print(f"evaluate: {note}")
    for h in horizons:
        test_scores = report["test"][label(h)]
        print(
            f"evaluate: test {label(h)}: rmse {test_scores['rmse']:.4f} vs persistence {test_scores['persistence_rmse']:.4f} "
            f"(skill {test_scores['skill']:+.1%}); {coverage:.0%} interval holds {test_scores['coverage']:.1%}, "
            f"winkler {test_scores['winkler']:.4g}"
        )
        for pid, values in by_sensor.get("test_by_parameter", {}).items():
            sensor = values[label(h)]
            if sensor["skill"] < 0:
                print(
                    f"evaluate: warning: {values['sensor']} (parameter {pid}) loses to persistence on test at {label(h)}: "
                    f"rmse {sensor['rmse']:.4g} vs {sensor['persistence_rmse']:.4g} {values['unit']} (skill {sensor['skill']:+.1%})"
                )
    for split in SCORED_SPLITS:
        stations = report.get(f"{split}{BY_STATION}", {})
        for h in horizons:
            station, skill = worst(stations, h)
            if station is not None:
                print(f"evaluate: {split} {label(h)}: worst of {len(stations)} station(s) is {station} (skill {skill:+.1%})")
        for station, scores in stations.items():
            losing = [label(h) for h in horizons if scores[label(h)]["skill"] < 0]
            if scores["rows"] < FEW_ROWS:
                print(f"evaluate: warning: station {station} has {scores['rows']} {split} row(s): too few to judge (under {FEW_ROWS})")
            elif losing:
                print(f"evaluate: warning: station {station} loses to persistence on {split} at {', '.join(losing)}")
    in_time = set(features.loc[features["split"] != "holdout", "station_id"].astype(str))
    for station in sorted(in_time - set(report.get(f"test{BY_STATION}", {}))):
        print(f"evaluate: warning: station {station} has no test row: too few examples for a split of its own")


if __name__ == "__main__":
    run_stage("evaluate", main)
