"""`bts batch-predict` on a built repository with its registered model: pandas and a real local Spark give the same rows.

A simulated export (the built repository's own) and a real one (../shared/data/bts, required) are scored with both
engines: every horizon's forecast and interval bounds agree to 1e-9 and equal what the registered package, loaded by
MLflow in this process, predicts on the pipeline's own features; every row names the registered version, its run and
its data md5s, the rows add up (in = clean + quarantined, clean = scored + too short a history), and a row leads back
through `bts lineage` to the commit whose dvc.lock holds its data. Bad inputs, an unknown or tampered model and a
missing Java runtime stop the command with one line and leave no output behind.
One Spark session serves the module (the Spark runs that need no command line); one run goes through `bts` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bts.batch.command import BatchRequest, run_batch
from bts.batch.scoring import LINEAGE_COLUMNS, batch_columns
from bts.batch.spark_session import spark_session
from bts.data.features import FeatureSpec
from bts.errors import BtsError
from bts.hashing import file_md5, lock_md5s
from bts.horizons import FORECAST, LOWER, UPPER, output_column, output_columns
from bts.lifecycle.integrity import download_version
from bts.monitoring.field_readings import read_readings, serving_rows
from bts.params import load_params
from tests.integration.workspace import BIN, PROJECT, bts, lock_outs, run

pytestmark = pytest.mark.integration

NAME = "bts-next-reading"
CANDIDATE = f"models:/{NAME}@candidate"
SIMULATED = "data/raw/simulated/param-2017-04-21.csv"
REAL = PROJECT.parent / "shared" / "data" / "bts" / "param-2017-04-18-station-1161114004.csv"
KEYS = ["station_id", "parameter_id", "reading_id", "reading_time", "value"]
TOLERANCE = 1e-9
UNDECODABLE = b"id,value,station_id,parameter_id,reading_time\n1,2.0,1161114004,122,2017-04-18 00:00:\xff\n"  # a byte no UTF-8 has
JVM_NOTICE = "WARNING: Using incubator modules: jdk.incubator.vector"  # printed by Java itself when Spark 4 starts it


def store(repo: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def side_files(output: Path) -> list[Path]:
    """The output folder, the files beside it, and any staging folder a batch to it could leave."""
    manifest = output.with_name(output.name + ".manifest.json")
    return [output, quarantine_of(output), manifest, *output.parent.glob(f".{output.name}.*")]


def manifest_of(output: Path) -> dict:
    return json.loads(output.with_name(output.name + ".manifest.json").read_text())


def quarantine_of(output: Path) -> Path:
    return output.with_name(output.name + ".quarantine.parquet")


def predictions(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output).sort_values("reading_id").reset_index(drop=True)


def outputs_of(repo: Path) -> list[str]:
    """The output columns of a model of the repository's horizons (params.yaml's featurize.horizons)."""
    return output_columns(load_params(repo / "params.yaml").featurize.horizons)


def one_error_line(result) -> str:
    assert result.returncode == 1 and result.stdout == "", (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("batch-predict: ")]  # progress before the error
    assert len(lines) == 1 and lines[0].startswith("bts: error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def repo(built_repo: Path) -> Path:
    """The built repository with its model registered (version 1, @candidate)."""
    bts(["register"], built_repo)
    return built_repo


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    with spark_session("local[2]") as session:
        yield session


@pytest.fixture(scope="module")
def scored(repo: Path, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{(export, engine): output folder} for the simulated and the real export scored by each engine, and under
    "spark console" what the `bts batch-predict --engine spark` run printed. That run's Spark is gone before the
    module's session starts: one Spark at a time."""
    assert REAL.is_file(), f"{REAL}: the real export these tests score is missing (see ../shared/data/bts/README.md)"
    out = tmp_path_factory.mktemp("scores")
    outputs = {}
    for export, source in {"simulated": repo / SIMULATED, "real": REAL}.items():
        outputs[export, "pandas"] = out / f"{export}-pandas"
        bts(["batch-predict", CANDIDATE, "--input", str(source), "--output", str(outputs[export, "pandas"])], repo)
    outputs["simulated", "spark"] = out / "simulated-spark"
    command = ["bts", "batch-predict", CANDIDATE, "--input", SIMULATED, "--output", str(outputs["simulated", "spark"])]
    outputs["spark console"] = run([*command, "--engine", "spark", "--master", "local[2]"], repo)
    outputs["real", "spark"] = out / "real-spark"
    spark = request.getfixturevalue("spark")
    run_batch(store(repo), repo, BatchRequest(CANDIDATE, REAL, outputs["real", "spark"], "spark"), session=spark)
    return outputs


@pytest.mark.parametrize("export", ["simulated", "real"])
def test_both_engines_give_the_same_rows_with_the_same_lineage(repo, scored, export) -> None:
    by_pandas, by_spark = predictions(scored[export, "pandas"]), predictions(scored[export, "spark"])
    outputs = outputs_of(repo)
    assert list(by_pandas.columns) == list(by_spark.columns) == batch_columns(outputs) == [*KEYS, *outputs, *LINEAGE_COLUMNS]
    assert by_pandas.dtypes.equals(by_spark.dtypes) and (by_pandas[outputs].dtypes == "float64").all()
    assert len(by_pandas) > 0 and by_pandas[KEYS].equals(by_spark[KEYS])
    for column in outputs:
        assert np.abs(by_pandas[column] - by_spark[column]).max() <= TOLERANCE, column
    assert by_pandas[LINEAGE_COLUMNS].equals(by_spark[LINEAGE_COLUMNS])
    assert manifest_of(scored[export, "pandas"])["outputs"]["columns"] == manifest_of(scored[export, "spark"])["outputs"]["columns"]
    quarantine = [pd.read_parquet(quarantine_of(scored[export, engine])) for engine in ("pandas", "spark")]
    assert quarantine[0].equals(quarantine[1])
    assert manifest_of(scored[export, "pandas"])["rows"] == manifest_of(scored[export, "spark"])["rows"]


@pytest.mark.parametrize("export", ["simulated", "real"])
def test_every_horizon_and_bound_is_the_registered_package_on_the_pipeline_features(repo, scored, export, tmp_path) -> None:
    source = repo / SIMULATED if export == "simulated" else REAL
    params = load_params(repo / "params.yaml").featurize
    spec = FeatureSpec.from_params(params)
    rows = serving_rows(read_readings(source, repo, repo / "metadata/sensors.yaml"), spec).sort_values("reading_id")
    client = store(repo)
    version = client.get_model_version_by_alias(NAME, "candidate")
    package = mlflow.pyfunc.load_model(str(download_version(client, version, tmp_path)))
    expected = package.predict(rows[spec.feature_columns])
    outputs = outputs_of(repo)
    assert list(expected.columns) == outputs and len(outputs) == 3 * len(params.horizons) > 3
    for engine in ("pandas", "spark"):
        found = predictions(scored[export, engine])
        assert found["reading_id"].tolist() == rows["reading_id"].tolist() and (found["value"] == rows["lag_1"].to_numpy()).all()
        for column in outputs:
            assert np.abs(found[column].to_numpy() - expected[column].to_numpy()).max() <= TOLERANCE, (engine, column)
        for horizon in params.horizons:  # each bound on its side of its own horizon's forecast
            lower, forecast, upper = (found[output_column(kind, horizon)] for kind in (LOWER, FORECAST, UPPER))
            assert (lower <= forecast).all() and (forecast <= upper).all() and (lower < upper).any(), (engine, horizon)


@pytest.mark.parametrize("export", ["simulated", "real"])
def test_every_row_names_the_registered_version_its_run_and_its_data(repo, scored, export) -> None:
    version = store(repo).get_model_version_by_alias(NAME, "candidate")
    lock = lock_outs(repo / "dvc.lock")
    expected = {
        "model_name": NAME,
        "model_version": str(version.version),
        "run_id": version.run_id,
        "model_md5": lock["models/model.joblib"],
        "package_md5": version.tags["package.md5"],
        "data_raw_md5": lock["data/interim/raw.parquet"],
        "data_clean_md5": lock["data/interim/clean.parquet"],
        "data_features_md5": lock["data/processed/features.parquet"],
    }
    found = predictions(scored[export, "spark"])
    for column, value in expected.items():
        assert (found[column] == value).all(), column
    model = manifest_of(scored[export, "spark"])["model"]
    assert (model["name"], model["version"], model["run_id"], model["package_md5"]) == (NAME, "1", version.run_id, expected["package_md5"])
    assert model["verified_against"] == "registry tag package.md5"
    assert model["lineage"]["model_md5"] == expected["model_md5"]
    assert model["lineage"]["data_md5"] == {name: expected[f"data_{name}_md5"] for name in ("raw", "clean", "features")}
    assert model["featurize"]["from"] == "the training run" and model["featurize"]["params"]["n_lags"] == 6


@pytest.mark.parametrize("export", ["simulated", "real"])
def test_rows_in_are_clean_plus_quarantined_and_clean_are_scored_plus_too_short_a_history(repo, scored, export) -> None:
    source = repo / SIMULATED if export == "simulated" else REAL
    output = scored[export, "pandas"]
    manifest, found = manifest_of(output), predictions(output)
    rows = manifest["rows"]
    data_lines = len(source.read_text().splitlines()) - 1
    assert rows["in"] == data_lines == rows["clean"] + rows["quarantined"]
    quarantine = pd.read_parquet(quarantine_of(output))
    assert len(quarantine) == rows["quarantined"] and quarantine["quarantine_reason"].notna().all()
    assert quarantine["quarantine_reason"].value_counts().to_dict() == {k: v for k, v in rows["quarantined_by_reason"].items() if v}
    assert len(found) == rows["predicted"] == rows["clean"] - rows["without_full_history"]
    clean = read_readings(source, repo, repo / "metadata/sensors.yaml")
    assert rows["clean"] == len(clean)
    assert set(clean.groupby(["station_id", "parameter_id"])["id"].last()) <= set(found["reading_id"])  # each series' last reading
    assert rows["series_scored"] == found.groupby(["station_id", "parameter_id"]).ngroups
    assert [(f["md5"], f["rows"]) for f in manifest["inputs"]] == [(file_md5(source), data_lines)]
    assert set(manifest["seconds"]) >= {"load_model", "read_and_validate", "clean", "total"}


def test_a_row_leads_back_to_the_commit_whose_dvc_lock_holds_its_data(repo, scored) -> None:
    row = predictions(scored["real", "spark"]).iloc[0]
    for ref in (row["run_id"], f"models:/{row['model_name']}/{row['model_version']}"):
        chain = json.loads(bts(["lineage", ref, "--json"], repo).stdout)
        assert chain["model_md5"] == row["model_md5"] and chain["datasets"]["features"]["md5"] == row["data_features_md5"]
        first = chain["first_commit"]["commit"]
        assert first in [commit["commit"] for commit in chain["commits"]] and "main" in {r["name"] for r in chain["first_commit"]["refs"]}
        recorded = lock_md5s(run(["git", "show", f"{first}:dvc.lock"], repo).stdout)
        assert {row["data_raw_md5"], row["data_clean_md5"], row["data_features_md5"], row["model_md5"]} <= set(recorded.values()), ref
        run(["git", "merge-base", "--is-ancestor", first, "HEAD"], repo)  # the branch holds it


def test_the_spark_run_keeps_the_console_to_its_own_progress_and_one_summary(scored) -> None:
    console = scored["spark console"]
    assert console.stdout.startswith("batch-predict: ") and console.stdout.count("\n") == 1
    noise = [line for line in console.stderr.splitlines() if not line.startswith("batch-predict: ") and line != JVM_NOTICE]
    assert noise == [], console.stderr
    assert "tasks done" in console.stderr and "spark 4." in console.stderr


# --- bad inputs: one line, no output ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"id;alarm;station\n1;door;1161114004\n", "wrong delimiter ';' in header (expected ',')"),
        (UNDECODABLE, "line 2: undecodable bytes (not UTF-8)"),
    ],
    ids=["not a parameter export", "undecodable bytes"],
)
def test_a_bad_file_stops_the_batch_with_one_line(repo, tmp_path, content, reason) -> None:
    bad = tmp_path / "export.csv"
    bad.write_bytes(content)
    output = tmp_path / "scores"
    result = bts(["batch-predict", CANDIDATE, "--input", str(bad), "--output", str(output)], repo, check=False)
    assert one_error_line(result) == f"bts: error: {bad}: {reason}"
    assert not any(path.exists() for path in side_files(output))


def test_undecodable_bytes_stop_the_spark_engine_and_nothing_is_written(repo, spark, tmp_path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    shutil.copy(repo / SIMULATED, exports / "good.csv")
    (exports / "bad.csv").write_bytes(UNDECODABLE)
    output = tmp_path / "scores"
    with pytest.raises(BtsError) as caught:
        run_batch(store(repo), repo, BatchRequest(CANDIDATE, exports, output, "spark"), session=spark)
    assert str(caught.value) == f"{exports / 'bad.csv'}: line 2: undecodable bytes (not UTF-8)"
    assert "\n" not in str(caught.value)
    assert not any(path.exists() for path in side_files(output))


def test_an_unknown_model_stops_with_one_line(repo, tmp_path) -> None:
    output = tmp_path / "scores"
    result = bts(["batch-predict", f"models:/{NAME}@nobody", "--input", SIMULATED, "--output", str(output)], repo, check=False)
    assert one_error_line(result).startswith(f"bts: error: models:/{NAME}@nobody: not found in ")
    assert not any(path.exists() for path in side_files(output))


def test_a_tampered_registered_model_is_refused_before_anything_is_scored(repo, tmp_path) -> None:
    registered = next((repo / "mlartifacts").rglob("package/model.skops"))
    original = registered.read_bytes()
    output = tmp_path / "scores"
    registered.write_bytes(original + b"\0")
    try:
        result = bts(["batch-predict", CANDIDATE, "--input", SIMULATED, "--output", str(output)], repo, check=False)
    finally:
        registered.write_bytes(original)
    line = one_error_line(result)
    assert "TAMPERED" in line and "model.skops" in line and "batch-predict: scoring" not in result.stderr
    assert not any(path.exists() for path in side_files(output))


def test_no_java_runtime_is_one_line_saying_how_to_get_one(repo, tmp_path) -> None:
    output = tmp_path / "scores"
    environment = {key: value for key, value in os.environ.items() if key != "JAVA_HOME"} | {"PATH": str(BIN)}  # no java there
    command = [str(BIN / "bts"), "batch-predict", CANDIDATE, "--input", SIMULATED, "--output", str(output), "--engine", "spark"]
    result = subprocess.run(command, cwd=repo, env=environment, capture_output=True, text=True)
    assert one_error_line(result) == (
        "bts: error: no Java runtime for Spark (no `java` on PATH); install Java 17 or later, e.g. "
        "`sudo apt-get install openjdk-17-jre-headless`"
    )
    assert not any(path.exists() for path in side_files(output))


def test_an_existing_folder_that_no_batch_wrote_is_left_alone(repo) -> None:
    result = bts(["batch-predict", CANDIDATE, "--input", SIMULATED, "--output", "data"], repo, check=False)
    assert "was not written by `bts batch-predict`" in one_error_line(result)
    assert (repo / SIMULATED).is_file()


@pytest.mark.parametrize("output", [".git/scores", "models/../.git/hooks/scores", "link-to-git/scores", ".dvc/cache/scores"])
def test_an_output_inside_git_or_dvc_is_refused_before_anything_is_written(repo, output) -> None:
    (repo / "link-to-git").unlink(missing_ok=True)
    (repo / "link-to-git").symlink_to(repo / ".git")
    before = sorted(p.relative_to(repo).as_posix() for folder in (".git", ".dvc") for p in (repo / folder).rglob("*"))
    result = bts(["batch-predict", CANDIDATE, "--input", SIMULATED, "--output", output], repo, check=False)
    (repo / "link-to-git").unlink()
    protected = ".dvc" if ".dvc" in output else ".git"
    line = one_error_line(result)  # the output as an absolute path, ".." and links resolved as the check saw it
    assert line.startswith("bts: error: --output /")
    assert line.endswith(f": inside a {protected} folder, whose files git or DVC own; choose another place")
    assert sorted(p.relative_to(repo).as_posix() for folder in (".git", ".dvc") for p in (repo / folder).rglob("*")) == before
