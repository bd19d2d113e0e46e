"""`bts serve`: an HTTP scoring server for a verified model package, speaking MLflow's scoring protocol.

`payload` turns a request body into a float matrix of the model's feature
columns (plus the optional key columns) or a short client error; `model`
resolves a reference (registry or package folder), verifies and loads the
package: a forecaster whose answer per row is every horizon's forecast and
interval bounds (the output columns of bts.horizons), as stock MLflow gives
it; `request_log` appends every request and prediction to a local Parquet
log off the request path; `metrics` keeps the Prometheus metrics; `app` is
the Starlette application; `server` runs it under uvicorn, in one process
or, with `workers`, in several forked onto the same socket; `follow` keeps a
registry alias's server on the version the alias names.

This module holds only the defaults the `bts` parser shows, so `bts --help`
stays fast.
"""

from __future__ import annotations

SERVED_REFERENCE = "models:/name@alias, models:/name/<version>, or a package folder (e.g. models/package)"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5002
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
DEFAULT_LOG_DIR = "monitoring"  # under the project root
DEFAULT_READ_TIMEOUT_SECONDS = 10.0  # a body that has not arrived whole by then gets a 408 and its connection is closed
DEFAULT_KEEP_ALIVE_SECONDS = 5.0  # an idle keep-alive connection is closed after this
DEFAULT_MAX_CONNECTIONS = 256  # connections and requests in flight at once; past it, 503 until one ends
DEFAULT_LOG_MAX_MB = 1024.0
DEFAULT_WORKERS = 1
MAX_WORKERS = 64  # --workers at most: a typo should not fork a thousand servers
DEFAULT_FOLLOW_SECONDS = 10.0  # between two looks at the registry alias being served
MAX_FOLLOW_SECONDS = 86_400.0
