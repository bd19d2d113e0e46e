"""The MLflow tables and columns bts reads with SQL are MLflow's own: checked against MLflow's ORM models."""

from __future__ import annotations

import pytest
from mlflow.store.tracking.dbmodels import models

from bts.tracking import database


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (database.experiments, models.SqlExperiment),
        (database.runs, models.SqlRun),
        (database.latest_metrics, models.SqlLatestMetric),
        (database.params, models.SqlParam),
        (database.tags, models.SqlTag),
    ],
)
def test_each_table_and_column_is_in_mlflow_schema(ours, theirs) -> None:
    table = theirs.__table__
    assert ours.name == table.name
    for column in ours.columns:
        assert column.name in table.columns, f"{table.name}.{column.name} is not in MLflow's schema"
        assert column.type._type_affinity is table.columns[column.name].type._type_affinity, f"{table.name}.{column.name}"


def test_the_active_lifecycle_stage_is_mlflow_one() -> None:
    from mlflow.entities import LifecycleStage

    assert database.ACTIVE == LifecycleStage.ACTIVE
