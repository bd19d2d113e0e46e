"""The sensor catalogue: parameter_id -> name, unit and plausible range."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from bts.errors import ConfigError


@dataclass(frozen=True)
class Sensor:
    parameter_id: int
    name: str
    unit: str
    min: float
    max: float


def load_catalogue(path: str | Path) -> dict[int, Sensor]:
    """Read the catalogue YAML into {parameter_id: Sensor}."""
    try:
        entries = yaml.safe_load(Path(path).read_text())["sensors"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not a sensor catalogue ({exc})") from exc
    catalogue = {}
    for parameter_id, entry in entries.items():
        sensor = Sensor(int(parameter_id), entry["name"], entry["unit"], float(entry["min"]), float(entry["max"]))
        if sensor.min >= sensor.max:
            raise ConfigError(f"{path}: sensor {parameter_id}: min must be below max")
        catalogue[sensor.parameter_id] = sensor
    return catalogue


def plausible_ranges(catalogue: dict[int, Sensor]) -> dict[int, list[float]]:
    """{parameter_id: [min, max]}, the form the schemas serialize."""
    return {pid: [s.min, s.max] for pid, s in sorted(catalogue.items())}
