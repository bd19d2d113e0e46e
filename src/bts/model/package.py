"""The packaged model: an MLflow model folder, byte for byte the same for the same model, verified before it is loaded.

A package holds the skops-serialized forecaster, its signature and input
example, pinned requirements, the library code the model's classes need, and
in its MLmodel metadata its lineage (content hashes of the data, params, code
and weights, never a run id or a clock time) and a manifest: the md5 of every
other file. The folder's md5 (as DVC computes it for a folder) names the
package everywhere: dvc.lock, registry version tags, `bts lineage`. Nothing
in a package is deserialized before every file matches.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import uuid
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd

from bts.errors import BtsError
from bts.hashing import dir_manifest, dvc_md5, file_md5, lock_md5s, manifest_md5

MLMODEL = "MLmodel"
PACKAGE_ARTIFACT = "package"  # where the package lies among the artifacts of the run that trained it
SKOPS_FILE = "model.skops"
CODE_FOLDER = "code"
# Files MLflow itself adds when it downloads a registered version; they are not part of what was packaged.
DOWNLOAD_ADDITIONS = {"registered_model_meta"}
# The modules the forecaster's classes live in: the only library code a package carries.
PACKAGED_MODULES = ["__init__.py", "model/__init__.py", "model/forecasters.py", "horizons.py"]
# Pinned requirements of the package (given, so MLflow need not infer them: that took seconds).
PACKAGE_REQUIREMENTS = [f"{name}=={version(name)}" for name in ["mlflow", "scikit-learn", "skops", "pandas", "numpy", "scipy", "pyarrow"]]
FIXED_TIME = "1970-01-01 00:00:00.000000"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class IntegrityError(BtsError):
    """A file whose bytes do not match the md5 recorded for it: it is not loaded."""


def library_path() -> Path:
    """The folder of the `bts` package this process really imported (the workspace's, through PYTHONPATH=src)."""
    return Path(__file__).resolve().parents[1]


def normalize_skops(data: bytes) -> bytes:
    """The same skops archive with object ids renumbered in order of appearance and fixed zip times: same model, same bytes.

    skops names nodes and array files after Python object ids (`id(obj)`), which differ from process to process;
    renumbering them consistently keeps every reference intact.
    """
    source = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(source.read("schema.json"))
    renumbered: dict[str, str] = {}

    def new_id(old: object) -> int:
        return int(renumbered.setdefault(str(old), str(len(renumbered) + 1)))

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            result = {}
            for key, value in node.items():
                if key == "__id__":
                    result[key] = new_id(value)
                elif key == "file" and isinstance(value, str) and value.endswith(".npy"):
                    result[key] = f"{new_id(value.removesuffix('.npy'))}.npy"
                else:
                    result[key] = walk(value)
            return result
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    normalized = json.dumps(walk(schema), sort_keys=True)
    entries = {}
    for name in source.namelist():
        if name != "schema.json":
            stem = name.removesuffix(".npy")
            entries[f"{renumbered[stem]}.npy" if stem in renumbered else name] = source.read(name)
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_STORED) as target:
        target.writestr(zipfile.ZipInfo("schema.json", ZIP_TIME), normalized)
        for name in sorted(entries):
            target.writestr(zipfile.ZipInfo(name, ZIP_TIME), entries[name])
    return output.getvalue()


def _library_code(library: Path, into: Path) -> Path:
    """A copy of just the modules the model's classes need, without caches: part of the package's bytes."""
    code = into / "bts"
    for relative in PACKAGED_MODULES:
        target = code / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(library / relative, target)
    return code


def build_package(
    model: Any,
    path: Path,
    *,
    example: pd.DataFrame,
    lineage: dict[str, str],
    feature_columns: list[str],
    pip_requirements: list[str],
    trusted_types: list[str],
    library: Path,
) -> str:
    """Write the package into the (new) folder `path`; returns its md5 (the folder md5 DVC will record)."""
    import mlflow
    from mlflow.models import Model, infer_signature

    with tempfile.TemporaryDirectory() as scratch:
        code = _library_code(library, Path(scratch))
        mlflow.sklearn.save_model(
            model,
            str(path),
            serialization_format="skops",
            skops_trusted_types=trusted_types,
            signature=infer_signature(example, model.predict(example)),
            input_example=example,
            pip_requirements=pip_requirements,
            code_paths=[str(code)],
        )
    skops_path = path / SKOPS_FILE
    skops_path.write_bytes(normalize_skops(skops_path.read_bytes()))
    manifest = {name: md5 for name, md5 in dir_manifest(path).items() if name != MLMODEL}
    described = Model.load(str(path / MLMODEL))
    described.utc_time_created = FIXED_TIME  # a package is named by its content, not by when it was written
    described.model_uuid = uuid.UUID(lineage["model_md5"]).hex
    described.model_size_bytes = sum((path / name).stat().st_size for name in manifest)
    described.metadata = {"feature_columns": feature_columns, "lineage": lineage, "manifest": manifest}
    described.save(str(path / MLMODEL))
    return dvc_md5(path)


def read_mlmodel(path: Path) -> dict:
    """The MLmodel file of a package folder as a dict, or an IntegrityError saying why it is not one."""
    import yaml

    mlmodel = path / MLMODEL
    if not mlmodel.is_file():
        raise BtsError(f"{path}: not a model package (no {MLMODEL} file)")
    try:
        described = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise IntegrityError(f"{mlmodel}: not a readable MLmodel file ({str(exc).splitlines()[0]})") from None
    if not isinstance(described, dict):
        raise IntegrityError(f"{mlmodel}: not a readable MLmodel file (not a mapping)")
    return described


def package_metadata(path: Path) -> dict:
    """{'lineage': ..., 'manifest': ..., 'feature_columns': ...} of a package built by this pipeline."""
    metadata = read_mlmodel(path).get("metadata") or {}
    lineage, manifest = metadata.get("lineage"), metadata.get("manifest")
    if not isinstance(lineage, dict) or not lineage.get("model_md5"):
        raise BtsError(f"{path / MLMODEL}: no lineage in the model metadata (not packaged by this pipeline)")
    if not isinstance(manifest, dict) or not manifest:
        raise BtsError(f"{path / MLMODEL}: no manifest of the package's files (not packaged by this pipeline)")
    return metadata


def tampered_files(path: Path, expected_md5: str | None = None) -> list[str]:
    """The files of the package that differ from its manifest (or are missing or added); [] when it is intact.

    With expected_md5 (from dvc.lock or a registry version), the MLmodel file itself is covered too.
    """
    manifest = package_metadata(path)["manifest"]
    actual = {name: md5 for name, md5 in dir_manifest(path).items() if name not in DOWNLOAD_ADDITIONS}
    mlmodel_md5 = actual.pop(MLMODEL, None)
    problems = [f"{name} (missing)" for name in sorted(set(manifest) - set(actual))]
    problems += [f"{name} (not in the manifest)" for name in sorted(set(actual) - set(manifest))]
    problems += [
        f"{name} (md5 {actual[name]}, recorded {manifest[name]})"
        for name in sorted(set(manifest) & set(actual))
        if actual[name] != manifest[name]
    ]
    if expected_md5 and not problems:
        whole = manifest_md5({**actual, MLMODEL: mlmodel_md5 or ""})
        if whole != expected_md5:
            problems.append(f"{MLMODEL} (package md5 {whole}, recorded {expected_md5})")
    return problems


def verify_package(path: Path, expected_md5: str | None = None) -> dict:
    """The package's metadata once every file matches; an IntegrityError naming the files otherwise."""
    problems = tampered_files(path, expected_md5)
    if problems:
        raise IntegrityError(f"{path}: TAMPERED: {', '.join(problems)}; refusing to load it")
    return package_metadata(path)


def load_package(path: Path, expected_md5: str | None = None) -> Any:
    """The package as an MLflow pyfunc model, loaded only after verify_package passed."""
    import mlflow

    verify_package(path, expected_md5)
    return mlflow.pyfunc.load_model(str(path))


def recorded_md5(output: str, lock_path: Path = Path("dvc.lock")) -> str:
    """The md5 dvc.lock records for a stage output."""
    try:
        md5 = lock_md5s(lock_path.read_bytes()).get(output)
    except OSError as exc:
        raise IntegrityError(f"{lock_path}: cannot read it to verify {output} ({exc.strerror})") from None
    if not md5:
        raise IntegrityError(f"{output}: no md5 recorded for it in {lock_path}; refusing to load it (rebuild with `dvc repro`)")
    return md5


def verified_file(path: Path, expected_md5: str) -> Path:
    """path, once its md5 equals the recorded one (a pickle runs code when loaded: check before, never after)."""
    actual = file_md5(path)
    if actual != expected_md5:
        raise IntegrityError(
            f"{path}: md5 {actual} does not match {expected_md5} recorded in dvc.lock; refusing to load it "
            "(remove the corrupt copy from the DVC cache, then rebuild it with `dvc repro --force` of the stage that writes it)"
        )
    return path


def load_workspace_model(path: Path, lock_path: Path = Path("dvc.lock")) -> Any:
    """A fitted model file of the workspace (joblib), loaded only if its md5 is the one dvc.lock records for it."""
    import joblib

    try:  # dvc.lock names outputs relative to its own folder
        output = path.resolve().relative_to(lock_path.resolve().parent).as_posix()
    except ValueError:
        output = path.as_posix()
    return joblib.load(verified_file(path, recorded_md5(output, lock_path)))
