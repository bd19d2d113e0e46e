"""The read calls of MlflowClient that `bts lineage` and `bts runs check` make, answered with SQL on MLflow's tables.

Importing MLflow alone takes about 2 s, more than these commands' own work over 10,000 runs. On a database store (the
SQLite file, or a team server's PostgreSQL that BTS_TRACKING_DATABASE_URI names), SqlClient reads the same records
with a few queries each (bts.lifecycle.database) and gives them in the shape of MLflow's entities (the attributes these
commands read), so the commands keep one code path for both clients. Artifacts are read from their folder when the
run's artifact URI is a local one; a server's proxied artifacts (mlflow-artifacts:) go through MLflow's client, made
when first needed. Writes are not offered: a command that writes uses MLflow's client.
"""

from __future__ import annotations

import re
import shutil
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from bts.errors import BtsError
from bts.lifecycle import database

# The filters these commands pass, the only ones SqlClient takes (anything else is a BtsError, not a wrong answer).
TAG_FILTER = re.compile(r"^tags\.`(?P<key>[^`]+)` = '(?P<value>[^']*)'$")
NAME_FILTER = re.compile(r"^name = '(?P<name>[^']*)'$")
NEWEST_FIRST = ["attributes.start_time DESC"]


class NotFound(BtsError):
    """What the store does not hold; `message` says what without the store, as MlflowException's does."""

    def __init__(self, message: str, store: str) -> None:
        super().__init__(f"{message}: not found in {store}")
        self.message = f"{message} not found"


def mlflow_errors() -> tuple[type[BaseException], ...]:
    """MLflow's exception class when MLflow is imported, else nothing: `except mlflow_errors():` catches what MLflow
    raised without importing it (a process that never imported MLflow cannot have raised its exceptions)."""
    errors = sys.modules.get("mlflow.exceptions")
    return (errors.MlflowException,) if errors is not None else ()


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    run_name: str | None
    status: str
    start_time: int | None
    artifact_uri: str


@dataclass(frozen=True)
class RunData:
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass(frozen=True)
class Run:
    info: RunInfo
    data: RunData


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int  # as MLflow's database store gives it
    run_id: str | None
    source: str | None
    description: str | None
    current_stage: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    aliases: dict[str, int]


class SqlClient:
    """A read-only stand-in for MlflowClient on the tracking store `tracking_uri`, reading the database `database_uri`
    (the store itself, or a tracking server's database)."""

    def __init__(self, tracking_uri: str, database_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.database_uri = database_uri
        self._mlflow: Any = None
        self._open = ExitStack()
        self._reader: database.Reader | None = None

    @property
    def _read(self) -> database.Reader:
        if self._reader is None:  # one connection for the client's life
            self._reader = self._open.enter_context(database.reading(self.database_uri))
        return self._reader

    def close(self) -> None:
        self._open.close()
        self._reader = None

    def _not_found(self, what: str) -> NotFound:
        return NotFound(what, self.tracking_uri)

    # -- runs and experiments -----------------------------------------------------------------------------------------

    def _runs(self, rows: list[tuple]) -> list[Run]:
        """Runs from their database.RUN_COLUMNS rows, with their params, latest metrics and tags."""
        if not rows:
            return []
        values = database.run_values(self._read, [row[0] for row in rows])
        by_run: dict[str, dict[str, dict[str, Any]]] = {row[0]: {kind: {} for kind in values} for row in rows}
        for kind, found in values.items():
            for run_id, key, value in found:
                by_run[run_id][kind][key] = value
        return [
            Run(
                RunInfo(run_id, str(experiment), name, status, start_time, artifact_uri),
                RunData(by_run[run_id]["params"], by_run[run_id]["metrics"], by_run[run_id]["tags"]),
            )
            for run_id, experiment, name, status, start_time, artifact_uri in rows
        ]

    def get_run(self, run_id: str) -> Run:
        found = self._runs(database.run_rows(self._read, run_id))
        if not found:
            raise self._not_found(f"run {run_id}")
        return found[0]

    def get_experiment(self, experiment_id: str) -> Experiment:
        found = database.experiment_with_id(self._read, int(experiment_id))
        if found is None:
            raise self._not_found(f"experiment {experiment_id}")
        return Experiment(str(found[0]), found[1])

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        found = database.experiment_named(self._read, name)
        return Experiment(str(found[0]), found[1]) if found else None

    def search_runs(self, experiment_ids: list[str], filter_string: str = "", order_by: list[str] | None = None) -> list[Run]:
        """The runs of these experiments whose tag equals a value (the one filter taken), newest first."""
        match = TAG_FILTER.match(filter_string)
        if not match or (order_by or NEWEST_FIRST) != NEWEST_FIRST:
            raise BtsError(f"the SQL reads of {self.tracking_uri} take a tag filter, newest first; not {filter_string!r} {order_by}")
        runs = self._runs(database.runs_tagged(self._read, [int(e) for e in experiment_ids], match["key"], match["value"]))
        return sorted(runs, key=lambda run: (run.info.start_time or 0, run.info.run_id), reverse=True)

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        """The run's artifact folder or file `path`, copied into dst_path (a local artifact store read in place)."""
        uri = self.get_run(run_id).info.artifact_uri
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            source = Path(unquote(parsed.path)) / path
            if not source.exists():
                raise FileNotFoundError(f"run {run_id}: no artifact {path} in {uri}")  # as MLflow's local store says it
            target = Path(dst_path) / source.name
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
            return str(target)
        return self._mlflow_client().download_artifacts(run_id, path, dst_path)

    def _mlflow_client(self) -> Any:
        """MLflow's client on the same store, for what SQL cannot read (a tracking server's proxied artifacts)."""
        if self._mlflow is None:
            from mlflow.tracking import MlflowClient

            from bts.tracking.store import use_uri

            use_uri(self.tracking_uri)
            self._mlflow = MlflowClient(self.tracking_uri)
        return self._mlflow

    # -- the model registry -------------------------------------------------------------------------------------------

    def _versions(self, name: str, version: int | None = None) -> list[ModelVersion]:
        """The registered model's versions that are not deleted (or the one version given), oldest first."""
        rows = database.version_rows(self._read, name, version)
        if not rows:
            return []
        tag_rows, alias_rows = database.version_labels(self._read, name)
        tags: dict[int, dict[str, str]] = {}
        for number, key, value in tag_rows:
            tags.setdefault(int(number), {})[key] = value
        aliases: dict[int, list[str]] = {}
        for number, alias in alias_rows:
            aliases.setdefault(int(number), []).append(alias)
        return [
            ModelVersion(
                name, int(number), run_id, source, description, stage, tags.get(int(number), {}), sorted(aliases.get(int(number), []))
            )
            for _, number, run_id, source, description, stage in sorted(rows, key=lambda row: int(row[1]))
        ]

    def search_model_versions(self, filter_string: str) -> list[ModelVersion]:
        """The versions of one registered model (the one filter taken: name = '<name>'), oldest first."""
        match = NAME_FILTER.match(filter_string)
        if not match:
            raise BtsError(f"the SQL reads of {self.tracking_uri} take a name filter; not {filter_string!r}")
        return self._versions(match["name"])

    def get_model_version(self, name: str, version: str) -> ModelVersion:
        found = self._versions(name, int(version)) if str(version).isdigit() else []
        if not found:
            raise self._not_found(f"{name} version {version}")
        return found[0]

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        held = dict(database.model_aliases(self._read, name) or [])
        if alias not in held:
            raise self._not_found(f"{name}@{alias}")
        return self.get_model_version(name, str(held[alias]))

    def get_registered_model(self, name: str) -> RegisteredModel:
        aliases = database.model_aliases(self._read, name)
        if aliases is None:
            raise self._not_found(f"registered model {name}")
        return RegisteredModel(name, {alias: int(version) for alias, version in aliases})
