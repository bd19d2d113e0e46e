"""`bts serve <ref>`: verify and load the model, bind the address, and run the app under uvicorn, in one process or N.

The socket is bound before uvicorn starts, so an address in use is one
`bts: error:` line, and `--port 0` takes a free port (the start line names
it). uvicorn stops cleanly on SIGTERM or Ctrl-C: it stops accepting,
answers the requests in flight, then the app's shutdown writes the
monitoring log's pending records. With `--workers N` the verified, loaded
server is forked N times onto the same socket (`workers`), and the metrics
are shared through a private folder removed at the end (`metrics`). A
registry alias is followed in every serving process (`follow`) unless
--no-follow pins the version it names at start.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bts.errors import BtsError, ConfigError
from bts.files import output_place, shown_path
from bts.serving import DEFAULT_LOG_DIR, MAX_FOLLOW_SECONDS, MAX_WORKERS

if TYPE_CHECKING:
    import uvicorn
    from mlflow.tracking import MlflowClient

    from bts.serving.follow import AliasFollower
    from bts.serving.metrics import ServingMetrics
    from bts.serving.model import CurrentModel, ServedModel
    from bts.serving.payload import PayloadParser
    from bts.serving.request_log import MonitoringLog

UVICORN_BACKLOG = 2048
GRACEFUL_SHUTDOWN_SECONDS = 30
LOG_WRITE_SECONDS = 30  # for a worker to write its monitoring log once its last request is answered


def check_arguments(args: argparse.Namespace) -> None:
    workers = str(args.workers)
    if not (workers.isascii() and workers.isdigit() and 1 <= int(workers) <= MAX_WORKERS):
        raise ConfigError(f"--workers {args.workers}: must be a whole number of processes from 1 to {MAX_WORKERS}")
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
    if follow_seconds(args.follow_interval) is None:
        raise ConfigError(
            f"--follow-interval {args.follow_interval}: must be a number of seconds more than 0 and at most {MAX_FOLLOW_SECONDS:g}"
        )


def follow_seconds(given: object) -> float | None:
    """--follow-interval as seconds, None when it is not a number more than 0 and at most MAX_FOLLOW_SECONDS."""
    try:
        seconds = float(str(given))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and 0 < seconds <= MAX_FOLLOW_SECONDS else None


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


def uvicorn_config(app: object, args: argparse.Namespace) -> uvicorn.Config:
    """uvicorn's settings for the app, the same in every process: the timeouts and the bound on connections included."""
    import uvicorn

    from bts.serving.protocol import with_head_deadline

    return uvicorn.Config(
        app,
        http=with_head_deadline(args.read_timeout),
        loop="uvloop",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=args.keep_alive,
        limit_concurrency=args.max_connections,
        backlog=UVICORN_BACKLOG,
    )


def serve(client: MlflowClient, root: Path, args: argparse.Namespace) -> int:
    check_arguments(args)
    log_folder = None if args.no_log else output_place(args.log_dir, "--log-dir") if args.log_dir else root / DEFAULT_LOG_DIR
    if int(args.workers) == 1:
        return serve_in(client, root, args, log_folder, None)
    # Set before prometheus_client is imported: each worker's counters and histograms then go to files of its own there.
    shared = Path(tempfile.mkdtemp(prefix="bts-serve-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
    try:
        return serve_in(client, root, args, log_folder, shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def serve_in(client: MlflowClient, root: Path, args: argparse.Namespace, log_folder: Path | None, shared: Path | None) -> int:
    """Verify and load the model, bind the address, serve: in this process, or with `shared` (the workers' metrics
    folder) in --workers processes forked from this one."""
    import sklearn
    from threadpoolctl import threadpool_limits

    from bts.serving.model import CurrentModel, load_verified
    from bts.serving.payload import PayloadParser
    from bts.serving.request_log import MonitoringLog

    # The payload parser has refused every NaN and infinity: scikit-learn need not look again (same predictions).
    sklearn.set_config(assume_finite=True)
    # One OpenMP thread per prediction: requests are small, and on a busy 2-core machine a second thread spins (a
    # boosting model's 100-row requests: p50 6.5 ms and p99 84 ms with two threads, 2.6 ms and 17 ms with one).
    threadpool_limits(limits=1, user_api="openmp")
    served = load_verified(client, args.ref, root)
    parser = PayloadParser(served.feature_columns, args.max_rows)
    log = None
    if log_folder is not None:
        log = MonitoringLog(log_folder, served.log_tags, served.feature_columns, served.output_columns, int(args.log_max_mb * 1024 * 1024))
    sock = listen(args.host, args.port)
    line = start_line(served, url_of(sock), log, int(args.workers))
    current = CurrentModel(served)
    del served  # held by `current` alone: a version swapped out is released once its last request is answered
    if shared is None:
        return serve_alone(client, root, current, parser, log, sock, line, args)
    try:
        return serve_with_workers(client, root, current, parser, log, sock, line, args, shared)
    finally:
        sock.close()


def start_line(served: ServedModel, url: str, log: MonitoringLog | None, workers: int) -> str:
    model = served.reference
    if served.name:
        aliases = "".join(f", @{alias}" for alias in served.aliases)
        model = f"{served.reference} ({served.name} version {served.version}{aliases})"
    run = f", run {served.run_id}" if served.run_id else ", no training run in the tracking store"
    processes = f"; {workers} workers" if workers > 1 else ""
    monitoring = f"monitoring log {shown_path(log.folder)}" if log is not None else "monitoring log off"
    return (
        f"bts serve: {model}, package md5 {served.package_md5} (verified against {served.verified_against}){run}; "
        f"listening on {url}{processes}; {monitoring}"
    )


def model_info(served: ServedModel) -> dict[str, str]:
    """The labels of bts_model_info beside the model's."""
    return {"package_md5": served.package_md5, "run_id": served.run_id or ""}


def follower(
    client: MlflowClient,
    root: Path,
    current: CurrentModel,
    metrics: ServingMetrics,
    log: MonitoringLog | None,
    args: argparse.Namespace,
    worker: int | None = None,
) -> AliasFollower | None:
    """What keeps this process on the version the served alias names (its metrics and log following the swaps); None
    when the reference is pinned (a version, a folder) or --no-follow pins it."""
    from bts.serving.follow import AliasFollower, followed_alias

    if args.no_follow or followed_alias(args.ref) is None:
        return None

    def swapped(served: ServedModel) -> None:
        metrics.serve(served.metric_labels, model_info(served))
        if log is not None:
            log.tags = served.log_tags

    return AliasFollower(client, root, current, args.ref, follow_seconds(args.follow_interval), swapped, worker)


def serve_alone(
    client: MlflowClient,
    root: Path,
    current: CurrentModel,
    parser: PayloadParser,
    log: MonitoringLog | None,
    sock: socket.socket,
    line: str,
    args: argparse.Namespace,
) -> int:
    """Serve in this process; the start line once the app has started, then the alias is followed."""
    import uvicorn

    from bts.serving.app import create_app
    from bts.serving.metrics import ServingMetrics

    metrics = ServingMetrics(current.served.metric_labels, model_info(current.served), current.served.output_columns, log)
    following = follower(client, root, current, metrics, log, args)

    def started() -> None:
        print(line, flush=True)
        if following is not None:
            following.start()

    if log is not None:
        log.open()
    app = create_app(
        current,
        parser,
        metrics,
        log,
        args.max_body_bytes,
        on_start=started,
        read_timeout=args.read_timeout,
        on_stop=following.stop if following is not None else None,
    )
    server = uvicorn.Server(uvicorn_config(app, args))
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


def serve_with_workers(
    client: MlflowClient,
    root: Path,
    current: CurrentModel,
    parser: PayloadParser,
    log: MonitoringLog | None,
    sock: socket.socket,
    line: str,
    args: argparse.Namespace,
    shared: Path,
) -> int:
    """Fork --workers processes serving on sock, sharing their metrics through `shared`; the start line once all serve.
    Each worker follows the alias on its own, from the version loaded here."""
    import uvicorn

    from bts.serving.app import create_app
    from bts.serving.follow import drop_inherited_connections
    from bts.serving.metrics import ServingMetrics, forget_worker
    from bts.serving.workers import on_stop, supervise

    if log is not None:
        log.prepare()  # once, so that a folder the workers cannot write to is one line, before any of them starts
    supervisor = os.getpid()

    def worker(ready: Callable[[], None]) -> int:
        drop_inherited_connections()
        metrics = ServingMetrics(
            current.served.metric_labels, model_info(current.served), current.served.output_columns, log, shared, supervisor
        )
        following = follower(client, root, current, metrics, log, args, os.getpid())

        def started() -> None:
            ready()
            if following is not None:
                following.start()

        app = create_app(
            current,
            parser,
            metrics,
            log,
            args.max_body_bytes,
            on_start=started,
            read_timeout=args.read_timeout,
            worker=os.getpid(),
            on_stop=following.stop if following is not None else None,
        )
        server = uvicorn.Server(uvicorn_config(app, args))
        on_stop(lambda: setattr(server, "should_exit", True))
        try:
            if log is not None:
                log.open()
            server.run(sockets=[sock])
        except BtsError as exc:
            print(f"bts: error: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            if log is not None:
                log.close()
            if os.getppid() != supervisor:  # it was killed: nobody else will remove the metrics folder
                shutil.rmtree(shared, ignore_errors=True)
        return 0 if server.started else 1

    grace = GRACEFUL_SHUTDOWN_SECONDS + LOG_WRITE_SECONDS
    return supervise(int(args.workers), worker, lambda: print(line, flush=True), lambda pid: forget_worker(shared, pid), grace)
