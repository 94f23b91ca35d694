"""One OTLP exporter factory, configured like the OpenTelemetry SDK configures its own.

The protocol of each signal comes from ``OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_PROTOCOL``,
else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else ``grpc`` (the SDK's default, whatever the endpoint's
port). ``grpc`` and ``http/protobuf`` are supported, as by the SDK; anything else is a
:class:`ValueError` naming the variable. Endpoint, headers, timeout, TLS and compression are read
by the exporters themselves from the standard ``OTEL_EXPORTER_OTLP[_SIGNAL]_*`` variables, so
an exporter made here behaves like one made by ``opentelemetry-instrument``.

The exporters need the ``spool`` extra (``opentelemetry-exporter-otlp-proto-grpc`` and
``-http``); they are imported only when asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "PROTOCOLS",
    "OTLPExporters",
    "otlp_exporters",
    "otlp_log_exporter",
    "otlp_metric_exporter",
    "otlp_protocol",
    "otlp_span_exporter",
]

Signal = Literal["traces", "metrics", "logs"]
PROTOCOLS: Final = ("grpc", "http/protobuf")
_DEFAULT_PROTOCOL: Final = "grpc"
# (protocol, signal) -> (module, class); the ``_log_exporter`` modules are where the exporter
# packages publish their log exporters (their documented import path).
_CLASSES: Final[Mapping[tuple[str, str], tuple[str, str]]] = {
    ("grpc", "traces"): (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "OTLPSpanExporter",
    ),
    ("grpc", "metrics"): (
        "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
        "OTLPMetricExporter",
    ),
    ("grpc", "logs"): ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
    ("http/protobuf", "traces"): (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "OTLPSpanExporter",
    ),
    ("http/protobuf", "metrics"): (
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
        "OTLPMetricExporter",
    ),
    ("http/protobuf", "logs"): (
        "opentelemetry.exporter.otlp.proto.http._log_exporter",
        "OTLPLogExporter",
    ),
}


def otlp_protocol(signal: Signal, environ: Mapping[str, str] | None = None) -> str:
    """The OTLP protocol of ``signal``, chosen as the SDK chooses it (see module docstring).

    Raises:
        ValueError: an unsupported protocol, naming the variable that set it.
    """
    env = os.environ if environ is None else environ
    for variable in (
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ):
        value = env.get(variable, "").strip()
        if not value:
            continue
        if value not in PROTOCOLS:
            raise ValueError(f"{variable}={value[:40]!r}: expected grpc or http/protobuf")
        return value
    return _DEFAULT_PROTOCOL


def _exporter(signal: Signal, reconnect_backoff_max_s: float | None = None) -> Any:
    protocol = otlp_protocol(signal)
    module_name, class_name = _CLASSES[(protocol, signal)]
    try:
        module = __import__(module_name, fromlist=[class_name])
    except ImportError as exc:
        raise ImportError(
            f"the OTLP {protocol} exporter is not installed ({exc}); "
            "pip install 'otel-secaudit[spool]'"
        ) from exc
    exporter_class = getattr(module, class_name)
    if protocol == "grpc" and reconnect_backoff_max_s is not None:
        # gRPC backs off reconnecting up to 120 s by default: after a long outage, records
        # would wait that long once the collector is back.
        backoff_ms = max(100, int(reconnect_backoff_max_s * 1000))
        options = (  # integer channel arguments (gRPC ignores them as strings)
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
            ("grpc.initial_reconnect_backoff_ms", min(1000, backoff_ms)),
        )
        try:
            return exporter_class(channel_options=options)
        except TypeError:  # an SDK release without channel_options
            pass
    return exporter_class()


def otlp_span_exporter() -> SpanExporter:
    """An OTLP span exporter (protocol from the environment)."""
    exporter: SpanExporter = _exporter("traces")
    return exporter


def otlp_metric_exporter() -> MetricExporter:
    """An OTLP metric exporter (protocol from the environment)."""
    exporter: MetricExporter = _exporter("metrics")
    return exporter


def otlp_log_exporter(
    *,
    count_drops: bool = False,
    meter_provider: MeterProvider | None = None,
    reconnect_backoff_max_s: float | None = None,
) -> LogRecordExporter:
    """An OTLP log record exporter (protocol from the environment).

    Args:
        count_drops: wrap it in :class:`~otel_secaudit.delivery.DropCountingLogExporter`, so
            otel_secaudit records in batches it fails to deliver are counted in
            ``otel_secaudit.logs.dropped``.
        meter_provider: for that counter (default: the global one).
        reconnect_backoff_max_s: with gRPC, the longest wait between reconnection attempts
            of its channel (gRPC's default is 120 s).
    """
    exporter: LogRecordExporter = _exporter("logs", reconnect_backoff_max_s)
    if count_drops:
        from .drops import DropCountingLogExporter

        return DropCountingLogExporter(exporter, meter_provider=meter_provider)
    return exporter


class OTLPExporters(NamedTuple):
    """One exporter per signal."""

    span: SpanExporter
    log: LogRecordExporter
    metric: MetricExporter


def otlp_exporters(*, meter_provider: MeterProvider | None = None) -> OTLPExporters:
    """OTLP exporters for traces, logs and metrics, each with its own protocol from the
    environment; the log exporter counts the otel_secaudit records it fails to deliver.

    Raises:
        ValueError: an unsupported ``OTEL_EXPORTER_OTLP[_SIGNAL]_PROTOCOL``.
        ImportError: the exporter packages are missing.
    """
    for signal in ("traces", "metrics", "logs"):  # every protocol error before any exporter
        otlp_protocol(signal)  # type: ignore[arg-type]
    return OTLPExporters(
        otlp_span_exporter(),
        otlp_log_exporter(count_drops=True, meter_provider=meter_provider),
        otlp_metric_exporter(),
    )
