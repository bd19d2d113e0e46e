"""The default model on stations it never saw: benchmarks/generalisation.py run as a user runs it, on the real export
beside the project (../shared/data/bts) and the simulated stations."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.integration.conftest import REAL_SAMPLE, REAL_STATION
from tests.integration.workspace import PROJECT, run


def test_default_model_beats_persistence_on_every_station_and_sensor_it_never_saw(tmp_path: Path) -> None:
    default = yaml.safe_load((PROJECT / "params.yaml").read_text())["train"]["model"]
    report = tmp_path / "generalisation.json"
    real = ["--real", str(REAL_SAMPLE.parent)] if REAL_SAMPLE.exists() else ["--no-real"]
    printed = run(["python", "benchmarks/generalisation.py", "--kinds", default, *real, "--json", str(report)], PROJECT).stdout
    result = json.loads(report.read_text())["results"][default]
    simulated = yaml.safe_load((PROJECT / "params.yaml").read_text())["simulate"]["stations"]

    # Each station left out in turn, fitted on the others: better than persistence on every station and every sensor.
    assert set(map(int, result["left_out"])) >= set(simulated)
    assert min(result["left_out"].values()) == result["worst_station"] > 0
    assert min(result["left_out_by_sensor"].values()) == result["worst_sensor"] > 0
    assert result["worst_pair"][2] > 0  # no (station, sensor) pair where it loses
    assert result["test"] > 0
    assert f"{result['worst_station']:+.3f}" in printed and f"{result['worst_sensor']:+.3f}" in printed
    if REAL_SAMPLE.exists():
        # Fitted on the real export alone: its own test split and every simulated station held out.
        assert str(REAL_STATION) in result["left_out"] and result["left_out"][str(REAL_STATION)] > 0
        assert result["real_only_test"] > 0
        assert set(map(int, result["from_real_all_sensors"])) == set(simulated)
        assert min(result["from_real_all_sensors"].values()) > 0 and min(result["from_real"].values()) > 0
