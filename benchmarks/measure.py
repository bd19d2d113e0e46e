"""How every benchmark here measures: repeated, alternating trials, their median and spread, and the machine's load.

A figure taken once on a shared 2-core machine says little. Each benchmark runs
what it compares in turns (A, B, A, B, ...; at least 3 rounds), prints the
median with the spread (min and max) of each, and watches the machine while it
measures: the load average, the CPU seconds that processes other than the
benchmark's own used meanwhile, and those the hypervisor gave to other
machines (the "steal" of /proc/stat). When those together exceed a quarter
of a core, the figures are flagged as disturbed. A host that merely runs
slower (its neighbours sharing caches and memory bandwidth) shows in none of
them: comparisons are made in the same rounds for that reason, and the
machine's line also gives its CPU model and a yardstick, the seconds a fixed
piece of work (hashing and sorting on one core) takes before and after the
measurement. It tells hosts of different CPU speed apart; memory traffic,
which the data stages live on, it does not time.

    from measure import Machine, alternate, summary
    with Machine() as machine:
        times = alternate({"old": old, "new": new}, rounds=3)
    for name, values in times.items():
        print(name, summary(values, "s"))
    print(machine.describe())
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

MIN_ROUNDS = 3
DISTURBED_SHARE = 0.25  # of one core used by other processes while measuring
SAMPLE_SECONDS = 1.0
TICKS = os.sysconf("SC_CLK_TCK")
YARDSTICK_TRIES = 3
# 1 MiB hashed over and over, not one large buffer: a process this one forks later inherits its peak memory figure.
YARDSTICK_CHUNK = bytes(range(256)) * 4096
YARDSTICK_CHUNKS = 192
YARDSTICK_NUMBERS = 300_000
YARDSTICK_SORTS = 3


def alternate(
    trials: dict[str, Callable[[], float]], rounds: int = MIN_ROUNDS, progress: Callable[[str], None] | None = None
) -> dict[str, list[float]]:
    """Call each trial once per round, in turns, so a change of load touches all alike; each call returns its figure."""
    figures: dict[str, list[float]] = {name: [] for name in trials}
    for round_ in range(1, rounds + 1):
        for name, trial in trials.items():
            figures[name].append(trial())
            if progress:
                progress(f"round {round_}/{rounds}: {name}: {figures[name][-1]:.3g}")
    return figures


def median(values: list[float]) -> float:
    return statistics.median(values)


def summary(values: list[float], unit: str = "s", digits: int = 2) -> str:
    """'1.23 s median (1.10 to 1.40 over 3)': the median, then the spread."""
    low, high = min(values), max(values)
    return f"{median(values):.{digits}f} {unit} median ({low:.{digits}f} to {high:.{digits}f} over {len(values)})"


def yardstick() -> float:
    """The host's speed: the fastest of a few runs of a fixed piece of work on one core (MD5 of 192 MiB, then sorting
    300,000 random numbers in Python three times), in seconds. The same work everywhere: lower is faster."""
    generator = random.Random(0)
    numbers = [generator.random() for _ in range(YARDSTICK_NUMBERS)]
    best = float("inf")
    for _ in range(YARDSTICK_TRIES):
        started = time.perf_counter()
        digest = hashlib.md5()
        for _ in range(YARDSTICK_CHUNKS):
            digest.update(YARDSTICK_CHUNK)
        for _ in range(YARDSTICK_SORTS):
            sorted(numbers)
        best = min(best, time.perf_counter() - started)
    return best


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (the platform's processor name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Machine:
    """The load while a benchmark measures: load average, and CPU seconds used by processes that are not its own;
    and the host's speed (its yardstick) before and after.

    A process is the benchmark's own if it descends from this one or its working directory is under one of
    `own_folders` (DVC's queue workers are not our children). /proc is sampled every second, so a short-lived
    stranger can slip between samples: the figure is a lower bound.
    """

    def __init__(self, own_folders: list[Path] | None = None) -> None:
        self.own_folders = [str(Path(f).resolve()) for f in own_folders or []]
        self.other_cpu = 0.0
        self.stolen_cpu = 0.0
        self._steal_before = 0.0
        self.seconds = 0.0
        self.yardstick_before = self.yardstick_after = 0.0
        self.load_before = os.getloadavg()[0]
        self.load_peak = self.load_before
        self._started = 0.0
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _processes() -> dict[int, tuple[int, float]]:
        """pid -> (parent pid, CPU seconds so far)."""
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                found[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
        return found

    @staticmethod
    def _steal() -> float:
        """CPU seconds the hypervisor has given to others since boot, over all cores (0 where /proc/stat has no steal)."""
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return 0.0
        return int(fields[8]) / TICKS if len(fields) > 8 else 0.0

    def _ours(self, pid: int, processes: dict[int, tuple[int, float]]) -> bool:
        if self.own_folders:
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                cwd = ""
            if any(cwd.startswith(folder) for folder in self.own_folders):
                return True
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
        self.load_peak = max(self.load_peak, os.getloadavg()[0])

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def __enter__(self) -> Machine:
        self.yardstick_before = yardstick()
        self._started = time.perf_counter()
        self.load_before = self.load_peak = os.getloadavg()[0]
        self._sample(first=True)
        self._steal_before = self._steal()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.stolen_cpu = self._steal() - self._steal_before
        self.seconds = time.perf_counter() - self._started
        self.yardstick_after = yardstick()

    @property
    def other_share(self) -> float:
        """Other processes' CPU, in cores, averaged over the measurement."""
        return self.other_cpu / self.seconds if self.seconds else 0.0

    @property
    def stolen_share(self) -> float:
        """CPU the hypervisor gave to other machines, in cores, averaged over the measurement."""
        return self.stolen_cpu / self.seconds if self.seconds else 0.0

    @property
    def disturbed(self) -> bool:
        return self.other_share + self.stolen_share > DISTURBED_SHARE

    def describe(self) -> str:
        verdict = "DISTURBED: re-measure on a quiet machine" if self.disturbed else "quiet"
        return (
            f"machine: {os.cpu_count()} cores ({cpu_model()}), yardstick {self.yardstick_before:.2f} s at the start and "
            f"{self.yardstick_after:.2f} s at the end (fixed work on one core: lower is faster); "
            f"load average {self.load_before:.1f} at the start, {self.load_peak:.1f} at the peak; "
            f"other processes used {self.other_cpu:.0f} CPU-s ({self.other_share:.0%} of a core) and the hypervisor took "
            f"{self.stolen_cpu:.1f} CPU-s ({self.stolen_share:.0%} of a core) over {self.seconds:.0f} s: {verdict}"
        )
