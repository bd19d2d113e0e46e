"""The supervisor of `bts serve --workers N`: N forked copies of the loaded server answering on one listening socket.

The workers are forked once the model is verified and loaded: each starts at once, shares the parent's memory until
it writes to it, and deserializes nothing itself. The supervisor serves nothing: it reports a worker that dies and
starts another in its place; on SIGTERM or SIGINT it sends SIGTERM to every worker, which answers the requests in
flight and writes its monitoring log, and returns once all have exited (killing any still there after `grace_seconds`).
A worker whose supervisor is gone stops by itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

FORK = multiprocessing.get_context("fork")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
READY = b"ready"

# A worker's body: it is given the function to call once it serves, and returns its exit code.
WorkerBody = Callable[[Callable[[], None]], int]


@dataclass
class Worker:
    process: BaseProcess
    ready: Connection  # readable once the worker serves, or at its end
    serving: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0


def how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


def on_stop(stop: Callable[[], None]) -> None:
    """In a worker: call stop() on SIGTERM or SIGINT, or once the supervisor is gone (the signals were held till now)."""
    signal.set_wakeup_fd(-1)  # the supervisor's, inherited: not this process's to write to
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: stop())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    parent = multiprocessing.parent_process()
    if parent is not None:

        def watch() -> None:
            wait([parent.sentinel])
            stop()

        threading.Thread(target=watch, name="bts-supervisor-watch", daemon=True).start()


def _worker_main(body: WorkerBody, ready: Connection) -> None:
    sys.exit(body(lambda: ready.send_bytes(READY)))


def start_worker(body: WorkerBody) -> Worker:
    reader, writer = FORK.Pipe(duplex=False)
    process = FORK.Process(target=_worker_main, args=(body, writer), name="bts-serve-worker")
    # Held until the worker has set its own handlers (on_stop): a signal meant for it must not run the supervisor's.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    writer.close()
    return Worker(process, reader)


def supervise(count: int, body: WorkerBody, announce: Callable[[], None], forget: Callable[[int], None], grace_seconds: float) -> int:
    """Run `count` workers until SIGTERM or SIGINT; announce() once all serve, forget(pid) for one that died. Exit code."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    previous_fd = signal.set_wakeup_fd(wake_write)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in STOP_SIGNALS}  # the wakeup fd tells
    workers: list[Worker] = []
    code = 0
    try:
        for _ in range(count):
            workers.append(start_worker(body))
        announced = False
        while True:
            events = wait([wake_read, *(w.process.sentinel for w in workers), *(w.ready for w in workers if not w.serving)])
            if wake_read in events:
                os.read(wake_read, 64)
                break
            for index, worker in enumerate(workers):
                if not worker.serving and worker.ready in events:
                    with contextlib.suppress(EOFError):  # it ended: its sentinel says so
                        worker.serving = worker.ready.recv_bytes() == READY
                if worker.process.sentinel in events:
                    worker.process.join()
                    ended = how_it_ended(worker.process.exitcode)
                    if not worker.serving:  # it would fail the same way again
                        print(f"bts serve: worker {worker.pid} {ended} before it served; stopping", file=sys.stderr, flush=True)
                        worker.ready.close()
                        del workers[index]
                        code = 1
                        break
                    print(f"bts serve: worker {worker.pid} {ended}; starting another", file=sys.stderr, flush=True)
                    worker.ready.close()
                    forget(worker.pid)
                    workers[index] = start_worker(body)
            if code:
                break
            if not announced and all(worker.serving for worker in workers):
                announce()
                announced = True
    finally:
        code = max(code, stop_all(workers, grace_seconds))
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_read)
        os.close(wake_write)
    return code


def stop_all(workers: list[Worker], grace_seconds: float) -> int:
    """SIGTERM to every worker still there, then wait for all; kill those still there after grace_seconds. Exit code."""
    code = 0
    for worker in workers:
        if worker.process.is_alive():
            os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for worker in workers:
        worker.process.join(max(deadline - time.monotonic(), 0))
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()
            print(f"bts serve: worker {worker.pid} had not stopped after {grace_seconds:g} s: killed", file=sys.stderr, flush=True)
            code = 1
        elif worker.process.exitcode != 0:
            print(f"bts serve: worker {worker.pid} {how_it_ended(worker.process.exitcode)} while stopping", file=sys.stderr, flush=True)
            code = 1
        worker.ready.close()
    return code
