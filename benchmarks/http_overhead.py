"""Requests/second of the test app with the contrib FastAPI instrumentation alone vs. with
otel_secaudit too, for a 200 route, a 403 route (every 403 is a security event) and a login
route whose form body the plugin reads (OTEL_SECAUDIT_LOGIN_ROUTES, a 2xx answer).

Three uvicorn processes serve ``tests.apps.secapp:app`` under ``opentelemetry-instrument``,
exporting traces, metrics and logs over OTLP/gRPC to a receiver in its own process:

* ``A``  contrib only (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_secaudit``)
* ``A2`` contrib only, a second copy (the A/A row: the noise floor)
* ``B``  contrib + otel_secaudit

A load generator in a separate process (raw asyncio sockets, HTTP/1.1 keep-alive, a few
connections) drives one server at a time for ``--block`` seconds; per round the arms run in the
order A B A2, then A2 B A, and so on. Each round gives the ratios B/A and A2/A; the medians
are printed, for requests per wall-clock second and for requests per second of the server's
CPU time (read from /proc; on a shared machine the wall-clock rate swings with other load,
the CPU cost per request much less).

Targets: B/A >= 0.95 for the 200 route, >= 0.85 for the 403 route, >= 0.9 for the login route.

Run from the repository root: ``python -m benchmarks.http_overhead`` (about 2 minutes),
``--rounds``/``--block`` to change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness import Served

ROOT = Path(__file__).resolve().parent.parent
_LOGIN_BODY = b"username=alice&password=correct+horse+battery+staple"
#: label -> (method, path, form body or b""); the login route is fastapi-users style (the app
#: records nothing; with the plugin, OTEL_SECAUDIT_LOGIN_ROUTES reads the body and records)
ROUTES = {
    "200": ("GET", "/ok", b""),
    "403": ("GET", "/forbidden", b""),
    "login": ("POST", "/auth/jwt/login", _LOGIN_BODY),
}
TARGETS = {"200": 0.95, "403": 0.85, "login": 0.9}


def _request_bytes(label: str) -> bytes:
    method, path, body = ROUTES[label]
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n"
    if body:
        head += "Content-Type: application/x-www-form-urlencoded\r\n"
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


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


async def _measure(
    port: int, request: bytes, seconds: float, connections: int
) -> tuple[int, float]:
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
    return counts[0], time.perf_counter() - start


def loadgen_main(connections: int, request_of: Callable[[str], bytes] = _request_bytes) -> None:
    """Read ``port key seconds`` lines on stdin (``key`` names the request: ``request_of(key)``),
    answer ``requests elapsed`` on stdout. Shared with :mod:`benchmarks.wsgi_overhead`."""
    for line in sys.stdin:
        port, key, seconds = line.split()
        request = request_of(key)
        count, elapsed = asyncio.run(_measure(int(port), request, float(seconds), connections))
        print(f"{count} {elapsed:.6f}", flush=True)


def receiver_main(protocol: str = "grpc") -> None:
    """An OTLP receiver that keeps nothing (a collector stand-in), in its own process; prints
    its ``grpc`` or ``http`` endpoint."""
    from harness import OTLPReceiver

    receiver = OTLPReceiver()
    receiver._accept = lambda request, bucket, context=None: True  # type: ignore[method-assign]
    receiver.start()
    print(receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint, flush=True)
    sys.stdin.read()  # until the parent closes stdin
    receiver.stop()


# -- orchestration ----------------------------------------------------------------------------


def start_loadgen(me: list[str], connections: int) -> subprocess.Popen[str]:
    """The load generator process (``me --loadgen``), driven line by line on stdin."""
    loadgen = subprocess.Popen(
        [*me, "--loadgen", "--connections", str(connections)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert loadgen.stdin is not None and loadgen.stdout is not None
    return loadgen


def measurer(
    loadgen: subprocess.Popen[str], servers: dict[str, Any], cpu_of: Callable[[int], float]
) -> Callable[[str, str, float], tuple[float, float]]:
    """``measure(arm, key, seconds)`` -> (requests per wall second, requests per server CPU
    second), ``cpu_of(pid)`` giving the server's CPU seconds (one process or a process tree)."""

    def measure(arm: str, key: str, seconds: float) -> tuple[float, float]:
        pid = servers[arm].process.pid
        cpu_before = cpu_of(pid)
        assert loadgen.stdin is not None and loadgen.stdout is not None
        loadgen.stdin.write(f"{servers[arm].port} {key} {seconds}\n")
        loadgen.stdin.flush()
        count, elapsed = loadgen.stdout.readline().split()
        cpu = cpu_of(pid) - cpu_before
        return int(count) / float(elapsed), int(count) / max(cpu, 1e-3)

    return measure


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(endpoint: str, *, plugin: bool) -> Served:
    """One arm: the test app under ``opentelemetry-instrument uvicorn``, with or without the
    plugin, exporting over OTLP/gRPC to ``endpoint``."""
    from harness import serve_uvicorn

    env = {
        **os.environ,
        "OTEL_SERVICE_NAME": "secaudit-bench",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "" if plugin else "otel_secaudit",
        "OTEL_SECAUDIT_LOGIN_ROUTES": "POST /auth/jwt/login",
    }
    return serve_uvicorn(env, "tests.apps.secapp:app", "--log-level", "warning")


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

    me = [sys.executable, "-m", "benchmarks.http_overhead"]
    receiver = subprocess.Popen(
        [*me, "--receiver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert receiver.stdout is not None and receiver.stdin is not None
    endpoint = receiver.stdout.readline().strip()
    servers = {
        "A": start_server(endpoint, plugin=False),
        "A2": start_server(endpoint, plugin=False),
        "B": start_server(endpoint, plugin=True),
    }
    loadgen = start_loadgen(me, options.connections)
    measure = measurer(loadgen, servers, _cpu_seconds)

    try:
        for arm in servers:  # warm up every server and route (imports, JIT-less caches)
            for label in ROUTES:
                measure(arm, label, 0.5)
        print(f"rounds={options.rounds} block={options.block}s connections={options.connections}")
        print(
            "rps = requests per wall-clock second; cpu = requests per second of server CPU "
            "(less sensitive to other load on the machine)"
        )
        print(
            f"{'route':>5} {'measure':>7} {'A':>7} {'B':>7} {'B/A':>6} {'A2/A (A/A)':>11}  target"
        )
        for label in ROUTES:
            series: dict[str, dict[str, list[float]]] = {
                kind: {"A": [], "A2": [], "B": []} for kind in ("rps", "cpu")
            }
            for round_no in range(options.rounds):
                order = ("A", "B", "A2") if round_no % 2 == 0 else ("A2", "B", "A")
                for arm in order:
                    rps, per_cpu = measure(arm, label, options.block)
                    series["rps"][arm].append(rps)
                    series["cpu"][arm].append(per_cpu)
            for kind, values in series.items():
                a_values, b_values, a2_values = values["A"], values["B"], values["A2"]
                ratio = statistics.median(b / a for a, b in zip(a_values, b_values, strict=True))
                noise = statistics.median(a2 / a for a, a2 in zip(a_values, a2_values, strict=True))
                verdict = "ok" if ratio >= TARGETS[label] else "MISSED"
                print(
                    f"{label:>5} {kind:>7} {statistics.median(values['A']):7.0f}"
                    f" {statistics.median(values['B']):7.0f} {ratio:6.3f} {noise:11.3f}"
                    f"  >={TARGETS[label]} {verdict}"
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
