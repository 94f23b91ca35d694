"""What observed authentication costs (otel_secaudit.auth): per password check and per token
decode, and per request of the test app's login and token routes.

1. **Per call**, in process: the bare library call (A, unpatched) vs. the same call patched
   by :func:`otel_secaudit.auth.instrument_auth` inside a request context (B, the case that
   does work: the check or decode is noted on the request). A second bare arm (A2) gives the
   A/A row. Arms are interleaved A B B A / B A A B in blocks (patches put on and taken off
   between blocks, outside the timed region); "added" is the median over rounds of the
   per-round difference, "B/A" the median of the per-round ratios. Calls: PyJWT HS256 decode
   (the target: under 5 us and under 1.05x), a PyJWT decode that raises (expired), werkzeug
   ``check_password_hash`` (pbkdf2, 1000 rounds, so the hash does not hide the wrapper) and
   ``bcrypt.checkpw`` (cost 4).
2. **Per request**: harness/apps/observed_auth_app.py driven as ASGI calls under contrib's
   FastAPI instrumentation with real SDK pipelines whose exporters drop (A), and with
   otel_secaudit's middleware and the library patches too (B); A2 as above. Routes: the
   OAuth2 password login (argon2 via pwdlib; target A/B >= 0.95) and a bearer-token
   GET (one PyJWT decode).

Run from the repository root: ``python -m benchmarks.observed_auth`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import jwt

from benchmarks.common import form_request_scope
from harness.asgi import body_once
from otel_secaudit import Settings, runtime
from otel_secaudit.auth import instrument_auth, uninstrument_auth
from otel_secaudit.context import RequestContext, request_scope

KEY = "benchmark-signing-key-0123456789abcdef"


class Patches:
    """Library patches put on (B blocks) and taken off (A blocks)."""

    def __init__(self) -> None:
        self.places: list[Any] | None = None

    def on(self) -> None:
        if self.places is None:
            self.places = instrument_auth()

    def off(self) -> None:
        if self.places is not None:
            uninstrument_auth(self.places)
            self.places = None


def _calls() -> dict[str, Callable[[], object]]:
    import bcrypt
    import werkzeug.security

    good = jwt.encode({"sub": "u-1", "exp": int(time.time()) + 86400}, KEY, algorithm="HS256")
    expired = jwt.encode({"sub": "u-1", "exp": 1}, KEY, algorithm="HS256")
    stored = werkzeug.security.generate_password_hash("pw", method="pbkdf2:sha256:1000")
    bstored = bcrypt.hashpw(b"pw", bcrypt.gensalt(4))

    def decode() -> object:
        return jwt.decode(good, KEY, algorithms=["HS256"])

    def decode_expired() -> object:
        try:
            return jwt.decode(expired, KEY, algorithms=["HS256"])
        except jwt.ExpiredSignatureError as exc:
            return exc

    return {
        "PyJWT HS256 decode": decode,
        "PyJWT decode, expired": decode_expired,
        "werkzeug pbkdf2 check": lambda: werkzeug.security.check_password_hash(stored, "pw"),
        "bcrypt.checkpw cost 4": lambda: bcrypt.checkpw(b"pw", bstored),
    }


def _per_call_us(call: Callable[[], object], count: int) -> float:
    """Microseconds per call, each call inside a fresh request context (as in a request);
    the garbage collector is off while timing, as in ``timeit`` (patching between blocks
    imports modules: its garbage must not land in the next block)."""
    gc.collect()
    gc.disable()
    try:
        start = time.thread_time()  # CPU of this thread: the other helpers' load is not ours
        for _ in range(count):
            with request_scope(RequestContext(method="GET")):
                call()
        return (time.thread_time() - start) / count * 1e6
    finally:
        gc.enable()


def per_call(patches: Patches, rounds: int, block: int) -> None:
    print(f"\nper call: rounds={rounds}, {block} calls per block; CPU microseconds per call")
    print(f"{'call':<24} {'A us':>8} {'B us':>8} {'added us':>9} {'B/A':>6} {'A/A':>6}")
    for label, call in _calls().items():
        count = block if "bcrypt" not in label and "werkzeug" not in label else block // 20
        patches.off()
        _per_call_us(call, count)  # warm up
        added: list[float] = []
        ratios: list[float] = []
        noise: list[float] = []
        a_all: list[float] = []
        b_all: list[float] = []
        for round_no in range(rounds):
            order = ("A", "B", "B", "A") if round_no % 2 == 0 else ("B", "A", "A", "B")
            times: dict[str, list[float]] = {"A": [], "B": []}
            for arm in order:
                patches.on() if arm == "B" else patches.off()
                times[arm].append(_per_call_us(call, count))
            patches.off()
            a2 = _per_call_us(call, count)
            a, b = statistics.mean(times["A"]), statistics.mean(times["B"])
            a_all.append(a)
            b_all.append(b)
            added.append(b - a)
            ratios.append(b / a)
            noise.append(a2 / a)
        print(
            f"{label:<24} {statistics.median(a_all):8.2f} {statistics.median(b_all):8.2f}"
            f" {statistics.median(added):9.2f} {statistics.median(ratios):6.3f}"
            f" {statistics.median(noise):6.3f}"
        )


# -- per request --------------------------------------------------------------------------------


async def _request_us(app: Any, route: tuple[str, str, bytes, str | None], count: int) -> float:
    method, path, body, token = route
    statuses: list[int] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.process_time()  # CPU of the process, SDK batch threads included
    for _ in range(count):
        await app(form_request_scope(method, path, body, token), body_once(body), send)
    assert set(statuses) == {200}, statuses
    return (time.process_time() - start) / count * 1e6


def _apps() -> tuple[dict[str, Any], list[Any]]:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from benchmarks.web_middleware import _DropLogs, _DropSpans
    from harness.apps import observed_auth_app
    from otel_secaudit.web.asgi import SecAuditMiddleware

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_DropSpans()))
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(_DropLogs()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    runtime.swap(
        runtime.build(
            Settings.load(environ={}),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            logger_provider=logger_provider,
            detection=True,
        )
    )
    apps: dict[str, Any] = {}
    for arm in ("A", "B", "A2"):
        app = _fresh_app(observed_auth_app)
        if arm == "B":
            app.add_middleware(SecAuditMiddleware)
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        apps[arm] = app
    return apps, [tracer_provider, logger_provider, meter_provider]


def _fresh_app(module: Any) -> Any:
    """A new FastAPI app with the module's routes (each arm gets its own middleware stack)."""
    from fastapi import FastAPI

    app = FastAPI()
    app.router.routes.extend(module.app.router.routes)
    return app


async def per_request(patches: Patches, rounds: int, block: int) -> None:
    from harness.apps import observed_auth_app as served

    apps, providers = _apps()
    token = served.issue_token("u-1001", 86400)
    routes = {
        "login (argon2)": (
            "POST",
            "/token",
            b"username=alice&password=alice-in-wonderland-42",
            None,
        ),
        "bearer GET": ("GET", "/users/me", b"", token),
    }
    print(f"\nper request: rounds={rounds}; CPU microseconds per request (in process)")
    print(f"{'route':<16} {'A us':>9} {'B us':>9} {'A/B':>6} {'A2/A (A/A)':>11}")
    try:
        for label, route in routes.items():
            count = block if "login" not in label else max(2, block // 50)
            for arm in ("A", "B"):
                patches.on() if arm == "B" else patches.off()
                await _request_us(apps[arm], route, count)  # warm up
            a_series: list[float] = []
            b_series: list[float] = []
            noise: list[float] = []
            for round_no in range(rounds):
                order = ("A", "B", "B", "A") if round_no % 2 == 0 else ("B", "A", "A", "B")
                times: dict[str, list[float]] = {"A": [], "B": []}
                for arm in order:
                    patches.on() if arm == "B" else patches.off()
                    times[arm].append(await _request_us(apps[arm], route, count))
                patches.off()
                a, b = statistics.mean(times["A"]), statistics.mean(times["B"])
                a_series.append(a)
                b_series.append(b)
                noise.append(a / await _request_us(apps["A2"], route, count))
            ratio = statistics.median(a / b for a, b in zip(a_series, b_series, strict=True))
            print(
                f"{label:<16} {statistics.median(a_series):9.1f} {statistics.median(b_series):9.1f}"
                f" {ratio:6.3f} {statistics.median(noise):11.3f}"
            )
    finally:
        patches.off()
        current = runtime.swap(None)
        if current is not None:
            current.close()
        for provider in providers:
            provider.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--request-block", type=int, default=200)
    options = parser.parse_args()
    patches = Patches()
    previous = runtime.swap(runtime.build(Settings.load(environ={}), detection=False))
    try:
        per_call(patches, options.rounds, options.block)
    finally:
        patches.off()
        runtime.swap(previous)
    asyncio.run(per_request(patches, max(4, options.rounds // 2), options.request_block))


if __name__ == "__main__":
    main()
