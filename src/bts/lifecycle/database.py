"""Bulk reads straight from a tracking database (the SQLite store, or a team server's PostgreSQL named by
BTS_TRACKING_DATABASE_URI): the few columns a command compares, not whole runs.

The one home of the SQL bts runs on MLflow's tables (MLflow's schema: mlflow/store/tracking/dbmodels/models.py).
Nothing here imports MLflow, whose import alone takes seconds; a SQLite store is read with Python's own sqlite3,
read-only, PostgreSQL (the psycopg2 URIs team mode gives) with psycopg2 in a read-only session, and other databases
through SQLAlchemy, whose import alone costs about 0.25 s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from bts.errors import BtsError

SQLITE_PREFIX = "sqlite:///"
PSYCOPG2_PREFIX = "postgresql+psycopg2://"  # SQLAlchemy's URI of PostgreSQL through psycopg2; libpq takes postgresql://
NAMED_VALUE = re.compile(r":([A-Za-z_]\w*)")  # a :named value in this module's SQL, as sqlite3 and SQLAlchemy take it
ACTIVE = "active"  # MLflow's lifecycle_stage of what is not deleted
DELETED_VERSION = "Deleted_Internal"  # MLflow's current_stage of a deleted model version
# The runs of one experiment that are not deleted, as a subquery: on SQLite, reading another table's rows of these
# runs through it takes one pass over that table, up to 3x faster than a join with runs.
ACTIVE_RUNS = f"SELECT run_uuid FROM runs WHERE experiment_id = :experiment_id AND lifecycle_stage = '{ACTIVE}'"
SQLITE = "sqlite"  # the dialect of a reader on a SQLite file (its `dialect`)
LISTED = 500  # run ids per IN list: far below any database's limit of bound values


class Reader(Protocol):
    def __call__(self, sql: str, values: dict[str, Any]) -> list[tuple]: ...


def sqlite_path(uri: str) -> str:
    """The database file of a SQLAlchemy SQLite URI (sqlite:////abs/path or sqlite:///relative/path, options dropped)."""
    return uri.removeprefix(SQLITE_PREFIX).partition("?")[0]


@contextmanager
def reading(uri: str) -> Iterator[Reader]:
    """A function that runs one query (SQL with :named values) on the database at uri and returns its rows."""
    if uri.startswith(SQLITE_PREFIX):
        import sqlite3

        def read(sql: str, values: dict[str, Any]) -> list[tuple]:
            try:
                return connection.execute(sql, values).fetchall()
            except sqlite3.DatabaseError as exc:  # not a database, or not an MLflow store
                raise BtsError(f"cannot read the MLflow store {uri}: {exc}") from None

        # Read-only: a missing file is an error, not a new empty store.
        connection = sqlite3.connect(f"{Path(sqlite_path(uri)).resolve().as_uri()}?mode=ro", uri=True)
        read.dialect = SQLITE  # type: ignore[attr-defined]
        try:
            yield read
        finally:
            connection.close()
        return
    if uri.startswith(PSYCOPG2_PREFIX):
        yield from _reading_postgresql(uri)
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(uri)
    try:
        with engine.connect() as connection:
            yield lambda sql, values: [tuple(row) for row in connection.execute(text(sql), values)]
    finally:
        engine.dispose()


def _reading_postgresql(uri: str) -> Iterator[Reader]:
    """reading() on PostgreSQL with psycopg2 itself: libpq takes the URI after its scheme (PGPASSFILE included)."""
    import psycopg2

    from bts.tracking.store import shown_store

    def failed(exc: Exception) -> BtsError:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return BtsError(f"cannot read the MLflow store {shown_store(uri, Path.cwd())}: {reason}")

    try:
        connection = psycopg2.connect("postgresql://" + uri.removeprefix(PSYCOPG2_PREFIX))
        connection.set_session(readonly=True, autocommit=True)
    except psycopg2.Error as exc:
        raise failed(exc) from None

    def read(sql: str, values: dict[str, Any]) -> list[tuple]:
        try:
            with connection.cursor() as cursor:  # psycopg2 takes %(name)s: a literal % in the SQL is doubled first
                cursor.execute(NAMED_VALUE.sub(r"%(\1)s", sql.replace("%", "%%")), values)
                return cursor.fetchall()
        except psycopg2.Error as exc:
            raise failed(exc) from None

    try:
        yield read
    finally:
        connection.close()


def store_uri() -> str:
    """The tracking URI (MLFLOW_TRACKING_URI, else the project's store), without importing MLflow; a BtsError if it names
    a SQLite database that is not there (opening it would create an empty one)."""
    from bts.project import find_root
    from bts.tracking.store import tracking_uri

    # A store named outright needs no project around it.
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri(find_root())
    if uri.startswith(SQLITE_PREFIX) and not Path(sqlite_path(uri)).exists():
        raise BtsError(f"no MLflow store at {uri} (set MLFLOW_TRACKING_URI, or run from the repository)")
    return uri


def placeholders(name: str, items: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """'(:name_0, :name_1)' and its values: an IN list both sqlite3 and SQLAlchemy's text() take."""
    values = {f"{name}_{index}": item for index, item in enumerate(items)}
    return "(" + ", ".join(f":{key}" for key in values) + ")", values


def experiment_id(read: Reader, experiment: str, uri: str) -> Any:
    """The id of the active experiment of that name; a BtsError naming the store if it is not there."""
    found = read(f"SELECT experiment_id FROM experiments WHERE name = :name AND lifecycle_stage = '{ACTIVE}'", {"name": experiment})
    if not found:
        raise BtsError(f"unknown experiment '{experiment}' in {uri}")
    return found[0][0]


def active_runs(read: Reader, experiment: Any) -> list[tuple[str, str | None, str, int | None]]:
    """(run_id, run name, status, start time in ms) of each active run of the experiment."""
    return read(
        f"SELECT run_uuid, name, status, start_time FROM runs WHERE experiment_id = :experiment_id AND lifecycle_stage = '{ACTIVE}'",
        {"experiment_id": experiment},
    )


def latest_metrics(read: Reader, experiment: Any, keys: Sequence[str]) -> list[tuple[str, str, float]]:
    """(run_id, key, latest value) of these metrics in the active runs; NaN where MLflow keeps 0 and its is_nan flag."""
    listed, values = placeholders("key", keys)
    rows = read(
        f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({ACTIVE_RUNS}) AND key IN {listed}",
        {"experiment_id": experiment, **values},
    )
    return [(run_id, key, float("nan") if is_nan else value) for run_id, key, value, is_nan in rows]


def metric_values(read: Reader, keys: Sequence[str]) -> list[tuple[str, str, float]]:
    """(run_id, key, latest value) of these metrics in every run of the store, NaN as in latest_metrics: a caller that
    wants some runs' keeps theirs, which over 100,000 runs costs less than sending the database the runs to keep."""
    listed, values = placeholders("key", keys)
    rows_of = f"key IN {listed}"
    if getattr(read, "dialect", None) == SQLITE:
        # The (key, run_uuid) index lists the rows of a key by run id, scattered over the table; reading them in the
        # table's own order instead halves the time over 100,000 runs.
        rows_of = f"rowid IN (SELECT rowid FROM latest_metrics WHERE {rows_of})"
    rows = read(f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE {rows_of}", values)
    return [(run_id, key, float("nan") if is_nan else float(value)) for run_id, key, value, is_nan in rows]


def tag_values(read: Reader, experiment: Any, key: str) -> list[tuple[str, str]]:
    """(run_id, value) of this tag in the active runs that have it."""
    return read(
        f"SELECT run_uuid, value FROM tags WHERE run_uuid IN ({ACTIVE_RUNS}) AND key = :key", {"experiment_id": experiment, "key": key}
    )


def run_versions(read: Reader, experiment: Any, tag: str) -> list[tuple[str, str, int | None, str | None]]:
    """(run_id, status, start time in ms, value of the tag or None) of each active run of the experiment."""
    return read(
        f"SELECT r.run_uuid, r.status, r.start_time, t.value FROM runs r LEFT JOIN tags t ON t.key = :key AND t.run_uuid = r.run_uuid"
        f" WHERE r.experiment_id = :experiment_id AND r.lifecycle_stage = '{ACTIVE}'",
        {"experiment_id": experiment, "key": tag},
    )


def metric_keys(read: Reader, run_ids: Sequence[str]) -> set[str]:
    """The names of the metrics these runs logged."""
    sql = "SELECT DISTINCT key FROM latest_metrics WHERE run_uuid IN {}"
    return {key for listed, values in listed_runs(run_ids) for (key,) in read(sql.format(listed), values)}


RunSet = list[tuple[str, dict[str, Any]]]  # run ids as "(...)" SQL that lists them, and its values: one or more parts


def run_set(experiment: Any, tag: str, version: str | None, every_version: bool, left_out: Sequence[str] = ()) -> RunSet:
    """The active runs of the experiment whose tag equals version (None: that lack the tag), or of every version, less
    those left_out, as SQL."""
    sql, values = f"({ACTIVE_RUNS}", {"experiment_id": experiment}
    if not every_version:
        sql += f" AND run_uuid {'NOT IN' if version is None else 'IN'} (SELECT run_uuid FROM tags WHERE key = :tag"
        sql += ")" if version is None else " AND value = :version)"
        values |= {"tag": tag, "version": version}
    if left_out:
        listed, excluded = placeholders("left_out", left_out)
        sql, values = f"{sql} AND run_uuid NOT IN {listed}", values | excluded
    return [(sql + ")", values)]


def listed_runs(run_ids: Sequence[str]) -> RunSet:
    """These runs, as SQL: IN lists of LISTED ids at most."""
    return [placeholders("run", run_ids[start : start + LISTED]) for start in range(0, len(run_ids), LISTED)]


def param_spread(read: Reader, runs: RunSet) -> dict[str, tuple[int, str, str]]:
    """{key: (how many of the runs logged it, its least value, its greatest)} of the params of the runs: the runs differ
    on a key when its values do or some run lacks it. A grouped query reads the params in the database."""
    spread: dict[str, tuple[int, str, str]] = {}
    for listed, values in runs:  # the parts share no run: counts add up, extremes are the parts' extremes
        sql = f"SELECT key, COUNT(*), MIN(value), MAX(value) FROM params WHERE run_uuid IN {listed} GROUP BY key"
        for key, count, low, high in read(sql, values):
            before = spread.get(key, (0, low, high))
            spread[key] = (before[0] + count, min(before[1], low), max(before[2], high))
    return spread


def runs_with_params(read: Reader, runs: RunSet) -> int:
    """How many of the runs logged any param."""
    return sum(read(f"SELECT COUNT(DISTINCT run_uuid) FROM params WHERE run_uuid IN {listed}", values)[0][0] for listed, values in runs)


def run_details(read: Reader, run_ids: Sequence[str], tags: Sequence[str], params: Sequence[str]) -> dict[str, list[tuple]]:
    """{'names': (run_id, name), 'with_params': (run_id,) of those that logged a param, 'tags': (run_id, key, value) of
    these tags, 'params': (run_id, key, value) of these params} of these runs."""
    found: dict[str, list[tuple]] = {"names": [], "with_params": [], "tags": [], "params": []}
    for listed, values in listed_runs(run_ids):
        found["names"] += read(f"SELECT run_uuid, name FROM runs WHERE run_uuid IN {listed}", values)
        found["with_params"] += read(f"SELECT DISTINCT run_uuid FROM params WHERE run_uuid IN {listed}", values)
        for kind, keys in [("tags", tags), ("params", params)]:
            if keys:
                named, key_values = placeholders("key", keys)
                sql = f"SELECT run_uuid, key, value FROM {kind} WHERE run_uuid IN {listed} AND key IN {named}"
                found[kind] += read(sql, values | key_values)
    return found


def params_of(read: Reader, run_ids: Sequence[str], prefix: str) -> list[tuple[str, str, str]]:
    """(run_id, key, value) of the params of these runs whose key starts with prefix (no LIKE wildcard in it), by key."""
    if not run_ids:
        return []
    listed, values = placeholders("run", run_ids)
    return read(
        f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN {listed} AND substr(key, 1, :length) = :prefix ORDER BY key",
        {"length": len(prefix), "prefix": prefix, **values},
    )


def runs_starting_with(read: Reader, prefix: str, limit: int) -> list[str]:
    """Ids of the runs (of any experiment, not deleted) that start with prefix (hex, so no LIKE wildcard in it)."""
    sql = f"SELECT run_uuid FROM runs WHERE run_uuid LIKE :pattern AND lifecycle_stage = '{ACTIVE}' ORDER BY run_uuid LIMIT :limit"
    return [row[0] for row in read(sql, {"pattern": f"{prefix}%", "limit": limit})]


def version_tags(read: Reader, name: str, prefix: str) -> list[tuple[int, str, str]]:
    """(version, key, value) of the tags whose key starts with prefix (no LIKE wildcard in it) of the registered
    model's versions that are not deleted."""
    return read(
        "SELECT t.version, t.key, t.value FROM model_version_tags t JOIN model_versions v"
        " ON v.workspace = t.workspace AND v.name = t.name AND v.version = t.version"
        f" WHERE t.name = :name AND v.current_stage != '{DELETED_VERSION}' AND substr(t.key, 1, :length) = :prefix",
        {"name": name, "length": len(prefix), "prefix": prefix},
    )


# -- whole records, for bts.lifecycle.sql_client (the read calls of MlflowClient) --------------------------------------

RUN_COLUMNS = "run_uuid, experiment_id, name, status, start_time, artifact_uri"
VERSION_COLUMNS = "name, version, run_id, source, description, current_stage"


def run_rows(read: Reader, run_id: str) -> list[tuple]:
    """(RUN_COLUMNS) of the active run with this id: one row, or none."""
    return read(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_uuid = :run_id AND lifecycle_stage = '{ACTIVE}'", {"run_id": run_id})


def runs_tagged(read: Reader, experiment_ids: Sequence[int], key: str, value: str) -> list[tuple]:
    """(RUN_COLUMNS) of the active runs of these experiments whose tag `key` equals value."""
    if not experiment_ids:
        return []
    listed, values = placeholders("experiment", experiment_ids)
    return read(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE experiment_id IN {listed} AND lifecycle_stage = '{ACTIVE}'"
        " AND run_uuid IN (SELECT run_uuid FROM tags WHERE key = :key AND value = :value)",
        {**values, "key": key, "value": value},
    )


def run_values(read: Reader, run_ids: Sequence[str]) -> dict[str, list[tuple[str, str, Any]]]:
    """{'params', 'tags', 'metrics'}: (run_id, key, value) rows of these runs; a metric's latest value, NaN as MLflow
    keeps it (0 and its is_nan flag)."""
    listed, values = placeholders("run", run_ids)
    metrics = read(f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN {listed}", values)
    return {
        "params": read(f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN {listed}", values),
        "tags": read(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN {listed}", values),
        "metrics": [(run_id, key, float("nan") if is_nan else float(value)) for run_id, key, value, is_nan in metrics],
    }


def experiment_with_id(read: Reader, experiment_id: int) -> tuple | None:
    """(experiment_id, name) of the experiment with this id, None if there is none."""
    rows = read("SELECT experiment_id, name FROM experiments WHERE experiment_id = :id", {"id": experiment_id})
    return rows[0] if rows else None


def experiment_named(read: Reader, name: str) -> tuple | None:
    """(experiment_id, name) of the active experiment of that name, None if there is none."""
    rows = read(f"SELECT experiment_id, name FROM experiments WHERE name = :name AND lifecycle_stage = '{ACTIVE}'", {"name": name})
    return rows[0] if rows else None


def version_rows(read: Reader, name: str, version: int | None = None) -> list[tuple]:
    """(VERSION_COLUMNS) of the registered model's versions that are not deleted (or of the one version given)."""
    only, values = (" AND version = :version", {"name": name, "version": version}) if version is not None else ("", {"name": name})
    return read(f"SELECT {VERSION_COLUMNS} FROM model_versions WHERE name = :name{only} AND current_stage != '{DELETED_VERSION}'", values)


def version_labels(read: Reader, name: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """The registered model's (version, key, value) tags and (version, alias) aliases."""
    values = {"name": name}
    tags = read("SELECT version, key, value FROM model_version_tags WHERE name = :name", values)
    return tags, read("SELECT version, alias FROM registered_model_aliases WHERE name = :name", values)


def model_aliases(read: Reader, name: str) -> list[tuple[str, int]] | None:
    """(alias, version) of the registered model, by alias; None when no model of that name is registered."""
    if not read("SELECT name FROM registered_models WHERE name = :name", {"name": name}):
        return None
    return sorted(read("SELECT alias, version FROM registered_model_aliases WHERE name = :name", {"name": name}))
