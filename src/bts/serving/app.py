"""The Starlette application of `bts serve`: MLflow's scoring protocol, health, version, model, metrics.

    POST /invocations   JSON (dataframe_split, dataframe_records, instances, inputs) or text/csv
                        -> {"predictions": [{"forecast_h1": ..., "lower_h1": ..., "upper_h1": ..., ...}, ...]}
    GET  /ping, /health 200 once the model is loaded
    GET  /version       {"bts": ..., "mlflow": ...}
    GET  /model         what is served: name, version, aliases, package md5, lineage, run id, columns
    GET  /metrics       Prometheus text format

The answer is stock `mlflow models serve`'s for the same package: one record
per row, each output column of the model (forecast, lower and upper bound per
horizon, in the signature's order) a JSON number.

A client error is a 4xx whose body is {"error_code": ..., "message": ...}:
a short message naming the problem, never a stack trace, a path or the
input echoed back. Scoring runs on the event loop itself: a request of a
few rows costs a few milliseconds, less than a hop to a thread and back.
Each request takes the model answering when it starts (`CurrentModel`) and
keeps it to its end: its predictions, metrics and log rows name that version.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

import bts
from bts.serving import DEFAULT_READ_TIMEOUT_SECONDS
from bts.serving.metrics import ServingMetrics
from bts.serving.model import CurrentModel
from bts.serving.payload import PayloadParser, RequestError
from bts.serving.request_log import Entry, MonitoringLog

JSON_TYPE = "application/json"
REQUEST_ID_HEADER = "x-request-id"
ENDPOINTS = "POST /invocations; GET /ping, /health, /version, /model, /metrics"
DRAIN_FACTOR = 4  # an over-limit body is read (and dropped) up to this many times the limit, so the client gets its 413


class Records:
    """The body {"predictions": [{column: value, ...}, ...]} of a float matrix (rows x columns), built without a Python
    dict per row: orjson writes every value at once (the shortest text that reads back as the same float), then each
    value is put after its column's key. orjson writes a number or `null`, never a comma: splitting at commas gives the
    values back one by one."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        keys = [orjson.dumps(column) + b":" for column in columns]
        self.first = b"{" + keys[0]
        self.heads = [b"},{" + keys[0], *(b"," + key for key in keys[1:])]  # what goes before each value of a row

    def body(self, matrix: np.ndarray) -> bytes:
        if not matrix.size:
            return b'{"predictions":[]}'
        values = orjson.dumps(np.ascontiguousarray(matrix).ravel(), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
        parts = [b""] * (2 * len(values))
        parts[0::2] = self.heads * len(matrix)
        parts[1::2] = values
        parts[0] = self.first
        return b'{"predictions":[' + b"".join(parts) + b"}]}"


@functools.lru_cache(maxsize=8)
def records(columns: tuple[str, ...]) -> Records:
    return Records(columns)


def json_response(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=JSON_TYPE)


def error_response(status: int, code: str, message: str) -> Response:
    return json_response({"error_code": code, "message": message}, status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or a 413 once it is over `limit` bytes (Content-Length says so up front, or the stream does)."""
    declared = request.headers.get("content-length")
    too_large = None
    if declared is not None and declared.isdigit() and int(declared) > limit:
        too_large = f"body of {int(declared)} bytes: at most {limit} bytes per request"
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if too_large is None and size > limit:
            too_large = f"body over {limit} bytes: at most {limit} bytes per request"
        if too_large is not None:
            chunks = []
            if size > DRAIN_FACTOR * limit:  # stop reading: the connection closes after the response
                break
            continue
        chunks.append(chunk)
    if too_large is not None:
        raise RequestError(413, "BODY_TOO_LARGE", too_large)
    return b"".join(chunks)


def create_app(
    current: CurrentModel,
    parser: PayloadParser,
    metrics: ServingMetrics,
    log: MonitoringLog | None,
    max_body_bytes: int,
    on_start: Callable[[], None] | None = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT_SECONDS,
    worker: int | None = None,
    on_stop: Callable[[], None] | None = None,
) -> Starlette:
    """The application; the line it prints when it stops names the worker (its pid) when it is one of several.
    on_start() runs once it serves, on_stop() once it has answered its last request, before the log is written."""
    versions = {"bts": bts.__version__, "mlflow": version("mlflow")}
    limits = {"max_rows": parser.max_rows, "max_body_bytes": max_body_bytes}

    async def invocations(request: Request) -> Response:
        started, started_ns = time.perf_counter(), time.time_ns()
        served = current.served  # the model of this request from start to end, whatever a swap does meanwhile
        status, code, batch, predictions = 200, None, None, None
        try:
            try:
                body = await asyncio.wait_for(read_body(request, max_body_bytes), read_timeout)
            except TimeoutError:  # a slow or stalled client holds a connection: let it go
                raise RequestError(408, "REQUEST_TIMEOUT", f"the body did not arrive whole within {read_timeout:g} s") from None
            batch = parser.parse(body, request.headers.get("content-type"))
            predictions = served.predict(batch.features)
            response = Response(records(tuple(served.output_columns)).body(predictions), media_type=JSON_TYPE)
        except RequestError as error:
            status, code, predictions = error.status, error.code, None
            response = error_response(error.status, error.code, error.message)
            if status == 408:
                response.headers["connection"] = "close"
        except ClientDisconnect:  # gone before its body arrived: nobody to answer (499, as nginx logs it)
            status, code, predictions = 499, "CLIENT_DISCONNECTED", None
            response = error_response(499, code, "the client closed the connection before sending its whole body")
        except Exception:  # the model failed on valid input: a server error, logged here with its traceback
            print(f"bts serve: scoring failed:\n{traceback.format_exc()}", file=sys.stderr)
            status, code, predictions = 500, "INTERNAL_ERROR", None
            response = error_response(500, code, "the model failed to score this request; the server log has the details")
        seconds = time.perf_counter() - started
        metrics.observe(status, code, seconds, predictions, served.metric_labels)
        if log is not None:
            request_id = uuid.uuid4().hex
            response.headers[REQUEST_ID_HEADER] = request_id  # the request's id in the monitoring log
            log.add(
                Entry(
                    request_id=request_id,
                    time_ns=started_ns,
                    latency_ms=seconds * 1000,
                    rows=batch.rows if batch is not None and predictions is not None else 0,
                    status=status,
                    error_code=code,
                    format=batch.format if batch is not None else None,
                    features=batch.features if predictions is not None else None,
                    keys=batch.keys if predictions is not None else None,
                    predictions=predictions,
                    tags=served.log_tags,
                )
            )
        return response

    async def ping(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def version_endpoint(request: Request) -> Response:
        return json_response(versions)

    async def model(request: Request) -> Response:
        return json_response({**current.served.describe(), "limits": limits, "monitoring_log": log is not None})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(404, "NOT_FOUND", f"no such endpoint; {ENDPOINTS}")
        if exc.status_code == 405:
            return error_response(405, "METHOD_NOT_ALLOWED", f"method not allowed here; {ENDPOINTS}")
        return error_response(exc.status_code, "BAD_REQUEST", str(exc.detail)[:80])

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(500, "INTERNAL_ERROR", "internal error; the server log has the details")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_start is not None:
            on_start()
        try:
            yield
        finally:
            if on_stop is not None:
                on_stop()
            logged = "monitoring log off"
            if log is not None:
                log.close()  # every request has been answered by now: write what is pending
                logged = f"monitoring log: {log.written['requests']} requests, {log.written['predictions']} predictions written"
                logged += f", {log.dropped} records dropped" if log.dropped else ""
            who = f"worker {worker} " if worker is not None else ""
            print(f"bts serve: {who}stopped after {metrics.requests_served} scoring requests; {logged}", flush=True)

    routes = [
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", ping, methods=["GET"]),
        Route("/version", version_endpoint, methods=["GET"]),
        Route("/model", model, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: server_error})
