"""Field readings as a scoring server receives them: clean readings from an export, and one request row per reading.

An export goes through the pipeline's own ingest and cleaning code, so a
replayed reading is exactly a reading the model could have been trained on;
the features come from build_features itself, so a served row and a training
example of the same reading hold the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from bts.data.catalogue import load_catalogue
from bts.data.cleaning import SERIES_KEYS, clean_readings
from bts.data.features import FeatureSpec, build_features
from bts.data.ingest import read_exports
from bts.data.schemas import clean_schema
from bts.errors import BtsError, InputFileError, first_line, quoted
from bts.files import read_parquet
from bts.serving.payload import KEY_COLUMNS

PARQUET = ".parquet"


def read_readings(path: Path, root: Path, catalogue_path: str | Path) -> pd.DataFrame:
    """The clean readings of a CSV export, a folder of them, or clean readings already (.parquet, as the clean stage writes).

    CSV exports are read and cleaned as the ingest and clean stages do (quarantined rows are left out); root is what
    source_file is relative to. A missing or unusable file raises an InputFileError naming it.
    """
    catalogue = load_catalogue(catalogue_path)
    schema = clean_schema(catalogue)
    if not path.exists():
        raise InputFileError(path, "no such file or folder")
    if not path.is_dir() and not path.is_file():  # a pipe or a device: it would be waited on, or read without end
        raise InputFileError(path, "not a regular file or folder")
    if path.suffix == PARQUET:
        return _clean_parquet(path, schema)
    files = sorted(f for f in path.rglob("*.csv") if f.is_file()) if path.is_dir() else [path]
    if not files:
        raise InputFileError(path, "folder holds no .csv export")
    return clean_readings(read_exports(files, root), catalogue, schema).clean


def _clean_parquet(path: Path, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """A Parquet file of clean readings, checked against the clean schema."""
    frame = read_parquet(path)
    expected = list(schema.columns)
    if list(frame.columns) != expected:
        raise InputFileError(path, f"not clean readings: columns {quoted(str(list(frame.columns)))}; expected {expected}")
    try:
        return schema.validate(frame)
    except pa.errors.SchemaError as exc:
        raise InputFileError(path, f"not clean readings: {first_line(exc)}") from None


def serving_rows(clean: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """One request row per reading with spec.n_lags readings of history, the latest reading of each series included.

    Columns: station_id, parameter_id, reading_time (lag_1's time), then spec.feature_columns; sorted by time, then
    series. build_features only makes rows that have a target, so each series gets one placeholder reading after
    its last: the last reading then has a target, and the placeholder (without one) is dropped. Features look back
    only, so the placeholder changes no number.
    """
    if clean.empty or clean.groupby(SERIES_KEYS).size().max() < spec.n_lags:
        raise BtsError(f"no series has the {spec.n_lags} readings a request row needs (featurize.n_lags)")
    latest = clean.sort_values([*SERIES_KEYS, "reading_time", "id"], kind="stable").groupby(SERIES_KEYS, sort=False).tail(1)
    placeholder = latest.assign(reading_time=latest["reading_time"] + pd.Timedelta(seconds=1), value=0.0)
    one_step = spec.but(horizons=[1], holdout_stations=[])  # neither changes a feature; splits do not matter here
    features, _ = build_features(pd.concat([clean, placeholder], ignore_index=True), one_step)
    rows = features[[*KEY_COLUMNS, *spec.feature_columns]]
    return rows.sort_values(["reading_time", *SERIES_KEYS], kind="stable").reset_index(drop=True)
