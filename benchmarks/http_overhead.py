"""Requests/second of the test app with the contrib FastAPI instrumentation alone, with a
hand-written security middleware, and with otel_secaudit, for a 200 route, a 403 route (every
403 is a security event), a login route whose form body the plugin reads
(OTEL_SECAUDIT_LOGIN_ROUTES, a 2xx answer) and a request refused by a block.

uvicorn processes serve the app under ``opentelemetry-instrument``, exporting traces, metrics
and logs over OTLP/gRPC to a receiver in its own process:

* ``A``  contrib only (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_secaudit``)
* ``A2`` contrib only, a second copy (the A/A row: the noise floor)
* ``H``  contrib + a hand-written middleware that emits the same three SDK signals as the
  plugin for a 401/403/429 (log record, span event, counter point;
  :mod:`benchmarks.handwritten_app`): the floor a violation costs
* ``B``  contrib + otel_secaudit
* ``X``  contrib + otel_secaudit with blocks on (``OTEL_SECAUDIT_BLOCK_SECONDS``), the
  benchmark's client blocked (its ``X-Forwarded-For`` address, from a trusted proxy): every
  request is refused with 429 before contrib's middleware and the application run (the gate,
  :mod:`otel_secaudit.web.gate`)

A load generator in a separate process (raw asyncio sockets, HTTP/1.1 keep-alive, a few
connections) drives one server at a time for ``--block`` seconds; per round the arms of a
route run in one order, then in the reverse order (A B B A). Each round gives each arm's
ratio to A in that round; the medians are printed, for requests per wall-clock second and for
requests per second of the server's CPU time (read from /proc; on a shared machine the
wall-clock rate swings with other load, the CPU cost per request much less). ``cost`` is CPU
per request relative to another arm (the inverse of the rate ratio).

Targets: the 200 route B/A >= 0.97; a 403 with the plugin costs <= 1.05x the hand-written
floor (cost B/H); a refused request costs at most half of contrib's own 403 (cost X/A <= 0.5,
for the same request: contrib ignores the forwarding header); the login route B/A >= 0.9.

Every server process gets the same ``PYTHONHASHSEED``: with random seeds two processes of the
same arm differed by up to 12% (dict layouts), more than the targets' margins.

Run from the repository root: ``python -m benchmarks.http_overhead`` (about 5 minutes),
``--rounds``/``--block`` to change, ``--routes 403,blocked`` for some routes only.
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
    "blocked": ("GET", "/forbidden", b""),
}
#: route -> the arms measured (ratios are to the first)
ARMS = {
    "200": ("A", "B", "H", "A2"),
    "403": ("A", "B", "H", "A2"),
    "login": ("A", "B", "A2"),
    "blocked": ("A", "X", "A2"),
}
#: The blocked client's address, sent by the "proxy" (the load generator on 127.0.0.1).
BLOCKED_CLIENT = "198.51.100.66"


def _request_bytes(label: str) -> bytes:
    method, path, body = ROUTES[label]
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n"
    if label == "blocked":
        head += f"X-Forwarded-For: {BLOCKED_CLIENT}\r\n"
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


def start_server(
    endpoint: str,
    *,
    plugin: bool,
    app: str = "harness.apps.secapp:app",
    settings: dict[str, str] | None = None,
) -> Served:
    """One arm: ``app`` under ``opentelemetry-instrument uvicorn``, with or without the
    plugin (``settings``: more OTEL_SECAUDIT_* values), exporting over OTLP/gRPC to
    ``endpoint``."""
    from harness import serve_uvicorn

    env = {
        **os.environ,
        # One hash seed for every arm: string hashing decides dict layouts, and two processes
        # with different seeds differ by several percent on the same code.
        "PYTHONHASHSEED": "0",
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
        **{f"OTEL_SECAUDIT_{key.upper()}": value for key, value in (settings or {}).items()},
    }
    return serve_uvicorn(env, app, "--log-level", "warning")


def _start_servers(endpoint: str) -> dict[str, Served]:
    blocking = {"block_seconds": "3600", "host_threshold": "3", "trusted_proxies": "127.0.0.1/32"}
    return {
        "A": start_server(endpoint, plugin=False),
        "A2": start_server(endpoint, plugin=False),
        "H": start_server(endpoint, plugin=False, app="benchmarks.handwritten_app:app"),
        "B": start_server(endpoint, plugin=True),
        "X": start_server(endpoint, plugin=True, settings=blocking),
    }


def _median_ratio(values: dict[str, list[float]], top: str, bottom: str) -> float:
    return statistics.median(t / b for t, b in zip(values[top], values[bottom], strict=True))


def _report(label: str, kind: str, values: dict[str, list[float]]) -> None:
    """One line per route and measure: medians, ratios to A, the route's target."""
    rates = "  ".join(f"{arm} {statistics.median(v):5.0f}" for arm, v in values.items())
    ratios = "  ".join(
        f"{arm}/A {_median_ratio(values, arm, 'A'):.3f}" for arm in values if arm != "A"
    )
    if label in ("200", "login"):
        ratio, floor = _median_ratio(values, "B", "A"), 0.97 if label == "200" else 0.9
        target = f"B/A >= {floor}: {'ok' if ratio >= floor else 'MISSED'}"
    elif label == "403":
        cost = _median_ratio(values, "H", "B")  # CPU per request of B relative to H
        target = f"cost B/H {cost:.3f} <= 1.05: {'ok' if cost <= 1.05 else 'MISSED'}"
    else:
        cost = _median_ratio(values, "A", "X")
        target = f"cost X/A {cost:.3f} <= 0.5: {'ok' if cost <= 0.5 else 'MISSED'}"
    print(f"{label:>7} {kind:>3}  {rates}  |  {ratios}  |  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=float, default=1.5, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated routes")
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
    servers = _start_servers(endpoint)
    loadgen = start_loadgen(me, options.connections)
    measure = measurer(loadgen, servers, _cpu_seconds)
    routes = [route for route in options.routes.split(",") if route]

    try:
        for label in routes:  # warm up (and get the client of X blocked)
            for arm in ARMS[label]:
                measure(arm, label, 0.5)
        print(f"rounds={options.rounds} block={options.block}s connections={options.connections}")
        print(
            "rps = requests per wall-clock second; cpu = requests per second of server CPU "
            "(less sensitive to other load on the machine); arm/A = median of per-round ratios"
        )
        for label in routes:
            arms = ARMS[label]
            series: dict[str, dict[str, list[float]]] = {
                kind: {arm: [] for arm in arms} for kind in ("rps", "cpu")
            }
            for round_no in range(options.rounds):
                for arm in arms if round_no % 2 == 0 else tuple(reversed(arms)):
                    rps, per_cpu = measure(arm, label, options.block)
                    series["rps"][arm].append(rps)
                    series["cpu"][arm].append(per_cpu)
            for kind, values in series.items():
                _report(label, kind, values)
    finally:
        loadgen.stdin.close()
        loadgen.wait(10)
        for served in servers.values():
            served.stop()
        receiver.stdin.close()
        receiver.wait(10)


if __name__ == "__main__":
    main()
