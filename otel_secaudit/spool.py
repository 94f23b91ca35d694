"""Durable delivery of security log records: a local spool between ``record()`` and the collector.

Enabled by ``OTEL_SECAUDIT_SPOOL_DIR`` (CONTRACT section 5). The OpenTelemetry SDK's batch
processor drops records when its queue is full and the OTLP exporter gives a batch up after its
retries; an audit trail cannot. With the spool on, the recorder emits its log records through a
dedicated SDK ``LoggerProvider`` (same Resource as the global SDK provider, so backends see the
same service) whose only processor is :class:`SpoolingLogRecordProcessor`:

* ``on_emit`` serializes the record (compact JSON) and appends it to the current segment file
  as one ``write()`` of a frame ``[length:u32][crc32:u32][payload]`` before ``record()``
  returns. Once ``write()`` returned the record is in the kernel: it survives the process
  being killed (SIGKILL, OOM kill, crash).
* Power loss: segments are ``fsync``-ed by a background thread every ``fsync_interval_s``
  (default 0.1 s) or as soon as ``fsync_every`` (default 256) records are unsynced, whichever
  comes first, and when a segment is rolled or the spool is closed. A power loss loses at most
  the records of that window. ``fsync_every=1`` syncs inline on every record (slow, exact).
* A sender thread reads frames from the committed cursor, exports them in batches with an OTLP
  log exporter built from the standard ``OTEL_EXPORTER_OTLP_*`` / ``OTEL_EXPORTER_OTLP_LOGS_*``
  variables (gRPC or HTTP/protobuf per ``OTEL_EXPORTER_OTLP[_LOGS]_PROTOCOL``), and only after
  the exporter returned SUCCESS advances the cursor (persisted atomically with a rename) and
  deletes fully acknowledged segments. While the collector is down it retries the same batch
  with exponential backoff (0.1 s doubling up to 5 s).
* On restart the spool is replayed from the committed cursor. A torn frame (a write cut short
  by a crash, or garbage after a power loss) fails its length or CRC check; the rest of that
  segment is skipped and counted, and reading continues with the next segment (a restarted
  process always writes to a new segment).
* Size cap ``max_bytes`` (default 256 MiB, ``OTEL_SECAUDIT_SPOOL_MAX_BYTES``): when full, new
  records are refused and counted (``otel_secaudit.spool.refused``, a warning is logged),
  never silently dropped. ``otel_secaudit.spool.depth`` reports the records waiting.

Delivery is **at-least-once**: a crash between the collector's acknowledgement and the cursor
commit re-sends that batch after restart. Every spooled record therefore carries a unique
``log.record.uid`` attribute (semantic conventions; 32 hex digits, time-ordered) so the
backend or a query can deduplicate: after dedup on ``log.record.uid`` delivery is exactly once.

Several processes may share one ``OTEL_SECAUDIT_SPOOL_DIR`` (uvicorn/gunicorn workers): each
claims a numbered sub-directory with an exclusive ``flock``; a restarted worker reclaims a free
one and replays what its predecessor left. Create the recorder after forking.

Internal metric names (not in the contract): ``otel_secaudit.spool.depth`` {record},
``otel_secaudit.spool.refused`` {record}, ``otel_secaudit.spool.exported`` {record},
``otel_secaudit.spool.export_failures`` {batch}.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber, get_logger_provider
from opentelemetry.context import (
    _SUPPRESS_INSTRUMENTATION_KEY,
    Context,
    attach,
    detach,
    set_value,
)
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
from opentelemetry.sdk._logs import (
    LoggerProvider as SDKLoggerProvider,
)
from opentelemetry.sdk._logs import (
    LogRecordProcessor,
    ReadableLogRecord,
    ReadWriteLogRecord,
)
from opentelemetry.sdk._logs.export import LogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from .version import __version__

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LOG_RECORD_UID",
    "Spool",
    "SpoolStats",
    "SpoolingLogRecordProcessor",
    "build_otlp_log_exporter",
    "create_spool_logger_provider",
]

_log = logging.getLogger("otel_secaudit")

#: Semantic-convention attribute carrying the dedup key of a spooled record.
LOG_RECORD_UID: Final = "log.record.uid"
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES: Final = 4 * 1024 * 1024
MAX_RECORD_BYTES: Final = 4 * 1024 * 1024
MAX_BYTES_ENV: Final = "OTEL_SECAUDIT_SPOOL_MAX_BYTES"
_HEADER: Final = struct.Struct("<II")  # payload length, crc32(payload)
_SEGMENT_SUFFIX: Final = ".seg"
_MAX_WORKER_DIRS: Final = 256

Position = tuple[int, int]  # (segment index, byte offset)


@dataclass
class SpoolStats:
    """Plain counts (tests, benchmark, health); the same numbers go to the metrics."""

    appended: int = 0
    refused: int = 0
    exported: int = 0
    export_failures: int = 0
    torn_segments: int = 0
    undecodable: int = 0


class Spool:
    """An append-only, segmented, crash-safe record log with a committed read cursor.

    Args:
        directory: the spool directory; a numbered worker sub-directory is claimed inside it
            (see module docstring). Pass ``claim_worker_dir=False`` to use it as is.
        max_bytes: size cap of all segment files; appends beyond it are refused.
        segment_bytes: a segment is rolled once it reaches this size.
        fsync_every: fsync once this many records are unsynced (1 = inline on every record).
        fsync_interval_s: fsync unsynced records at least this often (background thread).

    Thread-safe: any number of writers, one reader (the sender).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync_every: int = 256,
        fsync_interval_s: float = 0.1,
        claim_worker_dir: bool = True,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0 or fsync_every <= 0 or fsync_interval_s <= 0:
            raise ValueError("spool sizes and fsync bounds must be positive")
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(4096, max_bytes // 4))
        self.fsync_every = fsync_every
        self.fsync_interval_s = fsync_interval_s
        self.stats = SpoolStats()
        self._lock = threading.Lock()
        self._closed = False
        self.path, self._lock_fd = _claim(root) if claim_worker_dir else _lock_dir(root)

        self._cursor: Position = self._load_cursor()
        self._segments: dict[int, int] = {}  # index -> size in bytes
        for entry in self.path.iterdir():
            stem = entry.name[: -len(_SEGMENT_SUFFIX)]
            if entry.name.endswith(_SEGMENT_SUFFIX) and stem.isdigit():
                self._segments[int(stem)] = entry.stat().st_size
        # Segments wholly before the committed cursor were acknowledged already.
        self._bytes = sum(self._segments.values())
        for index in [i for i in self._segments if i < self._cursor[0]]:
            self._unlink(index)
        self._reader: tuple[int, BinaryIO] | None = None
        self._torn_seen: set[Position] = set()
        self._active = -1  # no active segment while counting what is pending
        self._depth = self._count_pending()
        # A restarted process never appends to an old segment (its tail may be torn).
        self._active = max([*self._segments, self._cursor[0]], default=0) + 1
        self._fd = self._open_segment(self._active)
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self._sync_wake = threading.Event()
        self._syncer = threading.Thread(
            target=self._sync_loop, name="otel_secaudit-spool-fsync", daemon=True
        )
        self._syncer.start()

    # -- writing (request path) ----------------------------------------------------------------

    def append(self, payload: bytes) -> bool:
        """Append one record; True once it was written to the OS, False when refused (full or
        closed). Counted either way."""
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if (
                self._closed
                or len(payload) > MAX_RECORD_BYTES
                or (self._bytes + len(frame) > self.max_bytes)
            ):
                self.stats.refused += 1
                return False
            if self._segments[self._active] >= self.segment_bytes:
                self._roll()
            written = os.write(self._fd, frame)
            if written != len(frame):  # a short write on a regular file means the disk is full
                raise OSError(f"short write to spool segment ({written} of {len(frame)} bytes)")
            self._segments[self._active] += written
            self._bytes += written
            self._depth += 1
            self.stats.appended += 1
            self._unsynced += 1
            unsynced = self._unsynced
            if self.fsync_every == 1:
                os.fsync(self._fd)
                self._unsynced = 0
        if unsynced >= self.fsync_every > 1:
            self._sync_wake.set()
        return True

    def _roll(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._unsynced = 0
        self._active += 1
        self._fd = self._open_segment(self._active)

    def _open_segment(self, index: int) -> int:
        fd = os.open(self._segment_path(index), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments[index] = os.fstat(fd).st_size
        _fsync_dir(self.path)
        return fd

    def _sync_loop(self) -> None:
        while not self._closed:
            self._sync_wake.wait(self.fsync_interval_s)
            self._sync_wake.clear()
            with contextlib.suppress(Exception):
                self.sync()

    def sync(self) -> None:
        """fsync the active segment if records are unsynced (writers are not blocked)."""
        with self._lock:
            if self._closed or not self._unsynced:
                return
            fd = os.dup(self._fd)
            self._unsynced = 0
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reading and committing (sender thread) ------------------------------------------------

    @property
    def depth(self) -> int:
        """Records written and not yet acknowledged."""
        return self._depth

    @property
    def size_bytes(self) -> int:
        """Bytes of segment files on disk (what the cap applies to)."""
        return self._bytes

    def read(
        self, max_records: int, *, start: Position | None = None
    ) -> tuple[list[bytes], Position]:
        """Up to ``max_records`` payloads from the committed cursor (or ``start``), and the
        position after them (pass it to :meth:`commit` once they were acknowledged)."""
        segment, offset = self._cursor if start is None else start
        payloads: list[bytes] = []
        while len(payloads) < max_records:
            with self._lock:
                active, active_end = self._active, self._segments.get(self._active, 0)
                known = sorted(i for i in self._segments if i >= segment)
            if segment not in self._segments:
                if not known:
                    break
                segment, offset = known[0], 0
                continue
            limit = active_end if segment == active else None
            offset, complete = self._read_frames(segment, offset, limit, max_records, payloads)
            if segment == active or not complete:
                break
            # A finished segment is read to its end (or to a torn frame): go on with the next.
            later = [i for i in known if i > segment]
            if not later:
                break
            segment, offset = later[0], 0
        return payloads, (segment, offset)

    def _read_frames(
        self, segment: int, offset: int, limit: int | None, max_records: int, out: list[bytes]
    ) -> tuple[int, bool]:
        """Append frames of ``segment`` from ``offset`` to ``out``; returns the new offset and
        whether the segment was consumed (end or torn tail reached)."""
        handle = self._reader_for(segment)
        handle.seek(offset)
        while len(out) < max_records:
            if limit is not None and offset + _HEADER.size > limit:
                return offset, False
            header = handle.read(_HEADER.size)
            if len(header) < _HEADER.size:
                if header:
                    self._torn(segment, offset)
                return offset, True
            length, crc = _HEADER.unpack(header)
            end = offset + _HEADER.size + length
            if limit is not None and end > limit:
                return offset, False
            payload = handle.read(length) if length <= MAX_RECORD_BYTES else b""
            if len(payload) != length or zlib.crc32(payload) != crc:
                self._torn(segment, offset)
                return offset, True
            out.append(payload)
            offset = end
        return offset, False

    def _torn(self, segment: int, offset: int) -> None:
        if (segment, offset) in self._torn_seen:
            return
        self._torn_seen.add((segment, offset))
        self.stats.torn_segments += 1
        _log.warning(
            "otel_secaudit: spool segment %d has a torn or corrupt frame at byte %d "
            "(a write cut short by a crash or power loss); skipping the rest of it",
            segment,
            offset,
        )

    def _reader_for(self, segment: int) -> BinaryIO:
        if self._reader is not None and self._reader[0] == segment:
            return self._reader[1]
        self._close_reader()
        handle = open(self._segment_path(segment), "rb")  # noqa: SIM115 - kept open across reads
        self._reader = (segment, handle)
        return handle

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader[1].close()
            self._reader = None

    def commit(self, position: Position, count: int) -> None:
        """The ``count`` records before ``position`` were acknowledged: persist the cursor and
        delete segments that are now wholly acknowledged."""
        self._write_cursor(position)
        with self._lock:
            self._cursor = position
            self._depth = max(0, self._depth - count)
            done = [i for i in self._segments if i < position[0] and i != self._active]
        if done and self._reader is not None and self._reader[0] in done:
            self._close_reader()
        for index in done:
            self._unlink(index)

    def _unlink(self, index: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._segment_path(index).unlink()
        with self._lock:
            self._bytes -= self._segments.pop(index, 0)

    # -- cursor ------------------------------------------------------------------------------

    def _load_cursor(self) -> Position:
        try:
            text = (self.path / "cursor").read_text("ascii").split()
            return int(text[0]), int(text[1])
        except (FileNotFoundError, IndexError, ValueError):
            return 0, 0

    def _write_cursor(self, position: Position) -> None:
        # Atomic replace; not fsynced: losing a cursor update re-sends (at-least-once).
        temporary = self.path / "cursor.tmp"
        temporary.write_text(f"{position[0]} {position[1]}\n", "ascii")
        os.replace(temporary, self.path / "cursor")

    def _count_pending(self) -> int:
        """Valid frames from the committed cursor to the end (start-up only)."""
        count, position = 0, self._cursor
        while True:
            payloads, after = self.read(4096, start=position)
            count += len(payloads)
            if not payloads:
                break
            position = after
        self._close_reader()
        return count

    def _segment_path(self, index: int) -> Path:
        return self.path / f"{index:020d}{_SEGMENT_SUFFIX}"

    def close(self) -> None:
        """fsync and close the spool (records not yet acknowledged stay for the next start)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
        self._sync_wake.set()
        self._close_reader()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


def _lock_dir(path: Path) -> tuple[Path, int]:
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return path, fd


def _claim(root: Path) -> tuple[Path, int]:
    """Claim the first free worker sub-directory of ``root`` (exclusive flock, released by
    the kernel when the process dies)."""
    for number in range(_MAX_WORKER_DIRS):
        try:
            return _lock_dir(root / f"worker-{number}")
        except BlockingIOError:
            continue
    raise OSError(f"all {_MAX_WORKER_DIRS} spool worker directories in {root} are in use")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Record serialization


def _json_default(value: object) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


_dumps = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode


def new_record_uid() -> str:
    """A unique, time-ordered dedup key: 48-bit milliseconds + 80 random bits, 32 hex digits
    (the layout of a ULID, hex-encoded)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def encode_record(record: ReadWriteLogRecord | ReadableLogRecord, uid: str) -> bytes:
    """One log record as a compact JSON spool payload, with ``log.record.uid`` added."""
    log = record.log_record
    attributes = dict(log.attributes) if log.attributes else {}
    attributes[LOG_RECORD_UID] = uid
    scope = record.instrumentation_scope
    return _dumps(
        {
            "t": log.timestamp,
            "o": log.observed_timestamp,
            "ti": log.trace_id or 0,
            "si": log.span_id or 0,
            "tf": int(log.trace_flags or 0),
            "sn": log.severity_number.value if log.severity_number is not None else None,
            "st": log.severity_text,
            "b": log.body,
            "a": attributes,
            "e": log.event_name,
            "sc": [scope.name, scope.version] if scope is not None else None,
        }
    ).encode("utf-8")


def decode_record(payload: bytes, resource: Resource) -> ReadableLogRecord:
    """The exportable record of a spool payload (see :func:`encode_record`)."""
    data = json.loads(payload)
    context = Context()
    if data["ti"] and data["si"]:
        span_context = SpanContext(
            data["ti"], data["si"], is_remote=False, trace_flags=TraceFlags(data["tf"])
        )
        context = trace.set_span_in_context(NonRecordingSpan(span_context), context)
    number = data["sn"]
    log = LogRecord(
        timestamp=data["t"],
        observed_timestamp=data["o"],
        context=context,
        severity_text=data["st"],
        severity_number=SeverityNumber(number) if number is not None else None,
        body=data["b"],
        attributes=data["a"],
        event_name=data["e"],
    )
    scope = data["sc"]
    return ReadableLogRecord(
        log_record=log,
        resource=resource,
        instrumentation_scope=InstrumentationScope(scope[0], scope[1]) if scope else None,
    )


# --------------------------------------------------------------------------------------------
# Exporter from the standard OTEL_EXPORTER_OTLP_* variables


def build_otlp_log_exporter(environ: dict[str, str] | None = None) -> LogRecordExporter:
    """An OTLP log exporter configured like the SDK's own: protocol from
    ``OTEL_EXPORTER_OTLP_LOGS_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc`` default,
    ``http/protobuf``); endpoint, headers, timeout, TLS and compression are read by the exporter
    itself from ``OTEL_EXPORTER_OTLP[_LOGS]_*``."""
    env = os.environ if environ is None else environ
    protocol = env.get("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    protocol = protocol.strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    else:
        if protocol != "http/protobuf":
            _log.warning(
                "otel_secaudit: OTLP protocol %r is not supported by the spool; using "
                "http/protobuf",
                protocol[:40],
            )
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # type: ignore[assignment]
            OTLPLogExporter,
        )
    return OTLPLogExporter()


# --------------------------------------------------------------------------------------------
# Processor and sender


class SpoolingLogRecordProcessor(LogRecordProcessor):
    """Spools every emitted record (see module docstring) and delivers it from a sender thread.

    Args:
        spool: where records wait for acknowledgement.
        exporter: the exporter (default: :func:`build_otlp_log_exporter`).
        resource: the Resource of replayed records (default: the global SDK provider's).
        meter_provider: for the spool metrics (default: the global one).
        max_batch: records per export call.
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
        on_error: Callable[[BaseException, str], None] | None = None,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        linger_s: float = 0.2,
    ) -> None:
        self.spool = spool
        self.exporter = exporter if exporter is not None else build_otlp_log_exporter()
        self.resource = resource if resource is not None else _global_resource()
        self.max_batch = max_batch
        self._on_error = on_error
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._refusal_logged = False
        self.linger_s = linger_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flushing = threading.Event()
        self._idle = threading.Condition()
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
            description="Security log records refused because the spool was full",
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
        self._sender = threading.Thread(
            target=self._send_loop, name="otel_secaudit-spool-sender", daemon=True
        )
        self._sender.start()

    # -- LogRecordProcessor

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:  # type: ignore[override]
        try:
            accepted = self.spool.append(encode_record(log_record, new_record_uid()))
        except Exception as exc:  # rule 1: never raise into record()
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
                "otel_secaudit: spool %s is full (%d bytes) or closed; security log records are "
                "being refused and counted in otel_secaudit.spool.refused",
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

    # -- sender

    def _send_loop(self) -> None:
        backoff = self._backoff_initial
        while not self._stop.is_set():
            if self.spool.depth < self.max_batch and not self._flushing.is_set():
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
                backoff = self._backoff_initial
                continue
            if delivered is None:  # failed: back off, then retry the same batch
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_max)
            else:  # nothing to send
                with self._idle:
                    self._idle.notify_all()

    def _send_one_batch(self) -> int | None:
        """Export one batch; the number delivered, 0 when idle, None when the export failed."""
        payloads, position = self.spool.read(self.max_batch)
        if not payloads:
            if position != self.spool._cursor:  # skipped a torn tail / empty segment
                self.spool.commit(position, 0)
            return 0
        records = []
        for payload in payloads:
            try:
                records.append(decode_record(payload, self.resource))
            except Exception as exc:  # CRC-valid but undecodable: count, never loop on it
                self.spool.stats.undecodable += 1
                self._error(exc, "spool.decode")
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            result = self.exporter.export(records) if records else None
        except Exception as exc:
            self._error(exc, "spool.export")
            result = None
        finally:
            detach(token)
        if records and getattr(result, "name", None) != "SUCCESS":
            self.spool.stats.export_failures += 1
            self._failures.add(1)
            return None
        self.spool.commit(position, len(payloads))
        self.spool.stats.exported += len(records)
        self._exported.add(len(records))
        return len(payloads)

    def _observe_depth(self, _options: CallbackOptions) -> Sequence[Observation]:
        return [Observation(self.spool.depth)]

    def _error(self, exc: BaseException, where: str) -> None:
        if self._on_error is not None:
            self._on_error(exc, where)
        else:
            _log.warning("otel_secaudit: %s failed", where, exc_info=exc)


def _global_resource() -> Resource:
    provider = get_logger_provider()
    resource = getattr(provider, "resource", None)
    if isinstance(resource, Resource):
        return resource
    return Resource.create()


def _env_max_bytes() -> int:
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
        if value <= 0:
            raise ValueError
        return value
    except ValueError:
        _log.warning(
            "otel_secaudit: %s=%r is not a positive integer; using %d",
            MAX_BYTES_ENV,
            raw[:40],
            DEFAULT_MAX_BYTES,
        )
        return DEFAULT_MAX_BYTES


def create_spool_logger_provider(
    directory: str | os.PathLike[str],
    *,
    exporter: LogRecordExporter | None = None,
    meter_provider: MeterProvider | None = None,
    max_bytes: int | None = None,
    on_error: Callable[[BaseException, str], None] | None = None,
    **spool_options: Any,
) -> tuple[SDKLoggerProvider, SpoolingLogRecordProcessor]:
    """A dedicated SDK ``LoggerProvider`` whose only processor spools to ``directory``.

    The provider has the global SDK provider's Resource when there is one (else the Resource
    from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``). ``spool_options`` go to
    :class:`Spool` (``segment_bytes``, ``fsync_every``, ``fsync_interval_s``).
    """
    spool = Spool(
        directory,
        max_bytes=max_bytes if max_bytes is not None else _env_max_bytes(),
        **spool_options,
    )
    resource = _global_resource()
    try:
        processor = SpoolingLogRecordProcessor(
            spool, exporter, resource=resource, meter_provider=meter_provider, on_error=on_error
        )
    except Exception:
        spool.close()
        raise
    provider = SDKLoggerProvider(resource=resource)
    provider.add_log_record_processor(processor)
    return provider, processor
