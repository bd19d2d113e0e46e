"""Batch scoring benchmark: `bts batch-predict` on raw exports of 1 and 5 million readings, pandas against Spark local[1] and local[2].

It simulates raw exports with bts.data.simulate (one export per day over 8 days,
every profiled parameter, as many stations as the size needs; seed, start date
and dirt from params.yaml's simulate section) into a work folder, then scores
them with the workspace's verified package (the serve stage's --package, as
dvc.lock records it; --project names another checkout whose code and package to
measure), each run in its own process as
a user would run it: model loading, Spark's start, reading, validating, cleaning,
featurizing, scoring and writing. Per run it measures the wall time of the
process, the scoring time the manifest records (reading to writing: no Python,
JVM or model start-up), and the peak of the summed resident memory of the
process tree (driver, JVM and Python workers) and the CPU seconds it used,
sampled every 0.1 s, split between the driver (the `bts` process), Spark's
JVM and its Python workers: on a machine others load, CPU seconds per wall
second show how many cores a run got, and under local[1] how many cores one
task slot keeps busy. Each Spark run writes Spark's event log (what the Spark
UI shows) into the work folder; for the median run of each engine it prints
every stage's tasks, wall time, executor run and CPU time, the time in
Python code, the shuffle written and read and the longest task. The engines
take turns (the order rotates each repetition) so that a change in the
machine's load hits them alike; it prints the median and the spread (min-max)
of each, the load average around the runs, the CPU that other processes used
while it measured (flagged as disturbed above a quarter of a core,
benchmarks/measure.py), and the figures against the targets
(issue 28, on 5 million readings: pandas at most 30 s, Spark local[2] at most 60 s
and at least 1.6x local[1]).
It reports figures only: the exit code is 0 whether or not the targets are met.

    .venv/bin/python benchmarks/batch.py                                  # 1M and 5M, 3 repetitions: about an hour on 2 cores
    .venv/bin/python benchmarks/batch.py --rows 1000000 --repeats 3       # 1M only
    .venv/bin/python benchmarks/batch.py --rows 200000 --repeats 1        # smoke check
    .venv/bin/python benchmarks/batch.py --workdir /tmp/bts-batch --json batch.json   # keep the exports, write the figures
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing the package
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bts.data.catalogue import load_catalogue  # noqa: E402
from bts.data.simulate import PROFILES, simulate_exports  # noqa: E402
from bts.files import write_csv  # noqa: E402
from bts.params import PARAMS_FILE, load_params  # noqa: E402
from measure import Machine  # noqa: E402

SIZES = [1_000_000, 5_000_000]
ENGINES = {"pandas": ("pandas", None), "spark local[1]": ("spark", "local[1]"), "spark local[2]": ("spark", "local[2]")}
TARGET_SECONDS = {"pandas": 30.0, "spark local[2]": 60.0}  # median wall time on 5 million readings
TARGET_SPEEDUP = 1.6  # Spark local[2] over local[1]
DAYS = 8  # one export per day: the files Spark reads in parallel
FIRST_STATION = 1161114000
CALIBRATION_STATIONS = 4
SAMPLE_SECONDS = 0.1
MB = 1024 * 1024
PROCESS_KINDS = ("driver", "jvm", "workers")  # the `bts` process, Spark's JVM, Spark's Python workers
EVENT_LOG = {"spark.eventLog.enabled": "true", "spark.eventLog.compress": "false"}  # plain JSON lines, read below
PYTHON_TIME = "time to execute Python code"  # a pandas UDF's SQL metric (ms)
PLUMBING = ("WholeStageCodegen", "AdaptiveSparkPlan", "AQEShuffleRead", "map", "mapPartitions", "mapPartitionsInternal", "parallelize")


@dataclass(frozen=True)
class Run:
    rows: int
    engine: str
    repeat: int
    wall_seconds: float
    scoring_seconds: float
    peak_mb: float
    cpu_seconds: float
    load_before: float
    load_after: float
    predicted: int
    cpu_by_kind: dict[str, float]
    stages: list[dict]
    steps: dict[str, float]  # the manifest's seconds of each step

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.scoring_seconds


def _simulate(stations: int, days: int, sensors: Path) -> dict:
    catalogue, simulate = load_catalogue(sensors), load_params(REPO / PARAMS_FILE).simulate
    return simulate_exports(
        stations=[FIRST_STATION + i for i in range(stations)],
        parameters=[p for p in PROFILES if p in catalogue],
        start_date=simulate.start_date,
        days=days,
        seed=simulate.seed,
        dirt=simulate.dirt,
        catalogue=catalogue,
    )


def generate(folder: Path, target_rows: int) -> int:
    """Up to DAYS exports holding about target_rows readings in folder (reused when made for the same size); returns the rows.

    Below one station's DAYS days, fewer days are simulated and each export keeps its first rows only.
    """
    marker = folder / "exports.json"
    if marker.exists() and json.loads(marker.read_text())["target_rows"] == target_rows:
        return json.loads(marker.read_text())["rows"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sensors = REPO / "metadata" / "sensors.yaml"
    started = time.perf_counter()
    per_station_day = sum(len(e) for e in _simulate(CALIBRATION_STATIONS, 1, sensors).values()) / CALIBRATION_STATIONS  # rows vary: measure
    days = min(DAYS, math.ceil(target_rows / per_station_day))
    stations = max(1, math.ceil(target_rows / (per_station_day * days)))
    exports = _simulate(stations, days, sensors)
    simulated = sum(len(e) for e in exports.values())
    if simulated < target_rows:  # stations differ in rows: the first few are no exact measure of the rest
        stations = math.ceil(stations * target_rows / simulated)
        exports = _simulate(stations, days, sensors)
    share = math.ceil(target_rows / len(exports)) if target_rows < per_station_day * days else None
    for name, export in exports.items():
        write_csv(folder / name, export.head(share) if share else export)
    rows = sum(min(len(e), share or len(e)) for e in exports.values())
    marker.write_text(json.dumps({"target_rows": target_rows, "rows": rows, "stations": stations, "days": days}) + "\n")
    print(f"generated {rows} rows ({stations} stations x {days} days) in {time.perf_counter() - started:.0f} s -> {folder}", flush=True)
    return rows


def sample_tree(process: psutil.Process, cpu: dict[int, float], kinds: dict[int, str]) -> int:
    """Resident memory of a process and all its descendants (bytes); records each one's CPU seconds so far in cpu and
    its kind (PROCESS_KINDS) in kinds."""
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:  # the run just ended
        return 0
    total = 0
    for member in members:
        with contextlib.suppress(psutil.Error), member.oneshot():  # a worker that just ended is skipped
            total += member.memory_info().rss
            times = member.cpu_times()
            cpu[member.pid] = times.user + times.system
            if kinds.get(member.pid, "driver") == "driver":  # spark-submit's shell becomes the JVM: asked again
                kinds[member.pid] = process_kind(member, process)
    return total


def process_kind(member: psutil.Process, root: psutil.Process) -> str:
    """driver for the run's own process, jvm for Java, workers for what Java started (Spark's Python workers)."""
    if member.pid == root.pid:
        return "driver"
    if member.name() == "java":
        return "jvm"
    return "workers" if any(parent.name() == "java" for parent in member.parents()) else "driver"


def measure(
    project: Path, engine: str, exports: Path, output: Path, log: Path, events: Path, conf: list[str]
) -> tuple[float, float, dict[str, float]]:
    """Run one batch in a child process (the project's own copy of this script, so its own code), Spark writing its
    event log into events; returns its wall seconds, the peak memory of its process tree (MB) and the CPU seconds
    of each PROCESS_KINDS (sampled: a process living less than a sample is missed)."""
    kind, master = ENGINES[engine]
    script = project / "benchmarks" / Path(__file__).name
    command = [sys.executable, str(script), "--child", kind, "--input", str(exports), "--output", str(output)]
    if master:
        events.mkdir(parents=True)
        command += ["--master", master, "--events", str(events), *[f"--conf={setting}" for setting in conf]]
    peak, done, cpu, kinds = 0, threading.Event(), {}, {}
    started = time.perf_counter()
    with log.open("w") as errors:
        child = subprocess.Popen(command, cwd=project, stdout=errors, stderr=errors)
        process = psutil.Process(child.pid)

        def sample() -> None:
            nonlocal peak
            while not done.wait(SAMPLE_SECONDS):
                peak = max(peak, sample_tree(process, cpu, kinds))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        child.wait()
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        sys.exit(f"{engine} failed (exit {child.returncode}); its output:\n{log.read_text()[-3000:]}")
    by_kind = dict.fromkeys(PROCESS_KINDS, 0.0)
    for pid, seconds in cpu.items():
        by_kind[kinds[pid]] += seconds
    return wall, peak / MB, by_kind


def stage_figures(events: Path) -> list[dict]:
    """Every completed stage in Spark's event log below events (what the Spark UI's stage table shows): its job's
    description, tasks, wall seconds, summed executor run and CPU seconds, seconds in Python code, shuffle MB written
    and read, and its longest and median task (seconds)."""
    descriptions, durations, stages = {}, {}, []
    for log in sorted(events.rglob("events_*")):
        with log.open() as lines:
            for line in lines:
                event = json.loads(line)
                kind = event["Event"]
                if kind == "SparkListenerJobStart":
                    description = event.get("Properties", {}).get("spark.job.description", "")
                    descriptions.update(dict.fromkeys(event["Stage IDs"], description))
                elif kind == "SparkListenerTaskEnd":
                    task = event["Task Info"]
                    durations.setdefault(event["Stage ID"], []).append((task["Finish Time"] - task["Launch Time"]) / 1000)
                elif kind == "SparkListenerStageCompleted":
                    stages.append(event["Stage Info"])
    return [stage_record(stage, descriptions, durations) for stage in sorted(stages, key=lambda s: s["Stage ID"])]


def operators(stage: dict) -> str:
    """The query operators a stage runs, in order (the Spark UI's stage DAG without the plumbing): 'MapInPandas>Exchange'."""
    names = []
    for rdd in sorted(stage.get("RDD Info", []), key=lambda r: r["RDD ID"]):
        name = json.loads(rdd["Scope"])["name"].strip() if rdd.get("Scope") else ""
        if name and not name.startswith(PLUMBING) and name not in names:
            names.append(name)
    return ">".join(names)


def stage_record(stage: dict, descriptions: dict[int, str], durations: dict[int, list[float]]) -> dict:
    """One stage's figures (stage_figures) from its StageCompleted event's accumulated metrics."""
    values = {a["Name"]: float(a["Value"]) for a in stage.get("Accumulables", []) if str(a.get("Value", "")).lstrip("-").isdigit()}
    metrics = {name.removeprefix("internal.metrics."): value for name, value in values.items()}
    tasks = durations.get(stage["Stage ID"], [0.0])
    return {
        "stage": stage["Stage ID"],
        "job": descriptions.get(stage["Stage ID"], ""),
        "operators": operators(stage),
        "tasks": stage["Number of Tasks"],
        "wall_s": (stage["Completion Time"] - stage["Submission Time"]) / 1000,
        "run_s": metrics.get("executorRunTime", 0.0) / 1000,
        "cpu_s": metrics.get("executorCpuTime", 0.0) / 1e9,
        "python_s": values.get(PYTHON_TIME, 0.0) / 1000,
        "shuffle_write_mb": metrics.get("shuffle.write.bytesWritten", 0.0) / MB,
        "shuffle_read_mb": (metrics.get("shuffle.read.localBytesRead", 0.0) + metrics.get("shuffle.read.remoteBytesRead", 0.0)) / MB,
        "longest_task_s": max(tasks),
        "median_task_s": statistics.median(tasks),
    }


def child(kind: str, exports: Path, output: Path, master: str | None, events: Path | None, conf: dict[str, str]) -> None:
    """One batch in this process, as `bts batch-predict` runs it."""
    from mlflow.tracking import MlflowClient

    from bts.batch.command import BatchRequest, run_batch
    from bts.project import pipeline_argument
    from bts.tracking.store import use_store

    use_store(REPO)
    package = REPO / pipeline_argument(REPO, "serve", "--package")
    conf = {**conf, **EVENT_LOG, "spark.eventLog.dir": str(events)} if events else {}
    run_batch(MlflowClient(), REPO, BatchRequest(str(package), exports, output, kind, master, conf))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def report(runs: list[Run]) -> None:
    print(
        f"\n{'rows':>9}  {'engine':<15} {'runs':>4}  {'wall s':>22}  {'scoring s':>22}  {'rows/s (scoring)':>16}  {'peak MB':>8}  "
        f"{'CPU s':>6}  {'cores':>5}  load"
    )
    medians: dict[tuple[int, str], float] = {}
    walls: dict[tuple[int, str], float] = {}
    for rows in sorted({r.rows for r in runs}):
        for engine in ENGINES:
            mine = [r for r in runs if r.rows == rows and r.engine == engine]
            if not mine:
                continue
            scoring = [r.scoring_seconds for r in mine]
            medians[rows, engine] = statistics.median(scoring)
            walls[rows, engine] = statistics.median(r.wall_seconds for r in mine)
            loads = [r.load_before for r in mine] + [r.load_after for r in mine]
            print(
                f"{rows:>9}  {engine:<15} {len(mine):>4}  {spread([r.wall_seconds for r in mine]):>22}  {spread(scoring):>22}  "
                f"{statistics.median(r.rows_per_second for r in mine):>16,.0f}  {max(r.peak_mb for r in mine):>8.0f}  "
                f"{statistics.median(r.cpu_seconds for r in mine):>6.0f}  "
                f"{statistics.median(r.cpu_seconds / r.wall_seconds for r in mine):>5.2f}  "
                f"{'/'.join(f'{statistics.median(r.cpu_by_kind[k] for r in mine):.0f}' for k in PROCESS_KINDS):>24}  "
                f"{min(loads):.1f}-{max(loads):.1f}"
            )
    memory = psutil.virtual_memory().total / 2**30
    print(
        f"\nCPU s: user + system seconds of the run's processes; cores: CPU s / wall s; "
        f"load: the 1-minute load average before and after each run; {memory:.1f} GB of memory"
    )
    for rows in sorted({r.rows for r in runs}):
        for engine, target in TARGET_SECONDS.items():
            if (rows, engine) in walls and rows >= SIZES[-1]:
                wall = walls[rows, engine]
                met = "met" if wall <= target else "MISSED"
                print(f"target: {engine} on {rows} readings <= {target:.0f} s (median wall): {met} ({wall:.1f} s)")
        if (rows, "spark local[1]") in medians and (rows, "spark local[2]") in medians:
            speedup = medians[rows, "spark local[1]"] / medians[rows, "spark local[2]"]
            wall_speedup = walls[rows, "spark local[1]"] / walls[rows, "spark local[2]"]
            met = "met" if speedup >= TARGET_SPEEDUP else "MISSED"
            print(
                f"target: Spark local[2] >= {TARGET_SPEEDUP}x local[1] on {rows} readings (median scoring time): {met} "
                f"({speedup:.2f}x; {wall_speedup:.2f}x on wall time, JVM start included)"
            )


def report_stages(runs: list[Run]) -> None:
    """The stages of each Spark engine's median run (by scoring time), from its event log."""
    for rows in sorted({r.rows for r in runs}):
        for engine in ENGINES:
            mine = sorted((r for r in runs if r.rows == rows and r.engine == engine and r.stages), key=lambda r: r.scoring_seconds)
            if not mine:
                continue
            run = mine[(len(mine) - 1) // 2]
            print(
                f"\nstages of {engine} on {rows} readings (run {run.repeat + 1}, scoring {run.scoring_seconds:.1f} s), Spark's event log:"
            )
            print(
                f"{'stage':>5}  {'job':<26} {'operators':<36} {'tasks':>5}  {'wall s':>6}  {'run s':>6}  {'CPU s':>6}  "
                f"{'Python s':>8}  {'shuffle w/r MB':>14}  {'task max/median s':>17}"
            )
            for stage in run.stages:
                shuffle = f"{stage['shuffle_write_mb']:.0f}/{stage['shuffle_read_mb']:.0f}"
                what = f"{stage['job'][:26]:<26} {stage['operators'][:36]:<36}"
                print(
                    f"{stage['stage']:>5}  {what} {stage['tasks']:>5}  {stage['wall_s']:>6.1f}  {stage['run_s']:>6.1f}  "
                    f"{stage['cpu_s']:>6.1f}  {stage['python_s']:>8.1f}  {shuffle:>14}  "
                    f"{stage['longest_task_s']:>8.1f}/{stage['median_task_s']:.1f}"
                )
    print(
        "run s and CPU s: summed over the stage's tasks (executor run time, JVM CPU time of the task threads); Python s: "
        "time in the pandas UDFs' Python code; a task runs its UDF in a Python worker beside the JVM"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, action="append", help=f"approximate readings per export set (repeatable; default {SIZES})")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each engine per size (default 3)")
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES), help="engines to run (default: all)")
    parser.add_argument("--workdir", type=Path, help="keep the exports here (reused for the same --rows)")
    parser.add_argument(
        "--project",
        type=Path,
        default=REPO,
        help="a checkout where `dvc repro` has run: its code and its packaged model are what is measured (default: this one)",
    )
    parser.add_argument("--json", type=Path, help="also write every run's figures to this JSON file")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting for the Spark runs (repeatable)")
    parser.add_argument("--child", choices=["pandas", "spark"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--master", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.input, args.output, args.master, args.events, dict(setting.split("=", 1) for setting in args.conf))
        return
    if args.repeats < 1 or any(rows < 1 for rows in args.rows or []):
        parser.error("--rows and --repeats must be positive")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bts-batch-bench-"))
    runs: list[Run] = []
    try:
        with Machine() as machine:  # the runs are this process's children: their CPU is not counted as others'
            measure_all(args, workdir, runs)
        report(runs)
        report_stages(runs)
        print(machine.describe())
        if args.json:
            args.json.write_text(json.dumps([{**asdict(r), "rows_per_second": r.rows_per_second} for r in runs], indent=2) + "\n")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def measure_all(args: argparse.Namespace, workdir: Path, runs: list[Run]) -> None:
    """Every engine on every size, args.repeats times, the engines' order rotating each repetition."""
    for target in args.rows or SIZES:
        exports = workdir / f"exports-{target}"
        rows = generate(exports, target)
        for repeat in range(args.repeats):
            turn = args.engines[repeat % len(args.engines) :] + args.engines[: repeat % len(args.engines)]
            for engine in turn:
                output = workdir / "scores"
                load_before = os.getloadavg()[0]
                events = workdir / "events" / f"{rows}-{engine.replace(' ', '-')}-{repeat + 1}"
                shutil.rmtree(events, ignore_errors=True)
                wall, peak, cpu = measure(args.project.resolve(), engine, exports, output, workdir / "run.log", events, args.conf)
                manifest = json.loads(output.with_name(output.name + ".manifest.json").read_text())
                seconds = manifest["seconds"]
                scoring = seconds["total"] - seconds.get("load_model", 0) - seconds.get("start_spark", 0)
                load_after = os.getloadavg()[0]
                stages = stage_figures(events) if events.exists() else []
                predicted = manifest["rows"]["predicted"]
                run = Run(
                    rows, engine, repeat, wall, scoring, peak, sum(cpu.values()), load_before, load_after, predicted, cpu, stages, seconds
                )
                runs.append(run)
                print(
                    f"{rows} rows, {engine:<15} run {repeat + 1}: wall {wall:6.1f} s, scoring {scoring:6.1f} s "
                    f"({run.rows_per_second:,.0f} rows/s), peak {peak:,.0f} MB, CPU {run.cpu_seconds:.0f} s "
                    f"({', '.join(f'{k} {v:.0f}' for k, v in cpu.items())}), "
                    f"load {load_before:.1f}->{load_after:.1f}; steps: {', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
