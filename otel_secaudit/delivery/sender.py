"""The spooling log record processor and the thread that ships spooled records.

:class:`SpoolingLogRecordProcessor` is the only processor of a dedicated SDK
``LoggerProvider`` (:func:`create_spool_logger_provider`). ``on_emit`` encodes the record
(:mod:`.codec`) and appends it to the :class:`~.spool.Spool` before ``record()`` returns. A
sender thread reads batches from the committed cursor, exports them (instrumentation suppressed,
so the exporter's own HTTP/gRPC calls are not traced), and advances the cursor only after the
collector took the batch. While the collector is down it retries the same batch with
exponential backoff. Delivery is at-least-once; ``log.record.uid`` deduplicates.

No batch can stall delivery (:mod:`.wire`): a batch is at most ``max_batch`` records and
``max_batch_bytes`` encoded (3 MiB, under gRPC's default 4 MiB receive limit); one the
collector refuses for its size (``RESOURCE_EXHAUSTED``, HTTP 413) is split in halves and sent
again at once; a record that is refused alone goes to the dead letter (:mod:`.deadletter`),
counted, and the queue goes on behind it. Records the collector reports in
``partial_success.rejected_log_records`` are counted and warned about once per batch, never
retried (OTLP specification).

Internal metric names (not in the contract): ``otel_secaudit.spool.depth`` {record},
``otel_secaudit.spool.refused`` {record}, ``otel_secaudit.spool.exported`` {record},
``otel_secaudit.spool.export_failures`` {batch}, and ``otel_secaudit.logs.dropped``
{log_record} with ``error.type`` ``rejected_by_collector`` or ``dead_letter``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry._logs import get_logger_provider
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
from opentelemetry.sdk._logs import LoggerProvider as SDKLoggerProvider
from opentelemetry.sdk._logs import LogRecordProcessor, ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter
from opentelemetry.sdk.resources import Resource

from .. import attributes as attr
from ..forks import restart_after_fork
from ..version import __version__
from .codec import decode_record, encode_record, new_record_uid
from .deadletter import DeadLetter
from .drops import drop_counter
from .otlp import otlp_log_exporter
from .spool import DEFAULT_MAX_BYTES, Spool, SpoolWriteError
from .wire import DEFAULT_MAX_REQUEST_BYTES, Outcome, SendResult, log_sender

__all__ = ["SpoolingLogRecordProcessor", "create_spool_logger_provider"]

_log = logging.getLogger("otel_secaudit")

ErrorHandler = Callable[[BaseException, str], None]


class SpoolingLogRecordProcessor(LogRecordProcessor):
    """Spools every emitted record and delivers it from a sender thread.

    Args:
        spool: where records wait for acknowledgement.
        exporter: the exporter (default: :func:`~.exporters.otlp_log_exporter`).
        resource: the Resource of replayed records (default: the global SDK provider's).
        meter_provider: for the spool metrics (default: the global one).
        max_batch: records per export call, at most.
        max_batch_bytes: encoded bytes per export call, at most (a larger batch is split).
        on_error: called with (exception, where) for internal errors (the recorder counts them).
        backoff_initial_s, backoff_max_s: retry delays while the collector is unreachable.
        linger_s: how long the sender waits for a full batch before sending a partial one
            (delivery latency; the SDK batch processor's default is 1 s).
    """

    def __init__(
        self,
        spool: Spool,
        exporter: LogRecordExporter | None = None,
        *,
        resource: Resource | None = None,
        meter_provider: MeterProvider | None = None,
        max_batch: int = 512,
        max_batch_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        on_error: ErrorHandler | None = None,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        linger_s: float = 0.2,
    ) -> None:
        self.spool = spool
        self.exporter = (
            exporter
            if exporter is not None
            else otlp_log_exporter(reconnect_backoff_max_s=backoff_max_s)
        )
        self.resource = resource if resource is not None else global_resource()
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self._sender_of_batches = log_sender(self.exporter, max_batch_bytes)
        #: records per batch now: halved when the collector refuses a batch for its size,
        #: doubled back (up to max_batch) after each delivered one
        self._batch_limit = max_batch
        self._catching_up = False
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.linger_s = linger_s
        self._on_error = on_error
        self._refusal_logged = False
        meter = get_meter("otel_secaudit", __version__, meter_provider=meter_provider)
        meter.create_observable_up_down_counter(
            "otel_secaudit.spool.depth",
            callbacks=[self._observe_depth],
            unit="{record}",
            description="Security log records spooled and not yet acknowledged by the collector",
        )
        self._refused = meter.create_counter(
            "otel_secaudit.spool.refused",
            unit="{record}",
            description="Security log records refused because the spool was full or failing",
        )
        self._exported = meter.create_counter(
            "otel_secaudit.spool.exported",
            unit="{record}",
            description="Spooled security log records acknowledged by the collector",
        )
        self._failures = meter.create_counter(
            "otel_secaudit.spool.export_failures",
            unit="{batch}",
            description="Failed export attempts of spooled records (retried)",
        )
        self._dropped = drop_counter(meter_provider)
        self._pid = os.getpid()
        self._start_sender()
        restart_after_fork(self.after_fork_in_child)

    def _start_sender(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flushing = threading.Event()
        self._idle = threading.Condition()
        self._sender = threading.Thread(
            target=self._send_loop, name="otel_secaudit-spool-sender", daemon=True
        )
        self._sender.start()

    # -- LogRecordProcessor

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:  # type: ignore[override]
        """Append the record to the spool (never raises; a refusal is counted)."""
        try:
            accepted = self.spool.append(encode_record(log_record, new_record_uid()))
        except SpoolWriteError as exc:  # counted as refused by the spool
            accepted = False
            self._error(exc, "spool.append")
        except Exception as exc:  # never raise into record()
            self.spool.stats.refused += 1
            accepted = False
            self._error(exc, "spool.append")
        if accepted:
            if self.spool.depth >= self.max_batch and not self._wake.is_set():
                self._wake.set()
            return
        self._refused.add(1)
        if not self._refusal_logged:
            self._refusal_logged = True
            _log.warning(
                "otel_secaudit: spool %s is full (%d bytes), failing or closed; security log "
                "records are being refused and counted in otel_secaudit.spool.refused",
                self.spool.path,
                self.spool.max_bytes,
            )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every spooled record was acknowledged (or the timeout)."""
        deadline = time.monotonic() + timeout_millis / 1000
        self._flushing.set()
        self._wake.set()
        try:
            with self._idle:
                while self.spool.depth > 0 and not self._stop.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._idle.wait(min(remaining, 0.05))
            return self.spool.depth == 0
        finally:
            self._flushing.clear()

    def shutdown(self, timeout_millis: int = 5000) -> None:  # type: ignore[override]
        """Try to deliver what is spooled for up to ``timeout_millis``, then stop; anything
        left stays on disk and is replayed on the next start."""
        if self._stop.is_set():
            return
        with contextlib.suppress(Exception):
            self.force_flush(timeout_millis)
        self._stop.set()
        self._wake.set()
        with contextlib.suppress(Exception):
            self.exporter.shutdown()  # aborts an exporter's own retry wait
        self._sender.join(timeout=max(1.0, timeout_millis / 1000))
        self.spool.close()

    def after_fork_in_child(self) -> None:
        """In a forked child: leave the parent's worker directory to the parent, claim one of
        this process's own, and start a sender thread (``fork()`` copies no threads). Runs
        from the fork hook this processor registered; once per process."""
        if self._stop.is_set() or self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.spool = self.spool.reopen_after_fork()
        self._start_sender()

    # -- sender

    def _send_loop(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stop.is_set():
            if (
                self.spool.depth < self.max_batch
                and not self._flushing.is_set()
                and not self._catching_up
            ):
                # Linger for a full batch (on_emit wakes us at max_batch): one export call per
                # batch, not one per trickle, keeps the sender's share of the GIL small.
                self._wake.wait(self.linger_s)
                self._wake.clear()
                if self._stop.is_set():
                    break
            try:
                delivered = self._send_one_batch()
            except Exception as exc:  # keep the sender alive whatever happens
                self._error(exc, "spool.send")
                delivered = None
            if delivered:
                backoff = self.backoff_initial_s
                continue
            if delivered is None:  # failed: back off, then retry the same batch
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            else:  # nothing to send
                with self._idle:
                    self._idle.notify_all()

    def _send_one_batch(self) -> int | None:
        """Export one batch; the number of records taken off the spool (delivered, rejected
        by the collector or dead-lettered), 0 when idle, None when the export failed."""
        limit = self._batch_limit
        payloads, position = self.spool.read(limit, max_bytes=self.max_batch_bytes)
        # A split, a dead letter or a batch cut by a limit leaves work queued: no lingering.
        self._catching_up = len(payloads) >= limit or (
            sum(map(len, payloads)) >= self.max_batch_bytes // 2
        )
        if not payloads:
            if position != self.spool.cursor:  # skipped a torn region / empty segment
                self.spool.commit(position, 0)
            return 0
        records = self._decode(payloads)
        result = self._export(records) if records else SendResult(Outcome.DELIVERED)
        if result.outcome is Outcome.RETRY:
            self.spool.stats.export_failures += 1
            self._failures.add(1)
            return None
        if result.outcome in (Outcome.TOO_LARGE, Outcome.INVALID):
            self._catching_up = True
            if len(payloads) > 1:  # split: the first half goes again at once
                self._batch_limit = max(1, len(payloads) // 2)
                self.spool.stats.splits += 1
                return len(payloads)  # "progress": no backoff
            self._dead_letter(payloads[0], result)
        else:
            self._delivered(len(records), result)
        self.spool.commit(position, len(payloads))
        self._batch_limit = min(self.max_batch, self._batch_limit * 2)
        return len(payloads)

    def _delivered(self, count: int, result: SendResult) -> None:
        rejected = min(count, result.rejected)
        self.spool.stats.exported += count - rejected
        self._exported.add(count - rejected)
        if rejected:
            self.spool.stats.rejected += rejected
            self._dropped.add(rejected, {attr.ERROR_TYPE: "rejected_by_collector"})
            _log.warning(
                "otel_secaudit: the collector rejected %d of %d security log records of a batch "
                "(partial success: %s); counted in otel_secaudit.logs.dropped, not retried",
                rejected,
                count,
                result.detail,
            )

    def _dead_letter(self, payload: bytes, result: SendResult) -> None:
        """Move a record the collector refuses even alone out of the queue (kept on disk)."""
        self.spool.stats.dead_lettered += 1
        self._dropped.add(1, {attr.ERROR_TYPE: "dead_letter"})
        try:
            kept = DeadLetter(self.spool.dir_fd).add(payload, result.reason, result.detail)
        except OSError as exc:
            kept = False
            self._error(exc, "spool.dead_letter")
        _log.warning(
            "otel_secaudit: a security log record of %d bytes cannot be delivered (%s); %s, "
            "counted in otel_secaudit.logs.dropped (error.type=dead_letter), and delivery goes "
            "on with the next record",
            len(payload),
            result.detail,
            f"kept in {self.spool.path}/dead-letter" if kept else "dead letter full: dropped",
        )

    def _decode(self, payloads: list[bytes]) -> list[ReadableLogRecord]:
        records = []
        for payload in payloads:
            try:
                records.append(decode_record(payload, self.resource))
            except Exception as exc:  # CRC-valid but undecodable: count, never loop on it
                self.spool.stats.undecodable += 1
                self._error(exc, "spool.decode")
        return records

    def _export(self, records: Sequence[ReadableLogRecord]) -> SendResult:
        try:
            with suppress_instrumentation():
                return self._sender_of_batches.send(records)
        except Exception as exc:
            self._error(exc, "spool.export")
            return SendResult(Outcome.RETRY, detail=str(exc))

    def _observe_depth(self, _options: CallbackOptions) -> Sequence[Observation]:
        return [Observation(self.spool.depth)]

    def _error(self, exc: BaseException, where: str) -> None:
        if self._on_error is not None:
            self._on_error(exc, where)
        else:
            _log.warning("otel_secaudit: %s failed", where, exc_info=exc)


def global_resource() -> Resource:
    """The global SDK LoggerProvider's Resource, else one from ``OTEL_SERVICE_NAME`` /
    ``OTEL_RESOURCE_ATTRIBUTES``."""
    resource = getattr(get_logger_provider(), "resource", None)
    if isinstance(resource, Resource):
        return resource
    return Resource.create()


_PROCESSOR_OPTIONS = (
    "backoff_initial_s",
    "backoff_max_s",
    "linger_s",
    "max_batch",
    "max_batch_bytes",
)


def create_spool_logger_provider(
    directory: str | os.PathLike[str],
    *,
    exporter: LogRecordExporter | None = None,
    meter_provider: MeterProvider | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    on_error: ErrorHandler | None = None,
    **spool_options: Any,
) -> tuple[SDKLoggerProvider, SpoolingLogRecordProcessor]:
    """A dedicated SDK ``LoggerProvider`` whose only processor spools to ``directory``.

    The provider has the global SDK provider's Resource when there is one. ``spool_options`` go
    to :class:`~.spool.Spool` (``segment_bytes``, ``fsync_every``, ``fsync_interval_s``,
    ``segment_file``); ``backoff_initial_s``, ``backoff_max_s``, ``linger_s`` and
    ``max_batch`` to the processor.

    Raises:
        SpoolDirectoryError: the directory is unsafe (symlink, another user's).
        OSError, ValueError, ImportError: it cannot be opened, a bad OTLP protocol, no exporter.
    """
    processor_options = {
        key: spool_options.pop(key) for key in _PROCESSOR_OPTIONS if key in spool_options
    }
    spool = Spool(directory, max_bytes=max_bytes, **spool_options)
    resource = global_resource()
    try:
        processor = SpoolingLogRecordProcessor(
            spool,
            exporter,
            resource=resource,
            meter_provider=meter_provider,
            on_error=on_error,
            **processor_options,
        )
    except BaseException:
        spool.close()
        raise
    provider = SDKLoggerProvider(resource=resource)
    provider.add_log_record_processor(processor)
    return provider, processor
