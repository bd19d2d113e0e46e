"""Benchmark of the team setup: the `bts` commands over 10,000 runs on SQLite and on PostgreSQL behind `mlflow server`.

It fills two stores with --runs runs shaped like the pipeline's (compare_10k.py's runs: about 12 params, 80 metrics
and 25 tags each, their data md5s one of --data-versions values, as a team's runs share a few data versions): a
SQLite database, and PostgreSQL behind an MLflow tracking server that bts.team starts in --dir (a folder holding
complete fills is reused). A small git repository holds a DVC experiment ref for every run but ten. Then it times,
against SQLite, against the server (MLFLOW_TRACKING_URI=http://... alone), and against the server with bulk reads
from its database (BTS_TRACKING_DATABASE_URI, the read-only role `make team-up` prints):

- `bts compare` (the default ranking over every run of the experiment),
- `bts lineage <run id>`,
- `bts runs check` (every run against the experiment refs and the registry; the ten lost ones are reported),
- `bts history` (the alias transitions of the registered model),
- the best-run search: the lowest test RMSE at the shortest horizon among the runs trained on one features md5
  (MlflowClient.search_runs with a tag filter, ordered by the metric, one result),

in-process (imports done: what the command itself costs; median of --repeat calls after one warm-up) and as a new
process (what a user waits for, Python's imports included, with its CPU seconds), and prints a table against the
targets (each command at most 1 s as a new process, the search under 0.5 s) with the machine's load while timing (benchmarks/measure.py:
flagged as disturbed when processes other than the benchmark, its stores and its server used over a quarter of a
core). Through the server's API alone, `bts compare` and `bts runs check` read whole runs (minutes at 10,000): they are
timed once. Figures only: the exit code is 0 whether or not a target is met.

    .venv/bin/python benchmarks/team_10k.py                                 # a few minutes to fill, then the timings
    .venv/bin/python benchmarks/team_10k.py --dir /tmp/bts-team-10k --keep-server   # keep (and reuse) the stores
    .venv/bin/python -m bts.team down --dir /tmp/bts-team-10k/team                  # then stop the kept server
    .venv/bin/python benchmarks/team_10k.py --runs 300 --repeat 1           # smoke check
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
import statistics
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
from bts.tracking.store import BULK_READ_DATABASE  # noqa: E402
from compare_10k import EXPERIMENT, HORIZONS, fill  # noqa: E402
from measure import Machine  # noqa: E402

COMMAND_TARGET_SECONDS = 1.0  # as a new process: what a user waits for
SEARCH_TARGET_SECONDS = 0.5
MARKER = "benchmark.json"
BTS = REPO / ".venv" / "bin" / "bts"
PROJECT_FILES = ["dvc.yaml", "params.yaml", "dvc.lock", "metadata"]  # what `bts` needs to find and read a project
LOST_EXPERIMENTS = 10


def data_version(index: int, versions: int) -> dict[str, str]:
    """The data md5 tags of run `index`: one of `versions` data versions, as a team's runs share a few."""
    rng = random.Random(f"data-{index % versions}")
    return {f"data.{name}_md5": f"{rng.getrandbits(128):032x}" for name in ["raw", "clean", "features"]}


def filled(folder: Path, runs: int, versions: int) -> bool:
    marker = folder / MARKER
    return marker.exists() and json.loads(marker.read_text()) == fill_record(runs, versions)


def mark_filled(folder: Path, runs: int, versions: int) -> None:
    (folder / MARKER).write_text(json.dumps(fill_record(runs, versions)))


def fill_record(runs: int, versions: int) -> dict:
    """What a complete fill is made of: a fill of other runs, versions or horizons is not reused."""
    return {"runs": runs, "versions": versions, "experiment": EXPERIMENT, "horizons": HORIZONS}


def sqlite_store(folder: Path, runs: int, versions: int) -> str:
    """A SQLite store of `runs` runs in folder."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    if filled(folder, runs, versions):
        print(f"reusing {runs} runs in {folder}")
        return uri
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"filling SQLite with {runs} runs")
    fill(uri, runs, (folder / "mlartifacts").as_uri(), lambda index: data_version(index, versions))
    mark_filled(folder, runs, versions)
    return uri


def team_store(folder: Path, runs: int, versions: int):
    """PostgreSQL behind `mlflow server` (bts.team) holding `runs` runs: the bts.team.Team."""
    from bts import team

    if not filled(folder, runs, versions) and folder.exists():
        team.stop(folder)
        shutil.rmtree(folder)
    setup = team.start(folder)
    os.environ["PGPASSFILE"] = str(setup.password_file)  # the roles' passwords, for this process and the commands it starts
    if filled(folder, runs, versions):
        print(f"reusing {runs} runs in {folder}")
        return setup
    print(f"filling PostgreSQL with {runs} runs")
    # Into the database: the server only adds HTTP.
    fill(setup.backend_uri, runs, f"mlflow-artifacts:/{EXPERIMENT}", lambda index: data_version(index, versions))
    import psycopg2

    with contextlib.closing(
        psycopg2.connect(host=team.HOST, port=setup.postgres_port, user=team.DATABASE_USER, dbname=team.DATABASE)
    ) as db:
        db.autocommit = True
        db.cursor().execute("VACUUM ANALYZE")  # the statistics autovacuum would have gathered after a while
    mark_filled(folder, runs, versions)
    return setup


def project(folder: Path, runs: int) -> Path:
    """A small git repository with the project's pipeline files (where `bts` finds params.yaml and git history) and a
    DVC experiment ref for every run but the first LOST_EXPERIMENTS, whose refs are gone as if lost by the queue."""
    if (folder / ".git").exists():
        return folder
    folder.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / name)
    for command in [["git", "init", "-q", "-b", "main"], ["git", "add", "-A"]]:
        subprocess.run(command, cwd=folder, check=True)
    identity = ["-c", "user.email=benchmark@example.com", "-c", "user.name=benchmark"]
    subprocess.run(["git", *identity, "commit", "-q", "-m", "project"], cwd=folder, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, check=True, capture_output=True, text=True).stdout.strip()
    refs = "".join(f"create refs/exps/{head[:2]}/{head[2:]}/exp-{index:05d} {head}\n" for index in range(LOST_EXPERIMENTS, runs))
    subprocess.run(["git", "update-ref", "--stdin"], cwd=folder, input=refs, text=True, check=True)
    return folder


def some_run(uri: str) -> tuple[str, str]:
    """A run id of the store, and its features md5."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    run = client.search_runs([experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"])[0]
    return run.info.run_id, run.data.tags["data.features_md5"]


def best_run(uri: str, features_md5: str) -> str:
    """The search a user makes to pick a model: the lowest test RMSE at the shortest horizon among the runs trained on
    these features."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`data.features_md5` = '{features_md5}'",
        order_by=[f"metrics.`{metric_name('test', HORIZONS[0], 'rmse')}` ASC"],
        max_results=1,
    )
    return runs[0].info.run_id


@dataclass
class Store:
    label: str
    env: dict[str, str]  # MLFLOW_TRACKING_URI, and BTS_TRACKING_DATABASE_URI when bulk reads go to the database
    whole_runs: bool = False  # bulk commands read whole runs through MLflow's API: one timed call (minutes at 10,000)

    @property
    def uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]


def in_process(store: Store, cwd: Path, arguments: list[str]) -> float:
    """Wall seconds of `bts <arguments>` called in this process (imports done)."""
    from bts.cli import main

    os.environ.pop(BULK_READ_DATABASE, None)
    os.environ.update(store.env)
    previous = Path.cwd()
    os.chdir(cwd)
    output = io.StringIO()
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(output):
            code = main(arguments)
        elapsed = time.perf_counter() - started
    finally:
        os.chdir(previous)
    if code not in (0, 1):  # `bts runs check` exits 1 when it finds something to report (here: the lost experiments)
        raise SystemExit(f"bts {' '.join(arguments)} failed ({code})")
    return elapsed


def new_process(store: Store, cwd: Path, arguments: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of `bts <arguments>` as its own process."""
    env = {k: v for k, v in os.environ.items() if k != BULK_READ_DATABASE} | store.env
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([str(BTS), *arguments], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in (0, 1) or "error" in result.stderr:
        raise SystemExit(f"bts {' '.join(arguments)} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_of(repeat: int, call: Callable[[], float]) -> float:
    call()  # warm: connections, caches, the first import of a module
    return statistics.median(call() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="folder of the stores; reused if it holds complete fills of --runs runs")
    parser.add_argument("--runs", type=int, default=10_000, help="runs in each store (default 10000)")
    parser.add_argument("--data-versions", type=int, default=20, help="distinct data md5s among the runs (default 20)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls of each kind (default 3)")
    parser.add_argument("--keep-server", action="store_true", help="leave PostgreSQL and the MLflow server running")
    args = parser.parse_args()
    folder = (args.dir or Path(tempfile.mkdtemp(prefix="bts-team-10k-"))).resolve()
    print(f"stores in {folder}")
    from bts import team

    sqlite_uri = sqlite_store(folder / "sqlite", args.runs, args.data_versions)
    server = team_store(folder / "team", args.runs, args.data_versions)
    stores = [
        Store("SQLite", {"MLFLOW_TRACKING_URI": sqlite_uri}),
        Store("PostgreSQL via mlflow server", {"MLFLOW_TRACKING_URI": server.tracking_uri}, whole_runs=True),
        Store(
            "PostgreSQL via mlflow server, bulk reads from the database",
            {"MLFLOW_TRACKING_URI": server.tracking_uri, BULK_READ_DATABASE: server.reader_uri},
        ),
    ]
    repo = project(folder / "project", args.runs)
    rows = []
    try:
        with Machine([folder]) as machine:  # the server and PostgreSQL run in folder: their CPU is the benchmark's own
            time_stores(stores, repo, args.repeat, rows)
    finally:
        if not args.keep_server:
            team.stop(folder / "team")
    print(f"\n{args.runs} runs per store ({LOST_EXPERIMENTS} of them without their DVC experiment ref); medians")
    print(machine.describe())
    print("\n| store | operation | in-process s | calls | target s | verdict | new process s (CPU s) |")
    print("|---|---|---|---|---|---|---|")
    for label, name, inside, target, wall, cpu, calls in rows:
        process = f"{wall:.2f} ({cpu:.2f})" if wall is not None else "-"
        waited = wall if wall is not None else inside  # a command's target is on its new process, when timed as one
        print(f"| {label} | {name} | {inside:.3f} | {calls} | {target} | {'meets' if waited <= target else 'MISSES'} | {process} |")


def time_stores(stores: list[Store], repo: Path, repeat: int, rows: list[tuple]) -> None:
    """Each command against each store, in-process and as a new process, appended to rows."""
    for store in stores:
        run_id, features_md5 = some_run(store.uri)
        commands = {
            "bts compare": (["compare", "--experiment", EXPERIMENT], store.whole_runs),
            "bts lineage": (["lineage", run_id], False),
            "bts runs check": (["runs", "check", "--experiment", EXPERIMENT], store.whole_runs),
            "bts history": (["history"], False),
        }
        for name, (arguments, once) in commands.items():
            if once:
                rows.append((store.label, name, in_process(store, repo, arguments), COMMAND_TARGET_SECONDS, None, None, 1))
            else:
                inside = median_of(repeat, lambda store=store, arguments=arguments: in_process(store, repo, arguments))
                outside = [new_process(store, repo, arguments) for _ in range(repeat)]
                wall, cpu = statistics.median(t[0] for t in outside), statistics.median(t[1] for t in outside)
                rows.append((store.label, name, inside, COMMAND_TARGET_SECONDS, wall, cpu, repeat))
            print(f"  {store.label}: {name}: {rows[-1][2]:.2f} s in-process", flush=True)

        def search(uri: str = store.uri, md5: str = features_md5) -> float:
            started = time.perf_counter()
            best_run(uri, md5)
            return time.perf_counter() - started

        rows.append((store.label, "best-run search", median_of(repeat, search), SEARCH_TARGET_SECONDS, None, None, repeat))
        mlflow_reset()


def mlflow_reset() -> None:
    """Forget the tracking URI `bts` set in this process, so the next store's calls go where MLFLOW_TRACKING_URI says."""
    import mlflow

    mlflow.set_tracking_uri(None)


if __name__ == "__main__":
    main()
