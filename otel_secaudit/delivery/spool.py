"""The spool: an append-only, segmented, crash-safe record log with a committed read cursor.

Layout of ``OTEL_SECAUDIT_SPOOL_DIR``: one ``worker-N`` sub-directory per process (claimed with
an exclusive ``flock``, released by the kernel when the process dies, so a restarted worker
reclaims a free one and replays what its predecessor left), holding numbered segment files
``00000000000000000001.seg`` of frames (:mod:`.codec`), the ``cursor`` (segment and offset of
the first record not yet acknowledged) and the ``lock`` file.

Durability:

* :meth:`Spool.append` writes one frame with one ``write()`` before ``record()`` returns: the
  record survives the process being killed. A write that fails or is cut short (disk full) is
  cut off the segment again (``ftruncate`` to the last whole frame) and the record is refused
  and counted, so no torn bytes sit between acknowledged records. If the torn bytes cannot be
  cut off, the segment is sealed and writing goes on in a new one; the reader skips the torn
  region (see below).
* Segments are ``fsync``-ed by a background thread every ``fsync_interval_s`` or once
  ``fsync_every`` records are unsynced, and when rolled or closed (a power loss loses at most
  that window). ``fsync_every=1`` syncs inline on every record.
* The reader resynchronises after a torn or garbage region (a crash mid-write, garbage after a
  power loss): the region is skipped up to the next valid frame and counted
  (:attr:`SpoolStats.torn_regions`), and every complete frame after it is still delivered. A
  restarted process never appends to an old segment.

Security (the README's "Configuration", ``OTEL_SECAUDIT_SPOOL_DIR``; :mod:`.directory`): the
spool directory is created ``0700``; a directory (or worker sub-directory) that is a symlink or
owned by another user is refused with :class:`SpoolDirectoryError`. Every file is opened
relative to the directory's descriptor with ``O_NOFOLLOW`` (new files also ``O_EXCL``), so a
link planted in the directory (say ``cursor.tmp`` pointing at a file of the victim's) is never
followed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from .codec import (
    MAX_RECORD_BYTES,
    Frame,
    encode_frame,
    iter_frames,
)
from .directory import NEW_FILE_FLAGS, SpoolDirectoryError, claim_free_worker_dir, lock_dir
from .segments import (
    Position,
    SegmentFile,
    SpoolStats,
    SpoolWriteError,
    list_segments,
    load_cursor,
    segment_name,
    write_cursor,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "Position",
    "SegmentFile",
    "Spool",
    "SpoolDirectoryError",
    "SpoolStats",
    "SpoolWriteError",
]

_log = logging.getLogger("otel_secaudit")

DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES: Final = 4 * 1024 * 1024
_READ_CHUNK: Final = 256 * 1024


class Spool:
    """An append-only, segmented, crash-safe record log with a committed read cursor.

    Args:
        directory: the spool directory; a numbered worker sub-directory is claimed inside it
            (see module docstring). Pass ``claim_worker_dir=False`` to use it as is.
        max_bytes: size cap of all segment files; appends beyond it are refused.
        segment_bytes: a segment is rolled once it reaches this size.
        fsync_every: fsync once this many records are unsynced (1 = inline on every record).
        fsync_interval_s: fsync unsynced records at least this often (background thread).
        segment_file: wraps the descriptor of the active segment (fault-injection seam).

    Raises:
        SpoolDirectoryError: the directory is a symlink, another user's, or not a directory.
        OSError: it cannot be created, or every worker sub-directory is in use.

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
        segment_file: Callable[[int], SegmentFile] = SegmentFile,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0 or fsync_every <= 0 or fsync_interval_s <= 0:
            raise ValueError("spool sizes and fsync bounds must be positive")
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(4096, max_bytes // 4))
        self.fsync_every = fsync_every
        self.fsync_interval_s = fsync_interval_s
        self.stats = SpoolStats()
        self._segment_file = segment_file
        self._reopen: dict[str, object] = {
            "directory": directory,
            "max_bytes": max_bytes,
            "segment_bytes": segment_bytes,
            "fsync_every": fsync_every,
            "fsync_interval_s": fsync_interval_s,
            "claim_worker_dir": claim_worker_dir,
            "segment_file": segment_file,
        }
        self._lock = threading.Lock()
        self._closed = False
        root = Path(directory)
        self.path, self._dir_fd, self._lock_fd = (
            claim_free_worker_dir(root) if claim_worker_dir else lock_dir(None, root)
        )
        try:
            self._start()
        except BaseException:
            self._close_descriptors()
            raise
        self._syncer = threading.Thread(
            target=self._sync_loop, name="otel_secaudit-spool-fsync", daemon=True
        )
        self._syncer.start()

    def _start(self) -> None:
        self._cursor: Position = load_cursor(self._dir_fd, self.path)
        # index -> size
        self._segments: dict[int, int] = dict(list_segments(self._dir_fd, self.path))
        self._bytes = sum(self._segments.values())
        # Segments wholly before the committed cursor were acknowledged already.
        for index in [i for i in self._segments if i < self._cursor[0]]:
            self._unlink(index)
        self._reader: tuple[int, int] | None = None  # (segment, descriptor)
        self._budget = -1  # bytes left in the current read (-1: no limit)
        self._torn_seen: set[Position] = set()
        self._active = -1  # no active segment while counting what is pending
        self._file: SegmentFile | None = None
        self._depth = self._count_pending()
        # A restarted process never appends to an old segment (its tail may be torn).
        self._active = max([*self._segments, self._cursor[0]], default=0) + 1
        self._file = self._open_segment(self._active)
        self._unsynced = 0
        self._sync_wake = threading.Event()

    # -- writing (request path) ----------------------------------------------------------------

    def append(self, payload: bytes) -> bool:
        """Append one record: True once it was written to the OS, False when refused (full or
        closed). Counted either way.

        Raises:
            SpoolWriteError: the write failed (disk full, I/O error). The record was refused
                and counted, and no partial frame was left between acknowledged records.
        """
        frame = encode_frame(payload)
        with self._lock:
            if (
                self._closed
                or len(payload) > MAX_RECORD_BYTES
                or (self._bytes + len(frame) > self.max_bytes)
            ):
                self.stats.refused += 1
                return False
            try:
                self._write(frame)
            except OSError as exc:
                self.stats.refused += 1
                self.stats.write_errors += 1
                raise SpoolWriteError(exc.errno, f"spool write failed: {exc}") from exc
            self._depth += 1
            self.stats.appended += 1
            self._unsynced += 1
            unsynced = self._unsynced
            if self.fsync_every == 1 and self._file is not None:
                self._file.sync()
                self._unsynced = 0
        if unsynced >= self.fsync_every > 1:
            self._sync_wake.set()
        return True

    def _write(self, frame: bytes) -> None:
        """One frame onto the active segment, or nothing at all (called with the lock held)."""
        if self._file is None or self._segments[self._active] >= self.segment_bytes:
            self._roll()
        assert self._file is not None
        good = self._segments[self._active]
        try:
            written = self._file.write(frame)
            if written != len(frame):  # a short write on a regular file: the disk is full
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(frame)} bytes)")
        except OSError:
            self._cut_torn_tail(good)
            raise
        self._segments[self._active] += written
        self._bytes += written

    def _cut_torn_tail(self, good: int) -> None:
        """Remove a partial frame from the active segment (or seal the segment if that fails,
        leaving the torn region for the reader to skip)."""
        assert self._file is not None
        try:
            self._file.truncate(good)
            return
        except OSError as exc:
            _log.warning(
                "otel_secaudit: cannot cut a torn frame off spool segment %d (%s); sealing it",
                self._active,
                exc,
            )
        try:
            size = os.fstat(self._file.fd).st_size
        except OSError:
            size = good
        self._bytes += max(0, size - good)
        self._segments[self._active] = max(size, good)
        self._close_file()

    def _roll(self) -> None:
        """Close the active segment (if any) and start the next one."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.sync()
            self._close_file()
        self._unsynced = 0
        self._active += 1
        self._file = self._open_segment(self._active)

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _open_segment(self, index: int) -> SegmentFile:
        fd = os.open(
            segment_name(index),
            os.O_WRONLY | os.O_APPEND | NEW_FILE_FLAGS,
            0o600,
            dir_fd=self._dir_fd,
        )
        self._segments[index] = 0
        with contextlib.suppress(OSError):
            os.fsync(self._dir_fd)
        return self._segment_file(fd)

    def _sync_loop(self) -> None:
        while not self._closed:
            self._sync_wake.wait(self.fsync_interval_s)
            self._sync_wake.clear()
            with contextlib.suppress(Exception):
                self.sync()

    def sync(self) -> None:
        """fsync the active segment if records are unsynced (writers are not blocked)."""
        with self._lock:
            if self._closed or not self._unsynced or self._file is None:
                return
            fd = os.dup(self._file.fd)
            self._unsynced = 0
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reading and committing (sender thread) ------------------------------------------------

    @property
    def dir_fd(self) -> int:
        """The worker directory's descriptor (files next to the segments, e.g. the dead
        letter, are opened relative to it)."""
        return self._dir_fd

    @property
    def depth(self) -> int:
        """Records written and not yet acknowledged."""
        return self._depth

    @property
    def size_bytes(self) -> int:
        """Bytes of segment files on disk (what the cap applies to)."""
        return self._bytes

    @property
    def cursor(self) -> Position:
        """The committed position (first record not yet acknowledged)."""
        return self._cursor

    def read(
        self, max_records: int, *, start: Position | None = None, max_bytes: int | None = None
    ) -> tuple[list[bytes], Position]:
        """Up to ``max_records`` payloads from the committed cursor (or ``start``), and the
        position after them (pass it to :meth:`commit` once they were acknowledged). With
        ``max_bytes``, payloads of at most that many bytes in all (but always at least one)."""
        segment, offset = self._cursor if start is None else start
        payloads: list[bytes] = []
        self._budget = max_bytes if max_bytes is not None else -1
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
            offset, consumed = self._read_segment(segment, offset, limit, max_records, payloads)
            later = [i for i in known if i > segment]
            if not consumed or not later:
                break
            segment, offset = later[0], 0
        return payloads, (segment, offset)

    def _read_segment(
        self, segment: int, offset: int, limit: int | None, max_records: int, out: list[bytes]
    ) -> tuple[int, bool]:
        """Append payloads of ``segment`` from ``offset`` to ``out`` (up to ``limit`` bytes for
        the active segment, else to its end); the new offset and whether the segment was
        read to its end."""
        fd = self._reader_for(segment)
        chunk = _READ_CHUNK
        while len(out) < max_records:
            end = os.fstat(fd).st_size if limit is None else limit
            if offset >= end:
                return offset, limit is None
            data = os.pread(fd, min(end - offset, chunk), offset)
            final = limit is None and offset + len(data) >= end
            moved = False
            for frame in iter_frames(data, offset, final=final):
                if frame.payload is not None and self._over_budget(frame.payload, out):
                    return offset, False
                offset, moved = frame.end, True
                if frame.payload is None:
                    self._torn(segment, frame)
                    continue
                out.append(frame.payload)
                if len(out) >= max_records:
                    return offset, False
            if not moved:
                if offset + len(data) >= end:
                    return offset, False  # a frame still being written
                chunk *= 2  # a frame longer than the chunk
        return offset, False

    def _over_budget(self, payload: bytes, out: list[bytes]) -> bool:
        """True when ``payload`` does not fit the byte budget of this :meth:`read` (the first
        payload always fits); else it is charged to the budget."""
        if self._budget < 0:
            return False
        if out and len(payload) > self._budget:
            return True
        self._budget = max(0, self._budget - len(payload))
        return False

    def _torn(self, segment: int, frame: Frame) -> None:
        if (segment, frame.offset) in self._torn_seen:
            return
        self._torn_seen.add((segment, frame.offset))
        self.stats.torn_regions += 1
        self.stats.torn_bytes += frame.end - frame.offset
        _log.warning(
            "otel_secaudit: spool segment %d has %d torn or corrupt bytes at byte %d (a write "
            "cut short by a crash, a full disk or a power loss); skipped, reading goes on after",
            segment,
            frame.end - frame.offset,
            frame.offset,
        )

    def _reader_for(self, segment: int) -> int:
        if self._reader is not None and self._reader[0] == segment:
            return self._reader[1]
        self._close_reader()
        fd = os.open(
            segment_name(segment),
            os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
            dir_fd=self._dir_fd,
        )
        self._reader = (segment, fd)
        return fd

    def _close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(OSError):
                os.close(self._reader[1])
            self._reader = None

    def commit(self, position: Position, count: int) -> None:
        """The ``count`` records before ``position`` were acknowledged: persist the cursor and
        delete segments that are now wholly acknowledged."""
        write_cursor(self._dir_fd, position)
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
            os.unlink(segment_name(index), dir_fd=self._dir_fd)
        with self._lock:
            self._bytes -= self._segments.pop(index, 0)

    # -- cursor and directory ------------------------------------------------------------------

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

    def close(self) -> None:
        """fsync and close the spool (records not yet acknowledged stay for the next start)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.sync()
            self._close_file()
        self._sync_wake.set()
        self._close_reader()
        self._close_descriptors()

    def reopen_after_fork(self) -> Spool:
        """In a forked child: drop the descriptors inherited from the parent (its worker
        directory and lock stay the parent's) and open a spool of this process's own (a free
        worker directory of the same root)."""
        self._closed = True
        self._close_file()  # this process's copies only: the parent's stay open, unsynced
        self._close_reader()
        self._close_descriptors()
        return Spool(**self._reopen)  # type: ignore[arg-type]

    def _close_descriptors(self) -> None:
        for fd in (self._lock_fd, self._dir_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
