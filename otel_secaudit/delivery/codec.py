"""Spool record framing and encoding.

A spool segment is a sequence of frames ``[magic:4][length:u32][crc32:u32][payload]``; the CRC
covers the length field and the payload, so a frame whose length was torn fails its check.
The magic lets a reader resynchronise after a torn or garbage region (a write cut short by a
full disk or a crash, garbage left by a power loss): it scans forward to the next magic that
starts a frame with a valid CRC. Segments written before the magic existed (``[length][crc]``
frames, CRC over the payload only) are still read, without resynchronisation.

The payload is one log record as compact JSON (:func:`encode_record` / :func:`decode_record`),
carrying the dedup key ``log.record.uid``.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

__all__ = [
    "FRAME_MAGIC",
    "HEADER_SIZE",
    "LOG_RECORD_UID",
    "MAX_RECORD_BYTES",
    "Frame",
    "decode_record",
    "encode_frame",
    "encode_record",
    "iter_frames",
    "new_record_uid",
]

#: Semantic-convention attribute carrying the dedup key of a spooled record.
LOG_RECORD_UID: Final = "log.record.uid"
#: Largest payload a frame may carry (a longer record is refused, never truncated).
MAX_RECORD_BYTES: Final = 4 * 1024 * 1024
FRAME_MAGIC: Final = b"\xa5SQ\x01"
_LENGTH: Final = struct.Struct("<I")
_CRC: Final = struct.Struct("<I")
HEADER_SIZE: Final = len(FRAME_MAGIC) + _LENGTH.size + _CRC.size


def encode_frame(payload: bytes) -> bytes:
    """One frame carrying ``payload``."""
    length = _LENGTH.pack(len(payload))
    return FRAME_MAGIC + length + _CRC.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


@dataclass(frozen=True)
class Frame:
    """What :func:`iter_frames` found at ``offset``: a payload (``payload`` set, ``end`` after
    it), or a damaged region ``[offset, end)`` that was skipped (``payload`` None)."""

    offset: int
    end: int
    payload: bytes | None


def _valid_at(data: bytes | memoryview, offset: int) -> int | None:
    """The end of a valid frame starting at ``offset``, else None."""
    if bytes(data[offset : offset + len(FRAME_MAGIC)]) != FRAME_MAGIC:
        return None
    start = offset + len(FRAME_MAGIC)
    length_bytes = bytes(data[start : start + _LENGTH.size])
    if len(length_bytes) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(length_bytes)
    end = offset + HEADER_SIZE + length
    if length > MAX_RECORD_BYTES or end > len(data):
        return None
    (crc,) = _CRC.unpack(data[start + _LENGTH.size : offset + HEADER_SIZE])
    if zlib.crc32(data[offset + HEADER_SIZE : end], zlib.crc32(length_bytes)) != crc:
        return None
    return end


def _resync(data: bytes, offset: int, final: bool) -> int:
    """The offset of the next frame after ``offset``: a valid one, or (``final`` False) one
    that may still be incomplete in ``data``; else ``len(data)``."""
    position = offset + 1
    while True:
        position = data.find(FRAME_MAGIC, position)
        if position < 0:
            # A magic cut by the end of ``data`` may start a frame: do not skip past it.
            tail = len(data) - len(FRAME_MAGIC) + 1
            if not final:
                for start in range(max(offset + 1, tail), len(data)):
                    if FRAME_MAGIC.startswith(data[start:]):
                        return start
            return len(data)
        if _valid_at(data, position) is not None:
            return position
        if not final and _may_be_incomplete(memoryview(data), position):
            return position
        position += 1


def iter_frames(data: bytes, offset: int = 0, *, final: bool) -> Iterator[Frame]:
    """Frames of ``data`` (segment bytes read from ``offset``; offsets are relative to it).

    ``final``: ``data`` is the whole rest of a segment nobody appends to any more, so an
    incomplete frame at the end is a torn write (reported as a damaged region) rather than a
    frame still being written (where the iteration simply stops). A damaged region in the
    middle is skipped up to the next valid frame.
    """
    view = memoryview(data)
    size = len(data)
    position = 0
    while position < size:
        end = _valid_at(view, position)
        if end is not None:
            yield Frame(offset + position, offset + end, bytes(view[position + HEADER_SIZE : end]))
            position = end
            continue
        if not final and _may_be_incomplete(view, position):
            return
        skip_to = _resync(data, position, final)
        yield Frame(offset + position, offset + skip_to, None)
        position = skip_to


def _may_be_incomplete(data: memoryview, position: int) -> bool:
    """True when the bytes at ``position`` are a prefix of a frame still being written."""
    rest = bytes(data[position : position + HEADER_SIZE])
    if len(rest) < len(FRAME_MAGIC):
        return FRAME_MAGIC.startswith(rest)
    if rest[: len(FRAME_MAGIC)] != FRAME_MAGIC:
        return False
    if len(rest) < len(FRAME_MAGIC) + _LENGTH.size:
        return True
    (length,) = _LENGTH.unpack_from(rest, len(FRAME_MAGIC))
    return length <= MAX_RECORD_BYTES and position + HEADER_SIZE + length > len(data)


# --------------------------------------------------------------------------------------------
# Record encoding


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
