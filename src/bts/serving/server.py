"""`bts serve <ref>`: verify and load the model, bind the address, and run the app under one uvicorn worker.

The socket is bound before uvicorn starts, so an address in use is one
`bts: error:` line, and `--port 0` takes a free port (the start line names
it). uvicorn stops cleanly on SIGTERM or Ctrl-C: it stops accepting,
answers the requests in flight, then the app's shutdown writes the
monitoring log's pending records.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from bts.errors import BtsError, ConfigError
from bts.files import output_place, shown_path
from bts.serving import DEFAULT_LOG_DIR

UVICORN_BACKLOG = 2048
GRACEFUL_SHUTDOWN_SECONDS = 30


def check_arguments(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: use 0 to 65535 (0: any free port)")
    if args.max_rows < 1:
        raise ConfigError(f"--max-rows {args.max_rows}: must be at least 1")
    if args.max_body_bytes < 1:
        raise ConfigError(f"--max-body-bytes {args.max_body_bytes}: must be at least 1")
    if not args.log_max_mb > 0:
        raise ConfigError(f"--log-max-mb {args.log_max_mb}: must be more than 0")
    for option, seconds in (("--read-timeout", args.read_timeout), ("--keep-alive", args.keep_alive)):
        if not 0 < seconds <= 3600:
            raise ConfigError(f"{option} {seconds:g}: must be more than 0 and at most 3600 seconds")
    if args.max_connections < 1:
        raise ConfigError(f"--max-connections {args.max_connections}: must be at least 1")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or a BtsError saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, protocol, _, address = infos[0]
        sock = socket.socket(family, kind, protocol)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(UVICORN_BACKLOG)
    except OSError as exc:
        raise BtsError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(client: MlflowClient, root: Path, args: argparse.Namespace) -> int:
    import sklearn
    import uvicorn
    from threadpoolctl import threadpool_limits

    from bts.serving.app import create_app
    from bts.serving.metrics import ServingMetrics
    from bts.serving.model import load_served
    from bts.serving.payload import PayloadParser
    from bts.serving.protocol import with_head_deadline
    from bts.serving.request_log import MonitoringLog

    check_arguments(args)
    log_folder = None if args.no_log else output_place(args.log_dir, "--log-dir") if args.log_dir else root / DEFAULT_LOG_DIR
    # The payload parser has refused every NaN and infinity: scikit-learn need not look again (same predictions).
    sklearn.set_config(assume_finite=True)
    # One OpenMP thread per prediction: requests are small, and on a busy 2-core machine a second thread spins (a
    # boosting model's 100-row requests: p50 6.5 ms and p99 84 ms with two threads, 2.6 ms and 17 ms with one).
    threadpool_limits(limits=1, user_api="openmp")
    with tempfile.TemporaryDirectory(prefix="bts-serve-") as scratch:
        served = load_served(client, args.ref, root, Path(scratch))
    parser = PayloadParser(served.feature_columns, args.max_rows)
    log = None
    if log_folder is not None:
        log = MonitoringLog(log_folder, served.tags(), served.feature_columns, int(args.log_max_mb * 1024 * 1024))
    sock = listen(args.host, args.port)
    url = url_of(sock)
    labels = served.labels()
    metrics = ServingMetrics(labels, {"package_md5": served.package_md5, "run_id": served.run_id or ""}, log)
    if log is not None:
        log.open()

    def started() -> None:
        model = served.reference
        if served.name:
            aliases = "".join(f", @{alias}" for alias in served.aliases)
            model = f"{served.reference} ({served.name} version {served.version}{aliases})"
        run = f", run {served.run_id}" if served.run_id else ", no training run in the tracking store"
        monitoring = f"monitoring log {shown_path(log.folder)}" if log is not None else "monitoring log off"
        print(
            f"bts serve: {model}, package md5 {served.package_md5} (verified against {served.verified_against}){run}; "
            f"listening on {url}; {monitoring}",
            flush=True,
        )

    app = create_app(served, parser, metrics, log, args.max_body_bytes, on_start=started, read_timeout=args.read_timeout)
    config = uvicorn.Config(
        app,
        http=with_head_deadline(args.read_timeout),
        loop="asyncio",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=args.keep_alive,
        limit_concurrency=args.max_connections,
        backlog=UVICORN_BACKLOG,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        if log is not None:
            log.close()
        sock.close()
    if not server.started:
        print("bts: error: the server did not start (see above)", file=sys.stderr)
        return 1
    return 0
