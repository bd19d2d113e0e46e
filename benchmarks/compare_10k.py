"""Benchmark of `bts compare` on a SQLite MLflow store holding 10,000 runs (target: the table printed within 1 s as a
new process; within 2 s over 100,000 runs, `--runs 100000`).

It fills a store with --runs runs in one experiment (about 12 params, 80 metrics
and 25 tags each, shaped like the train and evaluate stages' runs, with the
scores of each of HORIZONS), written into MLflow's own tables, in the folder
--store (default: a new temporary folder; a folder that already holds a
complete store of the same size and horizons is reused, so only the first call
pays the minutes of writing). Every run trained on one data
version, which a dvc.lock in that folder records as the workspace's: `bts
compare` run there ranks all of them. Then it times `bts compare`
there in --rounds alternating rounds (benchmarks/measure.py): as the console
script in a new process (what a user waits for, Python start and imports
included; also its CPU seconds, which depend less on what else the machine
runs), in-process (reading and ranking, imports done) and the read of the runs
alone, and prints each as median and spread, the machine's load meanwhile, and
the new process's median against the target. It reports figures only: the exit
code is 0 whether or not the target is met (1 only if `bts compare` fails).

    .venv/bin/python benchmarks/compare_10k.py                             # about 40 s to fill, then the timings
    .venv/bin/python benchmarks/compare_10k.py --store /tmp/bts-compare    # keep (and reuse) the store
    .venv/bin/python benchmarks/compare_10k.py --runs 500                  # smoke check
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing the package
sys.path.insert(0, str(REPO / "benchmarks"))

from bts.horizons import metric_name  # noqa: E402
from measure import MIN_ROUNDS, Machine, alternate, median, summary  # noqa: E402

# The target of a new process by the runs in the store: 1 s up to 10,000 runs, 2 s beyond (up to 100,000).
TARGETS_SECONDS = {10_000: 1.0, 100_000: 2.0}
EXPERIMENT = "bts-next-reading"  # params.yaml's train.experiment, copied so concurrent edits there do not move the benchmark
MODELS = ["elasticnet", "ridge", "hist_gradient_boosting", "random_forest"]
PARAMETER_IDS = ["122", "121", "111", "141"]
HORIZONS = [1, 5, 15]  # the steps ahead every run forecasts: runs of one data version share them
MARKER = "benchmark.json"
# The md5s of the one data version every run trained on (run_tags draws others at random).
WORKSPACE_DATA = {f"data.{name}_md5": f"{random.Random(f'data-{name}').getrandbits(128):032x}" for name in ["raw", "clean", "features"]}


def run_params(rng: random.Random, model: str) -> dict[str, str]:
    """About 12 params, named as the train stage logs them."""
    params = {
        "train.model": model,
        "train.seed": "42",
        "featurize.n_lags": str(rng.choice([3, 6, 12, 24])),
        "featurize.horizons": str(HORIZONS),
        "featurize.valid_fraction": "0.15",
        "featurize.test_fraction": "0.15",
        "featurize.holdout_stations": "[]",
        "train.interval_coverage": "0.9",
    }
    if model == "elasticnet":
        params |= {"train.alpha": f"{10 ** rng.uniform(-4, 0):.5g}", "train.l1_ratio": f"{rng.uniform(0, 1):.3f}"}
    elif model == "ridge":
        params |= {"train.ridge.alpha": f"{10 ** rng.uniform(-3, 2):.5g}"}
    elif model == "hist_gradient_boosting":
        params |= {
            "train.hist_gradient_boosting.max_iter": str(rng.choice([100, 200, 400])),
            "train.hist_gradient_boosting.learning_rate": "0.1",
        }
    else:
        params |= {"train.random_forest.n_estimators": str(rng.choice([50, 100, 200])), "train.random_forest.max_depth": "12"}
    params |= {f"benchmark.pad_{i}": "0" for i in range(12 - len(params))}
    return params


def run_metrics(rng: random.Random, model: str) -> dict[str, float]:
    """About 80 metrics: valid and test scores of each horizon, test by parameter, training cost, model size, system
    metrics (the error grows with the horizon, persistence's faster)."""
    cost = {"elasticnet": 1.0, "ridge": 0.8, "hist_gradient_boosting": 6.0, "random_forest": 15.0}[model]
    rmse = rng.uniform(0.5, 1.5) / (1 + cost / 20)
    metrics: dict[str, float] = {}
    for split, factor in [("valid", 0.97), ("test", 1.0)]:
        metrics[f"{split}.rows"] = 22000.0
        for horizon in HORIZONS:
            error, persistence = rmse * factor * (1 + horizon / 5), 1.3 * (1 + horizon / 3)
            width = error * rng.uniform(3.0, 3.6)
            scores = {
                "rmse": error,
                "mae": error * 0.8,
                "persistence_rmse": persistence,
                "skill": 1 - error / persistence,
                "coverage": rng.uniform(0.87, 0.93),
                "mean_width": width,
                "winkler": width * rng.uniform(1.2, 1.5),
            }
            metrics |= {metric_name(split, horizon, score): value for score, value in scores.items()}
    for parameter in PARAMETER_IDS:
        for horizon in HORIZONS:
            part = rmse * (1 + horizon / 5) * rng.uniform(0.8, 1.2)
            group = f"test_by_parameter.{parameter}"
            metrics |= {
                metric_name(group, horizon, "rmse"): part,
                metric_name(group, horizon, "skill"): 1 - part / (1.3 * (1 + horizon / 3)),
            }
    metrics |= {
        "training.seconds": cost * rng.uniform(0.5, 2.0),
        "training.cpu_seconds": cost * rng.uniform(0.5, 2.0),
        "training.peak_memory_mb": rng.uniform(300, 900),
        "training.rows": 3600.0,
        "model.size_bytes": float(int(cost * rng.uniform(2e4, 1e5))),
        "system/cpu_utilization_percentage": rng.uniform(10, 100),
        "system/system_memory_usage_megabytes": rng.uniform(1000, 4000),
        "system/system_memory_usage_percentage": rng.uniform(5, 20),
        "system/disk_usage_megabytes": rng.uniform(1e4, 2e4),
        "system/network_receive_megabytes": rng.uniform(0, 1),
    }
    return {key: round(value, 6) for key, value in metrics.items()}


def run_tags(rng: random.Random, index: int) -> dict[str, str]:
    """About 25 tags, as git_tags, dvc_tags, machine_tags and data_tags write them."""
    commit = f"{rng.getrandbits(160):040x}"
    tags = {
        "git.commit": commit,
        "git.branch": "main",
        "git.dirty": "false",
        "dvc.exp_name": f"exp-{index:05d}",
        "dvc.baseline_rev": commit,
        "dvc.stage": "train",
        "machine.cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz",
        "machine.cores": "2",
        "machine.memory_gb": "23.4",
        "machine.os": "Linux-6.1.0-x86_64-with-glibc2.36",
        "machine.python": "3.11.9",
        "package.mlflow": "3.17.2",
        "package.dvc": "3.67.1",
        "package.scikit-learn": "1.9.1",
        "package.pandas": "3.1.1",
        "package.numpy": "2.3.0",
        "mlflow.user": "benchmark",
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": "src/stages/train.py",
    }
    for name in ["raw", "clean", "features"]:
        tags[f"data.{name}_md5"] = f"{rng.getrandbits(128):032x}"
        tags[f"data.{name}_path"] = f"data/{name}/readings.parquet"
    return tags


def fill(uri: str, runs: int, artifact_location: str, data_tags: Callable[[int], dict[str, str]]) -> None:
    """Write `runs` finished runs into the database at `uri`, in one experiment, as MLflow's store writes them; run
    `index` carries the data md5 tags `data_tags(index)`.

    Rows go straight into MLflow's own tables (its ORM models' tables), a thousand runs per statement: the API
    writes 15 runs/s on this loaded machine, which made a fill of 10,000 runs take 12 minutes per store.
    """
    import sqlalchemy
    from mlflow import MlflowClient
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    experiment_id = int(MlflowClient(tracking_uri=uri).create_experiment(EXPERIMENT, artifact_location=artifact_location))
    engine = sqlalchemy.create_engine(uri)
    rng = random.Random(7)
    started = time.perf_counter()
    now_ms = int(time.time() * 1000)
    rows: dict[sqlalchemy.Table, list[dict]] = {}
    for index in range(runs):
        model = MODELS[index % len(MODELS)]
        start_ms = now_ms - (runs - index) * 60_000
        run_id, name = f"{rng.getrandbits(128):032x}", f"exp-{index:05d}"
        tags = {**run_tags(rng, index), **data_tags(index), "mlflow.runName": name}
        run = {
            "run_uuid": run_id, "name": name, "source_type": "UNKNOWN", "source_name": "", "entry_point_name": "",
            "user_id": "benchmark", "status": "FINISHED", "start_time": start_ms, "end_time": start_ms + 30_000,
            "deleted_time": None, "source_version": "", "lifecycle_stage": "active",
            "artifact_uri": f"{artifact_location}/{run_id}/artifacts", "experiment_id": experiment_id,
        }  # fmt: skip
        metrics = [
            {"key": key, "value": value, "timestamp": start_ms, "step": 0, "is_nan": False, "run_uuid": run_id}
            for key, value in run_metrics(rng, model).items()
        ]
        rows.setdefault(SqlRun.__table__, []).append(run)
        rows.setdefault(SqlTag.__table__, []).extend({"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items())
        rows.setdefault(SqlParam.__table__, []).extend(
            {"key": k, "value": v, "run_uuid": run_id} for k, v in run_params(rng, model).items()
        )
        rows.setdefault(SqlMetric.__table__, []).extend(metrics)
        rows.setdefault(SqlLatestMetric.__table__, []).extend(metrics)
        if (index + 1) % 1000 == 0 or index + 1 == runs:
            with engine.begin() as connection:
                for table, values in rows.items():  # runs first: the others refer to them
                    connection.execute(table.insert(), values)
            rows = {}
            elapsed = time.perf_counter() - started
            print(f"  {index + 1:>6} / {runs} runs written ({elapsed:.0f} s, {(index + 1) / elapsed:.0f} runs/s)", flush=True)
    engine.dispose()


def fill_store(store: Path, runs: int) -> str:
    """The store's tracking URI, after writing `runs` runs into it unless a complete store of that size is there already."""
    uri = f"sqlite:///{store / 'mlflow.db'}"
    marker = store / MARKER
    filled = {"runs": runs, "experiment": EXPERIMENT, "features_md5": WORKSPACE_DATA["data.features_md5"], "horizons": HORIZONS}
    if marker.exists() and json.loads(marker.read_text()) == filled:
        print(f"reusing {runs} runs in {store}")
        return uri
    if store.exists():
        shutil.rmtree(store)  # an interrupted or differently sized fill: start over
    store.mkdir(parents=True)
    fill(uri, runs, (store / "mlartifacts").as_uri(), lambda index: WORKSPACE_DATA)
    marker.write_text(json.dumps(filled))
    return uri


def write_workspace(store: Path) -> None:
    """The project's dvc.yaml and a dvc.lock recording the runs' features md5 in the store's folder, where `bts compare`
    runs: the runs are on the workspace's data version."""
    from bts.project import TRAINING_STAGE, pipeline_argument

    shutil.copy(REPO / "dvc.yaml", store / "dvc.yaml")
    features = pipeline_argument(REPO, TRAINING_STAGE, "--features")
    lock = {"schema": "2.0", "stages": {"featurize": {"outs": [{"path": features, "md5": WORKSPACE_DATA["data.features_md5"]}]}}}
    (store / "dvc.lock").write_text(json.dumps(lock))  # JSON is YAML


@dataclass
class Timing:
    wall: float
    cpu: float  # user + system seconds of the process: what the wall time would be on an idle machine
    output: str


def time_subprocess(uri: str, cwd: Path) -> Timing:
    """Wall and CPU seconds of `bts compare` as its own process, and its output."""
    bts = REPO / ".venv" / "bin" / "bts"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([str(bts), "compare", "--experiment", EXPERIMENT], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"bts compare failed ({result.returncode}): {result.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(elapsed, cpu, result.stdout)


def time_in_process(uri: str) -> float:
    """Wall seconds of `bts compare` called in this process (its imports already done)."""
    from bts.cli import main

    os.environ["MLFLOW_TRACKING_URI"] = uri
    output = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(output):
        code = main(["compare", "--experiment", EXPERIMENT])
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"bts compare failed in-process ({code})")
    return elapsed


def time_search(uri: str) -> float:
    """Wall seconds of what `bts compare` reads from the store: the runs' data versions, the ranked metrics of every run
    and which params differ (the names and params of the rows shown, a few queries more, are left out)."""
    from bts.lifecycle.compare import open_runs

    os.environ["MLFLOW_TRACKING_URI"] = uri
    started = time.perf_counter()
    version = WORKSPACE_DATA["data.features_md5"]
    with open_runs(EXPERIMENT, "", None, version, every_version=False) as runs:  # the default metrics, horizons found first
        runs.varying(runs.rows(version, every_version=False))
    return time.perf_counter() - started


def verdict(seconds: float, runs: int) -> str:
    target = next((target for size, target in sorted(TARGETS_SECONDS.items()) if runs <= size), None)
    if target is None:
        return f"no target beyond {max(TARGETS_SECONDS):,} runs"
    return f"{'meets' if seconds <= target else 'MISSES'} the {target:g} s target"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="folder of the store; reused if it holds a complete store of --runs runs")
    parser.add_argument("--runs", type=int, default=10_000, help="runs to write (default 10000)")
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"alternating rounds of the three timings (at least {MIN_ROUNDS})")
    args = parser.parse_args()
    if args.rounds < MIN_ROUNDS:
        parser.error(f"--rounds: at least {MIN_ROUNDS}")
    store = (args.store or Path(tempfile.mkdtemp(prefix="bts-compare-"))).resolve()
    print(f"store: {store}")
    uri = fill_store(store, args.runs)
    write_workspace(store)
    os.chdir(store)  # the in-process calls, as the new processes, run in that workspace

    processes: list[Timing] = []

    def new_process() -> float:
        processes.append(time_subprocess(uri, store))
        return processes[-1].wall

    trials = {"new process": new_process, "in-process": lambda: time_in_process(uri), "search alone": lambda: time_search(uri)}
    with Machine() as machine:
        figures = alternate(trials, rounds=args.rounds, progress=lambda line: print(f"  {line} s", flush=True))
    print(processes[0].output.rstrip())
    print(f"\n`bts compare` over {args.runs} runs, {args.rounds} alternating rounds:")
    print(f"  console script (new process):   {summary(figures['new process'])}: {verdict(median(figures['new process']), args.runs)}")
    print(f"    CPU time of that process:     {summary([timing.cpu for timing in processes])} (its floor on an idle machine)")
    print(f"  in-process (reading + ranking): {summary(figures['in-process'])}")
    print(f"  of which reading the runs:      {summary(figures['search alone'])}")
    print(machine.describe())


if __name__ == "__main__":
    main()
