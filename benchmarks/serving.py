"""`bts serve` against stock `mlflow models serve` on the same package, on loopback: requests/s, latency, rows/s.

    python benchmarks/serving.py                       # models/package of this project, 3 s per measurement
    python benchmarks/serving.py --seconds 5 --package models/package

Starts five servers on 127.0.0.1: stock MLflow, `bts serve` with its
monitoring log, `bts serve --no-log`, and stock MLflow and `bts serve` (log
on) with two worker processes, one per core. It checks they give the same
answer (a record per row: every horizon's forecast and bounds), then
measures, for each in turn (alternating, 3 repetitions, the median printed):
single-row requests at concurrency 1 and 8 (requests/s, p50 and p99 latency)
and 1,000-row requests at concurrency 1 (rows/s), each against stock MLflow
with as many workers. The client is a lean asyncio loop over keep-alive
connections, the same for all. Every measurement is bounded in time and in requests. It prints each
figure's median with its spread, and the machine's load while measuring
(benchmarks/measure.py): figures taken while other processes used more than a
quarter of a core are flagged as disturbed. It checks nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

HOST = "127.0.0.1"
WORKERS = "--workers 2"  # one process per core: each server's second configuration, against the other's
WARMUP_SECONDS = 0.5
MAX_REQUESTS_PER_MEASUREMENT = 200_000
START_TIMEOUT_SECONDS = 120
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import MIN_ROUNDS, Machine, median  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def server(command: list[str], port: int, cwd: Path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{' '.join(command[:3])} exited: {process.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/ping", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{' '.join(command[:3])} did not answer /ping in {START_TIMEOUT_SECONDS} s") from None
                time.sleep(0.3)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def request_bytes(port: int, body: bytes) -> bytes:
    head = f"POST /invocations HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def connection(port: int, request: bytes, start: float, stop: float, latencies: list[float], failures: list[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while (now := time.perf_counter()) < stop and len(latencies) < MAX_REQUESTS_PER_MEASUREMENT:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            if now >= start:  # after the warm-up
                latencies.append(time.perf_counter() - now)
                if head[9:12] != b"200":
                    failures.append(int(head[9:12]))
    finally:
        writer.close()


def measure(port: int, body: bytes, concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    failures: list[int] = []
    request = request_bytes(port, body)

    async def run() -> None:
        start = time.perf_counter() + WARMUP_SECONDS
        await asyncio.gather(*(connection(port, request, start, start + seconds, latencies, failures) for _ in range(concurrency)))

    asyncio.run(run())
    ordered = sorted(latencies)
    return {
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": 1000 * ordered[len(ordered) // 2] if ordered else float("nan"),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan"),
        "failures": len(failures),
    }


def payload(rows: list[list[float]], columns: list[str]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


def predictions(port: int, body: bytes) -> list[dict[str, float]]:
    request = urllib.request.Request(f"http://{HOST}:{port}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="models/package", help="package folder (default: models/package)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement (default: 3)")
    parser.add_argument(
        "--repetitions", type=int, default=MIN_ROUNDS, help=f"alternating repetitions; the median is printed (default: {MIN_ROUNDS})"
    )
    args = parser.parse_args()
    root = Path.cwd()
    package = Path(args.package)
    example = json.loads((package / "serving_input_example.json").read_text())["dataframe_split"]
    columns, rows = example["columns"], example["data"]
    single = payload(rows[:1], columns)
    thousand = payload((rows * (1000 // len(rows) + 1))[:1000], columns)
    scenarios = [("1 row, concurrency 1", single, 1), ("1 row, concurrency 8", single, 8), ("1000 rows, concurrency 1", thousand, 1)]

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bts-serve-bench-") as scratch:
        stock = ["mlflow", "models", "serve", "-m", str(package), "--env-manager", "local", "--host", HOST]
        ours = ["bts", "serve", str(package), "--host", HOST]
        commands = {
            "mlflow models serve": [*stock, "-p"],
            "bts serve": [*ours, "--log-dir", f"{scratch}/1", "--port"],
            "bts serve --no-log": [*ours, "--no-log", "--port"],
            f"mlflow {WORKERS}": [*stock, *WORKERS.split(), "-p"],
            f"bts serve {WORKERS}": [*ours, "--log-dir", f"{scratch}/2", *WORKERS.split(), "--port"],
        }
        ports = {name: free_port() for name in commands}
        for name, command in commands.items():
            stack.enter_context(server([*command, str(ports[name])], ports[name], root))
        answers = {name: predictions(port, thousand) for name, port in ports.items()}
        agree = all(answer == answers["mlflow models serve"] for answer in answers.values())
        columns = len(answers["mlflow models serve"][0])
        print(f"servers up; the {columns} output columns of the 1000-row request identical across the three: {agree}", flush=True)

        results: dict[tuple[str, str], list[dict]] = {}
        with Machine() as machine:  # the servers are this process's children: their CPU is not counted as others'
            for repetition in range(args.repetitions):
                for scenario, body, concurrency in scenarios:
                    order = list(ports) if repetition % 2 == 0 else list(reversed(ports))
                    for name in order:
                        results.setdefault((scenario, name), []).append(measure(ports[name], body, concurrency, args.seconds))
                print(f"repetition {repetition + 1}/{args.repetitions} done", flush=True)

    print(f"\nmedian of {args.repetitions} alternating repetitions, {args.seconds:g} s each, on {HOST}:")
    print(
        f"{'scenario':<26} {'server':<22} {'req/s':>8} {'(min to max)':>17} {'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs mlflow':>9} {'failed':>6}"
    )
    for scenario, body, _ in scenarios:
        rows_per_request = 1000 if body is thousand else 1
        for name in ports:
            stock_name = f"mlflow {WORKERS}" if WORKERS in name else "mlflow models serve"
            baseline = median([r["requests_per_s"] for r in results[(scenario, stock_name)]])
            runs = results[(scenario, name)]
            rates = [r["requests_per_s"] for r in runs]
            rate, p50, p99 = median(rates), median([r["p50_ms"] for r in runs]), median([r["p99_ms"] for r in runs])
            failed = sum(r["failures"] for r in runs)
            spread = f"({min(rates):.1f} to {max(rates):.1f})"
            print(
                f"{scenario:<26} {name:<22} {rate:>8.1f} {spread:>17} {rate * rows_per_request:>9.0f} {p50:>8.2f} {p99:>8.2f} "
                f"{rate / baseline:>8.2f}x {failed:>6}"
            )
    print(machine.describe())


if __name__ == "__main__":
    main()
