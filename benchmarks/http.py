"""Requests/second of the test app with the contrib FastAPI instrumentation alone vs. with
otel_secaudit too, for a 200 route and a 403 route (every 403 is a security event).

Three uvicorn processes serve ``tests.apps.secapp:app`` under ``opentelemetry-instrument``,
exporting traces, metrics and logs over OTLP/gRPC to a receiver in its own process:

* ``A``  contrib only (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_secaudit``)
* ``A2`` contrib only, a second copy (the A/A row: the noise floor)
* ``B``  contrib + otel_secaudit

A load generator in a separate process (raw asyncio sockets, HTTP/1.1 keep-alive, a few
connections) drives one server at a time for ``--block`` seconds; per round the arms run in the
order A B A2, then A2 B A, and so on. Each round gives the ratios B/A and A2/A; the medians
are printed.

Targets: B/A >= 0.95 for the 200 route, >= 0.85 for the 403 route.

Run: ``python benchmarks/http.py`` (about 90 s), ``--rounds``/``--block`` to change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This script is named like the stdlib ``http`` package: never let its directory shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(ROOT))

ROUTES = {"200": "/ok", "403": "/forbidden"}
TARGETS = {"200": 0.95, "403": 0.85}


# -- load generator (runs in its own process) ---------------------------------------------------


async def _connection(port: int, request: bytes, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def _measure(port: int, path: str, seconds: float, connections: int) -> float:
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\r\n".encode()
    warm = [0]
    await asyncio.gather(
        *(_connection(port, request, time.perf_counter() + 0.2, warm) for _ in range(connections))
    )
    counts = [0]
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(_connection(port, request, deadline, counts) for _ in range(connections))
    )
    return counts[0] / (time.perf_counter() - start)


def loadgen_main(connections: int) -> None:
    """Read ``port path seconds`` lines on stdin, answer requests/second on stdout."""
    for line in sys.stdin:
        port, path, seconds = line.split()
        rps = asyncio.run(_measure(int(port), path, float(seconds), connections))
        print(f"{rps:.1f}", flush=True)


def receiver_main() -> None:
    """An OTLP receiver that keeps nothing (a collector stand-in), in its own process."""
    from tests.servers import OTLPReceiver

    receiver = OTLPReceiver()
    receiver._accept = lambda request, bucket, context=None: True  # type: ignore[method-assign]
    receiver.start()
    print(receiver.grpc_endpoint, flush=True)
    sys.stdin.read()  # until the parent closes stdin
    receiver.stop()


# -- orchestration ----------------------------------------------------------------------------


def start_server(endpoint: str, *, plugin: bool):  # type: ignore[no-untyped-def]
    from tests.servers import free_port, serve_subprocess

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_SERVICE_NAME": "secaudit-bench",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "" if plugin else "otel_secaudit",
    }
    instrument = shutil.which("opentelemetry-instrument")
    if instrument is None:
        sys.exit("opentelemetry-instrument is not installed")
    args = [
        instrument, sys.executable, "-m", "uvicorn", "tests.apps.secapp:app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    return serve_subprocess(args, port, env, cwd=str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=float, default=1.5, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.loadgen:
        loadgen_main(options.connections)
        return
    if options.receiver:
        receiver_main()
        return

    me = [sys.executable, str(Path(__file__).resolve())]
    receiver = subprocess.Popen(
        [*me, "--receiver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None and receiver.stdin is not None
    endpoint = receiver.stdout.readline().strip()
    servers = {
        "A": start_server(endpoint, plugin=False),
        "A2": start_server(endpoint, plugin=False),
        "B": start_server(endpoint, plugin=True),
    }
    loadgen = subprocess.Popen(
        [*me, "--loadgen", "--connections", str(options.connections)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert loadgen.stdin is not None and loadgen.stdout is not None

    def measure(arm: str, path: str, seconds: float) -> float:
        loadgen.stdin.write(f"{servers[arm].port} {path} {seconds}\n")  # type: ignore[union-attr]
        loadgen.stdin.flush()  # type: ignore[union-attr]
        return float(loadgen.stdout.readline())  # type: ignore[union-attr]

    try:
        for arm in servers:  # warm up every server and route (imports, JIT-less caches)
            for path in ROUTES.values():
                measure(arm, path, 0.5)
        print(
            f"rounds={options.rounds} block={options.block}s connections={options.connections}"
        )
        print(f"{'route':>5} {'A rps':>9} {'B rps':>9} {'B/A':>6} {'A2/A (A/A)':>11} target")
        for label, path in ROUTES.items():
            rps: dict[str, list[float]] = {"A": [], "A2": [], "B": []}
            ratios, noise = [], []
            for round_no in range(options.rounds):
                order = ("A", "B", "A2") if round_no % 2 == 0 else ("A2", "B", "A")
                got = {arm: measure(arm, path, options.block) for arm in order}
                for arm, value in got.items():
                    rps[arm].append(value)
                ratios.append(got["B"] / got["A"])
                noise.append(got["A2"] / got["A"])
            ratio = statistics.median(ratios)
            verdict = "ok" if ratio >= TARGETS[label] else "MISSED"
            print(
                f"{label:>5} {statistics.median(rps['A']):9.0f} {statistics.median(rps['B']):9.0f}"
                f" {ratio:6.3f} {statistics.median(noise):11.3f} >={TARGETS[label]} {verdict}"
            )
    finally:
        loadgen.stdin.close()
        loadgen.wait(10)
        for served in servers.values():
            served.stop()
        receiver.stdin.close()
        receiver.wait(10)


if __name__ == "__main__":
    main()
