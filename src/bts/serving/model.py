"""The model `bts serve` scores with: resolved from a reference, its package verified, then loaded, and described.

A reference is a registry URI (`models:/name@alias`, `models:/name/3`) or a
package folder. The package is first copied where nothing else writes (a
registry version is downloaded there, a folder copied there), the copy is
checked file by file against its manifest and the recorded package md5
(the version's `package.md5` tag, or what dvc.lock records when the folder
is the workspace's pipeline output), and only then loaded: what is loaded is
exactly what was verified. `CurrentModel` holds the model a server process
answers with: one reference, replaced whole when a followed alias moves.

A model is served when its signature names its inputs (all double) and its
outputs: a multi-horizon forecast's columns, forecast, lower and upper bound
per horizon, in horizon order (`bts.horizons.output_columns`). predict takes
a float matrix of the feature columns and gives a float matrix of the output
columns, one row per row, in the signature's order.

Scoring bypasses MLflow's per-call schema enforcement, whose work the
payload parser has already done (every feature column there, a finite
float64, in the signature's order, nothing else): the fitted forecaster
scores that float matrix itself (`predict_matrix`: numpy and the
estimators' own predict, no frame built or checked again), and another
scikit-learn model gets the same frame MLflow would give it. A startup
check on the package's input example proves the lean path and the pyfunc's
predict give the same values in every output column, and falls back to the
pyfunc's predict if they ever do not.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from bts.errors import BtsError, ConfigError
from bts.hashing import dvc_md5
from bts.horizons import KINDS, label, output_column, output_horizons
from bts.lifecycle.integrity import download_version
from bts.lifecycle.lineage import lock_record, resolve_reference
from bts.model.package import load_package, package_metadata, tampered_files
from bts.serving.payload import KEY_COLUMNS
from bts.tracking.tags import CODE_MD5, DATASETS, GIT_COMMIT, MODEL_MD5, PACKAGE_MD5, PARAMS_MD5, SCHEMAS, data_md5_tag, schema_md5_tag

SERVABLE = "models:/name@alias, models:/name/<version>, or a package folder"
OUTPUTS = f"{', '.join(KINDS)} per horizon, e.g. {', '.join(output_column(kind, 1) for kind in KINDS)}"


@dataclass
class ServedModel:
    """What is served: the model's identity and lineage, its feature and output columns, and predict(features) -> outputs
    (a float64 matrix: rows x feature columns in, rows x output columns out)."""

    reference: str
    package_md5: str
    verified_against: str
    lineage: dict[str, str]
    feature_columns: list[str]
    output_columns: list[str]
    predict: Callable[[np.ndarray], np.ndarray]
    name: str | None = None
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    run_id: str | None = None
    git_commit: str | None = None  # the commit the training run recorded
    fast_path: bool = True

    @cached_property
    def horizons(self) -> list[int]:
        """The horizons it forecasts, in the order of its output columns."""
        return output_horizons(self.output_columns)

    def labels(self) -> dict[str, str]:
        """Prometheus labels: the registered name and version, or the package folder and md5."""
        if self.name:
            return {"model": self.name, "version": str(self.version)}
        return {"model": self.reference, "version": self.package_md5}

    @cached_property
    def metric_labels(self) -> dict[str, str]:
        """labels(), built once: every request the model answers is counted under them."""
        return self.labels()

    @cached_property
    def log_tags(self) -> dict[str, str | None]:
        """tags(), built once: every monitoring record of a request the model answers carries them."""
        return self.tags()

    def tags(self) -> dict[str, str | None]:
        """What every monitoring record carries about the model that made it."""
        return {
            "package_md5": self.package_md5,
            "model_name": self.name,
            "model_version": self.version,
            "run_id": self.run_id,
            **{f"data_{name}_md5": self.lineage.get(data_md5_tag(name)) for name in DATASETS},
        }

    def describe(self) -> dict:
        """GET /model."""
        return {
            "reference": self.reference,
            "name": self.name,
            "version": self.version,
            "aliases": self.aliases,
            "package_md5": self.package_md5,
            "verified_against": self.verified_against,
            "run_id": self.run_id,
            "git_commit": self.git_commit,
            "lineage": {
                "data_md5": {name: self.lineage.get(data_md5_tag(name)) for name in DATASETS},
                "schema_md5": {name: self.lineage.get(schema_md5_tag(name)) for name in SCHEMAS},
                "model_md5": self.lineage.get(MODEL_MD5),
                "params_md5": self.lineage.get(PARAMS_MD5),
                "code_md5": self.lineage.get(CODE_MD5),
            },
            "feature_columns": self.feature_columns,
            "key_columns": list(KEY_COLUMNS),
            "output_columns": self.output_columns,
            "horizons": [label(horizon) for horizon in self.horizons],
        }


class CurrentModel:
    """The model a server process answers with. A request reads `served` once and uses that object to its end; a swap
    is one assignment, so a request that started on the version before finishes on it, and that version is released
    when its last request ends."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served


def load_verified(client: MlflowClient, ref: str, root: Path, shown_as: str | None = None) -> ServedModel:
    """load_served in a scratch folder removed once the model is loaded; named `shown_as` when given (the alias a
    version was reached by). The package's code folder, which MLflow's loader puts first on sys.path, goes with it."""
    with tempfile.TemporaryDirectory(prefix="bts-serve-") as scratch:
        try:
            served = load_served(client, ref, root, Path(scratch))
        finally:  # bts is imported already: the package's copy of its code is not what the loaded model runs
            sys.path[:] = [entry for entry in sys.path if entry != scratch and not entry.startswith(scratch + os.sep)]
    return served if shown_as is None else dataclasses.replace(served, reference=shown_as)


def load_served(client: MlflowClient, ref: str, root: Path, scratch: Path) -> ServedModel:
    """Resolve, copy into scratch, verify and load the model `ref` names; a BtsError (one line) when it cannot be served."""
    if not ref.startswith("models:/") and not Path(ref).is_dir():
        raise ConfigError(f"{ref}: not a model to serve ({SERVABLE})")
    resolved = resolve_reference(client, ref, root)
    package = resolved["package"]
    if package["problems"]:
        raise BtsError(f"{ref}: package TAMPERED: {', '.join(package['problems'])}; refusing to serve it")
    version = resolved["version"]
    if version is not None:
        expected = version.tags.get(PACKAGE_MD5)
        if not expected:
            raise BtsError(
                f"{ref}: version {version.version} has no {PACKAGE_MD5} tag (not registered by `bts register`); refusing to serve it"
            )
        (scratch / "download").mkdir()
        copy = download_version(client, version, scratch / "download")
        against = f"registry tag {PACKAGE_MD5}"
    else:
        expected = lock_record(root, Path(ref))
        copy = scratch / "package"
        shutil.copytree(ref, copy)
        against = "dvc.lock" if expected else "its manifest (not a pipeline output recorded in dvc.lock)"
    try:
        problems = tampered_files(copy, expected)  # the copy is what gets loaded: check it, not the original
        if problems:
            raise BtsError(f"{ref}: package TAMPERED: {', '.join(problems)}; refusing to serve it")
        lineage = package_metadata(copy)["lineage"]
        pyfunc = load_package(copy, expected)
    except BtsError as exc:
        raise BtsError(str(exc).replace(str(copy), ref)) from None
    run = resolved["run"]
    columns, outputs, predict, fast = scorer(ref, pyfunc)
    return ServedModel(
        reference=display_reference(ref, root),
        package_md5=expected or dvc_md5(copy),
        verified_against=against,
        lineage=lineage,
        feature_columns=columns,
        output_columns=outputs,
        predict=predict,
        name=version.name if version is not None else None,
        version=str(version.version) if version is not None else None,
        aliases=sorted(version.aliases) if version is not None else [],
        run_id=run.info.run_id if run is not None else None,
        git_commit=run.data.tags.get(GIT_COMMIT) if run is not None else None,
        fast_path=fast,
    )


def display_reference(ref: str, root: Path) -> str:
    """A folder relative to the project root when inside it (no machine path in /model), else as given."""
    if ref.startswith("models:/"):
        return ref
    try:
        return Path(ref).resolve().relative_to(root).as_posix()
    except ValueError:
        return ref


def input_columns(ref: str, pyfunc: object) -> list[str]:
    """The model's feature columns, as its signature names them; a BtsError unless they are all required doubles."""
    from mlflow.types import DataType

    schema = pyfunc.metadata.get_input_schema()
    if schema is None or not schema.has_input_names() or schema.optional_input_names():
        raise BtsError(f"{ref}: the model's signature must name its input columns (all required) for `bts serve`")
    not_double = [spec.name for spec in schema.inputs if spec.type != DataType.double]
    if not_double:
        raise BtsError(f"{ref}: `bts serve` scores models whose inputs are all double columns; not: {', '.join(not_double[:5])}")
    return schema.input_names()


def forecast_columns(ref: str, pyfunc: object) -> list[str]:
    """The model's output columns, as its signature names them; a BtsError unless they are a forecast's (OUTPUTS), all
    doubles."""
    from mlflow.types import DataType

    schema = pyfunc.metadata.get_output_schema()
    if schema is None or not schema.has_input_names():
        raise BtsError(f"{ref}: the model's signature names no output columns; `bts serve` serves forecasts ({OUTPUTS})")
    columns = schema.input_names()
    try:
        output_horizons(columns)
    except ValueError:
        shown = ", ".join(columns[:6]) + (", ..." if len(columns) > 6 else "")
        raise BtsError(
            f"{ref}: the model's output columns ({shown}) are not a forecast's; `bts serve` serves forecasts ({OUTPUTS})"
        ) from None
    not_double = [spec.name for spec in schema.inputs if spec.type != DataType.double]
    if not_double:
        raise BtsError(f"{ref}: `bts serve` serves forecasts whose outputs are all double columns; not: {', '.join(not_double[:5])}")
    return columns


def output_matrix(predicted: object, columns: list[str], rows: int) -> np.ndarray:
    """A predict result as a float64 matrix of rows x the output columns, in their order (a frame's columns are picked
    by name; an array must have that shape already)."""
    if isinstance(predicted, pd.DataFrame):
        if list(predicted.columns) != columns:
            predicted = predicted[columns]
        matrix = predicted.to_numpy(dtype=np.float64)
    else:
        matrix = np.asarray(predicted, dtype=np.float64)
    if matrix.shape != (rows, len(columns)):
        raise ValueError(f"the model gave predictions of shape {matrix.shape} for {rows} rows and {len(columns)} output columns")
    return matrix


def scorer(ref: str, pyfunc: object) -> tuple[list[str], list[str], Callable[[np.ndarray], np.ndarray], bool]:
    """The model's feature and output columns, and predict(float matrix of the features) -> float matrix of the outputs:
    the lean one when it is provably the same."""
    columns, outputs = input_columns(ref, pyfunc), forecast_columns(ref, pyfunc)

    def through_pyfunc(matrix: np.ndarray) -> np.ndarray:
        return output_matrix(pyfunc.predict(pd.DataFrame(matrix, columns=columns)), outputs, len(matrix))

    example = pyfunc.input_example
    checked = isinstance(example, pd.DataFrame) and set(columns) <= set(example.columns)
    if checked:
        matrix = example[columns].to_numpy(dtype=np.float64)
        predicted = pyfunc.predict(example)
        try:
            expected = output_matrix(predicted, outputs, len(example))
        except (KeyError, ValueError) as exc:
            raise BtsError(f"{ref}: the model's predictions on its input example are not its signature's outputs ({exc})") from None
    if pyfunc.loader_module != "mlflow.sklearn":
        return columns, outputs, through_pyfunc, False
    raw = pyfunc.get_raw_model()
    # A forecaster that scores a checked float matrix (bts.model.forecasters' predict_matrix) is given one, its columns
    # in the order it was fitted on; another model gets the frame MLflow would give it.
    fitted = list(getattr(raw, "feature_names_in_", []))
    order = [columns.index(name) for name in fitted] if hasattr(raw, "predict_matrix") and sorted(fitted) == sorted(columns) else None

    def lean(matrix: np.ndarray) -> np.ndarray:
        if order is not None:
            return output_matrix(raw.predict_matrix(matrix[:, order]), outputs, len(matrix))
        return output_matrix(raw.predict(pd.DataFrame(matrix, columns=columns)), outputs, len(matrix))

    if checked:
        try:
            same = np.array_equal(lean(matrix), expected, equal_nan=True)
        except (KeyError, ValueError):
            same = False
        if not same:
            print(f"bts serve: {ref}: the lean path's predictions differ from MLflow's; scoring through pyfunc", file=sys.stderr)
            return columns, outputs, through_pyfunc, False
    return columns, outputs, lean, True
