"""Scale benchmark: wall time and peak memory of the ingest, clean and featurize stages on one day of a full network.

It simulates a raw parameter export of about --rows readings (default 5 million:
one day of every profiled parameter on a few hundred stations, with the dirt
rates of params.yaml) with bts.data.simulate, into a throwaway project folder. Then
it runs each stage there as its own process, exactly as DVC runs it
(`python -m bts.stages.<name> ...`, cwd = that folder), and reads the child's peak
resident memory from os.wait4. It prints one line per stage and a total, and
compares them with the targets (under 90 s for the three stages together, under
6 GB peak per stage). It reports figures only: the exit code is 0 whether or
not the targets are met (1 only if a stage fails).

    .venv/bin/python benchmarks/pipeline_scale.py                 # full size, a few minutes
    .venv/bin/python benchmarks/pipeline_scale.py --rows 200000   # smoke check
    .venv/bin/python benchmarks/pipeline_scale.py --workdir /tmp/bts-scale   # keep (and reuse) the generated data
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing the package

from bts.data.catalogue import load_catalogue  # noqa: E402
from bts.data.simulate import PROFILES, simulate_exports  # noqa: E402
from bts.files import write_csv  # noqa: E402
from bts.params import DirtParams  # noqa: E402

TARGET_TOTAL_SECONDS = 90.0
TARGET_PEAK_MB = 6 * 1024
MB = 1024 * 1024
FIRST_STATION = 1161114000
CALIBRATION_STATIONS = 10

# Mirrors the defaults of params.yaml (copied, not read, so concurrent edits there do not move the benchmark).
SIMULATE = {"seed": 42, "start_date": "2017-04-18", "days": 1}
DIRT = {
    "missing_value": 0.002,
    "sentinel": 0.001,
    "duplicate_id": 0.002,
    "out_of_range": 0.001,
    "bad_time": 0.001,
    "out_of_order": 0.003,
    "silent_station_days": 0.2,
    "silent_hours": 3,
}
PARAMS = {
    "data": {"sources": ["simulated"]},
    "clean": {"gap_threshold_minutes": 30},
    "featurize": {"n_lags": 6, "horizon": 1, "valid_fraction": 0.15, "test_fraction": 0.15, "holdout_stations": []},
}

# Mirrors the stage commands of dvc.yaml, with the same relative paths inside the work folder.
STAGES = {
    "ingest": [
        "--simulated", "data/raw/simulated", "--inputs", "data/external", "--sensors", "metadata/sensors.yaml",
        "--out", "data/interim/raw.parquet", "--schema", "metadata/schemas/raw.yaml",
        "--failures", "metadata/datasets/raw_failures.json", "--document", "metadata/datasets/raw.json",
        "--datasheet", "metadata/datasets/raw.md",
    ],
    "clean": [
        "--raw", "data/interim/raw.parquet", "--sensors", "metadata/sensors.yaml", "--out", "data/interim/clean.parquet",
        "--quarantine", "data/interim/quarantine.parquet", "--schema", "metadata/schemas/clean.yaml",
        "--document", "metadata/datasets/clean.json", "--datasheet", "metadata/datasets/clean.md",
    ],
    "featurize": [
        "--clean", "data/interim/clean.parquet", "--sensors", "metadata/sensors.yaml", "--out", "data/processed/features.parquet",
        "--document", "metadata/datasets/features.json", "--datasheet", "metadata/datasets/features.md",
    ],
}  # fmt: skip


@dataclass(frozen=True)
class StageRun:
    name: str
    seconds: float
    peak_mb: float
    summary: str


def _simulate(stations: int, parameters: list[int], sensors: Path) -> dict:
    return simulate_exports(
        stations=[FIRST_STATION + i for i in range(stations)],
        parameters=parameters,
        start_date=SIMULATE["start_date"],
        days=SIMULATE["days"],
        seed=SIMULATE["seed"],
        dirt=DirtParams(**DIRT),
        catalogue=load_catalogue(sensors),
    )


def generate(workdir: Path, target_rows: int) -> dict:
    """Lay out a project folder (params, catalogue, one day's export) and return what was generated."""
    sensors = workdir / "metadata" / "sensors.yaml"
    sensors.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "metadata" / "sensors.yaml", sensors)
    (workdir / "data" / "external").mkdir(parents=True, exist_ok=True)
    parameters = [p for p in PROFILES if p in load_catalogue(sensors)]
    # Rows per station vary with the profiles and the silences, so measure them on a few stations first.
    sample_rows = sum(len(e) for e in _simulate(CALIBRATION_STATIONS, parameters, sensors).values())
    stations = max(1, math.ceil(target_rows * CALIBRATION_STATIONS / sample_rows))
    exports = _simulate(stations, parameters, sensors)
    out = workdir / "data" / "raw" / "simulated"
    shutil.rmtree(out, ignore_errors=True)
    for name, export in exports.items():
        write_csv(out / name, export)
    info = {"target_rows": target_rows, "rows": sum(len(e) for e in exports.values()), "stations": stations, "parameters": parameters}
    stations_list = [FIRST_STATION + i for i in range(info["stations"])]
    # Every section must be there (params are validated whole); the benchmark's own values replace the data ones.
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update({**PARAMS, "simulate": {**SIMULATE, "stations": stations_list, "parameters": parameters, "dirt": DIRT}})
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (workdir / "benchmark.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def run_stage(name: str, workdir: Path) -> StageRun:
    """One stage as its own process; its peak RSS comes from wait4, so earlier stages do not mask it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-m", f"bts.stages.{name}", *STAGES[name]], cwd=workdir, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait for it again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        sys.exit(f"{name} failed (exit {child.returncode}):\n{stderr or stdout}")
    summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    return StageRun(name, seconds, usage.ru_maxrss * 1024 / MB, summary)  # ru_maxrss is in KiB on Linux


def report(runs: list[StageRun], rows: int) -> None:
    total = sum(r.seconds for r in runs)
    peak = max(r.peak_mb for r in runs)
    for r in runs:
        print(f"{r.name:<10} {r.seconds:8.1f} s  {r.peak_mb:8.0f} MB peak   {r.summary}")
    print(f"{'total':<10} {total:8.1f} s  {peak:8.0f} MB peak   ({rows / total:,.0f} raw rows/s)")
    time_ok = total < TARGET_TOTAL_SECONDS
    memory_ok = peak < TARGET_PEAK_MB
    print(
        f"target: total < {TARGET_TOTAL_SECONDS:.0f} s: {'met' if time_ok else 'MISSED'} ({total:.1f} s); "
        f"peak per stage < {TARGET_PEAK_MB / 1024:.0f} GB: {'met' if memory_ok else 'MISSED'} ({peak / 1024:.2f} GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000, help="approximate raw rows to generate (default 5000000)")
    parser.add_argument("--workdir", type=Path, help="keep the work folder here; its export is reused if made for the same --rows")
    args = parser.parse_args()
    if args.rows < 1:
        parser.error("--rows must be positive")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bts-scale-"))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        marker = workdir / "benchmark.json"
        info = json.loads(marker.read_text()) if marker.exists() else {}
        if info.get("target_rows") == args.rows:
            print(f"reusing {info['rows']} rows in {workdir}")
        else:
            started = time.perf_counter()
            info = generate(workdir, args.rows)
            print(
                f"generated {info['rows']} rows ({info['stations']} stations x {len(info['parameters'])} parameters x 1 day) "
                f"in {time.perf_counter() - started:.0f} s -> {workdir}"
            )
        runs = [run_stage(name, workdir) for name in STAGES]
        report(runs, info["rows"])
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
