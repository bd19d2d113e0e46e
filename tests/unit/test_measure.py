"""benchmarks/measure.py: how every benchmark takes its figures (turns, median and spread, the machine's load)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from measure import Machine, alternate, cpu_model, summary, yardstick

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


def test_alternate_calls_the_trials_in_turns_and_keeps_each_ones_figures():
    calls = []
    figures = alternate({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, rounds=3)
    assert calls == ["a", "b"] * 3
    assert figures == {"a": [1.0] * 3, "b": [2.0] * 3}


def test_summary_gives_the_median_then_the_spread():
    assert summary([3.0, 1.0, 2.0]) == "2.00 s median (1.00 to 3.00 over 3)"
    assert summary([10.0, 30.0], "MB", digits=0) == "20 MB median (10 to 30 over 2)"


def test_the_yardstick_is_a_positive_time_and_the_cpu_has_a_name():
    assert 0 < yardstick() < 60
    assert cpu_model().strip()


def test_a_stranger_burning_cpu_is_counted_as_others_and_flags_the_figures():
    """A process that is not the benchmark's (a grandchild whose parent has exited) burns 3 CPU-s while it measures.

    /proc is sampled every second, so the figure may miss the last second's work: at least 2 CPU-s are counted."""
    stranger = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {BURN.format(seconds=3)!r}])"
    with Machine() as machine:
        subprocess.run([sys.executable, "-c", stranger], check=True)
        time.sleep(4)
    assert machine.other_cpu >= 2.0
    assert machine.disturbed
    described = machine.describe()
    assert "DISTURBED" in described and cpu_model() in described
    assert f"yardstick {machine.yardstick_before:.2f} s at the start and {machine.yardstick_after:.2f} s at the end" in described


def test_the_benchmarks_own_children_are_not_counted_as_others():
    child = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=30)])
    try:
        machine = Machine()
        processes = machine._processes()
        assert machine._ours(child.pid, processes)
        assert not machine._ours(1, processes)
    finally:
        child.kill()
        child.wait()
