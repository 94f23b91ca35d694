"""The demo's OpenTelemetry SDK, set up the way ``opentelemetry-instrument`` sets it up.

Global TracerProvider, LoggerProvider and MeterProvider (resource from ``OTEL_SERVICE_NAME`` /
``OTEL_RESOURCE_ATTRIBUTES``, sampler from ``OTEL_TRACES_SAMPLER``), then the contrib
``FastAPIInstrumentor`` (``DjangoInstrumentor`` for ``--framework django``) and
:class:`otel_secaudit.SecAuditInstrumentor`, both with plain ``instrument()``.

Exporters: OTLP/JSON lines files in the output folder always, written by the ``otlp_json_dir``
exporters (:mod:`otel_secaudit.exporters`, over the official OTLP/JSON file exporters; the same
files ``OTEL_*_EXPORTER=otlp_json_dir`` gives under ``opentelemetry-instrument``, and what the
report reads back); in addition OTLP to a collector when one is configured, by
``--otlp-endpoint`` or the standard ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variables. The protocol
follows ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc`` or ``http/protobuf``); unset, port 4318 means
``http/protobuf`` and anything else ``grpc``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from ..exporters import (
    OTLPJsonDirLogExporter,
    OTLPJsonDirMetricExporter,
    OTLPJsonDirSpanExporter,
)

__all__ = ["ENDPOINT_VARIABLES", "Telemetry", "collector_endpoint", "otlp_protocol", "setup"]

ENDPOINT_VARIABLES: Final = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
DEFAULT_SERVICE_NAME: Final = "otel-secaudit-demo"


def collector_endpoint(environ: Mapping[str, str]) -> str | None:
    """The configured OTLP endpoint (the first non-empty standard variable), else None."""
    for name in ENDPOINT_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def otlp_protocol(environ: Mapping[str, str], endpoint: str) -> str:
    """``grpc`` or ``http/protobuf``."""
    configured = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
    if configured:
        return configured
    try:
        port = urlsplit(endpoint).port
    except ValueError:
        port = None
    return "http/protobuf" if port == 4318 else "grpc"


@dataclass
class Telemetry:
    """The installed providers and where they send."""

    out: Path
    tracer_provider: TracerProvider
    logger_provider: LoggerProvider
    meter_provider: MeterProvider
    collector: str | None
    protocol: str | None
    instrumentors: list[Any] = field(default_factory=list)

    def force_flush(self, timeout_millis: int = 10_000) -> None:
        """Export everything recorded so far (spans, logs, a metrics collection)."""
        self.tracer_provider.force_flush(timeout_millis)
        self.logger_provider.force_flush(timeout_millis)
        self.meter_provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Final export and close the files (idempotent enough for an exit path)."""
        from otel_secaudit import runtime

        # Stops the detector and delivers what the spool (OTEL_SECAUDIT_SPOOL_DIR) holds, for
        # up to 5 s; the rest stays on disk and is replayed on the next start.
        runtime.current().close()
        for instrumentor in self.instrumentors:
            try:
                instrumentor.uninstrument()
            except Exception:  # exiting anyway
                pass
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()
        self.meter_provider.shutdown()


def _collector_exporters(protocol: str) -> tuple[Any, Any, Any]:
    # The one OTLP exporter factory (the spool's too): each signal's protocol from
    # OTEL_EXPORTER_OTLP[_SIGNAL]_PROTOCOL as the SDK chooses it (grpc when unset, whatever
    # the port); endpoint, headers, TLS, compression and timeouts from the standard
    # OTEL_EXPORTER_OTLP_* variables, as under opentelemetry-instrument. ``protocol`` only
    # says a collector is configured; the log exporter counts otel_secaudit records it fails
    # to deliver (otel_secaudit.logs.dropped).
    from otel_secaudit.delivery import otlp_exporters

    del protocol
    return otlp_exporters()


def _framework_instrumentor(framework: str) -> Any:
    if framework == "django":
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        return DjangoInstrumentor()
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    return FastAPIInstrumentor()


def setup(out: Path, otlp_endpoint: str | None = None, *, framework: str = "fastapi") -> Telemetry:
    """Install global SDK providers exporting to ``out`` (and a collector when configured),
    then instrument the web framework (``fastapi``, or ``django``: contrib's
    ``DjangoInstrumentor``, with ``DJANGO_SETTINGS_MODULE`` already set) and otel_secaudit.

    ``otlp_endpoint`` sets ``OTEL_EXPORTER_OTLP_ENDPOINT`` for this process.

    Raises:
        ValueError: an unsupported ``OTEL_EXPORTER_OTLP_PROTOCOL``.
    """
    if otlp_endpoint:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    os.environ.setdefault("OTEL_SERVICE_NAME", DEFAULT_SERVICE_NAME)
    endpoint = collector_endpoint(os.environ)
    protocol = otlp_protocol(os.environ, endpoint) if endpoint else None
    collector = _collector_exporters(protocol) if protocol else None

    resource = Resource.create()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPJsonDirSpanExporter(out)))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPJsonDirLogExporter(out)))
    readers: list[MetricReader] = [PeriodicExportingMetricReader(OTLPJsonDirMetricExporter(out))]
    if collector is not None:
        span_exporter, log_exporter, metric_exporter = collector
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        readers.append(PeriodicExportingMetricReader(metric_exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)

    trace.set_tracer_provider(tracer_provider)
    _logs.set_logger_provider(logger_provider)
    metrics.set_meter_provider(meter_provider)

    import otel_secaudit
    from otel_secaudit import SecAuditInstrumentor

    telemetry = Telemetry(out, tracer_provider, logger_provider, meter_provider, endpoint, protocol)
    for instrumentor in (_framework_instrumentor(framework), SecAuditInstrumentor()):
        instrumentor.instrument()
        telemetry.instrumentors.append(instrumentor)

    # With OTEL_SECAUDIT_SPOOL_DIR the recorder sends its log records through its own spooling
    # LoggerProvider (durable delivery to the collector), not the global one: give that
    # provider the file exporter too, so the files (and the report) stay complete.
    spool_provider = otel_secaudit.get_recorder().delivery.logger_provider
    if spool_provider is not None:
        spool_provider.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPJsonDirLogExporter(out))
        )
    return telemetry
