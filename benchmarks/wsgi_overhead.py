"""Requests/second of the Django test project and the Flask test app with contrib's Django/Flask
instrumentation alone vs. with otel_secaudit too, for a 200 route and a 403 route (every 403
is a security event: log record, span event, counters, detection).

Per framework, three gunicorn servers (one ``gthread`` worker, 4 threads, keep-alive) serve the
app under ``opentelemetry-instrument``, exporting traces, metrics and logs over OTLP/HTTP to a
receiver in its own process:

* ``A``  contrib only (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_secaudit``)
* ``A2`` contrib only, a second copy (the A/A row: the noise floor)
* ``B``  contrib + otel_secaudit
* ``X``  contrib + otel_secaudit with blocks on (``OTEL_SECAUDIT_BLOCK_SECONDS``), the
  benchmark's client blocked (its ``X-Forwarded-For`` address, from a trusted proxy): every
  request is refused by the WSGI gate (``otel_secaudit.web.wsgi_gate``) before contrib runs

The load generator of :mod:`benchmarks.http_overhead` (a separate process, HTTP/1.1
keep-alive, a few connections) drives one server at a time for ``--block`` seconds; per round
the arms run A B A2, then A2 B A, and so on. Each round gives B/A and A2/A; the medians are
printed, per wall-clock second and per second of the servers' CPU time (master + worker, from
/proc).

Targets: B/A >= 0.95 for the 200 route, >= 0.85 for the 403 route; a refused request costs
at most half of contrib's own 403 (the ``blocked`` row: server CPU per request X/A <= 0.5,
A serving the 403 route).

Run from the repository root: ``python -m benchmarks.wsgi_overhead`` (about 4 minutes);
``--rounds``/``--block``/``--framework``/``--routes`` to change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from benchmarks.http_overhead import (
    _cpu_seconds,
    loadgen_main,
    measurer,
    receiver_main,
    start_loadgen,
)

ROOT = Path(__file__).resolve().parent.parent
#: framework -> route label -> path
ROUTES = {
    "django": {"200": "/ok/", "403": "/forbidden/", "blocked": "/forbidden/"},
    "flask": {"200": "/ok", "403": "/forbidden", "blocked": "/forbidden"},
}
TARGETS = {"200": 0.95, "403": 0.85}
#: The blocked client's address, sent by the "proxy" (the load generator on 127.0.0.1).
BLOCKED_CLIENT = "203.0.113.66"
_BLOCKED: Final = "blocked:"
#: The "blocked" row: contrib's 403 (A, A2) against the refusal (X); the others: A, B, A2.
_BLOCKED_ARMS: Final = ("A", "X", "A2")
_ARMS: Final = ("A", "B", "A2")


def _request_bytes(key: str) -> bytes:
    """The request of ``key``: a path, or ``blocked:<path>`` from the blocked client."""
    path = key.removeprefix(_BLOCKED)
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n"
    if key.startswith(_BLOCKED):
        head += f"X-Forwarded-For: {BLOCKED_CLIENT}\r\n"
    return (head + "\r\n").encode()


# -- orchestration ----------------------------------------------------------------------------


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a gunicorn master and its workers."""
    total = _cpu_seconds(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            children = [int(child) for child in handle.read().split()]
    except OSError:
        children = []
    for child in children:
        try:
            total += _cpu_seconds(child)
        except OSError:
            pass
    return total


def start_server(  # type: ignore[no-untyped-def]
    framework: str, endpoint: str, db: str, *, plugin: bool, blocking: bool = False
):
    from harness import serve_django, serve_flask, telemetry_env

    settings = (
        {"block_seconds": "3600", "host_threshold": "3", "trusted_proxies": "127.0.0.1/32"}
        if blocking
        else {}
    )
    env = telemetry_env(endpoint, **settings)
    env["PYTHONHASHSEED"] = "0"  # one hash seed for every arm (string hashing varies per seed)
    env.update(
        OTEL_METRIC_EXPORT_INTERVAL="5000",
        OTEL_BSP_SCHEDULE_DELAY="1000",
        OTEL_BLRP_SCHEDULE_DELAY="1000",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="sqlite3,dbapi,jinja2"
        + ("" if plugin else ",otel_secaudit"),
    )
    # gthread: keep-alive connections, as the load generator uses
    extra = ("-k", "gthread", "--threads", "4", "--access-logfile", "/dev/null")
    if framework == "django":
        return serve_django(env, db, gunicorn_args=extra)
    return serve_flask(env, gunicorn_args=extra)


def run_framework(framework: str, options: argparse.Namespace, endpoint: str) -> None:
    from harness import prepare_django_db

    db = (
        prepare_django_db(tempfile.mkdtemp(prefix="secsite-bench-"))
        if framework == "django"
        else ""
    )
    servers = {
        "A": start_server(framework, endpoint, db, plugin=False),
        "A2": start_server(framework, endpoint, db, plugin=False),
        "B": start_server(framework, endpoint, db, plugin=True),
        "X": start_server(framework, endpoint, db, plugin=True, blocking=True),
    }
    me = [sys.executable, "-m", "benchmarks.wsgi_overhead"]
    loadgen = start_loadgen(me, options.connections)
    measure = measurer(loadgen, servers, _tree_cpu_seconds)

    def key_of(label: str, arm: str) -> str:
        path = ROUTES[framework][label]
        return _BLOCKED + path if arm == "X" else path

    try:
        for arm in servers:  # warm up (and get the client of X blocked)
            for label in ROUTES[framework]:
                measure(arm, key_of(label, arm), 0.5)
        for label in options.routes or ROUTES[framework]:
            arms = _BLOCKED_ARMS if label == "blocked" else _ARMS
            series: dict[str, dict[str, list[float]]] = {
                kind: {arm: [] for arm in arms} for kind in ("rps", "cpu")
            }
            for round_no in range(options.rounds):
                for arm in arms if round_no % 2 == 0 else tuple(reversed(arms)):
                    rps, per_cpu = measure(arm, key_of(label, arm), options.block)
                    series["rps"][arm].append(rps)
                    series["cpu"][arm].append(per_cpu)
            for kind, values in series.items():
                _report(framework, label, kind, values, arms[1])
    finally:
        loadgen.stdin.close()
        loadgen.wait(10)
        for served in servers.values():
            served.stop()


def _report(
    framework: str, label: str, kind: str, values: dict[str, list[float]], arm: str
) -> None:
    """One line: medians, ``arm``/A (rates: above 1 is faster) and the A/A row."""
    a_values, b_values, a2_values = values["A"], values[arm], values["A2"]
    ratio = statistics.median(b / a for a, b in zip(a_values, b_values, strict=True))
    noise = statistics.median(a2 / a for a, a2 in zip(a_values, a2_values, strict=True))
    if label == "blocked":
        # per request: X's cost against contrib's 403 is the inverse of the rate ratio
        cost = statistics.median(a / b for a, b in zip(a_values, b_values, strict=True))
        target = f"cost X/A {cost:.3f} <= 0.5 " + ("ok" if cost <= 0.5 else "MISSED")
        target = target if kind == "cpu" else f"cost X/A {cost:.3f}"
    else:
        target = f">={TARGETS[label]} " + ("ok" if ratio >= TARGETS[label] else "MISSED")
    print(
        f"{framework:>6} {label:>7} {kind:>7} {statistics.median(a_values):7.0f}"
        f" {statistics.median(b_values):7.0f} {ratio:6.3f} {noise:11.3f}  {target}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=float, default=1.5, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--framework", choices=["django", "flask", "both"], default="both")
    parser.add_argument(
        "--routes",
        type=lambda text: [
            label for label in text.split(",") if label in TARGETS or label == "blocked"
        ],
        default=None,
        help="comma-separated rows: 200,403,blocked (default all)",
    )
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.loadgen:
        loadgen_main(options.connections, _request_bytes)
        return
    if options.receiver:
        receiver_main("http")
        return

    receiver = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.wsgi_overhead", "--receiver"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert receiver.stdout is not None and receiver.stdin is not None
    endpoint = receiver.stdout.readline().strip()
    print(f"rounds={options.rounds} block={options.block}s connections={options.connections}")
    print("rps = requests per wall-clock second; cpu = requests per second of server CPU")
    print(
        f"{'app':>6} {'route':>7} {'measure':>7} {'A':>7} {'B|X':>7} {'B|X/A':>6}"
        f" {'A2/A (A/A)':>11}  target"
    )
    frameworks = ["django", "flask"] if options.framework == "both" else [options.framework]
    try:
        for framework in frameworks:
            run_framework(framework, options, endpoint)
    finally:
        receiver.stdin.close()
        receiver.wait(10)


if __name__ == "__main__":
    main()
