"""The default model on stations it never saw: benchmarks/generalisation.py run as a user runs it, on the real export
beside the project (../shared/data/bts) and the simulated stations, every horizon with its interval's coverage."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.integration.conftest import REAL_SAMPLE, REAL_STATION
from tests.integration.workspace import PROJECT, run


def test_the_default_model_forecasts_every_horizon_of_the_real_station_it_never_saw_with_intervals_that_hold(tmp_path: Path) -> None:
    assert REAL_SAMPLE.is_file(), f"{REAL_SAMPLE} is missing: the real BTS export this benchmark is about"
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    default, horizons = params["train"]["model"], [str(h) for h in params["featurize"]["horizons"]]
    report = tmp_path / "generalisation.json"
    printed = run(
        ["python", "benchmarks/generalisation.py", "--kinds", default, "--real", str(REAL_SAMPLE.parent), "--json", str(report)], PROJECT
    )
    result = json.loads(report.read_text())["results"][default]
    simulated = {str(station) for station in params["simulate"]["stations"]}
    assert set(result["left_out"]) == simulated | {str(REAL_STATION)}

    real = result["left_out"][str(REAL_STATION)]
    for horizon in horizons:
        # the real station left out, fitted on the simulated ones: better than persistence, its 90% intervals holding
        assert real[horizon]["skill"] > 0, horizon
        assert 0.85 <= real[horizon]["coverage"] <= 0.95, horizon
        assert f"{real[horizon]['skill']:+.3f} / {real[horizon]['coverage']:.1%}" in printed.stdout
        # on average over the stations left out, and on the test split, better than persistence
        assert sum(scores[horizon]["skill"] for scores in result["left_out"].values()) > 0, horizon
        assert result["test"][horizon]["skill"] > 0 and 0.85 <= result["test"][horizon]["coverage"] <= 0.97, horizon
        # fitted on the real export alone: its own test split
        assert result["real_only_test"][horizon]["skill"] > 0, horizon
    shortest = horizons[0]  # one step ahead, better than persistence on every station, sensor and pair left out
    for group in ("left_out", "left_out_by_sensor", "left_out_by_pair", "from_real", "from_real_all_sensors"):
        assert min(scores[shortest]["skill"] for scores in result[group].values()) > 0, group
    assert set(result["from_real_all_sensors"]) == simulated
