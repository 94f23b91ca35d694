"""Spool building blocks: the active segment file, segment names, the committed cursor, and
the counts (:mod:`.spool` puts them together)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .directory import NEW_FILE_FLAGS

__all__ = [
    "SEGMENT_SUFFIX",
    "Position",
    "SegmentFile",
    "SpoolStats",
    "SpoolWriteError",
    "list_segments",
    "load_cursor",
    "segment_name",
    "write_cursor",
]

_log = logging.getLogger("otel_secaudit")

SEGMENT_SUFFIX: Final = ".seg"
Position = tuple[int, int]  # (segment index, byte offset)


class SpoolWriteError(OSError):
    """A record could not be written (disk full, I/O error); it was refused and counted."""


@dataclass
class SpoolStats:
    """Plain counts (tests, benchmark, health); the same numbers go to the metrics."""

    appended: int = 0
    refused: int = 0
    write_errors: int = 0
    exported: int = 0
    export_failures: int = 0
    torn_regions: int = 0
    torn_bytes: int = 0
    undecodable: int = 0
    #: records the collector reported in partial_success (refused for good, not retried)
    rejected: int = 0
    #: records refused for their size even alone: moved to the dead letter
    dead_lettered: int = 0
    #: batches split because the collector refused them for their size
    splits: int = 0


class SegmentFile:
    """The active segment, open for appending. A seam for fault injection: tests substitute a
    subclass whose ``write`` fails like a full disk."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int:
        """Append ``data``; the number of bytes written (may be short)."""
        return os.write(self.fd, data)

    def truncate(self, size: int) -> None:
        """Cut the file back to ``size`` bytes."""
        os.ftruncate(self.fd, size)

    def sync(self) -> None:
        """fsync the file."""
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the descriptor."""
        os.close(self.fd)


def segment_name(index: int) -> str:
    """The file name of segment ``index``."""
    return f"{index:020d}{SEGMENT_SUFFIX}"


def load_cursor(dir_fd: int, path: Path) -> Position:
    """The committed cursor of the worker directory ``dir_fd`` (``(0, 0)`` when missing or
    unusable: everything is replayed)."""
    try:
        fd = os.open("cursor", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0, 0
    except OSError as exc:  # a symlink planted as "cursor": replay everything instead
        _log.warning("otel_secaudit: spool cursor in %s unusable (%s)", path, exc)
        return 0, 0
    try:
        text = os.read(fd, 64).decode("ascii", "replace").split()
        return int(text[0]), int(text[1])
    except (IndexError, ValueError):
        return 0, 0
    finally:
        os.close(fd)


def write_cursor(dir_fd: int, position: Position) -> None:
    """Persist ``position`` as the committed cursor (atomic replace)."""
    # Atomic replace; not fsynced: losing a cursor update re-sends (at-least-once). The
    # temporary file is created afresh (O_EXCL | O_NOFOLLOW): whatever was planted under
    # its name is unlinked, never written through.
    with contextlib.suppress(FileNotFoundError):
        os.unlink("cursor.tmp", dir_fd=dir_fd)
    fd = os.open("cursor.tmp", os.O_WRONLY | NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, f"{position[0]} {position[1]}\n".encode("ascii"))
    finally:
        os.close(fd)
    os.replace("cursor.tmp", "cursor", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def list_segments(dir_fd: int, path: Path) -> Iterator[tuple[int, int]]:
    """``(index, size)`` of every segment file in the worker directory ``dir_fd`` (anything
    that is not a regular file is ignored, with a warning)."""
    for name in os.listdir(dir_fd):
        stem = name[: -len(SEGMENT_SUFFIX)]
        if not (name.endswith(SEGMENT_SUFFIX) and stem.isdigit()):
            continue
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            _log.warning("otel_secaudit: %s in %s is not a regular file; ignored", name, path)
            continue
        yield int(stem), info.st_size
