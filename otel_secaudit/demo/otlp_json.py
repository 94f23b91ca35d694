"""OTLP/JSON lines files: the embedded default when no collector is configured.

Each exporter appends one ``Export{Logs,Trace,Metrics}ServiceRequest`` per line, in the OTLP/JSON
encoding that the OpenTelemetry Collector's ``file`` exporter writes: lowerCamelCase keys, trace
and span IDs as hex strings (not base64), enums as integers, 64-bit integers as strings. The
requests are built by the same protobuf encoders the OTLP exporters use
(``opentelemetry.exporter.otlp.proto.common``), so a line here is byte-for-byte what a collector
would have received, only rendered as JSON.

Usage::

    files = OTLPJsonFiles(Path("out"))
    tracer_provider.add_span_processor(BatchSpanProcessor(files.span_exporter()))
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(files.log_exporter()))
    reader = PeriodicExportingMetricReader(files.metric_exporter())

:func:`to_otlp_json` is the conversion on its own (tests and the report reader use it).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Final

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = [
    "LOGS_FILE",
    "JsonLinesWriter",
    "METRICS_FILE",
    "TRACES_FILE",
    "OTLPJsonFiles",
    "OTLPJsonLogExporter",
    "OTLPJsonMetricExporter",
    "OTLPJsonSpanExporter",
    "to_otlp_json",
]

_log = logging.getLogger(__name__)

LOGS_FILE: Final = "logs.jsonl"
TRACES_FILE: Final = "traces.jsonl"
METRICS_FILE: Final = "metrics.jsonl"

#: Keys whose bytes value OTLP/JSON writes as hex (everything else ``bytes`` stays base64).
_HEX_ID_KEYS: Final = frozenset({"traceId", "spanId", "parentSpanId"})


def _hex_ids(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in _HEX_ID_KEYS and isinstance(item, str):
                out[key] = base64.b64decode(item).hex()
            else:
                out[key] = _hex_ids(item)
        return out
    if isinstance(value, list):
        return [_hex_ids(item) for item in value]
    return value


def to_otlp_json(message: Message) -> dict[str, Any]:
    """An OTLP protobuf message as its OTLP/JSON object (hex IDs, camelCase, integer enums)."""
    return _hex_ids(MessageToDict(message, use_integers_for_enums=True))


class JsonLinesWriter:
    """Appends one JSON object per line to a file; thread-safe, flushed after every line.

    Exporters writing the same file must share one writer (lines never interleave); the file
    is reopened when written after :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def write(self, message: Message) -> bool:
        line = json.dumps(to_otlp_json(message), separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            try:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = self.path.open("a", encoding="utf-8")
                self._file.write(line + "\n")
                self._file.flush()
                return True
            except OSError as exc:
                _log.warning("otel_secaudit demo: cannot write %s: %s", self.path, exc)
                return False

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class OTLPJsonSpanExporter(SpanExporter):
    """Writes each batch of spans as one ``ExportTraceServiceRequest`` line."""

    def __init__(self, path: Path | JsonLinesWriter) -> None:
        self._writer = path if isinstance(path, JsonLinesWriter) else JsonLinesWriter(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        ok = self._writer.write(encode_spans(spans))
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._writer.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class OTLPJsonLogExporter(LogRecordExporter):
    """Writes each batch of log records as one ``ExportLogsServiceRequest`` line."""

    def __init__(self, path: Path | JsonLinesWriter) -> None:
        self._writer = path if isinstance(path, JsonLinesWriter) else JsonLinesWriter(path)

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if not batch:
            return LogRecordExportResult.SUCCESS
        ok = self._writer.write(encode_logs(batch))
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        self._writer.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class OTLPJsonMetricExporter(MetricExporter):
    """Writes each metrics collection as one ``ExportMetricsServiceRequest`` line (cumulative
    temporality, like the OTLP exporters' default)."""

    def __init__(self, path: Path | JsonLinesWriter) -> None:
        super().__init__(
            preferred_temporality={},  # SDK default: cumulative for every instrument kind
        )
        self._writer = path if isinstance(path, JsonLinesWriter) else JsonLinesWriter(path)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if not metrics_data.resource_metrics:
            return MetricExportResult.SUCCESS
        ok = self._writer.write(encode_metrics(metrics_data))
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._writer.close()


class OTLPJsonFiles:
    """The three files of one output folder: ``logs.jsonl``, ``traces.jsonl``,
    ``metrics.jsonl``. Exporters of the same signal share one writer."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writers: dict[str, JsonLinesWriter] = {}

    def _writer(self, name: str) -> JsonLinesWriter:
        if name not in self._writers:
            self._writers[name] = JsonLinesWriter(self.folder / name)
        return self._writers[name]

    def span_exporter(self) -> OTLPJsonSpanExporter:
        return OTLPJsonSpanExporter(self._writer(TRACES_FILE))

    def log_exporter(self) -> OTLPJsonLogExporter:
        return OTLPJsonLogExporter(self._writer(LOGS_FILE))

    def metric_exporter(self) -> OTLPJsonMetricExporter:
        return OTLPJsonMetricExporter(self._writer(METRICS_FILE))
