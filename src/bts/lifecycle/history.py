"""`bts history`: every recorded alias transition of a registered model, oldest first.

Each transition is a `transition.*` tag on the version the alias moved to (written by bts.lifecycle.registry). On a
database store, or a tracking server whose database BTS_TRACKING_DATABASE_URI names, they are one SQL query away and
MLflow is not imported; on a server alone, MLflow's API reads the model's versions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from bts.lifecycle import database
from bts.tracking.store import bulk_read_database, use_uri
from bts.tracking.tags import TRANSITION_PREFIX


def transitions(values: Iterable[str]) -> list[dict]:
    """The transitions recorded in these tag values, oldest first."""
    return sorted((json.loads(value) for value in values), key=lambda event: (event["at"], int(event["version"])))


def history(name: str) -> list[dict]:
    """Every recorded alias transition of the registered model `name` in the current store."""
    uri = database.store_uri()
    readable = bulk_read_database(uri)
    if readable:
        with database.reading(readable) as read:
            return transitions(value for _, _, value in database.version_tags(read, name, TRANSITION_PREFIX))
    from mlflow.tracking import MlflowClient

    use_uri(uri)  # a server that is down is one line, in seconds
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    return transitions(value for version in versions for key, value in version.tags.items() if key.startswith(TRANSITION_PREFIX))
