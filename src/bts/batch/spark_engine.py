"""The Spark engine: the pandas engine's steps, each one the library's own code in a pandas UDF, on any Spark master.

1. read and validate: one task per input file (mapInPandas over the file
   list) runs read_input, as the pandas engine does for each file.
2. clean, in the same pass: rows partitioned by their id (mapInPandas, each
   partition cleaned whole), in arrival order. Every cleaning rule looks at
   one row at a time except duplicate_id, which looks only at earlier rows of
   the same id, so clean_readings on each partition quarantines exactly the
   rows it would on the whole batch, and the partitions' accountings add up.
3. score: clean readings partitioned by their series, then grouped by it
   (applyInPandas): every series whole in one call, so lags never cross
   partitions, scored by score_readings with the model the driver loaded
   (verified) once and shipped with the function. Spark writes the
   predictions as Parquet.
Both shuffles are repartitions to a set number of partitions, a few per core:
Spark's adaptive execution leaves those as they are, where it had merged the
small shuffle of the scoring into a single task, one core's work.
A UDF returns one table: readings, quarantined rows and its notes (a file's
record, a group's accounting, an error) told apart by `kind`. Integer keys
that may be missing cross Spark as int64 plus a missing flag: pandas would
make a nullable int64 column float64, inexact beyond 2**53.
Executors import the `bts` package the driver imported, shipped as a zip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bts.batch.inputs import RAW_DTYPES, InputFile, read_input
from bts.batch.output import PREDICTIONS, QUARANTINE, write_frame
from bts.batch.scoring import SCORED_READING_DTYPES, EngineResult, Predict, merge_accounting, prediction_dtypes, score_readings
from bts.batch.spark_session import SparkProgress, quiet_python_warnings, spark_step
from bts.data.catalogue import Sensor
from bts.data.cleaning import SERIES_KEYS, clean_readings
from bts.data.features import FeatureSpec
from bts.data.schemas import clean_schema, raw_schema
from bts.errors import BtsError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PARTITIONS_PER_CORE = 4  # small enough partitions to balance the cores, few enough that the per-partition cost stays small
CHUNK_ROWS = 200_000  # rows per pandas frame a reading task hands to Spark

# What a row of a UDF's table is (a small integer: text costs time at every crossing between Python and the JVM).
RAW, CLEAN, QUARANTINED = 0, 1, 2  # readings
FILE, ACCOUNTING, ERROR = 3, 4, 5  # notes: a file's record, a group's accounting, an error
NOTES = (FILE, ACCOUNTING, ERROR)
NULLABLE_KEYS = ["id", "station_id", "parameter_id"]
_ROW_DTYPES = {
    "kind": "int8",
    "file_index": "int32",
    "position": "int64",  # the row's place in its file: with file_index, the order the rows arrived in
    "id": "int64",
    "id_missing": "bool",
    "value": "float64",
    "station_id": "int64",
    "station_id_missing": "bool",
    "parameter_id": "int64",
    "parameter_id_missing": "bool",
    "reading_time": "str",  # as delivered
    "source_file": "str",  # null where it is the input file's label: every row, but in the ingest stage's Parquet copy
    "source_row": "int64",
}
READ_DTYPES = {**_ROW_DTYPES, "note": "str"}
CLEANED_DTYPES = {**_ROW_DTYPES, "clean_time": "datetime64[us]", "quarantine_reason": "str", "note": "str"}
LISTING_DDL = "file_index int, path string, label string"
_SPARK_TYPES = {
    "str": "string",
    "int8": "byte",
    "int32": "int",
    "int64": "long",
    "bool": "boolean",
    "float64": "double",
    "datetime64[us]": "timestamp_ntz",
}


def ddl(dtypes: Mapping[str, str]) -> str:
    """A Spark schema (DDL) with one field per column of these pandas dtypes."""
    return ", ".join(f"{name} {_SPARK_TYPES[dtype]}" for name, dtype in dtypes.items())


def encode(frame: pd.DataFrame, kind: int | None, dtypes: Mapping[str, str]) -> pd.DataFrame:
    """frame's rows in the layout of dtypes, of this kind (None: the kind frame's rows have): each nullable key as a
    value (0 when missing) and a missing flag; absent columns are zeros, False, NaN, NaT or null text.

    Text is handed to Spark as Python strings: PySpark 4.3 cannot convert pandas 3's Arrow-backed text columns.
    """
    size = len(frame)
    columns: dict[str, object] = {}
    for name, dtype in dtypes.items():
        key = name.removesuffix("_missing")
        if name == "kind":
            columns[name] = frame["kind"].to_numpy(dtype="int8") if kind is None else np.full(size, kind, dtype="int8")
        elif name.endswith("_missing") and key in NULLABLE_KEYS:
            columns[name] = frame[key].isna().to_numpy(dtype=bool) if key in frame else np.zeros(size, dtype=bool)
        elif name in frame and name in NULLABLE_KEYS:
            columns[name] = frame[name].fillna(0).to_numpy(dtype="int64")
        elif dtype == "str":
            text = frame[name].to_numpy(dtype=object) if name in frame else np.full(size, None, dtype=object)
            columns[name] = pd.Series(_text(text), dtype=object)  # not inferred as pandas 3's str
        elif name in frame:
            columns[name] = frame[name].to_numpy(dtype=dtype)
        else:
            columns[name] = np.full(size, np.nan) if dtype == "float64" else np.zeros(size, dtype=dtype)
    return pd.DataFrame(columns)


def _text(values: np.ndarray) -> np.ndarray:
    """An object array of str with None where a value is missing (NaN, NA or None)."""
    values = values.copy()
    values[pd.isna(values)] = None
    return values


def note(kind: int, text: str, dtypes: Mapping[str, str], file_index: int = 0) -> pd.DataFrame:
    """One row that carries text (a JSON record or an error message) instead of a reading."""
    return encode(pd.DataFrame({"file_index": [file_index], "note": [text]}), kind, dtypes)


def decode(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Raw readings (RAW_DTYPES, keys Int64 again, a null source_file its file's label) from encoded rows, with
    file_index and position."""
    columns = {}
    for name, dtype in RAW_DTYPES.items():
        if name in NULLABLE_KEYS:
            columns[name] = pd.arrays.IntegerArray(frame[name].to_numpy(dtype="int64"), frame[f"{name}_missing"].to_numpy(dtype=bool))
        elif name == "source_file":
            given = frame[name].to_numpy(dtype=object)
            labelled = np.asarray(labels, dtype=object)[frame["file_index"].to_numpy(dtype="int64")]
            columns[name] = pd.Series(np.where(pd.isna(given), labelled, given), dtype=dtype)
        else:
            columns[name] = pd.Series(frame[name].to_numpy(dtype=object if dtype == "str" else dtype), dtype=dtype)
    columns["file_index"] = frame["file_index"].to_numpy(dtype="int32")
    columns["position"] = frame["position"].to_numpy(dtype="int64")
    return pd.DataFrame(columns)


def read_files(listings: Iterator[pd.DataFrame], catalogue: dict[int, Sensor]) -> Iterator[pd.DataFrame]:
    """mapInPandas over (file_index, path, label): each file's readings in chunks, then its record (or its error)."""
    schema = raw_schema(catalogue)
    for listing in listings:
        for file_index, path, label in listing[["file_index", "path", "label"]].itertuples(index=False):
            try:
                raw, record = read_input(InputFile(Path(path), label), schema)
            except BtsError as exc:
                yield note(ERROR, str(exc), READ_DTYPES, file_index)
                continue
            raw = raw.assign(
                file_index=file_index,
                position=np.arange(len(raw), dtype="int64"),
                source_file=raw["source_file"].where(raw["source_file"] != label),  # decode puts the label back
            )
            for start in range(0, len(raw), CHUNK_ROWS):
                yield encode(raw.iloc[start : start + CHUNK_ROWS], RAW, READ_DTYPES)
            yield note(FILE, json.dumps(record), READ_DTYPES, file_index)


def clean_group(frame: pd.DataFrame, catalogue: dict[int, Sensor], labels: list[str]) -> pd.DataFrame:
    """applyInPandas over a group of ids: its clean readings, its quarantined rows (as delivered) and its accounting.

    The reading tasks' notes travel with the readings (one pass over the data) and are handed on as they are.
    """
    notes = encode(frame[frame["kind"] != RAW], None, CLEANED_DTYPES)
    readings = frame[frame["kind"] == RAW]
    if readings.empty:
        return notes
    raw = decode(readings, labels).sort_values(["file_index", "position"], kind="stable").reset_index(drop=True)
    try:
        result = clean_readings(raw, catalogue, clean_schema(catalogue))
    except BtsError as exc:
        return pd.concat([notes, note(ERROR, str(exc), CLEANED_DTYPES)], ignore_index=True)
    clean = encode(result.clean.drop(columns="source_file").rename(columns={"reading_time": "clean_time"}), CLEAN, CLEANED_DTYPES)
    quarantined = encode(result.quarantine, QUARANTINED, CLEANED_DTYPES)
    accounting = note(ACCOUNTING, json.dumps(result.accounting), CLEANED_DTYPES)
    return pd.concat([clean, quarantined, notes, accounting], ignore_index=True)


def quarantine_rows(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """The quarantined rows as the pandas engine writes them: raw columns and reason, in the order they arrived."""
    raw = decode(frame, labels).assign(quarantine_reason=pd.Series(frame["quarantine_reason"].to_numpy(dtype=object), dtype="str"))
    ordered = raw.sort_values(["file_index", "position"], kind="stable").drop(columns=["file_index", "position"])
    return ordered.reset_index(drop=True)


def clean_partition(frames: Iterator[pd.DataFrame], catalogue: dict[int, Sensor], labels: list[str]) -> Iterator[pd.DataFrame]:
    """mapInPandas over a partition of ids: clean_group on its rows, all at once (nothing when it is empty)."""
    batches = list(frames)
    if batches:
        yield clean_group(pd.concat(batches, ignore_index=True), catalogue, labels)


def score_group(frame: pd.DataFrame, spec: FeatureSpec, predict: Predict, outputs: list[str]) -> pd.DataFrame:
    """applyInPandas over one series: score_readings on its clean readings."""
    return score_readings(frame.astype(SCORED_READING_DTYPES), spec, predict, outputs)


# --- the run ------------------------------------------------------------------------------------------------------


# The UDFs with their arguments bound, as plain functions: Spark reads a UDF's type hints (a functools.partial has none).
def _reader(catalogue: dict[int, Sensor]) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def read(listings: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return read_files(listings, catalogue)

    return read


def _cleaner(catalogue: dict[int, Sensor], labels: list[str]) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def clean(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return clean_partition(frames, catalogue, labels)

    return clean


def _scorer(spec: FeatureSpec, predict: Predict, outputs: list[str]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def score(frame: pd.DataFrame) -> pd.DataFrame:
        return score_group(frame, spec, predict, outputs)

    return score


def _first_error(notes: pd.DataFrame) -> None:
    """The error of the first file (or group) that had one, raised."""
    errors = notes[notes["kind"] == ERROR].sort_values("file_index")
    if not errors.empty:
        raise BtsError(errors["note"].iloc[0])


def score_with_spark(
    spark: SparkSession,
    files: list[InputFile],
    catalogue: dict[int, Sensor],
    spec: FeatureSpec,
    predict: Predict,
    outputs: list[str],
    lineage: dict[str, str | None],
    staging: Path,
    say: Callable[[str], None],
) -> EngineResult:
    """Score the files into staging (PREDICTIONS written by Spark, QUARANTINE by the driver); predict answers the output
    columns."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    quiet_python_warnings()
    context = spark.sparkContext
    if context.getConf().contains("spark.sql.shuffle.partitions"):
        partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    else:
        partitions = PARTITIONS_PER_CORE * context.defaultParallelism
        spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    kind = F.col("kind")
    seconds: dict[str, float] = {}
    cached = []
    with SparkProgress(context, say) as progress:
        try:
            progress.step("read, validate and clean")
            clock = time.perf_counter()
            listing = context.parallelize([(i, str(f.path), f.label) for i, f in enumerate(files)], len(files)).toDF(LISTING_DDL)
            read = listing.mapInPandas(_reader(catalogue), ddl(READ_DTYPES))
            labels = [file.label for file in files]
            cleaner = _cleaner(catalogue, labels)
            cleaned = read.repartition(partitions, "id", "id_missing").mapInPandas(cleaner, ddl(CLEANED_DTYPES))
            cleaned = cleaned.persist(StorageLevel.MEMORY_AND_DISK)
            cached.append(cleaned)
            with spark_step("reading and cleaning the exports"):  # the notes and the few quarantined rows, in one scan
                apart = cleaned.where(kind != CLEAN).drop("clean_time").toPandas()
            notes = apart[apart["kind"].isin(NOTES)]
            _first_error(notes)
            records = [json.loads(text) for text in notes.loc[notes["kind"] == FILE].sort_values("file_index")["note"]]
            accounting = merge_accounting([json.loads(text) for text in notes.loc[notes["kind"] == ACCOUNTING, "note"]])
            say(f"read and validated {len(records)} file(s), {sum(r['rows'] for r in records)} rows")
            quarantine = quarantine_rows(apart[apart["kind"] == QUARANTINED], labels)
            say(f"cleaned: {accounting['rows_in']} in = {accounting['rows_out']} clean + {accounting['rows_quarantined']} quarantined")
            seconds["read_validate_and_clean"], clock = time.perf_counter() - clock, time.perf_counter()

            progress.step("score and write")
            readings = cleaned.where(kind == CLEAN).select(
                *[F.col("clean_time").alias(name) if name == "reading_time" else name for name in SCORED_READING_DTYPES]
            )
            scorer = _scorer(spec, predict, outputs)
            by_series = readings.repartition(partitions, *SERIES_KEYS).groupBy(*SERIES_KEYS)  # no second shuffle
            scored = by_series.applyInPandas(scorer, ddl(prediction_dtypes(outputs)))
            scored = scored.select(*scored.columns, *[F.lit(value).cast("string").alias(column) for column, value in lineage.items()])
            with spark_step("scoring"):
                scored.write.parquet(str(staging / PREDICTIONS))
                written = spark.read.parquet(str(staging / PREDICTIONS))
                counts = written.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("station_id", "parameter_id").alias("series")).first()
            write_frame(quarantine, staging / QUARANTINE)
            say(f"scored {counts['rows']} readings of {counts['series']} series")
            seconds["score_and_write"] = time.perf_counter() - clock
        finally:
            for frame in cached:
                frame.unpersist()
    engine = {
        "name": "spark",
        "spark": spark.version,
        "master": context.master,
        "default_parallelism": context.defaultParallelism,
        "partitions": partitions,
    }
    return EngineResult(records, accounting, int(counts["rows"]), int(counts["series"]), seconds, engine)
