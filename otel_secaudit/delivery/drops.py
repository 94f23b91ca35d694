"""Counting the otel_secaudit log records a pipeline fails to deliver (without the spool).

Public OpenTelemetry API only: the plugin does not reach into the application's provider or
its processors. Two sources cover the two ways the SDK loses a record:

* **Export failures**: :class:`DropCountingLogExporter` wraps an exporter. Put it around the
  exporter of your log pipeline (``BatchLogRecordProcessor(DropCountingLogExporter(exporter))``);
  :func:`otel_secaudit.delivery.otlp_exporters` returns a wrapped log exporter already. It
  counts otel_secaudit records of a batch the exporter did not deliver as
  ``otel_secaudit.logs.dropped`` {log_record} with ``error.type=export_failed``.
* **Full batch queue**: the SDK counts these itself (``otel.sdk.processor.log.processed`` with
  ``error.type=queue_full``, SDK >= 1.39, enabled by
  ``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED=true``), for all scopes, not only otel_secaudit's.

Use the spool (``OTEL_SECAUDIT_SPOOL_DIR``) when the audit trail must be complete.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Final

from opentelemetry.metrics import Counter, MeterProvider, get_meter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

from .. import attributes as attr
from ..version import __version__

__all__ = [
    "METRIC_LOGS_DROPPED",
    "DropCountingLogExporter",
    "DropStats",
    "drop_counter",
    "export_succeeded",
]

#: Internal health counter (not in the contract).
METRIC_LOGS_DROPPED: Final = "otel_secaudit.logs.dropped"


class DropStats:
    """In-process drop counts by reason (tests, health)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_reason: dict[str, int] = {}

    def add(self, reason: str, count: int) -> None:
        """Count ``count`` records lost for ``reason``."""
        with self._lock:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + count

    @property
    def total(self) -> int:
        """All counted drops."""
        with self._lock:
            return sum(self.by_reason.values())


def drop_counter(meter_provider: MeterProvider | None = None) -> Counter:
    """The ``otel_secaudit.logs.dropped`` counter (``error.type`` says why: ``export_failed``
    without the spool; with it ``rejected_by_collector`` for a collector's partial success and
    ``dead_letter`` for a record moved to the dead letter)."""
    meter = get_meter(attr.SCOPE_NAME, __version__, meter_provider=meter_provider)
    return meter.create_counter(
        METRIC_LOGS_DROPPED,
        unit="{log_record}",
        description="otel_secaudit log records that were not delivered (error.type says why)",
    )


def export_succeeded(result: object) -> bool:
    """True for an exporter's SUCCESS, by name: the result enum was renamed across SDK releases
    (``LogExportResult`` / ``LogRecordExportResult``) and exporters built against either are
    in use."""
    return getattr(result, "name", None) == "SUCCESS"


def _ours(batch: Sequence[ReadableLogRecord]) -> int:
    return sum(
        1
        for record in batch
        if record.instrumentation_scope is not None
        and record.instrumentation_scope.name == attr.SCOPE_NAME
    )


class DropCountingLogExporter(LogRecordExporter):
    """Delegates to ``inner``; counts the otel_secaudit records of a batch it failed to export
    (a result other than SUCCESS, or an exception, which is re-raised).

    Args:
        inner: the exporter that does the work.
        meter_provider: for ``otel_secaudit.logs.dropped`` (default: the global one).
    """

    def __init__(
        self, inner: LogRecordExporter, *, meter_provider: MeterProvider | None = None
    ) -> None:
        self.inner = inner
        #: Counted drops of this exporter.
        self.drops = DropStats()
        self._counter = drop_counter(meter_provider)

    def _count(self, batch: Sequence[ReadableLogRecord]) -> None:
        count = _ours(batch)
        if count <= 0:
            return
        self.drops.add("export_failed", count)
        with contextlib.suppress(Exception):
            self._counter.add(count, {attr.ERROR_TYPE: "export_failed"})

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """Export through ``inner``, counting our records of a failed batch."""
        try:
            result = self.inner.export(batch)
        except Exception:
            self._count(batch)
            raise
        if not export_succeeded(result):
            self._count(batch)
        return result

    def shutdown(self) -> None:
        """Shut ``inner`` down."""
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush ``inner``."""
        return self.inner.force_flush(timeout_millis)
