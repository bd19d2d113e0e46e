"""Clean readings to predictions, the same way on one process and in each group of series on Spark.

The features are serving_rows' (build_features itself) with the featurize
params the model was trained with, so a batch row holds the numbers a
training example of the same reading holds. Every feature looks back within
its own series only, so scoring a set of whole series gives the rows scoring
everything would: that is what lets Spark score groups of series apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import yaml

from bts.data.cleaning import RULES, SERIES_KEYS
from bts.data.features import FeatureSpec
from bts.errors import BtsError, ConfigError, DataContractError
from bts.monitoring.field_readings import serving_rows
from bts.params import PARAMS_FILE, FeaturizeParams, load_params
from bts.tracking.tags import DATASETS, MODEL_MD5

if TYPE_CHECKING:  # their modules import MLflow, which Spark's Python workers need not load
    from mlflow.tracking import MlflowClient

    from bts.serving.model import ServedModel

Predict = Callable[[np.ndarray], np.ndarray]

# One row per scored reading: its series, its id and time, its value (lag_1), then the model's forecast of each horizon
# after it with its interval (prediction_dtypes: the output columns are the served model's, named by bts.horizons).
KEY_DTYPES = {
    "station_id": "int64",
    "parameter_id": "int64",
    "reading_id": "int64",
    "reading_time": "datetime64[us]",
    "value": "float64",
}
KEY_COLUMNS = list(KEY_DTYPES)
# What every row says about the model that made it: enough for `bts lineage` to find its run, data and commit.
LINEAGE_COLUMNS = ["model_name", "model_version", "run_id", "model_md5", "package_md5", *[f"data_{name}_md5" for name in DATASETS]]
# The clean columns scoring reads (the rest of a clean reading is not needed to score it).
SCORED_READING_DTYPES = {
    "station_id": "int64",
    "parameter_id": "int64",
    "reading_time": "datetime64[us]",
    "id": "int64",
    "value": "float64",
}
SCORED_READING_COLUMNS = list(SCORED_READING_DTYPES)
FEATURIZE = "featurize."  # the prefix of the featurize params in a training run
FROM_TRAINING_RUN = "the training run"  # where a model's featurize params come from, unless from params.yaml (and why)


@dataclass
class EngineResult:
    """What an engine did: one record per input file, the summed cleaning accounting, what it scored, how long each step took."""

    files: list[dict]
    accounting: dict
    predicted: int
    series: int
    seconds: dict[str, float] = field(default_factory=dict)
    engine: dict = field(default_factory=dict)


def training_featurize(run_params: Mapping[str, str]) -> dict[str, object]:
    """The featurize params a training run logged (MLflow keeps them as text) as values: {'n_lags': 6, 'calendar': False}."""
    return {key.removeprefix(FEATURIZE): yaml.safe_load(value) for key, value in run_params.items() if key.startswith(FEATURIZE)}


def feature_spec(feature_columns: list[str], featurize: Mapping[str, object]) -> FeatureSpec:
    """The FeatureSpec of these featurize params, built as the featurize stage builds it, checked: its features are the
    model's inputs, in order. Keys this library does not know are left to that check."""
    known = {key: value for key, value in featurize.items() if key in FeaturizeParams.model_fields}
    try:
        spec = FeatureSpec(**known)
    except ConfigError as exc:
        raise BtsError(f"the model's featurize params are not usable: {exc}") from None
    if spec.feature_columns != list(feature_columns):
        settings = ", ".join(f"{key}={value}" for key, value in sorted(known.items()) if key != "holdout_stations")
        raise BtsError(
            f"the model's inputs ({_shown(feature_columns)}) are not the features this library builds with its featurize params "
            f"({settings}): {_shown(spec.feature_columns)}; it cannot score raw readings"
        )
    return spec


class ModelFeatures(NamedTuple):
    """How a model's inputs are built from readings: the spec, the featurize params it was made of, and where they came from
    (FROM_TRAINING_RUN, or params.yaml and why)."""

    spec: FeatureSpec
    featurize: dict[str, object]
    source: str


def model_features(client: MlflowClient, run_id: str | None, feature_columns: list[str], root: Path) -> ModelFeatures:
    """The features of the model trained in run_id whose inputs are feature_columns: built with the featurize params that
    run logged, or with the workspace's params.yaml when the run is not in the tracking store (or logged none), and
    checked against the model's inputs either way. The one way batch-predict and replay build a served model's features."""
    from mlflow.exceptions import MlflowException

    featurize: dict[str, object] = {}
    why = "the model's training run is not in the tracking store"
    if run_id:
        try:
            featurize = training_featurize(client.get_run(run_id).data.params)
            why = f"the model's training run {run_id} logged no featurize params"
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            why = f"the model's training run {run_id} is not in the tracking store"
    source = FROM_TRAINING_RUN if featurize else f"{PARAMS_FILE} ({why})"
    featurize = featurize or load_params(root / PARAMS_FILE).featurize.model_dump()
    try:
        spec = feature_spec(feature_columns, featurize)
    except BtsError as exc:
        raise BtsError(f"{exc}; featurize params from {source}") from None
    return ModelFeatures(spec, featurize, source)


def _shown(columns: list[str], count: int = 16) -> str:
    return ", ".join(columns[:count]) + (", ..." if len(columns) > count else "")


def prediction_dtypes(outputs: list[str]) -> dict[str, str]:
    """The columns of a batch's prediction rows for a model with these output columns, with their dtypes: KEY_DTYPES,
    then every output as float64. The one schema of both engines (the Spark engine's DDL is made of it)."""
    return {**KEY_DTYPES, **dict.fromkeys(outputs, "float64")}


def batch_columns(outputs: list[str]) -> list[str]:
    """Every column of a batch's output, in order: the prediction columns, then LINEAGE_COLUMNS."""
    return [*prediction_dtypes(outputs), *LINEAGE_COLUMNS]


def empty_predictions(outputs: list[str]) -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in prediction_dtypes(outputs).items()})


def score_readings(clean: pd.DataFrame, spec: FeatureSpec, predict: Predict, outputs: list[str]) -> pd.DataFrame:
    """prediction_dtypes' columns for every reading with spec.n_lags readings of history, the last of each series
    included: predict returns one row per reading and one column per output, in the order of outputs.

    Series too short to fill the lags are left out (an empty frame when none is long enough); rows are in
    serving_rows' order (time, then series).
    """
    length = clean.groupby(SERIES_KEYS, sort=False)["id"].transform("size")
    scorable = clean[length >= spec.n_lags]
    if scorable.empty:
        return empty_predictions(outputs)
    rows = serving_rows(scorable, spec)
    prediction = np.asarray(predict(rows[spec.feature_columns].to_numpy(dtype=np.float64)), dtype=np.float64)
    if prediction.shape != (len(rows), len(outputs)):
        raise BtsError(
            f"the model returned {prediction.shape} predictions for {len(rows)} rows x {len(outputs)} output columns ({_shown(outputs, 3)})"
        )
    keys = {
        "station_id": rows["station_id"],
        "parameter_id": rows["parameter_id"],
        "reading_id": rows["reading_id"],
        "reading_time": rows["reading_time"],
        "value": rows["lag_1"],
    }
    return pd.DataFrame({**keys, **dict(zip(outputs, prediction.T, strict=True))}).astype(prediction_dtypes(outputs))


def lineage_values(model: ServedModel) -> dict[str, str | None]:
    """The LINEAGE_COLUMNS values of a loaded model: what `bts serve` logs with each prediction, and the weights' md5."""
    values = {**model.tags(), "model_md5": model.lineage.get(MODEL_MD5)}
    return {column: values[column] for column in LINEAGE_COLUMNS}


def with_lineage(predictions: pd.DataFrame, lineage: dict[str, str | None]) -> pd.DataFrame:
    """predictions with one text column per lineage value (the same on every row)."""
    return predictions.assign(**{column: pd.Series(value, index=predictions.index, dtype="str") for column, value in lineage.items()})


def merge_accounting(parts: list[dict]) -> dict:
    """clean_readings' row accounting of several parts of a batch, summed (the counts that add up across parts)."""
    return {
        "rows_in": sum(part["rows_in"] for part in parts),
        "rows_out": sum(part["rows_out"] for part in parts),
        "rows_quarantined": sum(part["rows_quarantined"] for part in parts),
        "quarantined_by_reason": {code: sum(part["quarantined_by_reason"].get(code, 0) for part in parts) for code in RULES},
        "reading_time_normalized": sum(part["fixed"]["reading_time_normalized"] for part in parts),
    }


def row_counts(rows_read: int, accounting: dict, predicted: int, series: int) -> dict:
    """The batch's row accounting, checked: rows in = clean + quarantined, and clean = predicted + without full history."""
    counts = {
        "in": rows_read,
        "clean": accounting["rows_out"],
        "quarantined": accounting["rows_quarantined"],
        "quarantined_by_reason": accounting["quarantined_by_reason"],
        "reading_time_normalized": accounting["reading_time_normalized"],
        "predicted": predicted,
        "without_full_history": accounting["rows_out"] - predicted,
        "series_scored": series,
    }
    if not (rows_read == accounting["rows_in"] == counts["clean"] + counts["quarantined"]):
        raise DataContractError(
            f"row accounting broken: {rows_read} read, {accounting['rows_in']} cleaned != {counts['clean']} clean "
            f"+ {counts['quarantined']} quarantined"
        )
    if counts["without_full_history"] < 0:
        raise DataContractError(f"row accounting broken: {predicted} predictions from {counts['clean']} clean readings")
    return counts
