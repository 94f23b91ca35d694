"""The dead letter: spooled records the collector can never accept, kept on disk and counted.

A record alone in a batch that the collector still refuses for its size (gRPC
``RESOURCE_EXHAUSTED``, HTTP 413, or an encoding over the request limit), or that cannot be
encoded at all (a lone surrogate in a record spooled by an older version), would otherwise be
retried forever in front of the queue. It is moved here instead: appended to ``dead-letter``
in the worker directory of the spool (created ``0600`` with ``O_NOFOLLOW``, relative to the
directory's descriptor, like every spool file), in the spool's frame format (:mod:`.codec`),
each frame a JSON object ``{"reason": ..., "detail": ..., "at": <unix ns>, "bytes": ...,
"record": <the spool payload>}``. The records were redacted before they were spooled: the file
holds nothing the collector would not have received. The spool then goes on with the next
record.

``otel-secaudit report`` prints how many records sit in the dead letters of
``OTEL_SECAUDIT_SPOOL_DIR`` (:func:`dead_letter_summary`, :func:`dead_letter_lines`); the file
is kept until an operator deals with it (its records can be replayed with any OTLP client).
Its size is capped (:data:`DEFAULT_MAX_DEAD_LETTER_BYTES`); a record beyond the cap is dropped,
counted and logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .codec import encode_frame, iter_frames

__all__ = [
    "DEAD_LETTER_FILE",
    "DEFAULT_MAX_DEAD_LETTER_BYTES",
    "DeadLetter",
    "DeadLetterSummary",
    "dead_letter_lines",
    "dead_letter_summary",
]

DEAD_LETTER_FILE: Final = "dead-letter"
DEFAULT_MAX_DEAD_LETTER_BYTES: Final = 64 * 1024 * 1024
# O_NONBLOCK: a FIFO planted under the name must not hang the sender (or the report).
_OPEN_FLAGS: Final = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
)
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_MAX_READ_BYTES: Final = 256 * 1024 * 1024


class DeadLetter:
    """Appends undeliverable records to ``dead-letter`` in a spool worker directory.

    Args:
        dir_fd: the worker directory's descriptor (the spool's; not closed here).
        max_bytes: size cap of the file.
    """

    def __init__(self, dir_fd: int, max_bytes: int = DEFAULT_MAX_DEAD_LETTER_BYTES) -> None:
        self._dir_fd = dir_fd
        self.max_bytes = max_bytes

    def add(self, payload: bytes, reason: str, detail: str = "") -> bool:
        """Keep ``payload`` (a spool payload) with ``reason`` (a few stable words: who refused
        it) and ``detail`` (the collector's message); False when the file is full.

        Raises:
            OSError: the file cannot be written (the caller counts and logs it).
        """
        entry = (
            b'{"reason":'
            + json.dumps(reason[:100]).encode("ascii")
            + b',"detail":'
            + json.dumps(detail[:300]).encode("ascii")
            + b',"at":'
            + str(time.time_ns()).encode("ascii")
            + b',"bytes":'
            + str(len(payload)).encode("ascii")
            + b',"record":'
            + payload
            + b"}"
        )
        frame = encode_frame(entry)
        fd = os.open(DEAD_LETTER_FILE, _OPEN_FLAGS, 0o600, dir_fd=self._dir_fd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                raise OSError(f"{DEAD_LETTER_FILE} is not a regular file of this user")
            if info.st_size + len(frame) > self.max_bytes:
                return False
            os.fchmod(fd, 0o600)
            written = os.write(fd, frame)
            if written != len(frame):  # a full disk: cut the torn frame off again
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, info.st_size)
                raise OSError(f"short write to {DEAD_LETTER_FILE} ({written} of {len(frame)})")
            os.fsync(fd)
        finally:
            os.close(fd)
        return True


@dataclass
class DeadLetterSummary:
    """What the dead letters of a spool directory hold."""

    records: int = 0
    bytes: int = 0
    files: list[Path] = field(default_factory=list)
    #: records per reason (the collector's words, cut short)
    reasons: dict[str, int] = field(default_factory=dict)
    #: records per event name
    events: dict[str, int] = field(default_factory=dict)
    #: files that could not be read, with why
    problems: list[str] = field(default_factory=list)


def _dead_letter_files(spool_dir: Path) -> Iterator[Path]:
    candidates = [spool_dir / DEAD_LETTER_FILE]
    with contextlib.suppress(OSError):
        candidates += sorted(p / DEAD_LETTER_FILE for p in spool_dir.glob("worker-*"))
    for path in candidates:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                yield path


def _read(path: Path) -> bytes:
    fd = os.open(path, _READ_FLAGS)
    try:
        chunks, total = [], 0
        while total < _MAX_READ_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _count_entry(summary: DeadLetterSummary, payload: bytes) -> None:
    summary.records += 1
    try:
        entry = json.loads(payload)
        reason = str(entry.get("reason", "?"))[:80]
        event = str((entry.get("record") or {}).get("e") or "?")[:80]
    except (ValueError, AttributeError):
        reason, event = "unreadable entry", "?"
    summary.reasons[reason] = summary.reasons.get(reason, 0) + 1
    summary.events[event] = summary.events.get(event, 0) + 1


def dead_letter_summary(spool_dir: str | os.PathLike[str]) -> DeadLetterSummary:
    """Count the records in the dead letters under ``spool_dir`` (its worker directories).
    Never raises: unreadable files are listed in ``problems``."""
    summary = DeadLetterSummary()
    for path in _dead_letter_files(Path(spool_dir)):
        try:
            data = _read(path)
        except OSError as exc:
            summary.problems.append(f"{path}: {exc.strerror or exc}")
            continue
        summary.files.append(path)
        summary.bytes += len(data)
        for frame in iter_frames(data, 0, final=True):
            if frame.payload is not None:
                _count_entry(summary, frame.payload)
    return summary


def dead_letter_lines(spool_dir: str | os.PathLike[str] | None) -> list[str]:
    """The report's lines about the dead letters of ``spool_dir`` (none when there is no
    spool directory or nothing in its dead letters)."""
    if spool_dir is None or not str(spool_dir).strip():
        return []
    summary = dead_letter_summary(spool_dir)
    lines = [f"dead letter: cannot read {problem}" for problem in summary.problems]
    if not summary.records:
        return lines
    reasons = ", ".join(f"{reason} x{count}" for reason, count in sorted(summary.reasons.items()))
    events = ", ".join(f"{name} x{count}" for name, count in sorted(summary.events.items()))
    lines.append(
        f"Undeliverable: {summary.records} security log records in the dead letter "
        f"({summary.bytes} bytes; each refused alone: {reasons})"
    )
    lines.append(f"  events: {events}")
    lines += [f"  kept in {path}" for path in summary.files]
    return lines
