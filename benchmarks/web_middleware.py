"""CPU per request of the security middleware, in process: the test app with contrib's FastAPI
instrumentation alone (A) vs. with otel_secaudit's middleware too (B), on real SDK pipelines
(batch span and log processors with exporters that drop, a metric reader), driven directly as
ASGI calls so that no server or load generator adds noise.

A third arm (H) has a hand-written middleware instead of the plugin that emits the same three
SDK signals for a 401/403/429 (:mod:`benchmarks.handwritten_app`): ``B/H cost`` is the plugin's
CPU per request against that floor. Arms are interleaved A B H H B A / A B H H B A reversed in
blocks; a second plain copy (A2) gives the A/A row.
Routes: a 200 (nothing recorded), a 403 (one event), a 404 (a scan probe: counted off the
request path, not recorded), and a login route whose form body the
middleware reads (OTEL_SECAUDIT_LOGIN_ROUTES; a 2xx records auth.login.succeeded, as contrib +
a hand-written hook would).

Run from the repository root: ``python -m benchmarks.web_middleware`` (about 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks.common import form_request_scope
from benchmarks.handwritten_app import HandWrittenSecurityMiddleware
from harness.apps.secapp import create_app
from harness.asgi import body_once
from otel_secaudit import Settings, runtime
from otel_secaudit.detection.processor import ensure_processor
from otel_secaudit.web.asgi import SecAuditMiddleware

LOGIN_BODY = b"username=alice&password=correct+horse+battery+staple"
#: label -> (method, path, body)
ROUTES = {
    "200": ("GET", "/ok", b""),
    "403": ("GET", "/forbidden", b""),
    # a route that does not exist: nothing recorded, one probe queued towards abuse.scan
    "404": ("GET", "/no-such-route", b""),
    "login": ("POST", "/auth/jwt/login", LOGIN_BODY),
}


class _DropSpans(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _DropLogs(LogRecordExporter):
    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _providers() -> tuple[TracerProvider, LoggerProvider, MeterProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_DropSpans()))
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(_DropLogs()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return tracer_provider, logger_provider, meter_provider


def _app(
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
    plugin: bool,
    handwritten: bool = False,
) -> Any:
    app = create_app()
    if plugin:
        app.add_middleware(SecAuditMiddleware)
    if handwritten:
        app.add_middleware(HandWrittenSecurityMiddleware)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    return app


async def _cpu_per_request(app: Any, label: str, count: int) -> float:
    method, path, body = ROUTES[label]

    async def send(message: Any) -> None:
        pass

    start = time.process_time()
    for _ in range(count):
        await app(form_request_scope(method, path, body), body_once(body), send)
    return (time.process_time() - start) / count * 1e6


async def _measure(apps: dict[str, Any], routes: list[str], rounds: int, block: int) -> None:
    print(f"rounds={rounds} block={block} requests; microseconds of CPU per request")
    print(
        f"{'route':>5} {'A us':>7} {'B us':>7} {'H us':>7} {'A/B':>6} {'B/H cost':>9}"
        f" {'A2/A (A/A)':>11}"
    )
    for label in routes:
        for app in apps.values():
            await _cpu_per_request(app, label, block // 2)  # warm up
        series: dict[str, list[float]] = {"A": [], "B": [], "H": []}
        noise: list[float] = []
        for round_no in range(rounds):
            order = ("A", "B", "H", "H", "B", "A")
            times: dict[str, list[float]] = {"A": [], "B": [], "H": []}
            for arm in order if round_no % 2 == 0 else tuple(reversed(order)):
                times[arm].append(await _cpu_per_request(apps[arm], label, block))
            for arm, values in times.items():
                series[arm].append(statistics.mean(values))
            noise.append(series["A"][-1] / await _cpu_per_request(apps["A2"], label, block))
        a_s, b_s, h_s = series["A"], series["B"], series["H"]
        ratio = statistics.median(a / b for a, b in zip(a_s, b_s, strict=True))
        cost = statistics.median(b / h for b, h in zip(b_s, h_s, strict=True))
        print(
            f"{label:>5} {statistics.median(a_s):7.1f} {statistics.median(b_s):7.1f}"
            f" {statistics.median(h_s):7.1f} {ratio:6.3f} {cost:9.3f}"
            f" {statistics.median(noise):11.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=300, help="requests per measurement")
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated routes")
    options = parser.parse_args()
    routes = [label for label in options.routes.split(",") if label in ROUTES]
    tracer_provider, logger_provider, meter_provider = _providers()
    # The hand-written middleware gets its logger and meter from the global providers, as an
    # application under opentelemetry-instrument does: without these it would emit its log
    # record and counter point into the API's no-op proxies and the floor would be too low.
    trace.set_tracer_provider(tracer_provider)
    set_logger_provider(logger_provider)
    metrics.set_meter_provider(meter_provider)
    settings = Settings.load(login_routes="POST /auth/jwt/login")
    previous = runtime.swap(
        runtime.build(
            settings,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            logger_provider=logger_provider,
            detection=True,
        )
    )
    ensure_processor(tracer_provider)  # as the instrumentor does
    apps = {
        "A": _app(tracer_provider, meter_provider, plugin=False),
        "B": _app(tracer_provider, meter_provider, plugin=True),
        "H": _app(tracer_provider, meter_provider, plugin=False, handwritten=True),
        "A2": _app(tracer_provider, meter_provider, plugin=False),
    }
    try:
        asyncio.run(_measure(apps, routes, options.rounds, options.block))
    finally:
        current = runtime.swap(previous)
        if current is not None:
            current.close()
        for provider in (tracer_provider, logger_provider, meter_provider):
            provider.shutdown()


if __name__ == "__main__":
    main()
