"""Bulk reads straight from a tracking database (the SQLite store, or a team server's PostgreSQL named by
BTS_TRACKING_DATABASE_URI): the few columns a command compares, not whole runs.

The one home of the MLflow tables and columns bts reads (MLflow's schema: mlflow/store/tracking/dbmodels/models.py),
declared with SQLAlchemy Core rather than taken from MLflow's ORM models: importing any mlflow module imports all of
MLflow (seconds), which a command that only reads the store must not pay for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import BigInteger, Boolean, Connection, Float, Integer, String, column, create_engine, select, table

from bts.errors import BtsError

ACTIVE = "active"  # MLflow's lifecycle_stage of what is not deleted

experiments = table("experiments", column("experiment_id", Integer), column("name", String), column("lifecycle_stage", String))
runs = table(
    "runs",
    column("run_uuid", String),
    column("name", String),
    column("status", String),
    column("start_time", BigInteger),
    column("experiment_id", Integer),
    column("lifecycle_stage", String),
)
# MLflow keeps a NaN metric as value 0 with is_nan true (not every database stores NaN).
latest_metrics = table(
    "latest_metrics", column("run_uuid", String), column("key", String), column("value", Float), column("is_nan", Boolean)
)
params = table("params", column("run_uuid", String), column("key", String), column("value", String))
tags = table("tags", column("run_uuid", String), column("key", String), column("value", String))


@contextmanager
def connect(uri: str) -> Iterator[Connection]:
    """A connection to the database at uri, its engine disposed of afterwards (no pooled connection left open)."""
    engine = create_engine(uri)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def active_runs(connection: Connection, experiment: str, uri: str) -> tuple[Any, Any]:
    """The experiment's id and the SQL condition that selects its active runs; a BtsError naming the store if the
    experiment is not there."""
    experiment_id = connection.execute(
        select(experiments.c.experiment_id).where((experiments.c.name == experiment) & (experiments.c.lifecycle_stage == ACTIVE))
    ).scalar()
    if experiment_id is None:
        raise BtsError(f"unknown experiment '{experiment}' in {uri}")
    return experiment_id, (runs.c.experiment_id == experiment_id) & (runs.c.lifecycle_stage == ACTIVE)


def active_run_ids(active: Any) -> Any:
    """The run ids the condition of active_runs selects, as a subquery: on SQLite, reading another table's rows of these
    runs through it takes one pass over that table, up to 3x faster than a join with runs."""
    return select(runs.c.run_uuid).where(active)
