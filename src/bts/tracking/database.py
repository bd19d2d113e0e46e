"""Bulk reads straight from a tracking database (the SQLite store, or a team server's PostgreSQL named by
BTS_TRACKING_DATABASE_URI) with MLflow's own ORM models: the few columns a command compares, not whole runs."""

from __future__ import annotations

from typing import Any

from bts.errors import BtsError


def active_runs(connection: Any, experiment: str, uri: str) -> tuple[str, Any]:
    """The experiment's id and the SQL condition that selects its active runs; a BtsError naming the store if the
    experiment is not there."""
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun
    from sqlalchemy import select

    experiment_id = connection.execute(
        select(SqlExperiment.experiment_id).where((SqlExperiment.name == experiment) & (SqlExperiment.lifecycle_stage == "active"))
    ).scalar()
    if experiment_id is None:
        raise BtsError(f"unknown experiment '{experiment}' in {uri}")
    return experiment_id, (SqlRun.experiment_id == experiment_id) & (SqlRun.lifecycle_stage == "active")
