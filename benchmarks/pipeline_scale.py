"""Scale benchmark: wall time and peak memory of the ingest, clean and featurize stages on one day of a full network,
the code of a reference revision against the current one, on the same input.

It simulates a raw parameter export of about --rows readings (default 5 million:
one day of every profiled parameter on a few hundred stations, with the dirt
rates of params.yaml) with bts.data.simulate, into a throwaway project folder.
The reference revision (--reference, by default the commit this performance
work started from) is checked out with `git worktree add --detach` into a
temporary folder. Then, round after round (at least 3), each implementation
runs the three stages in turn, each stage as its own process exactly as DVC
runs it (`python src/stages/<name>.py ...`, or `python -m bts.stages.<name>` in a
revision of the earlier layout; cwd = that implementation's own
output folder with that revision's own params.yaml, the benchmark's data,
clean and simulate values set in it, PYTHONPATH = its src), and the child's
peak resident memory comes from os.wait4. The two implementations alternate within each round, so
a change of load on the machine touches both alike (benchmarks/measure.py).

It prints, per stage and in total, the median wall time with its spread for
both, the peak memory, the speed-up and the verdicts against the targets of issue 28
(the current code at most 10 s for the three stages together and at most
1.5 GB peak per stage), then the md5 of every output file of both and whether they are equal,
and the machine's load. It reports figures only: the exit code is 0 whether or
not the targets are met (1 only if a stage fails).

    .venv/bin/python benchmarks/pipeline_scale.py                 # full size, several minutes
    .venv/bin/python benchmarks/pipeline_scale.py --rows 200000   # smoke check
    .venv/bin/python benchmarks/pipeline_scale.py --workdir /tmp/bts-scale   # keep (and reuse) the generated data
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing the package
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bts.data.catalogue import load_catalogue  # noqa: E402
from bts.data.simulate import PROFILES, simulate_exports  # noqa: E402
from bts.files import write_csv  # noqa: E402
from bts.hashing import file_md5  # noqa: E402
from bts.params import DirtParams  # noqa: E402
from measure import MIN_ROUNDS, Machine, alternate, median, summary  # noqa: E402

# The commit this performance work started from (the main branch's HEAD then): the implementation to beat.
REFERENCE = "123eb973cbadb49d564824d52392bf4fe0358a96"
TARGET_TOTAL_SECONDS = 10.0  # issue 28
TARGET_PEAK_MB = 1.5 * 1024
MB = 1024 * 1024
FIRST_STATION = 1161114000
CALIBRATION_STATIONS = 10
ROWS_TOLERANCE = 0.02  # stations differ in reporting rate: regenerate with a corrected count until this close
IMPLEMENTATIONS = ("reference", "current")

# The simulate and dirt defaults of params.yaml, copied (not read, so concurrent edits there do not move the export).
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
# Set over each revision's own params.yaml (whose other keys, such as featurize's horizons, are that revision's own).
PARAMS = {
    "data": {"sources": ["simulated"]},
    "clean": {"gap_threshold_minutes": 30},
    "featurize": {"holdout_stations": []},
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
OUTPUT_FOLDERS = ["data/interim", "data/processed", "metadata/schemas", "metadata/datasets"]
INPUTS = ["metadata/sensors.yaml", "data/raw/simulated"]


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
    """Lay out a project folder (catalogue, one day's export) and return what was generated."""
    sensors = workdir / "metadata" / "sensors.yaml"
    sensors.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "metadata" / "sensors.yaml", sensors)
    (workdir / "data" / "external").mkdir(parents=True, exist_ok=True)
    parameters = [p for p in PROFILES if p in load_catalogue(sensors)]
    # Rows per station vary with the profiles and the silences, so measure them on a few stations first,
    # then correct the count on the whole network (each station's readings depend on its own seed only).
    sample_rows = sum(len(e) for e in _simulate(CALIBRATION_STATIONS, parameters, sensors).values())
    stations = max(1, math.ceil(target_rows * CALIBRATION_STATIONS / sample_rows))
    for _ in range(3):
        exports = _simulate(stations, parameters, sensors)
        rows = sum(len(e) for e in exports.values())
        corrected = max(1, round(stations * target_rows / rows))
        if abs(rows - target_rows) <= ROWS_TOLERANCE * target_rows or corrected == stations:
            break
        stations = corrected
    out = workdir / "data" / "raw" / "simulated"
    shutil.rmtree(out, ignore_errors=True)
    for name, export in exports.items():
        write_csv(out / name, export)
    info = {"target_rows": target_rows, "rows": rows, "stations": stations, "parameters": parameters}
    (workdir / "benchmark.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def params_text(root: Path, info: dict) -> str:
    """The params.yaml of the revision at root (each validates its own, whole), with the benchmark's values set."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in PARAMS.items():
        params[section] = {**params.get(section, {}), **values}
    stations = [FIRST_STATION + i for i in range(info["stations"])]
    params["simulate"] = {**SIMULATE, "stations": stations, "parameters": info["parameters"], "dirt": DIRT}
    return yaml.safe_dump(params, sort_keys=False)


def generated_apart(workdir: Path, target_rows: int) -> dict:
    """generate() in a process of its own. A stage's peak RSS comes from wait4, and Linux keeps a process's
    high-water mark across exec: a stage forked from this process after it held millions of generated rows
    would report this process's size as its own peak."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(generate, workdir, target_rows).result()


def checkout(revision: str, folder: Path) -> Path:
    """The reference code: a detached git worktree of revision in folder (its src goes on the stages' PYTHONPATH)."""
    added = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(folder), revision], capture_output=True, text=True
    )
    if added.returncode != 0:
        sys.exit(f"--reference {revision}: cannot check it out: {added.stderr.strip()}")
    return folder


def remove_checkout(folder: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], check=False, capture_output=True)


def prepare(project: Path, workdir: Path, params: str) -> None:
    """A fresh output folder for one run: the generated inputs linked in (hard links: same bytes, no copy), its params."""
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    (project / "params.yaml").write_text(params)
    for relative in INPUTS:
        source = project / relative
        source.parent.mkdir(parents=True, exist_ok=True)
        if (workdir / relative).is_dir():
            shutil.copytree(workdir / relative, source, copy_function=os.link)
        else:
            os.link(workdir / relative, source)
    (project / "data" / "external").mkdir(parents=True, exist_ok=True)


def run_stage(name: str, project: Path, src: Path) -> StageRun:
    """One stage as its own process; its peak RSS comes from wait4, so earlier stages do not mask it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        script = src / "stages" / f"{name}.py"
        entry = [str(script)] if script.is_file() else ["-m", f"bts.stages.{name}"]  # the earlier layout ran stages as modules
        child = subprocess.Popen([sys.executable, *entry, *STAGES[name]], cwd=project, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait for it again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        sys.exit(f"{name} ({src}) failed (exit {child.returncode}):\n{stderr or stdout}")
    summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    return StageRun(name, seconds, usage.ru_maxrss * 1024 / MB, summary)  # ru_maxrss is in KiB on Linux


def output_md5s(project: Path) -> dict[str, str]:
    """{path in the project: md5} of every file the stages wrote."""
    files = sorted(f for folder in OUTPUT_FOLDERS for f in (project / folder).rglob("*") if f.is_file())
    return {f.relative_to(project).as_posix(): file_md5(f) for f in files}


def report(runs: dict[str, list[list[StageRun]]], md5s: dict[str, dict[str, str]], rows: int) -> None:
    """Per stage and in total: both implementations' medians and spreads, peaks, speed-up, verdicts, output md5s."""
    seconds = {impl: {name: [r.seconds for rounds in runs[impl] for r in rounds if r.name == name] for name in STAGES} for impl in runs}
    peaks = {impl: {name: max(r.peak_mb for rounds in runs[impl] for r in rounds if r.name == name) for name in STAGES} for impl in runs}
    totals = {impl: [sum(r.seconds for r in rounds) for rounds in runs[impl]] for impl in runs}
    print(f"{rows:,} raw rows; wall time per stage process, median (min to max over rounds); peak = highest RSS over rounds")
    for name in [*STAGES, "total"]:
        ref = totals["reference"] if name == "total" else seconds["reference"][name]
        cur = totals["current"] if name == "total" else seconds["current"][name]
        ref_peak = max(peaks["reference"].values()) if name == "total" else peaks["reference"][name]
        cur_peak = max(peaks["current"].values()) if name == "total" else peaks["current"][name]
        print(f"{name:<10} reference {summary(ref)}, {ref_peak:5.0f} MB peak")
        print(f"{'':<10} current   {summary(cur)}, {cur_peak:5.0f} MB peak   speed-up x{median(ref) / median(cur):.2f}")
    last = runs["current"][-1]
    for r in last:
        print(f"current {r.name} says: {r.summary}")
    total, peak = median(totals["current"]), max(peaks["current"].values())
    print(
        f"target: total at most {TARGET_TOTAL_SECONDS:g} s: {'met' if total <= TARGET_TOTAL_SECONDS else 'MISSED'} ({total:.1f} s median); "
        f"peak per stage at most {TARGET_PEAK_MB / 1024:g} GB: {'met' if peak <= TARGET_PEAK_MB else 'MISSED'} ({peak / 1024:.2f} GB)"
    )
    print("output md5s (reference / current):")
    paths = sorted(set(md5s["reference"]) | set(md5s["current"]))
    for path in paths:
        ref, cur = md5s["reference"].get(path, "missing"), md5s["current"].get(path, "missing")
        print(f"  {path:<38} {ref} {cur}{'' if ref == cur else '  DIFFERENT'}")
    differing = [p for p in paths if md5s["reference"].get(p) != md5s["current"].get(p)]
    print(f"outputs identical: {'yes' if not differing else 'NO (' + ', '.join(differing) + ')'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000, help="approximate raw rows to generate (default 5000000)")
    parser.add_argument("--workdir", type=Path, help="keep the work folder here; its export is reused if made for the same --rows")
    parser.add_argument(
        "--reference", default=REFERENCE, help=f"git revision to compare with (default {REFERENCE[:12]}, where this work began)"
    )
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"alternating rounds (at least {MIN_ROUNDS})")
    args = parser.parse_args()
    if args.rows < 1:
        parser.error("--rows must be positive")
    if args.rounds < MIN_ROUNDS:
        parser.error(f"--rounds must be at least {MIN_ROUNDS}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bts-scale-"))
    worktree = Path(tempfile.mkdtemp(prefix="bts-scale-reference-")) / "checkout"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        marker = workdir / "benchmark.json"
        info = json.loads(marker.read_text()) if marker.exists() else {}
        if info.get("target_rows") == args.rows:
            print(f"reusing {info['rows']} rows in {workdir}")
        else:
            started = time.perf_counter()
            info = generated_apart(workdir, args.rows)
            print(
                f"generated {info['rows']} rows ({info['stations']} stations x {len(info['parameters'])} parameters x 1 day) "
                f"in {time.perf_counter() - started:.0f} s -> {workdir}"
            )
        roots = {"reference": checkout(args.reference, worktree), "current": REPO}
        sources = {impl: root / "src" for impl, root in roots.items()}
        params = {impl: params_text(root, info) for impl, root in roots.items()}
        revision = subprocess.run(
            ["git", "-C", str(worktree), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        print(f"reference: {args.reference} ({revision}) in {worktree}; current: {REPO}")
        projects = {impl: workdir / "runs" / impl for impl in IMPLEMENTATIONS}
        runs: dict[str, list[list[StageRun]]] = {impl: [] for impl in IMPLEMENTATIONS}

        def pipeline(impl: str) -> float:
            prepare(projects[impl], workdir, params[impl])
            runs[impl].append([run_stage(name, projects[impl], sources[impl]) for name in STAGES])
            return sum(r.seconds for r in runs[impl][-1])

        with Machine(own_folders=[worktree, workdir]) as machine:
            alternate(
                {impl: (lambda impl=impl: pipeline(impl)) for impl in IMPLEMENTATIONS},
                rounds=args.rounds,
                progress=lambda line: print(line, flush=True),
            )
        report(runs, {impl: output_md5s(projects[impl]) for impl in IMPLEMENTATIONS}, info["rows"])
        print(machine.describe())
    finally:
        remove_checkout(worktree)
        shutil.rmtree(worktree.parent, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
