"""The wire path, end to end: the SDK's real OTLP exporters (gRPC and HTTP/protobuf) with real
providers and processors, sending to the in-process OTLP receiver on loopback.

One violation recorded inside a span must arrive as a log record, a span event and a counter
point whose exemplar all carry the same trace ID (the trace ID is the correlation ID), and a
secret passed in the event's attributes must appear nowhere in the bytes that crossed the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
    OTLPLogExporter as GrpcLogExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http._log_exporter import (
    OTLPLogExporter as HttpLogExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler

from harness import OTLPReceiver, iter_strings, wait_for
from otel_secaudit import SecurityRecorder, Settings
from otel_secaudit import attributes as attr

PASSWORD = "hunter2-Correct-Horse-7c1f"
BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA"
COOKIE = "session=9d3b1f0e6a7c4b2d8e5f1a0c3b6d9e2f"
API_KEY = "sk_live_51HfQ2vKq8Zr4Tx9WmNpLs"
SECRETS = (PASSWORD, BEARER, COOKIE, API_KEY, "eyJhbGciOiJIUzI1NiJ9", "9d3b1f0e6a7c4b2d")


@dataclass
class WiredSDK:
    """Real providers whose exporters speak OTLP to ``receiver`` over ``protocol``."""

    tracer_provider: TracerProvider
    logger_provider: LoggerProvider
    meter_provider: MeterProvider
    recorder: SecurityRecorder

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        self.logger_provider.force_flush()
        self.meter_provider.force_flush()

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()
        self.meter_provider.shutdown()


def wire(protocol: str, receiver: OTLPReceiver, sampler: Sampler | None = None) -> WiredSDK:
    exporters: tuple[Any, Any, Any]
    if protocol == "grpc":
        endpoint = receiver.grpc_endpoint
        exporters = (
            GrpcSpanExporter(endpoint=endpoint, insecure=True),
            GrpcLogExporter(endpoint=endpoint, insecure=True),
            GrpcMetricExporter(endpoint=endpoint, insecure=True),
        )
    else:
        base = receiver.http_endpoint
        exporters = (
            HttpSpanExporter(endpoint=f"{base}/v1/traces"),
            HttpLogExporter(endpoint=f"{base}/v1/logs"),
            HttpMetricExporter(endpoint=f"{base}/v1/metrics"),
        )
    span_exporter, log_exporter, metric_exporter = exporters
    resource = Resource.create({"service.name": "wire-test"})
    kwargs = {"sampler": sampler} if sampler is not None else {}
    tracer_provider = TracerProvider(resource=resource, **kwargs)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter, schedule_delay_millis=50))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(log_exporter, schedule_delay_millis=50)
    )
    # A long interval: the test flushes explicitly, so exactly one export carries the point.
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=60_000)
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
    recorder = SecurityRecorder(
        Settings.load(environ={}, strict=True),
        logger_provider=logger_provider,
        meter_provider=meter_provider,
    )
    return WiredSDK(tracer_provider, logger_provider, meter_provider, recorder)


@pytest.fixture(params=["grpc", "http"])
def wired(request: pytest.FixtureRequest, otlp_receiver: OTLPReceiver) -> Iterator[WiredSDK]:
    sdk = wire(request.param, otlp_receiver)
    yield sdk
    sdk.shutdown()


def record_violation_in_span(sdk: WiredSDK) -> tuple[str, str]:
    tracer = sdk.tracer_provider.get_tracer("tests.wire")
    with tracer.start_as_current_span("POST /login") as span:
        sdk.recorder.record(
            "auth.login.failed",
            user_name="alice@example.com",
            client_address="203.0.113.9",
            reason="invalid_credentials",
            attributes={
                "password": PASSWORD,
                "http.request.header.authorization": BEARER,
                "http.request.header.cookie": COOKIE,
                "app.note": f"retry with api_key={API_KEY}",
            },
        )
        context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_violation_log_span_event_and_exemplar_share_one_trace_id(
    wired: WiredSDK, otlp_receiver: OTLPReceiver
) -> None:
    trace_id, span_id = record_violation_in_span(wired)
    wired.flush()

    logs = wait_for(
        lambda: [r for r in otlp_receiver.logs() if r.event_name == "auth.login.failed"]
    )
    assert len(logs) == 1
    log = logs[0]
    assert log.scope == attr.SCOPE_NAME
    assert (log.trace_id, log.span_id) == (trace_id, span_id)
    assert log.attributes[attr.EVENT_NAME] == "auth.login.failed"
    assert log.attributes[attr.EVENT_OUTCOME] == "failure"
    assert log.time_unix_nano > 0 and log.severity_text

    spans = wait_for(lambda: [s for s in otlp_receiver.spans() if s.name == "POST /login"])
    assert len(spans) == 1 and spans[0].trace_id == trace_id
    events = [attributes for name, attributes in spans[0].events if name == "auth.login.failed"]
    assert len(events) == 1
    assert events[0][attr.EVENT_NAME] == "auth.login.failed"

    points = wait_for(lambda: otlp_receiver.metric_points(attr.METRIC_VIOLATIONS))
    violation = [p for p in points if p.attributes.get(attr.EVENT_NAME) == "auth.login.failed"]
    assert len(violation) == 1 and violation[0].value == 1
    assert [(e["trace_id"], e["span_id"]) for e in violation[0].exemplars] == [(trace_id, span_id)]
    # Exemplars carry the measurement's filtered attributes: the contract's low-cardinality
    # keys only, never the user, the address or the secret.
    for exemplar in violation[0].exemplars:
        assert set(exemplar["attributes"]) <= set(attr.VIOLATION_METRIC_KEYS)


def test_secret_never_crosses_the_wire(wired: WiredSDK, otlp_receiver: OTLPReceiver) -> None:
    record_violation_in_span(wired)
    wired.flush()
    wait_for(lambda: otlp_receiver.logs() and otlp_receiver.spans())
    wait_for(lambda: otlp_receiver.metric_points(attr.METRIC_VIOLATIONS))

    raw = otlp_receiver.raw_bytes()
    assert b"auth.login.failed" in raw  # the event did cross: the check below is meaningful
    for secret in SECRETS:
        assert secret.encode() not in raw, f"{secret!r} crossed the wire"
    assert b"[REDACTED]" in raw
    # The user name of a failed login is exported as a keyed hash, not in clear.
    assert b"alice@example.com" not in raw
    leaked = [s for s in iter_strings(raw) if "hunter2" in s or "sk_live" in s]
    assert leaked == []
    (log,) = [r for r in otlp_receiver.logs() if r.event_name == "auth.login.failed"]
    assert log.attributes["password"] == "[REDACTED]"
    assert log.attributes[attr.USER_HASH]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sampled_out_span_still_delivers_log_and_counter(
    protocol: str, otlp_receiver: OTLPReceiver
) -> None:
    """Sampling never hides a violation, on the wire too: no span is exported, but the log
    record (with the trace ID for correlation) and the counter still arrive."""
    sdk = wire(protocol, otlp_receiver, sampler=ALWAYS_OFF)
    try:
        trace_id, _ = record_violation_in_span(sdk)
        sdk.flush()
        logs = wait_for(
            lambda: [r for r in otlp_receiver.logs() if r.event_name == "auth.login.failed"]
        )
        assert [log.trace_id for log in logs] == [trace_id]
        points = wait_for(lambda: otlp_receiver.metric_points(attr.METRIC_VIOLATIONS))
        assert sum(p.value for p in points) == 1
        # trace-based exemplar filter: no sampled span, no exemplar (nothing to link to)
        assert all(p.exemplars == [] for p in points)
        assert otlp_receiver.spans() == []
    finally:
        sdk.shutdown()
