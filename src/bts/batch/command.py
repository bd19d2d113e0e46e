"""`bts batch-predict`: score raw exports with a verified model, with pandas or on Spark, every output row with its lineage.

The model is resolved as `bts serve` resolves it (a registry reference or a
package folder, downloaded, checked against its recorded md5, only then
loaded); the exports are read, validated, cleaned and featurized with the
pipeline's own code by the chosen engine. Beside the predictions folder go
the quarantined rows and a manifest: input md5s, the model's lineage, the row
accounting and the time each step took.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bts.batch import DEFAULT_MASTER
from bts.errors import BtsError, ConfigError
from bts.serving import SERVED_REFERENCE

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from pyspark.sql import SparkSession

    from bts.batch.output import OutputPaths
    from bts.batch.scoring import EngineResult
    from bts.serving.model import ServedModel

ENGINES = ("pandas", "spark")
PREFIX = "batch-predict"


def parse_conf(text: str) -> tuple[str, str]:
    """KEY=VALUE of --conf (argparse type)."""
    key, sign, value = text.partition("=")
    if not sign or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. spark.executor.memory=4g")
    return key.strip(), value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bts batch-predict`."""
    parser.add_argument("ref", help=SERVED_REFERENCE)
    parser.add_argument(
        "--input",
        required=True,
        type=Path,
        metavar="EXPORT",
        help="a CSV export, a folder of them, or raw readings as Parquet (an export's columns, or the ingest stage's copy)",
    )
    parser.add_argument(
        "--output",
        required=True,
        type=Path,
        metavar="FOLDER",
        help="Parquet folder for the predictions; FOLDER.quarantine.parquet and FOLDER.manifest.json go beside it",
    )
    parser.add_argument("--engine", choices=ENGINES, default="pandas", help="pandas (this process, default) or spark")
    parser.add_argument("--master", help=f"Spark master (default: {DEFAULT_MASTER}; e.g. local[2], spark://host:7077, yarn)")
    parser.add_argument(
        "--conf",
        type=parse_conf,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark setting, e.g. spark.driver.memory=4g (repeatable)",
    )


@dataclass(frozen=True)
class BatchRequest:
    """What to score, with what, and where the results go."""

    ref: str
    input: Path
    output: Path
    engine: str = "pandas"
    master: str | None = None
    conf: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BatchRequest:
        return cls(args.ref, args.input, args.output, args.engine, args.master, dict(args.conf))


def batch_command(client: MlflowClient, root: Path, args: argparse.Namespace) -> int:
    """`bts batch-predict`: progress on stderr, one summary line on stdout; 0 when the output is written."""
    from bts.batch.output import OutputPaths

    request = BatchRequest.from_args(args)
    manifest = run_batch(client, root, request)
    print(summary(manifest, OutputPaths.beside(request.output)))
    return 0


def run_batch(
    client: MlflowClient, root: Path, request: BatchRequest, session: SparkSession | None = None, progress: TextIO = sys.stderr
) -> dict:
    """Score request.input into request.output with the verified model; returns the manifest written beside it.

    With engine spark, session is used when given (and left running), else one is started on request.master and
    stopped at the end. Any failure raises a BtsError and leaves no output.
    """
    from bts.batch.inputs import input_files
    from bts.batch.output import MANIFEST, OutputPaths, check_output, staged_output
    from bts.batch.scoring import FROM_TRAINING_RUN, lineage_values, model_features, row_counts
    from bts.data.catalogue import load_catalogue
    from bts.files import write_json
    from bts.project import pipeline_argument
    from bts.serving.model import load_served

    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"{PREFIX}: {message}", file=progress, flush=True)

    if request.engine not in ENGINES:
        raise ConfigError(f"--engine {request.engine}: expected one of {', '.join(ENGINES)}")
    if request.engine != "spark" and (request.master or request.conf):
        raise ConfigError("--master and --conf are Spark settings: add --engine spark")
    paths = OutputPaths.beside(request.output)
    check_output(paths)
    files = input_files(request.input, root)
    catalogue = load_catalogue(root / pipeline_argument(root, "clean", "--sensors"))
    if request.engine == "spark" and session is None:
        from bts.batch.spark_session import java_runtime

        java_runtime()  # before the model is downloaded: a missing runtime is the quickest failure to report

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bts-batch-") as scratch:
        model = load_served(client, request.ref, root, Path(scratch))
    features = model_features(client, model.run_id, model.feature_columns, root)
    spec = features.spec
    lineage = lineage_values(model)
    seconds["load_model"] = time.perf_counter() - clock
    say(f"model {describe_model(model)}, package md5 {model.package_md5} (verified against {model.verified_against})")
    if features.source != FROM_TRAINING_RUN:
        say(f"featurize params from {features.source}")
    say(f"scoring {len(files)} file(s) with {request.engine}")

    with staged_output(paths) as staging:
        if request.engine == "pandas":
            from bts.batch.pandas_engine import score_with_pandas

            result = score_with_pandas(files, catalogue, spec, model.predict, model.output_columns, lineage, staging, say)
        else:
            from bts.batch.spark_engine import score_with_spark
            from bts.batch.spark_session import spark_session

            clock = time.perf_counter()
            with nullcontext(session) if session is not None else spark_session(request.master, request.conf) as spark:
                seconds["start_spark"] = time.perf_counter() - clock
                say(f"spark {spark.version} on {spark.sparkContext.master}")
                result = score_with_spark(spark, files, catalogue, spec, model.predict, model.output_columns, lineage, staging, say)
        if result.predicted == 0:
            raise BtsError(f"{request.input}: no series has the {spec.n_lags} clean readings a prediction needs; nothing written")
        rows = row_counts(sum(record["rows"] for record in result.files), result.accounting, result.predicted, result.series)
        seconds.update(result.seconds)
        seconds["total"] = time.perf_counter() - started
        featurize = {"params": features.featurize, "from": features.source}
        manifest = build_manifest(request, model, featurize, result, rows, paths, {k: round(v, 3) for k, v in seconds.items()})
        write_json(staging / MANIFEST, manifest)
    return manifest


def describe_model(model: ServedModel) -> str:
    """'bts-next-reading version 1 (run ...)' for a registered version, 'package <folder> (...)' for a folder."""
    run = f" (run {model.run_id})" if model.run_id else " (no training run in the tracking store)"
    return model_label(model.name, model.version, model.reference) + run


def model_label(name: str | None, version: str | None, reference: str) -> str:
    """'bts-next-reading version 1' for a registered version, 'package <folder>' for a folder."""
    return f"{name} version {version}" if name else f"package {reference}"


def build_manifest(
    request: BatchRequest, model: ServedModel, features: dict, result: EngineResult, rows: dict, paths: OutputPaths, seconds: dict
) -> dict:
    """What the batch read, with which model, what it wrote and how long it took (JSON)."""
    from bts.batch.output import MANIFEST_KIND
    from bts.batch.scoring import batch_columns

    engine = dict(result.engine)
    if request.conf:
        engine["conf_keys"] = sorted(request.conf)  # values may be secrets (storage keys): not recorded
    return {
        "kind": MANIFEST_KIND,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine": engine,
        "model": {**model.describe(), "featurize": features},
        "inputs": result.files,
        "outputs": {
            "predictions": paths.predictions.name,
            "quarantine": paths.quarantine.name,
            "columns": batch_columns(model.output_columns),
        },
        "rows": rows,
        "seconds": seconds,
        "machine": {"cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
    }


def summary(manifest: dict, paths: OutputPaths) -> str:
    """One line: the row accounting, the model, where everything went and how fast."""
    from bts.files import shown_path

    rows, model, seconds = manifest["rows"], manifest["model"], manifest["seconds"]["total"]
    who = model_label(model["name"], model["version"], model["reference"])
    engine = manifest["engine"]
    how = f"spark {engine['master']}" if engine["name"] == "spark" else "pandas"
    return (
        f"{PREFIX}: {rows['in']} rows in = {rows['clean']} clean + {rows['quarantined']} quarantined; "
        f"{rows['predicted']} predictions for {rows['series_scored']} series by {who} in {seconds:.1f} s with {how} "
        f"({rows['in'] / max(seconds, 1e-9):.0f} rows/s) -> {shown_path(paths.predictions)} "
        f"(quarantine {shown_path(paths.quarantine)}, manifest {shown_path(paths.manifest)})"
    )
