"""A registered version's package: its files read from its training run's artifacts, checked against the package md5
its registration recorded. Works with MLflow's client and with bts.lifecycle.sql_client's, and imports neither
MLflow nor pandas itself: `bts lineage` and `bts runs check` check versions without them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from bts.errors import BtsError
from bts.lifecycle.sql_client import NotFound, mlflow_errors
from bts.tracking.tags import PACKAGE_MD5

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from bts.lifecycle import sql_client


class UnreadablePackage(BtsError):
    """A version's package that its run's artifacts do not give back (gone, or unreadable)."""


def download_version(client: MlflowClient | sql_client.SqlClient, version: ModelVersion | sql_client.ModelVersion, into: Path) -> Path:
    """The version's package files, downloaded into a folder (not loaded)."""
    from bts.model.package import PACKAGE_ARTIFACT

    try:
        return Path(client.download_artifacts(version.run_id, PACKAGE_ARTIFACT, str(into)))
    except (*mlflow_errors(), NotFound, OSError) as exc:
        raise UnreadablePackage(f"{version.name} version {version.version}: its package cannot be read from its run ({exc})") from None


def version_integrity(client: MlflowClient | sql_client.SqlClient, version: ModelVersion | sql_client.ModelVersion) -> list[str]:
    """The version's tampered package files ([] when every file matches the recorded package md5)."""
    from bts.model.package import tampered_files

    expected = version.tags.get(PACKAGE_MD5)
    if not expected:
        return [f"no {PACKAGE_MD5} tag: the version was not registered by `bts register`"]
    with tempfile.TemporaryDirectory() as scratch:
        try:  # only this package's files: a store that cannot be reached at all stops the caller
            folder = download_version(client, version, Path(scratch))
        except UnreadablePackage as exc:
            return [str(exc)]
        try:
            return tampered_files(folder, expected)
        except BtsError as exc:  # an MLmodel that cannot be read
            return [str(exc)]
