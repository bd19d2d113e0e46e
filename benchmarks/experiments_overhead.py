"""Experiment overhead benchmark: what `dvc exp run` and the queue add on top of the stages' own work.

It copies the project (its working-tree files, as the integration tests do:
`git ls-files --cached --others --exclude-standard`) into a temporary git
repository, commits, and builds the baseline with one `dvc repro` (timed, not
compared). Then, in that copy only, --rounds times (at least 3), each round
alternating what it compares:

1. Single variation. It times `dvc exp run -S <param>=<new value>` end to
   end, and then the commands of the stages DVC re-executed (train and
   everything downstream of it, read from its output; each `cmd` as dvc.lock
   records it) run directly with params.yaml edited to the same value (and,
   not timed, `dvc commit` of each stage's outputs, since the next stage
   verifies the model against dvc.lock). Each starts from the baseline
   workspace (git reset + dvc checkout, not timed).
   Overhead = exp run seconds - direct seconds. A `python` placed first on PATH
   for both times every stage process, so the benchmark also prints DVC's share
   inside the same run: exp run seconds - the seconds of the stage processes it
   started. That one does not depend on the stages taking the same time twice.
   In the same rounds it times DVC's own floor on this machine: the same
   `dvc exp run -S` in a bare DVC project made from the copy's dvc.yaml and
   dvc.lock, with this pipeline's stage graph (the same stages, deps, params
   and outs, of the same kinds and flags) but commands that only write small
   files; its overhead is measured as the project's (exp run seconds - the
   seconds of the re-executed stages' commands run directly). No project with
   this stage graph goes below it, so the target is a ratio to it; the
   benchmark also prints the project's DVC share above it. And it times what
   each re-executed stage process spends importing its modules (a `python`
   that imports the stage's module and exits), the part of the stages' own
   time that is Python starting up rather than computing.
2. Grid. A --points grid queued with `dvc exp run --queue -S 'param=v1,...'`
   and run by `dvc queue start -j 2` (watching the experiments' git refs appear), against as
   many other values run one after another with `dvc exp run -S`. It counts
   the grid's MLflow runs that landed in the copy's store.

The varied param is the default model's learning rate; every value is new, so
no stage is restored from DVC's run cache. It prints each figure's median and
spread, the machine's load while measuring (figures disturbed by other
processes are flagged), and the targets: an overhead per experiment (beyond
the stages' own compute, by both measures) at most 1.25x the bare project's,
and the queued grid at least 1.5x as fast as the same number of points in a
row. The exit code is 0 whether or not the targets are met (1 only if a
command fails). A full run takes about 10 minutes.

    .venv/bin/python benchmarks/experiments_overhead.py                 # 3 rounds, 4-point grids
    .venv/bin/python benchmarks/experiments_overhead.py --rounds 1 --points 2   # smoke check
    .venv/bin/python benchmarks/experiments_overhead.py --workdir /tmp/bts-exp  # keep the copy to inspect it
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from measure import MIN_ROUNDS, Machine, median, summary

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtual environment running the benchmark

TARGET_FLOOR_RATIO = 1.25  # the project's overhead per experiment against the bare project's (issue 28)
TARGET_GRID_SPEEDUP = 1.5
PARAM = "train.hist_gradient_boosting.learning_rate"
BASELINE_VALUE = 0.1  # params.yaml's, which the baseline is built with: no value below equals it
JOBS = 2
POLL_SECONDS = 0.5
STATUS_SECONDS = 20.0
RAN_STAGE = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)  # what `dvc exp run` prints before each stage it runs
EXPERIMENT_REF = re.compile(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/")
QUEUE_TIMEOUT_SECONDS = 1800.0
WORKER_EXIT_TIMEOUT_SECONDS = 60.0
STAGE_SCRIPT = re.compile(r"src/stages/(\w+)\.py$")
# A `python` first on PATH that times each process it starts: a stage's cmd (`python src/stages/<name>.py ...`) finds it,
# under dvc exp run as when run directly, and it appends "<start> <end> <script>" to $BTS_STAGE_TIMES (the dvc command
# itself starts its interpreter by absolute path, so it is not counted).
CLOCK = """#!/bin/sh
start=$(date +%s.%N)
"{python}" "$@"
status=$?
[ -n "$BTS_STAGE_TIMES" ] && echo "$start $(date +%s.%N) $1" >> "$BTS_STAGE_TIMES"
exit $status
"""
CLOCK_DIR: Path | None = None  # the folder of the timing `python`, set once the work folder exists


@dataclass(frozen=True)
class Variation:
    value: float
    exp_seconds: float
    direct_seconds: float
    inside_seconds: dict[str, float]  # each stage process's wall seconds, under dvc exp run, in the order they ran
    exp_cpu: float  # CPU seconds of all the processes: what load on the machine does not change
    direct_cpu: float
    floor_seconds: float  # `dvc exp run` of the same change in the bare project of the same stage graph, in the same round
    floor_direct: float  # the commands of the stages it re-executed, run directly
    floor_stages: list[str]
    import_seconds: dict[str, float]  # a process importing each stage's module, and nothing else

    @property
    def stages(self) -> list[str]:
        return list(self.inside_seconds)

    @property
    def overhead(self) -> float:
        return self.exp_seconds - self.direct_seconds

    @property
    def dvc_share(self) -> float:
        """What DVC adds inside the same run: its wall seconds minus those of the stage processes it started."""
        return self.exp_seconds - sum(self.inside_seconds.values())

    @property
    def floor_overhead(self) -> float:
        return self.floor_seconds - self.floor_direct

    @property
    def share_ratio(self) -> float:
        """DVC's share against the floor's overhead: the steadier of the two measures (both come from one run)."""
        return self.dvc_share / self.floor_overhead

    @property
    def cpu_overhead(self) -> float:
        return self.exp_cpu - self.direct_cpu


def environment(stage_times: Path | None = None) -> dict[str, str]:
    """The user's environment with the virtual environment first on PATH and no inherited DVC/MLflow redirection.

    With stage_times, the timing `python` comes before it and appends each stage process's times to that file.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "BTS_STAGE_TIMES"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if stage_times is not None and CLOCK_DIR is not None:
        env["PATH"] = f"{CLOCK_DIR}{os.pathsep}{env['PATH']}"
        env["BTS_STAGE_TIMES"] = str(stage_times)
    return env


def install_clock(workdir: Path) -> None:
    global CLOCK_DIR
    CLOCK_DIR = workdir / "clock"
    CLOCK_DIR.mkdir()
    (CLOCK_DIR / "python").write_text(CLOCK.format(python=BIN / "python"))
    (CLOCK_DIR / "python").chmod(0o755)


def stage_walls(stage_times: Path) -> dict[str, float]:
    """Wall seconds of each stage process the timing `python` saw, by stage name, in the order they ran."""
    walls: dict[str, float] = {}
    for line in stage_times.read_text().splitlines() if stage_times.exists() else []:
        start, end, script = line.split()
        if match := STAGE_SCRIPT.search(script):
            name = match.group(1)
            walls[name] = walls.get(name, 0.0) + float(end) - float(start)
    stage_times.unlink(missing_ok=True)
    return walls


def run(args: list[str] | str, cwd: Path, stage_times: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run a command (a string runs in the shell, as DVC runs a stage's cmd); return its wall seconds. Exit 1 if it fails."""
    started = time.perf_counter()
    env = environment(stage_times)
    result = subprocess.run(args, cwd=cwd, env=env, shell=isinstance(args, str), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        shown = args if isinstance(args, str) else " ".join(args)
        sys.exit(f"{shown} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return seconds, result


def children_cpu() -> float:
    """User + system CPU seconds of every finished child process (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    init_git(repo)
    commit(repo, "project")


def init_git(repo: Path) -> None:
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "benchmark@example.com"], repo)
    run(["git", "config", "user.name", "Benchmark"], repo)


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], repo)  # the baseline may rebuild the committed bytes


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


def exp_run(repo: Path, value: float, stage_times: Path | None = None, param: str = PARAM) -> float:
    """`dvc exp run -S <param>=<value>` in the workspace; its seconds."""
    return run(["dvc", "exp", "run", "-S", f"{param}={value}"], repo, stage_times)[0]


def single_variation(repo: Path, value: float, commands: dict[str, str]) -> Variation:
    """One experiment from the baseline through DVC, then the same stages' commands run directly."""
    reset_workspace(repo)
    cpu = children_cpu()
    stage_times = repo.parent / "stage-times.txt"
    exp_seconds = exp_run(repo, value, stage_times)
    exp_cpu = children_cpu() - cpu
    inside = stage_walls(stage_times)

    reset_workspace(repo)
    original = (repo / "params.yaml").read_text()
    set_param(repo, PARAM, value)
    direct = direct_cpu = 0.0
    try:
        for name in inside:
            cpu = children_cpu()
            direct += run(commands[name], repo, stage_times)[0]
            direct_cpu += children_cpu() - cpu
            # Not timed: record the stage's outputs in dvc.lock, where the next stage verifies the model it loads.
            run(["dvc", "commit", "--force", "--quiet", name], repo)
    finally:
        (repo / "params.yaml").write_text(original)
        stage_times.unlink(missing_ok=True)
    floor_seconds, floor_direct, floor_stages = floor_variation(repo.parent / "floor", value)
    imports = {name: run(f"PYTHONPATH=src python src/stages/{name}.py --help", repo)[0] for name in inside}  # imports, then argparse
    return Variation(value, exp_seconds, direct, inside, exp_cpu, direct_cpu, floor_seconds, floor_direct, floor_stages, imports)


def floor_variation(floor: Path, value: float) -> tuple[float, float, list[str]]:
    """The same experiment in the bare project: `dvc exp run -S` seconds, then the stages it re-executed run directly
    (their seconds, and their names), each from its baseline workspace."""
    reset_workspace(floor)
    seconds, result = run(["dvc", "exp", "run", "-S", f"{PARAM}={value}"], floor)
    ran = RAN_STAGE.findall(result.stdout)
    reset_workspace(floor)
    commands = stage_commands(floor)
    original = (floor / "params.yaml").read_text()
    set_param(floor, PARAM, value)
    try:
        direct = sum(run(commands[name], floor)[0] for name in ran)
    finally:
        (floor / "params.yaml").write_text(original)
    return seconds, direct, ran


def floor_command(files: list[str], folders: list[str]) -> str:
    """A shell command that writes each of `files` (after making `folders`): a line of JSON with its path and the
    checksum of params.yaml, so every output changes with any param, and metrics files parse as DVC reads them."""
    line = 'printf \'{"path": "%s", "params": "%s"}\\n\' "$out" "$(cksum < params.yaml)" > "$out"'
    write = f"for out in {' '.join(files)}; do {line}; done"
    return f"mkdir -p {' '.join(folders)} && {write}" if folders else write


def mirror_files(repo: Path, folder: Path) -> None:
    """The files of a bare DVC project with repo's stage graph: repo's dvc.yaml with each stage's cmd replaced by one
    writing small files (floor_command).

    The same stages, deps, params and outs (files or folders, with their cache, persist and metrics flags), and the
    same top-level plots. params.yaml holds the values dvc.lock records for the params the stages read. A dependency
    that no stage makes is a small file, or a folder of as many small files as dvc.lock counts in it; a folder output
    gets as many files. What the project costs beyond this one is then its commands' work, its files' sizes, and
    what the rest of its configuration adds (.dvcignore, the comments and other params in its YAML files).
    """
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    made = {out["path"] for stage in locked.values() for out in stage["outs"]}
    sources = {dep["path"]: dep.get("nfiles") for stage in locked.values() for dep in stage["deps"] if dep["path"] not in made}
    for path, nfiles in sorted(sources.items(), key=lambda source: source[1] is not None):  # files, then folders around them
        target = folder / path
        if nfiles is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"{path}\n")
        else:
            target.mkdir(parents=True, exist_ok=True)
            for i in range(nfiles - sum(1 for p in target.rglob("*") if p.is_file())):
                (target / f"part-{i}").write_text(f"{path}/part-{i}\n")
    params: dict = {}
    for stage in locked.values():
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            *sections, last = key.split(".")
            node = params
            for section in sections:
                node = node.setdefault(section, {})
            node[last] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, stage in pipeline["stages"].items():
        outs = locked[name]["outs"]
        folders = [out["path"] for out in outs if "nfiles" in out]
        files = [out["path"] for out in outs if "nfiles" not in out]
        files += [f"{out['path']}/part-{i}" for out in outs if "nfiles" in out for i in range(out["nfiles"])]
        for path in files:
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
        stage["cmd"] = floor_command(files, folders)
    (folder / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False, width=1000))


def bare_project(repo: Path, folder: Path) -> None:
    """The bare project (mirror_files) in `folder`: a git repository with DVC, built with `dvc repro` and committed."""
    folder.mkdir()
    mirror_files(repo, folder)
    init_git(folder)
    run(["dvc", "init", "-q"], folder)
    for option in ("core.analytics", "core.check_update"):  # as the project's .dvc/config
        run(["dvc", "config", option, "false"], folder)
    run(["dvc", "repro", "--quiet"], folder)
    commit(folder, "bare project")


def queue_status(repo: Path) -> str:
    return run(["dvc", "queue", "status"], repo)[1].stdout


def queue_busy(status: str) -> bool:
    return any(word in status for word in ("Queued", "Running"))


def workers_alive(status: str) -> int:
    """Active plus idle queue workers ("Worker status: 1 active, 1 idle")."""
    match = re.search(r"Worker status: (\d+) active, (\d+) idle", status)
    return int(match.group(1)) + int(match.group(2)) if match else 0


def experiment_refs(repo: Path) -> int:
    """Experiments in the repository (git refs under refs/exps/<baseline>/)."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], repo)[1].stdout.split()
    return sum(1 for ref in refs if EXPERIMENT_REF.match(ref))


def finished(status: str) -> tuple[int, int]:
    """Tasks that succeeded and that failed, in `dvc queue status`."""
    return status.count("Success"), status.count("Failed")


def queued_grid(repo: Path, values: list[float], log: Path) -> tuple[float, float, int, int]:
    """Queue the grid in one command, run it with `dvc queue start -j JOBS`; seconds to queue, total seconds, and how
    many of its experiments succeeded and failed."""
    finished_before = finished(queue_status(repo))  # the queue's status lists earlier rounds' tasks too
    refs_before = experiment_refs(repo)
    started = time.perf_counter()
    queue_seconds, _ = run(["dvc", "exp", "run", "--queue", "-S", f"{PARAM}={','.join(map(str, values))}"], repo)
    progress(f"queued {len(values)} experiments in {queue_seconds:.1f} s; starting {JOBS} workers (log: {log})")
    with log.open("w") as out:  # a file, not a pipe: with a pipe `dvc queue start` blocks until the workers exit
        start = ["dvc", "queue", "start", "-j", str(JOBS)]
        subprocess.run(start, cwd=repo, env=environment(), stdout=out, stderr=subprocess.STDOUT, check=True)
    # Each experiment that ends adds its ref: counting refs is a git call of milliseconds, where `dvc queue status` is a
    # DVC process of a second of CPU that would slow the workers it watches. The status is read now and then, in case
    # an experiment fails (no ref).
    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    next_status = time.monotonic() + STATUS_SECONDS
    reported = -1
    while (done := experiment_refs(repo) - refs_before) < len(values):
        if time.monotonic() > deadline:
            sys.exit(f"queue still busy after {QUEUE_TIMEOUT_SECONDS:.0f} s:\n{queue_status(repo)}")
        if done != reported:
            progress(f"  queue: {done} of {len(values)} finished")
            reported = done
        if time.monotonic() > next_status:
            if not queue_busy(queue_status(repo)):
                break
            next_status = time.monotonic() + STATUS_SECONDS
        time.sleep(POLL_SECONDS)
    total = time.perf_counter() - started
    status = queue_status(repo)
    # Let the idle workers exit (about 12 s) before anything else runs; not timed.
    deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_SECONDS
    while workers_alive(queue_status(repo)) and time.monotonic() < deadline:
        time.sleep(STATUS_SECONDS / 5)
    succeeded, failed = (after - before for after, before in zip(finished(status), finished_before, strict=True))
    return queue_seconds, total, succeeded, failed


def sequential_grid(repo: Path, values: list[float]) -> float:
    """The same number of points as one `dvc exp run -S` after another, from the baseline workspace."""
    reset_workspace(repo)
    started = time.perf_counter()
    for i, value in enumerate(values, 1):
        seconds = exp_run(repo, value)
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
    return len(runs), sum(any(name.startswith("test.") for name in r.data.metrics) for r in runs)


@dataclass
class Grid:
    queue_seconds: float  # `dvc exp run --queue` of the whole grid (part of the queued total)
    queued_seconds: float
    sequential_seconds: float
    succeeded: int
    failed: int
    landed: tuple[int, int]

    @property
    def speedup(self) -> float:
        return self.sequential_seconds / self.queued_seconds


def fresh_values(count: int, offset: int) -> list[float]:
    """Learning rates near the baseline's, none equal to it or to another call's: 0.05 + (offset + 2k) / 1000.

    Two calls with offsets 0 and 1 interleave, so the two sides of a comparison do like work.
    """
    values = [round(0.05 + (offset + 2 * k) / 1000, 4) for k in range(count)]
    assert BASELINE_VALUE not in values
    return values


def report_variations(variations: list[Variation], machine: Machine) -> None:
    print(f"\nsingle variation ({PARAM}): dvc exp run vs the re-executed stages' commands run directly, alternating")
    print(
        f"{'value':>8} {'exp run s':>10} {'direct s':>9} {'overhead s':>11} {'DVC share s':>12} {'floor s':>8} "
        f"{'floor ovh s':>12} {'share/floor':>12}   stage processes under exp run"
    )
    for v in variations:
        inside = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in v.inside_seconds.items())
        print(
            f"{v.value:>8} {v.exp_seconds:>10.2f} {v.direct_seconds:>9.2f} {v.overhead:>11.2f} {v.dvc_share:>12.2f} "
            f"{v.floor_seconds:>8.2f} {v.floor_overhead:>12.2f} {v.share_ratio:>11.2f}x   {inside}"
        )
    overheads, shares = [v.overhead for v in variations], [v.dvc_share for v in variations]
    print(f"dvc exp run: {summary([v.exp_seconds for v in variations])}")
    print(f"direct:      {summary([v.direct_seconds for v in variations])}")
    print(f"overhead:    {summary(overheads)} (exp run - direct: two runs, so the stages' own variation counts too)")
    print(f"DVC share:   {summary(shares)} (exp run - its own stage processes: what DVC adds in the same run)")
    print(f"CPU overhead: {summary([v.cpu_overhead for v in variations], 's of CPU')} (what DVC itself computes)")
    stages = variations[0].stages
    print(
        f"floor:       {summary([v.floor_seconds for v in variations])} (dvc exp run of the bare project with this stage "
        f"graph: it re-executed {' + '.join(variations[0].floor_stages)}, whose commands take "
        f"{median([v.floor_direct for v in variations]):.2f} s run directly)"
    )
    print(f"floor overhead: {summary([v.floor_overhead for v in variations])} (its exp run - its direct: DVC's own floor)")
    print(f"above floor: {summary([v.dvc_share - v.floor_overhead for v in variations])} (DVC share - floor overhead)")
    floor_overhead = median([v.floor_overhead for v in variations])
    ratios = {"overhead": median(overheads) / floor_overhead, "DVC share": median(shares) / floor_overhead}
    print(
        f"ratio:       overhead {ratios['overhead']:.2f}x, DVC share {ratios['DVC share']:.2f}x the floor overhead "
        f"(medians; DVC share / floor overhead round by round: {summary([v.share_ratio for v in variations], 'x')})"
    )
    imported = [sum(v.import_seconds.values()) for v in variations]
    each = ", ".join(f"{name} {median([v.import_seconds[name] for v in variations]):.1f} s" for name in stages)
    stage_seconds = median([sum(v.inside_seconds.values()) for v in variations])
    print(f"imports:     {summary(imported)} of the stage processes' {stage_seconds:.2f} s ({each})")
    worst = max(ratios.values())
    verdict = "met" if worst <= TARGET_FLOOR_RATIO else "MISSED"
    print(
        f"target: overhead <= {TARGET_FLOOR_RATIO}x DVC's floor per experiment, by both measures: {verdict} "
        f"({worst:.2f}x, the larger: {max(median(overheads), median(shares)):.2f} s against {floor_overhead:.2f} s)"
    )
    print(machine.describe())


def report_grids(grids: list[Grid], points: int, machine: Machine) -> None:
    print(f"\ngrid of {points} points ({PARAM}): queued with `dvc queue start -j {JOBS}` vs `dvc exp run -S` in a row, alternating")
    print(f"{'round':>5} {'queued s':>9} {'(to queue)':>10} {'in a row s':>11} {'speed-up':>9}   queue result, MLflow runs landed")
    for i, g in enumerate(grids, 1):
        print(
            f"{i:>5} {g.queued_seconds:>9.1f} {g.queue_seconds:>10.1f} {g.sequential_seconds:>11.1f} {g.speedup:>8.2f}x   "
            f"{g.succeeded} Success, {g.failed} Failed; {g.landed[0]} of {points} runs landed ({g.landed[1]} with evaluate's metrics)"
        )
    speedups = [g.speedup for g in grids]
    print(f"queued:    {summary([g.queued_seconds / points for g in grids])} per experiment")
    print(f"in a row:  {summary([g.sequential_seconds / points for g in grids])} per experiment")
    print(f"speed-up:  {summary(speedups, 'x')}")
    verdict = "met" if median(speedups) >= TARGET_GRID_SPEEDUP else "MISSED"
    print(f"target: queued grid >= {TARGET_GRID_SPEEDUP}x as fast as in a row: {verdict} ({median(speedups):.2f}x median)")
    print(machine.describe())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"alternating rounds of each comparison (default {MIN_ROUNDS})")
    parser.add_argument("--points", type=int, default=4, help="points of each grid (default 4)")
    parser.add_argument("--workdir", type=Path, help="make the copy here (an empty or new folder) and keep it")
    args = parser.parse_args()
    if args.rounds < 1 or args.points < 2:
        parser.error("--rounds must be at least 1 and --points at least 2")
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bts-exp-overhead-"))
    repo = workdir / "repo"
    try:
        repo.mkdir(parents=True)
        install_clock(workdir)
        progress(f"copying the project into {repo}")
        copy_project(repo)
        progress("dvc repro: building the baseline")
        seconds, _ = run(["dvc", "repro"], repo)
        commit(repo, "baseline")
        progress(f"baseline built in {seconds:.1f} s (not compared)")
        commands = stage_commands(repo)
        started = time.perf_counter()
        bare_project(repo, workdir / "floor")
        progress(f"bare project with the same stage graph built in {time.perf_counter() - started:.1f} s ({workdir / 'floor'})")

        variations = []
        with Machine([workdir]) as single_machine:
            for value in fresh_values(args.rounds, offset=0):
                variation = single_variation(repo, value, commands)
                variations.append(variation)
                progress(
                    f"single {PARAM}={value}: exp run {variation.exp_seconds:.1f} s, direct {variation.direct_seconds:.1f} s "
                    f"({' + '.join(variation.stages)}), overhead {variation.overhead:.1f} s"
                )

        grids = []
        grid_values = fresh_values(2 * args.rounds * args.points, offset=1)
        with Machine([workdir]) as grid_machine:
            for round_ in range(args.rounds):
                chunk = grid_values[2 * round_ * args.points : 2 * (round_ + 1) * args.points]
                queued_values, sequential_values = chunk[0::2], chunk[1::2]
                reset_workspace(repo)
                queue_seconds, queued, succeeded, failed = queued_grid(repo, queued_values, workdir / f"queue-start-{round_ + 1}.log")
                progress(f"round {round_ + 1}: queued grid done in {queued:.1f} s")
                landed = landed_runs(repo, queued_values)
                sequential = sequential_grid(repo, sequential_values)
                progress(f"round {round_ + 1}: in a row done in {sequential:.1f} s")
                grids.append(Grid(queue_seconds, queued, sequential, succeeded, failed, landed))

        report_variations(variations, single_machine)
        report_grids(grids, args.points, grid_machine)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nkept {repo}")


if __name__ == "__main__":
    main()
