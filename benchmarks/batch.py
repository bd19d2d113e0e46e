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
sampled every 0.1 s: on a machine others load, CPU seconds per wall second
show how many cores a run got. The engines
take turns (the order rotates each repetition) so that a change in the
machine's load hits them alike; it prints the median and the spread (min-max)
of each, the load average around the runs, the CPU that other processes used
while it measured (flagged as disturbed above a quarter of a core,
benchmarks/measure.py), and the figures against the targets
(pandas: 5 million readings in under 60 s; Spark local[2] at least 1.5x local[1]).
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
TARGET_PANDAS_SECONDS = 60.0  # for 5 million readings
TARGET_SPEEDUP = 1.5  # Spark local[2] over local[1]
DAYS = 8  # one export per day: the files Spark reads in parallel
FIRST_STATION = 1161114000
CALIBRATION_STATIONS = 4
SAMPLE_SECONDS = 0.1
MB = 1024 * 1024


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
    share = math.ceil(target_rows / len(exports)) if target_rows < per_station_day * days else None
    for name, export in exports.items():
        write_csv(folder / name, export.head(share) if share else export)
    rows = sum(min(len(e), share or len(e)) for e in exports.values())
    marker.write_text(json.dumps({"target_rows": target_rows, "rows": rows, "stations": stations, "days": days}) + "\n")
    print(f"generated {rows} rows ({stations} stations x {days} days) in {time.perf_counter() - started:.0f} s -> {folder}", flush=True)
    return rows


def sample_tree(process: psutil.Process, cpu: dict[int, float]) -> int:
    """Resident memory of a process and all its descendants (bytes); records each one's CPU seconds so far in cpu."""
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
    return total


def measure(project: Path, engine: str, exports: Path, output: Path, log: Path) -> tuple[float, float, float]:
    """Run one batch in a child process (the project's own copy of this script, so its own code); returns its wall
    seconds, the peak memory of its process tree (MB) and the CPU seconds the tree used (sampled: a process living
    less than a sample is missed)."""
    kind, master = ENGINES[engine]
    script = project / "benchmarks" / Path(__file__).name
    command = [sys.executable, str(script), "--child", kind, "--input", str(exports), "--output", str(output)]
    if master:
        command += ["--master", master]
    peak, done, cpu = 0, threading.Event(), {}
    started = time.perf_counter()
    with log.open("w") as errors:
        child = subprocess.Popen(command, cwd=project, stdout=errors, stderr=errors)
        process = psutil.Process(child.pid)

        def sample() -> None:
            nonlocal peak
            while not done.wait(SAMPLE_SECONDS):
                peak = max(peak, sample_tree(process, cpu))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        child.wait()
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        sys.exit(f"{engine} failed (exit {child.returncode}); its output:\n{log.read_text()[-3000:]}")
    return wall, peak / MB, sum(cpu.values())


def child(kind: str, exports: Path, output: Path, master: str | None) -> None:
    """One batch in this process, as `bts batch-predict` runs it."""
    from mlflow.tracking import MlflowClient

    from bts.batch.command import BatchRequest, run_batch
    from bts.project import pipeline_argument
    from bts.tracking.store import use_store

    use_store(REPO)
    package = REPO / pipeline_argument(REPO, "serve", "--package")
    run_batch(MlflowClient(), REPO, BatchRequest(str(package), exports, output, kind, master))


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
                f"{statistics.median(r.cpu_seconds / r.wall_seconds for r in mine):>5.2f}  {min(loads):.1f}-{max(loads):.1f}"
            )
    memory = psutil.virtual_memory().total / 2**30
    print(
        f"\nCPU s: user + system seconds of the run's processes; cores: CPU s / wall s; "
        f"load: the 1-minute load average before and after each run; {memory:.1f} GB of memory"
    )
    for rows in sorted({r.rows for r in runs}):
        if (rows, "pandas") in walls and rows >= SIZES[-1]:
            wall = walls[rows, "pandas"]
            met = "met" if wall < TARGET_PANDAS_SECONDS else "MISSED"
            print(f"target: pandas engine on {rows} readings < {TARGET_PANDAS_SECONDS:.0f} s (median wall): {met} ({wall:.1f} s)")
        if (rows, "spark local[1]") in medians and (rows, "spark local[2]") in medians:
            speedup = medians[rows, "spark local[1]"] / medians[rows, "spark local[2]"]
            wall_speedup = walls[rows, "spark local[1]"] / walls[rows, "spark local[2]"]
            met = "met" if speedup >= TARGET_SPEEDUP else "MISSED"
            print(
                f"target: Spark local[2] >= {TARGET_SPEEDUP}x local[1] on {rows} readings (median scoring time): {met} "
                f"({speedup:.2f}x; {wall_speedup:.2f}x on wall time, JVM start included)"
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
    parser.add_argument("--child", choices=["pandas", "spark"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--master", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.input, args.output, args.master)
        return
    if args.repeats < 1 or any(rows < 1 for rows in args.rows or []):
        parser.error("--rows and --repeats must be positive")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bts-batch-bench-"))
    runs: list[Run] = []
    try:
        with Machine() as machine:  # the runs are this process's children: their CPU is not counted as others'
            measure_all(args, workdir, runs)
        report(runs)
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
                wall, peak, cpu = measure(args.project.resolve(), engine, exports, output, workdir / "run.log")
                manifest = json.loads(output.with_name(output.name + ".manifest.json").read_text())
                seconds = manifest["seconds"]
                scoring = seconds["total"] - seconds.get("load_model", 0) - seconds.get("start_spark", 0)
                load_after = os.getloadavg()[0]
                run = Run(rows, engine, repeat, wall, scoring, peak, cpu, load_before, load_after, manifest["rows"]["predicted"])
                runs.append(run)
                print(
                    f"{rows} rows, {engine:<15} run {repeat + 1}: wall {wall:6.1f} s, scoring {scoring:6.1f} s "
                    f"({run.rows_per_second:,.0f} rows/s), peak {peak:,.0f} MB, CPU {cpu:.0f} s, "
                    f"load {load_before:.1f}->{load_after:.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
