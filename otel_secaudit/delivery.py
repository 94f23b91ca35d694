"""How security log records leave the process: durable (spool) or counted drops.

:func:`attach` is called once by :class:`otel_secaudit.SecurityRecorder`:

* With ``OTEL_SECAUDIT_SPOOL_DIR`` set (and no explicit ``logger_provider``), the recorder's
  logger is switched to a dedicated SDK ``LoggerProvider`` that spools to disk and delivers
  at-least-once with the dedup key ``log.record.uid`` (see :mod:`otel_secaudit.spool`).
* Without it, records go through the application's global SDK ``LoggerProvider`` and whatever
  processors it has. The SDK (1.45) loses log records in two places and only logs a warning:
  ``BatchProcessor.emit`` evicts the oldest queued record when the queue is full
  (``"Queue full, dropping Log."``), and the OTLP exporter returns ``FAILURE`` after its
  retries (the batch processor ignores the result). :func:`count_drops` makes both countable
  for records of the ``otel_secaudit`` scope as ``otel_secaudit.logs.dropped`` {log_record}
  with ``error.type`` = ``queue_full`` or ``export_failed``. It wraps the exporter of every
  ``BatchLogRecordProcessor`` / ``SimpleLogRecordProcessor`` registered on the provider *at
  the time the recorder is created*, and the batch processor's internal drop hook.

Not covered without the spool (documented limits): processors added to the provider after
the recorder was created, other processor types, a provider that is not the SDK's, records
dropped after ``shutdown()``, and the records still queued when the process is killed. Use
the spool when the audit trail must be complete.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry._logs import LoggerProvider, get_logger_provider
from opentelemetry.metrics import Counter, MeterProvider
from opentelemetry.sdk._logs import LoggerProvider as SDKLoggerProvider
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)

from . import attributes as attr
from .version import __version__

if TYPE_CHECKING:
    from .recorder import SecurityRecorder
    from .spool import SpoolingLogRecordProcessor

__all__ = ["METRIC_LOGS_DROPPED", "Delivery", "DropCountingLogExporter", "attach", "count_drops"]

_log = logging.getLogger("otel_secaudit")

#: Internal health counter (not in the contract).
METRIC_LOGS_DROPPED: Final = "otel_secaudit.logs.dropped"
_WRAPPED: Final = "_otel_secaudit_drop_counting"


class DropStats:
    """In-process drop counts by reason (tests, health)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_reason: dict[str, int] = {}

    def add(self, reason: str, count: int) -> None:
        with self._lock:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + count

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.by_reason.values())


class _DropCounter:
    def __init__(self, counter: Counter, stats: DropStats) -> None:
        self.counter = counter
        self.stats = stats

    def add(self, reason: str, count: int) -> None:
        if count <= 0:
            return
        self.stats.add(reason, count)
        with contextlib.suppress(Exception):
            self.counter.add(count, {attr.ERROR_TYPE: reason})


def _ours(batch: Sequence[ReadableLogRecord]) -> int:
    return sum(
        1
        for record in batch
        if record.instrumentation_scope is not None
        and record.instrumentation_scope.name == attr.SCOPE_NAME
    )


class DropCountingLogExporter(LogRecordExporter):
    """Delegates to ``inner``; counts otel_secaudit records of a batch that failed."""

    def __init__(self, inner: LogRecordExporter, drops: _DropCounter) -> None:
        self.inner = inner
        self._drops = drops
        setattr(self, _WRAPPED, True)

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            result = self.inner.export(batch)
        except Exception:
            self._drops.add("export_failed", _ours(batch))
            raise
        if getattr(result, "name", None) != "SUCCESS":
            self._drops.add("export_failed", _ours(batch))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _QueueDropHook:
    """Stands in for the batch processor's internal metrics object: ``drop_items`` is called
    by ``BatchProcessor.emit`` just before the oldest queued record (the right end of the
    deque) is evicted, so that record's scope tells whether an otel_secaudit record is lost.
    The SDK checks "queue full" without a lock: when its worker pops at that very moment no
    record is evicted but one is counted (as in the SDK's own metric). Over-counting, never
    under-counting."""

    def __init__(self, inner: Any, queue: Any, drops: _DropCounter) -> None:
        self._inner = inner
        self._queue = queue
        self._drops = drops

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        with contextlib.suppress(Exception):
            if error_type == "queue_full" and self._queue:
                self._drops.add("queue_full", _ours([self._queue[-1]]))
        self._inner.drop_items(count, error_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def count_drops(provider: object, counter: Counter, stats: DropStats) -> int:
    """Make drops of otel_secaudit records on ``provider`` countable (see module docstring).

    Returns how many processors are covered (0 when ``provider`` is not an SDK provider).
    Idempotent: processors already covered are left alone.
    """
    if not isinstance(provider, SDKLoggerProvider):
        return 0
    drops = _DropCounter(counter, stats)
    covered = 0
    multi = getattr(provider, "_multi_log_record_processor", None)
    for processor in getattr(multi, "_log_record_processors", ()):
        if isinstance(processor, BatchLogRecordProcessor):
            batch = processor._batch_processor
            if not getattr(batch._exporter, _WRAPPED, False):
                batch._exporter = DropCountingLogExporter(batch._exporter, drops)
                batch._metrics = _QueueDropHook(batch._metrics, batch._queue, drops)
            covered += 1
        elif isinstance(processor, SimpleLogRecordProcessor):
            if not getattr(processor._exporter, _WRAPPED, False):
                processor._exporter = DropCountingLogExporter(processor._exporter, drops)
            covered += 1
    return covered


class Delivery:
    """What :func:`attach` set up for one recorder."""

    def __init__(self, spool: SpoolingLogRecordProcessor | None, drops: DropStats) -> None:
        #: The spooling processor when durable delivery is on.
        self.spool = spool
        #: Counted drops (without the spool).
        self.drops = drops
        self._provider: SDKLoggerProvider | None = None

    @property
    def logger_provider(self) -> SDKLoggerProvider | None:
        """The spool's own LoggerProvider when durable delivery is on (add processors to it to
        see the security records elsewhere too, as the demo does), else None."""
        return self._provider

    def close(self, timeout_millis: int = 5000) -> None:
        """Deliver what is spooled for up to ``timeout_millis``, then stop the spool."""
        if self.spool is not None:
            self.spool.shutdown(timeout_millis)


def attach(
    recorder: SecurityRecorder,
    logger_provider: LoggerProvider | None,
    meter_provider: MeterProvider | None,
) -> Delivery:
    """Set up delivery for ``recorder`` (called from its constructor; never raises)."""
    stats = DropStats()
    delivery = Delivery(None, stats)
    try:
        counter = recorder.meter.create_counter(
            METRIC_LOGS_DROPPED,
            unit="{log_record}",
            description="otel_secaudit log records the OpenTelemetry SDK dropped (not spooled)",
        )
        spool_dir = recorder.settings.spool_dir
        if spool_dir is not None and logger_provider is None:
            from .spool import create_spool_logger_provider

            try:
                provider, processor = create_spool_logger_provider(
                    spool_dir, meter_provider=meter_provider, on_error=recorder.internal_error
                )
            except Exception as exc:
                _log.error(
                    "otel_secaudit: cannot open the spool in %s (%s); security log records go "
                    "through the global LoggerProvider without durable delivery",
                    spool_dir,
                    exc,
                )
                recorder.internal_error(exc, "spool.start")
            else:
                recorder._logger = provider.get_logger(attr.SCOPE_NAME, __version__)
                delivery.spool = processor
                delivery._provider = provider
                return delivery
        count_drops(
            logger_provider if logger_provider is not None else get_logger_provider(),
            counter,
            stats,
        )
    except Exception as exc:  # rule 1: a recorder is always created
        recorder.internal_error(exc, "delivery.attach")
    return delivery
