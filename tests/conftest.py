"""Shared fixtures: the project's sensor catalogue and a writer of small export files."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from bts.data.catalogue import Sensor, load_catalogue

PROJECT = Path(__file__).resolve().parents[1]
SENSORS = PROJECT / "metadata" / "sensors.yaml"
EXPORT_HEADER = "id,value,station_id,parameter_id,reading_time"


def stage_module(name: str) -> ModuleType:
    """A stage's entry point, src/stages/<name>.py, imported as a module (DVC runs it as a script)."""
    spec = importlib.util.spec_from_file_location(f"stages.{name}", PROJECT / "src" / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sensors_path() -> Path:
    """The project's sensor catalogue file."""
    return SENSORS


@pytest.fixture(scope="session")
def catalogue() -> dict[int, Sensor]:
    """The project's sensor catalogue, loaded once."""
    return load_catalogue(SENSORS)


WriteCsv = Callable[..., Path]


@pytest.fixture
def write_csv(tmp_path: Path) -> WriteCsv:
    """write_csv(name, content, folder=tmp_path) -> path.

    content is written as is when bytes or str; a sequence of rows (strings,
    or sequences of fields joined with ',') is written under the export header.
    """

    def write(name: str, content: bytes | str | Sequence, folder: Path | None = None) -> Path:
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            lines = [row if isinstance(row, str) else ",".join(str(field) for field in row) for row in content]
            path.write_text("\n".join([EXPORT_HEADER, *lines]) + "\n", encoding="utf-8")
        return path

    return write


# The longest test modules (measured, slowest first), handed to the workers in this order (pyproject's
# --no-loadscope-reorder: xdist would otherwise start with the modules of most tests, the unit tests, and leave the long
# ones to the end, one worker running them alone): the two workers end together. test_team comes second: it builds its
# own pipeline on its server, so the second worker is busy while the first builds the session's pipeline. Then the other
# integration modules, then the unit tests, which fill the gaps at the end. (A third worker on two cores was tried: the
# suite took 26 minutes instead of 22, each process slowed by the others more than the waits it filled.)
LONGEST_FIRST = [
    "test_readme", "test_team", "test_retrain", "test_lineage", "test_batch", "test_lineage_own_repo", "test_training",
    "test_mlproject", "test_data_pipeline",
]  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> tuple[int, int]:
        module = item.path.stem
        if module in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(module))
        return (1, 0) if "integration" in item.path.parts else (2, 0)

    items.sort(key=rank)  # stable: a module's tests keep their order
