"""Experiment overhead benchmark: what `dvc exp run` and the queue add on top of the stages' own work.

It copies the project (its working-tree files, as the integration tests do:
`git ls-files --cached --others --exclude-standard`) into a temporary git
repository, commits, and builds the baseline with one `dvc repro` (timed, not
compared). Then, in that copy only:

1. Single variation. For a few new values of train.alpha it times
   `dvc exp run -S train.alpha=<value>` end to end, and then the commands of
   the stages DVC re-executed (train and everything downstream of it, read
   from its output; each `cmd` as dvc.lock records it, paths substituted),
   run directly with params.yaml edited to the same value. Each starts from
   the baseline workspace (git reset + dvc checkout, not timed).
   Overhead = exp run seconds - direct seconds.
2. Grid. A 10-point train.alpha grid queued with
   `dvc exp run --queue -S 'train.alpha=v1,...'` and run by
   `dvc queue start -j 2` (polling `dvc queue status`), against 10 other
   values run one after another with `dvc exp run -S train.alpha=<value>`.
   It counts the grid's MLflow runs that landed in the copy's store
   (sqlite:///<copy>/mlflow.db, experiment train.experiment of params.yaml).

Targets: at most 2 s of overhead per experiment beyond the stages' own
compute; the parallel grid faster than the sequential loop; every grid run
landed in MLflow. The machine may be shared: each phase also reports the
CPU-seconds other processes used meanwhile, and flags figures disturbed by
them. It prints figures only: the exit code is 0 whether or not
the targets are met (1 only if a command fails). A full run takes several
minutes.

    .venv/bin/python benchmarks/experiments_overhead.py                  # 3 values, 10-point grids
    .venv/bin/python benchmarks/experiments_overhead.py --quick          # 1 value, 4-point grids: smoke check
    .venv/bin/python benchmarks/experiments_overhead.py --workdir /tmp/bts-exp   # keep the copy to inspect it
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtual environment running the benchmark

TARGET_OVERHEAD_SECONDS = 2.0
PARAM = "train.alpha"
# Three disjoint sets, none equal to the baseline's 0.01, so no stage is restored from the run cache. The
# sequential values are the grid's times 1.1: ElasticNet's fitting time depends on alpha, so both do similar work.
SINGLE_VALUES = [0.04, 0.06, 0.08]
GRID_VALUES = [0.001, 0.002, 0.003, 0.005, 0.007, 0.015, 0.02, 0.03, 0.05, 0.1]
SEQUENTIAL_VALUES = [0.0011, 0.0022, 0.0033, 0.0055, 0.0077, 0.0165, 0.022, 0.033, 0.055, 0.11]
QUICK_POINTS = 4
JOBS = 2
POLL_SECONDS = 3.0
LOAD_SAMPLE_SECONDS = 1.0
TICKS = os.sysconf("SC_CLK_TCK")
QUEUE_TIMEOUT_SECONDS = 1800.0
WORKER_EXIT_TIMEOUT_SECONDS = 60.0
STAGE_RUN = re.compile(r"Running stage '([^']+)'")
STAGE_DONE = re.compile(r"^(\w+): done in ([0-9.]+) s$", re.MULTILINE)


@dataclass(frozen=True)
class Variation:
    value: float
    exp_seconds: float
    direct_seconds: float
    stages: list[str]
    inside_seconds: dict[str, float]  # each stage's own "done in" figure, under dvc exp run

    @property
    def overhead(self) -> float:
        return self.exp_seconds - self.direct_seconds


class LoadMonitor:
    """CPU-seconds used meanwhile by processes that are not the benchmark's (other people's jobs on a shared machine).

    Samples /proc every second. A process is the benchmark's if its cwd is under the work folder (stages, DVC,
    queue workers) or it descends from this process. Short-lived processes can slip between samples: a lower bound.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = str(workdir.resolve())
        self.other_cpu = 0.0
        self.seconds = 0.0
        self._started = 0.0
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _processes() -> dict[int, tuple[int, float]]:
        """pid -> (parent pid, CPU-seconds so far)."""
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                found[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
        return found

    def _ours(self, pid: int, processes: dict[int, tuple[int, float]]) -> bool:
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(self.workdir):
                return True
        except OSError:
            pass
        for _ in range(64):  # walk up to init
            if pid == os.getpid():
                return True
            if pid not in processes or pid <= 1:
                return False
            pid = processes[pid][0]
        return False

    def _sample(self, first: bool = False) -> None:
        processes = self._processes()
        for pid, (_, cpu) in processes.items():
            before = self._seen.get(pid, 0.0)  # a process first seen now did all its work since the last sample
            self._seen[pid] = cpu
            if not first and cpu > before and not self._ours(pid, processes):
                self.other_cpu += cpu - before

    def _run(self) -> None:
        while not self._stop.wait(LOAD_SAMPLE_SECONDS):
            self._sample()

    def __enter__(self) -> LoadMonitor:
        self._started = time.perf_counter()
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = time.perf_counter() - self._started

    def describe(self) -> str:
        share = self.other_cpu / self.seconds if self.seconds else 0.0
        warning = "  <- figures disturbed" if share > 0.25 else ""
        return f"other processes on this {os.cpu_count()}-core machine used {self.other_cpu:.0f} CPU-s ({share:.0%} of a core){warning}"


def environment() -> dict[str, str]:
    """The user's environment with the virtual environment first on PATH and no inherited DVC/MLflow redirection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(args: list[str] | str, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """Run a command (a string runs in the shell, as DVC runs a stage's cmd); return its wall seconds. Exit 1 if it fails."""
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=environment(), shell=isinstance(args, str), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        shown = args if isinstance(args, str) else " ".join(args)
        sys.exit(f"{shown} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return seconds, result


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def copy_project(repo: Path) -> None:
    """The project's working-tree files committed in a fresh git repository (as tests/integration/conftest.py does)."""
    _, listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO)
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "benchmark@example.com"], repo)
    run(["git", "config", "user.name", "Benchmark"], repo)
    commit(repo, "project")


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)


def reset_workspace(repo: Path) -> None:
    """Back to the committed baseline: tracked files from git, outputs from the DVC cache."""
    run(["git", "reset", "-q", "--hard"], repo)
    run(["dvc", "checkout", "--force", "--quiet"], repo)


def stage_commands(repo: Path) -> dict[str, str]:
    """Each stage's cmd as dvc.lock records it, with the `paths` vars substituted."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {name: stage["cmd"] if isinstance(stage["cmd"], str) else " && ".join(stage["cmd"]) for name, stage in lock["stages"].items()}


def set_param(repo: Path, dotted: str, value: object) -> None:
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    *sections, key = dotted.split(".")
    node = params
    for section in sections:
        node = node[section]
    node[key] = value
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def exp_run(repo: Path, value: float) -> tuple[float, str]:
    """`dvc exp run -S <PARAM>=<value>` in the workspace; its seconds and combined output."""
    seconds, result = run(["dvc", "exp", "run", "-S", f"{PARAM}={value}"], repo)
    return seconds, result.stdout + result.stderr


def single_variation(repo: Path, value: float, commands: dict[str, str]) -> Variation:
    """One experiment from the baseline through DVC, then the same stages' commands run directly."""
    reset_workspace(repo)
    exp_seconds, output = exp_run(repo, value)
    stages = STAGE_RUN.findall(output) or ["train", "evaluate"]
    inside = {name: float(seconds) for name, seconds in STAGE_DONE.findall(output)}

    reset_workspace(repo)
    original = (repo / "params.yaml").read_text()
    set_param(repo, PARAM, value)
    try:
        direct = sum(run(commands[name], repo)[0] for name in stages)
    finally:
        (repo / "params.yaml").write_text(original)
    return Variation(value, exp_seconds, direct, stages, inside)


def queue_status(repo: Path) -> str:
    return run(["dvc", "queue", "status"], repo)[1].stdout


def queue_busy(status: str) -> bool:
    return any(word in status for word in ("Queued", "Running"))


def workers_alive(status: str) -> int:
    """Active plus idle queue workers ("Worker status: 1 active, 1 idle")."""
    match = re.search(r"Worker status: (\d+) active, (\d+) idle", status)
    return int(match.group(1)) + int(match.group(2)) if match else 0


def queued_grid(repo: Path, values: list[float], log: Path) -> tuple[float, float, str]:
    """Queue the grid in one command, run it with `dvc queue start -j JOBS`; seconds to queue, total seconds, last status."""
    started = time.perf_counter()
    queue_seconds, _ = run(["dvc", "exp", "run", "--queue", "-S", f"{PARAM}={','.join(map(str, values))}"], repo)
    progress(f"queued {len(values)} experiments in {queue_seconds:.1f} s; starting {JOBS} workers (log: {log})")
    with log.open("w") as out:  # a file, not a pipe: with a pipe `dvc queue start` blocks until the workers exit
        start = ["dvc", "queue", "start", "-j", str(JOBS)]
        subprocess.run(start, cwd=repo, env=environment(), stdout=out, stderr=subprocess.STDOUT, check=True)
    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    status = queue_status(repo)
    reported = -1
    while queue_busy(status):
        if time.monotonic() > deadline:
            sys.exit(f"queue still busy after {QUEUE_TIMEOUT_SECONDS:.0f} s:\n{status}")
        done = status.count("Success") + status.count("Failed")
        if done != reported:
            progress(f"  queue: {done} of {len(values)} finished")
            reported = done
        time.sleep(POLL_SECONDS)
        status = queue_status(repo)
    total = time.perf_counter() - started
    # Let the idle workers exit (about 12 s) before anything else runs; not timed.
    deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_SECONDS
    while workers_alive(queue_status(repo)) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    return queue_seconds, total, status


def sequential_grid(repo: Path, values: list[float]) -> float:
    """The same number of points as one `dvc exp run -S` after another, from the baseline workspace."""
    reset_workspace(repo)
    started = time.perf_counter()
    for i, value in enumerate(values, 1):
        seconds, _ = exp_run(repo, value)
        progress(f"  sequential {i}/{len(values)}: {PARAM}={value} in {seconds:.1f} s")
    return time.perf_counter() - started


def landed_runs(repo: Path, values: list[float]) -> tuple[int, int]:
    """MLflow runs in the copy's store with PARAM in values: how many, and how many evaluate also logged into."""
    from mlflow.tracking import MlflowClient  # imported here: slow, and only needed once the runs exist

    experiment_name = yaml.safe_load((repo / "params.yaml").read_text())["train"]["experiment"]
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return 0, 0
    wanted = set(values)
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id], max_results=10_000)
        if r.data.params.get(PARAM) is not None and float(r.data.params[PARAM]) in wanted
    ]
    return len(runs), sum("test.rmse" in r.data.metrics for r in runs)


def report_variations(variations: list[Variation], load: LoadMonitor) -> None:
    print(f"\nsingle variation ({PARAM}): dvc exp run vs the re-executed stages' commands run directly")
    print(f"{'value':>8} {'exp run s':>10} {'direct s':>9} {'overhead s':>11}   stages (their own 'done in' under exp run)")
    for v in variations:
        inside = ", ".join(f"{name} {v.inside_seconds.get(name, float('nan')):.1f} s" for name in v.stages)
        print(f"{v.value:>8} {v.exp_seconds:>10.2f} {v.direct_seconds:>9.2f} {v.overhead:>11.2f}   {inside}")
    mean_exp = statistics.mean(v.exp_seconds for v in variations)
    mean_direct = statistics.mean(v.direct_seconds for v in variations)
    mean_overhead = statistics.mean(v.overhead for v in variations)
    print(f"{'mean':>8} {mean_exp:>10.2f} {mean_direct:>9.2f} {mean_overhead:>11.2f}")
    verdict = "met" if mean_overhead <= TARGET_OVERHEAD_SECONDS else "MISSED"
    print(f"target: overhead <= {TARGET_OVERHEAD_SECONDS:.0f} s per experiment: {verdict} ({mean_overhead:.2f} s mean)")
    print(f"meanwhile {load.describe()}")


def report_grid(
    points: int,
    queue_seconds: float,
    parallel: float,
    status: str,
    sequential: float,
    landed: tuple[int, int],
    queued_load: LoadMonitor,
    sequential_load: LoadMonitor,
) -> None:
    print(f"\ngrid of {points} points ({PARAM})")
    print(
        f"queued, dvc queue start -j {JOBS}: {parallel:7.1f} s total ({queue_seconds:.1f} s to queue), "
        f"{parallel / points:.1f} s per experiment; {status.count('Success')} Success, {status.count('Failed')} Failed"
    )
    print(f"sequential dvc exp run -S:       {sequential:7.1f} s total, {sequential / points:.1f} s per experiment")
    faster = parallel < sequential
    print(f"parallel grid faster: {'yes' if faster else 'NO'} ({sequential / parallel:.2f}x the sequential speed)")
    print(f"MLflow: {landed[0]} of {points} runs landed ({landed[1]} with evaluate's metrics)")
    print(f"during the queued grid {queued_load.describe()}")
    print(f"during the sequential runs {sequential_load.describe()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"1 value and {QUICK_POINTS}-point grids: a smoke check")
    parser.add_argument("--workdir", type=Path, help="make the copy here (an empty or new folder) and keep it")
    args = parser.parse_args()
    singles = SINGLE_VALUES[:1] if args.quick else SINGLE_VALUES
    grid = GRID_VALUES[:QUICK_POINTS] if args.quick else GRID_VALUES
    sequential = SEQUENTIAL_VALUES[: len(grid)]
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bts-exp-overhead-"))
    repo = workdir / "repo"
    try:
        repo.mkdir(parents=True)
        progress(f"copying the project into {repo}")
        copy_project(repo)
        progress("dvc repro: building the baseline")
        seconds, _ = run(["dvc", "repro"], repo)
        commit(repo, "baseline")
        progress(f"baseline built in {seconds:.1f} s (not compared)")
        commands = stage_commands(repo)

        variations = []
        with LoadMonitor(workdir) as single_load:
            for value in singles:
                variation = single_variation(repo, value, commands)
                variations.append(variation)
                progress(
                    f"single {PARAM}={value}: exp run {variation.exp_seconds:.1f} s, direct {variation.direct_seconds:.1f} s "
                    f"({' + '.join(variation.stages)}), overhead {variation.overhead:.1f} s"
                )

        reset_workspace(repo)
        with LoadMonitor(workdir) as queued_load:
            queue_seconds, parallel, status = queued_grid(repo, grid, workdir / "queue-start.log")
        progress(f"queued grid done in {parallel:.1f} s")
        landed = landed_runs(repo, grid)
        progress(f"sequential grid: {len(sequential)} points")
        with LoadMonitor(workdir) as sequential_load:
            sequential_seconds = sequential_grid(repo, sequential)

        report_variations(variations, single_load)
        report_grid(len(grid), queue_seconds, parallel, status, sequential_seconds, landed, queued_load, sequential_load)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nkept {repo}")


if __name__ == "__main__":
    main()
