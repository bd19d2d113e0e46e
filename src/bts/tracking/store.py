"""Where the project's runs are tracked: the local SQLite store and artifact folder, or a team's tracking server.

The default store is a SQLite database and an artifact folder at the root of
the user's repository. DVC runs queued and `--temp` experiments in copies
under .dvc/tmp but sets DVC_ROOT to the main repository, so every run lands in
the one store; MLFLOW_TRACKING_URI overrides it. A team's tracking server
(`http://...`, see bts.team) is used as it is: its proxied artifact store
holds the artifacts, its database serializes the writes (no local lock), and a
server that is down or cannot reach its database stops the caller in seconds
with one line, not after minutes of MLflow's HTTP retries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from bts.errors import BtsError
from bts.project import find_root

STORE_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
LOCK_FILE = ".mlflow.lock"
LOCK_TIMEOUT_SECONDS = 600
REMOTE_SCHEMES = ("http", "postgresql", "mysql", "mssql", "databricks")
HTTP_SCHEMES = ("http://", "https://")
DATABASE_SCHEMES = ("sqlite:", "postgresql", "mysql", "mssql")  # stores a command can query with SQL
NETWORK_DATABASE_SCHEMES = ("postgresql", "mysql")  # a client on a database server itself, without MLflow's in between
# The tracking server's database, read directly by the commands that read every run of an experiment (optional).
BULK_READ_DATABASE = "BTS_TRACKING_DATABASE_URI"
# MLflow's HTTP client retries for minutes when its server is down (7 retries, backoff factor 2, 120 s timeout); a
# stage should fail in seconds. Set for a remote store unless the user set them.
HTTP_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",  # a page of 2,000 whole runs took 12 s from a server on a loaded machine
}
PROBE_TIMEOUT_SECONDS = 5
PROXIED_ARTIFACTS = "mlflow-artifacts:"  # a tracking server's own artifact store, reached through the server


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / STORE_DB}"


def artifact_location(root: Path) -> str:
    """Where a new experiment keeps its artifacts: the repository's folder, or a tracking server's proxied store, so that
    every client of a team's server reads what the others logged."""
    if tracking_uri(root).startswith(HTTP_SCHEMES):
        return PROXIED_ARTIFACTS
    return (root / ARTIFACT_DIR).as_uri()


def use_store(root: Path | None = None) -> Path:
    """Point MLflow at the project's store; returns the project root. A remote store is checked first (see check_store)."""
    root = root or find_root()
    use_uri(tracking_uri(root))
    return root


def use_uri(uri: str) -> None:
    """Point MLflow at a store named outright (no project needed); a remote one is checked first (see check_store)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small packages: a bar per download is noise
    if uri.startswith(REMOTE_SCHEMES):
        for variable, value in HTTP_CLIENT_DEFAULTS.items():
            os.environ.setdefault(variable, value)
        check_store(uri)
    mlflow.set_tracking_uri(uri)


def bulk_read_database(uri: str) -> str | None:
    """Where `bts compare` and `bts runs check` read every run of an experiment with SQL, None for MLflow's API.

    The store itself when it is a database; for a tracking server, its database when BTS_TRACKING_DATABASE_URI names
    it (read access is enough). MLflow's API has no column selection: it sends whole runs, which took a loaded 2-core
    server 6 s per 1,000; the query reads the few columns compared.
    """
    if uri.startswith(DATABASE_SCHEMES):
        return uri
    if uri.startswith(HTTP_SCHEMES) and os.environ.get(BULK_READ_DATABASE):
        return os.environ[BULK_READ_DATABASE]
    return None


def is_local_store() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI", "").startswith(REMOTE_SCHEMES)


_checked_stores: set[str] = set()


def check_store(uri: str) -> None:
    """Raise a one-line BtsError naming the store and the cause unless a remote store answers a query that reads its database.

    Once per process and store. It costs one request; without it a server that is down costs minutes of retries
    and a traceback, and a database that refuses is found only after the stage has done its work.
    """
    if uri in _checked_stores:
        return
    problem = store_problem(uri)
    if problem:
        raise BtsError(f"MLflow tracking store {_without_password(uri)} {problem}")
    _checked_stores.add(uri)


def store_problem(uri: str) -> str | None:
    """What is wrong with a remote store now, by one probe, as a message ends; None when it answers (or cannot be probed)."""
    if uri.startswith(HTTP_SCHEMES):
        return _server_problem(uri)
    if uri.startswith(NETWORK_DATABASE_SCHEMES):
        return _database_problem(uri)
    return None  # databricks and the rest: MLflow's own errors


def _server_problem(uri: str) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        reply = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/search",
            "GET",
            params={"max_results": 1},
            max_retries=0,
            timeout=PROBE_TIMEOUT_SECONDS,
            raise_on_status=False,
        )
    except MlflowException as exc:
        cause = _root_cause(exc)
        if "timed out" in cause.lower():
            return f"did not answer within {PROBE_TIMEOUT_SECONDS} s (overloaded, or waiting for its database)"
        return f"is unreachable: {cause}"
    if reply.status_code == 200:
        return None
    try:
        body = reply.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    message = str(body.get("message") or reply.text or reply.reason)
    first = (message.strip().splitlines() or [f"HTTP {reply.status_code}"])[0][:300]
    if "OperationalError" in first or body.get("error_code") == "TEMPORARILY_UNAVAILABLE":  # how MLflow reports its database
        return f"cannot reach its database: {first}"
    return f"answered HTTP {reply.status_code}: {first}"


def _database_problem(uri: str) -> str | None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": PROBE_TIMEOUT_SECONDS})
        with engine.connect():
            pass
    except Exception as exc:  # a missing driver, a refused connection, a bad password: all of them stop the caller
        return f"is unreachable: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
    return None


def store_failure(exc: BaseException, uri: str) -> str:
    """Why a call to a remote store failed, as a message ends: what the store answers a probe now (its server gone, its
    database down), else MLflow's reason. A server whose database is down answers 503 until the client's retries end,
    and the error that leaves the client says no more than that."""
    problem = store_problem(uri)
    if problem:
        return problem
    text = str(exc)
    if "OperationalError" in text or "TEMPORARILY_UNAVAILABLE" in text:
        return "cannot reach its database"
    cause = _root_cause(exc)
    return f"is unreachable: {cause}" if cause != text.strip().splitlines()[0] else f"failed: {cause[:300]}"


def _root_cause(exc: BaseException) -> str:
    """The innermost OS-level reason of a failed request (Connection refused, timed out, Name or service not known)."""
    cause, seen = exc, []
    while cause is not None and cause not in seen:
        seen.append(cause)
        reason = getattr(cause, "reason", None)
        cause = cause.__cause__ or cause.__context__ or (reason if isinstance(reason, BaseException) else None)
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    text = str(seen[-1]).strip()
    return text.splitlines()[0] if text else type(seen[-1]).__name__


def shown_store(uri: str, root: Path) -> str:
    """A store as a message names it: the repository's own SQLite file by its name, any other without its password."""
    if uri == f"sqlite:///{root / STORE_DB}":
        return STORE_DB
    return _without_password(uri)


def _without_password(uri: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


@contextmanager
def store_lock(root: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Serialize writes to the local store, so parallel experiments never meet a locked SQLite database."""
    if not is_local_store():
        yield
        return
    lock = FileLock(root / LOCK_FILE, timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise BtsError(f"{root / LOCK_FILE}: the tracking store stayed locked by another process for {timeout:.0f} s") from None
    try:
        yield
    finally:
        lock.release()


def store_is_idle(root: Path) -> bool | None:
    """True when no process holds the store lock (so no training is logging now); None for a remote store."""
    if not is_local_store():
        return None
    lock = FileLock(root / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True
