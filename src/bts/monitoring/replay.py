"""`bts replay`: send an export to a running scoring server reading by reading, in time order, as the field would.

The server is asked first what it serves (GET /model): the features are
built as for the model's training run, with the featurize params that run
logged (the workspace's params.yaml only when the run is not in the tracking
store; stderr says which). Each request carries the key columns (station_id,
parameter_id, reading_time) and the features of serving_rows over one
keep-alive connection (standard library only). A 4xx or 5xx answer is
counted, not fatal; a server that cannot be reached stops the replay with one
line. --speed paces the requests by the readings' own times, --shift adds
drift to a feature.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from bts.errors import BtsError, ConfigError, quoted
from bts.serving import DEFAULT_HOST, DEFAULT_PORT

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
FORMATS = ("json", "csv")  # the request bodies bts.serving.payload reads
ENDPOINT = "/invocations"
MODEL_ENDPOINT = "/model"  # what the server serves: its run_id and feature_columns among the rest (ServedModel.describe)
TIMEOUT_SECONDS = 60.0
PROGRESS_SECONDS = 1.0
ERROR_BODY_SHOWN = 300  # characters of the first error answer printed


@dataclass
class ReplayResult:
    """What a replay sent and how the server answered."""

    url: str
    rows: int = 0
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)  # HTTP status -> requests answered with it

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 400)

    def summary(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else float("inf")
        rate_shown = f"{rate:.1f}" if rate < 10 else f"{rate:.0f}"
        failures = ", ".join(f"HTTP {status}: {n}" for status, n in sorted(self.statuses.items()) if status >= 400)
        return (
            f"replay: {self.rows} rows in {self.requests} requests to {self.url} in {self.seconds:.1f} s ({rate_shown} rows/s); "
            f"{self.requests - self.failed} ok, {self.failed} failed" + (f" ({failures})" if failures else "")
        )


def parse_shift(text: str) -> tuple[str, float]:
    """COLUMN=DELTA of --shift (argparse type)."""
    column, sign, delta = text.partition("=")
    try:
        return column.strip(), float(delta)
    except ValueError:
        pass
    reason = "expected COLUMN=DELTA, e.g. lag_1=2.5" if not sign else f"DELTA {delta!r} is not a number"
    raise argparse.ArgumentTypeError(f"{text!r}: {reason}")


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type for an integer of at least minimum."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer of at least {minimum}")
        return number

    return parse


def _speed(text: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        speed = -1.0
    if not (0 <= speed < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 (as fast as possible) or a positive factor of real time")
    return speed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bts replay`."""
    parser.add_argument("export", type=Path, help="a CSV export, a folder of them, or clean readings (.parquet)")
    parser.add_argument("--url", default=DEFAULT_URL, help="the scoring server (default: %(default)s)")
    parser.add_argument("--rows-per-request", type=_count(1), default=1, metavar="N", help="rows per request (default: 1)")
    parser.add_argument(
        "--speed",
        type=_speed,
        default=0.0,
        metavar="N",
        help="0: as fast as possible (default); N: N times real time, by the readings' times",
    )
    parser.add_argument("--limit", type=_count(1), metavar="N", help="send the first N rows only")
    parser.add_argument(
        "--shift",
        type=parse_shift,
        action="append",
        default=[],
        metavar="COLUMN=DELTA",
        help="add DELTA to a feature column before sending, to simulate drift (repeatable)",
    )
    parser.add_argument("--format", choices=FORMATS, default="json", help="json (dataframe_split, default) or csv")


def replay_command(root: Path, args: argparse.Namespace) -> int:
    """`bts replay`: 0 if every request succeeded, 1 otherwise."""
    from mlflow.tracking import MlflowClient  # imported here: `bts --help` imports this module to build its parser

    from bts.batch.scoring import FROM_TRAINING_RUN, model_features
    from bts.monitoring.field_readings import read_readings, serving_rows
    from bts.project import pipeline_argument
    from bts.tracking.store import use_store

    served = served_model(args.url)
    use_store(root)
    features = model_features(MlflowClient(), served["run_id"], served["feature_columns"], root)
    run = f" {served['run_id']}" if features.source == FROM_TRAINING_RUN else ""
    print(f"replay: featurize params from {features.source}{run}", file=sys.stderr, flush=True)
    spec = features.spec
    clean = read_readings(args.export, root, root / pipeline_argument(root, "clean", "--sensors"))
    rows = shifted(serving_rows(clean, spec).iloc[: args.limit], args.shift, spec.feature_columns)
    result = replay(rows, spec.feature_columns, args.url, args.rows_per_request, args.speed, args.format)
    print(result.summary())
    return 0 if result.failed == 0 else 1


def shifted(rows: pd.DataFrame, shifts: list[tuple[str, float]], feature_columns: list[str]) -> pd.DataFrame:
    """rows with each (column, delta) added to its feature column."""
    rows = rows.copy()
    for column, delta in shifts:
        if column not in feature_columns:
            raise ConfigError(f"--shift {column}={delta:g}: {column!r} is not a feature column ({', '.join(feature_columns)})")
        rows[column] += delta
    return rows


def wire_rows(rows: pd.DataFrame, feature_columns: list[str]) -> list[list]:
    """rows as Python values for a request, in KEY_COLUMNS order then the features: integer ids, reading_time as ISO
    8601 UTC text, float features."""
    import numpy as np  # here, not at the top: every `bts` command imports this module to build its parser

    from bts.serving.payload import ID_COLUMNS

    times = rows["reading_time"].to_numpy(dtype="datetime64[us]")
    whole_seconds = bool((times.astype("int64") % 1_000_000 == 0).all())
    iso = np.datetime_as_string(times, unit="s" if whole_seconds else "us", timezone="UTC").tolist()
    features = rows[feature_columns].to_numpy(dtype="float64").tolist()
    ids = zip(*(rows[column].tolist() for column in ID_COLUMNS), strict=True)
    return [[*key, t, *f] for key, t, f in zip(ids, iso, features, strict=True)]


def encode(columns: list[str], data: list[list], format_name: str) -> bytes:
    """A request body: MLflow's dataframe_split JSON or a CSV table (floats written as repr, so they arrive exactly)."""
    if format_name == "json":
        return json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(data)
    return text.getvalue().encode()


def served_model(url: str) -> dict:
    """What the server at url serves (GET /model): its run_id (None when it found no training run) and feature_columns
    among the rest; a BtsError (one line) when it cannot be reached or does not answer as `bts serve` does."""
    connection, path = _connection(url, MODEL_ENDPOINT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        status, answer = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BtsError(f"{url}: {_unreachable(exc)}") from None
    finally:
        connection.close()
    try:
        described = json.loads(answer)
    except ValueError:
        described = None
    if status == 200 and isinstance(described, dict):
        columns, run_id = described.get("feature_columns"), described.get("run_id")
        if isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns) and isinstance(run_id, str | None):
            return described
    shown = quoted(answer.decode("utf-8", "replace").replace("\n", " ").strip() or "(empty)")
    raise BtsError(f"{url}: GET {MODEL_ENDPOINT} answered HTTP {status}: {shown}; not what `bts serve` answers (is it running there?)")


def _unreachable(exc: Exception) -> str:
    """Why a request did not reach the server."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is `bts serve` running there?)"
    return str(exc) or type(exc).__name__


def _connection(url: str, endpoint: str = ENDPOINT) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the server of url (opened by the first request) and the path of endpoint there (url may end with
    /invocations, the path of the scoring endpoint)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is no number raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url {url}: expected http://HOST:PORT, e.g. {DEFAULT_URL}")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    path = parts.path.rstrip("/").removesuffix(ENDPOINT)
    return kind(parts.hostname, port, timeout=TIMEOUT_SECONDS), path + endpoint


def _post(connection: http.client.HTTPConnection, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    """One request on the keep-alive connection; sent again on a new one if the server had closed it while idle."""

    def send() -> tuple[int, bytes]:
        connection.request("POST", path, body, {"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, response.read()

    try:
        return send()
    except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
        connection.close()
        return send()


def replay(
    rows: pd.DataFrame,
    feature_columns: list[str],
    url: str = DEFAULT_URL,
    rows_per_request: int = 1,
    speed: float = 0.0,
    format_name: str = "json",
    progress: TextIO = sys.stderr,
) -> ReplayResult:
    """POST rows (serving_rows' columns, in time order) to url; speed > 0 waits as the readings' times do, sped up."""
    from bts.serving.payload import CSV, JSON, KEY_COLUMNS

    columns = [*KEY_COLUMNS, *feature_columns]
    data = wire_rows(rows, feature_columns)
    offsets = (rows["reading_time"] - rows["reading_time"].min()).dt.total_seconds().to_numpy()
    connection, path = _connection(url)
    result = ReplayResult(url)
    started = last_progress = time.monotonic()
    try:
        for start in range(0, len(data), rows_per_request):
            if speed:
                time.sleep(max(0.0, started + offsets[start] / speed - time.monotonic()))
            batch = data[start : start + rows_per_request]
            try:
                status, answer = _post(connection, path, encode(columns, batch, format_name), {"json": JSON, "csv": CSV}[format_name])
            except (OSError, http.client.HTTPException) as exc:
                raise BtsError(f"{url}: {_unreachable(exc)}; {result.rows} of {len(data)} rows sent") from None
            if status >= 400 and not result.failed:
                shown = answer.decode("utf-8", "replace").replace("\n", " ")[:ERROR_BODY_SHOWN]
                print(f"replay: first failure: HTTP {status}: {shown}", file=progress)
            result.statuses[status] += 1
            result.rows += len(batch)
            now = time.monotonic()
            if now - last_progress >= PROGRESS_SECONDS:
                print(f"replay: {result.rows}/{len(data)} rows sent", file=progress, flush=True)
                last_progress = now
    finally:
        connection.close()
        result.seconds = time.monotonic() - started
    return result
