"""The hand-off from the request path to the detector's worker thread.

:meth:`HandOff.offer` is what a request pays: a length test and a ``deque.append`` (atomic in
CPython, no lock). One daemon thread takes up to ``batch_size`` items, or what arrived within
``batch_interval`` seconds, and gives them to ``process`` in one call (one Redis round trip);
every ``tick_interval`` seconds it calls ``tick`` (block expiry). :meth:`HandOff.flush` waits
until everything offered before it has been processed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from ..forks import restart_after_fork

__all__ = ["HandOff"]

T = TypeVar("T")


class _Marker:
    """Put in the queue by :meth:`HandOff.flush`; set once everything before it ran."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class HandOff(Generic[T]):
    """A bounded queue drained in batches by one worker thread (see the module docstring).

    Args:
        process: called on the worker with each non-empty batch.
        tick: called on the worker every ``tick_interval`` seconds and before a flush returns.
        on_error: told about an exception from ``process`` or ``tick`` (the worker survives).
        capacity: :meth:`offer` refuses items beyond this many waiting.
        poll: when the queue is empty the worker sleeps this long, or until woken.
    """

    def __init__(
        self,
        process: Callable[[list[T]], None],
        tick: Callable[[], None],
        on_error: Callable[[BaseException], None],
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        poll: float = 0.05,
        tick_interval: float = 0.3,
        name: str = "otel-secaudit-detector",
    ) -> None:
        self._process = process
        self._tick = tick
        self._on_error = on_error
        self._capacity = capacity
        self._batch_size = batch_size
        self._poll = poll
        self._tick_interval = tick_interval
        self._name = name
        self._queue: deque[T | _Marker] = deque()
        self._thread: threading.Thread | None = None
        self.start()
        restart_after_fork(self.after_fork_in_child)

    # -- request path

    def offer(self, item: T) -> bool:
        """Queue ``item``; False when full or stopped (the caller handles it itself)."""
        if len(self._queue) >= self._capacity or self._stop.is_set():
            return False
        self._queue.append(item)
        return True

    # -- lifecycle

    def start(self) -> None:
        """Start the worker (also after ``fork()``, where the parent's thread does not exist;
        fresh events then, as the parent's may have been mid-use)."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def after_fork_in_child(self) -> None:
        """Restart the worker in a forked child, unless it was closed (runs from the fork hook
        this hand-off registered; a no-op while the worker runs)."""
        if not self._stop.is_set() and not self.alive():
            self.start()

    def alive(self) -> bool:
        """True while the worker runs."""
        return self._thread is not None and self._thread.is_alive()

    def pending(self) -> int:
        """Items waiting (markers excluded)."""
        return sum(1 for item in list(self._queue) if not isinstance(item, _Marker))

    def flush(self, timeout: float) -> bool:
        """Wait until every item offered so far is processed and a tick ran; False on
        timeout or when the worker is not running."""
        if not self.alive():
            return False
        marker = _Marker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float) -> None:
        """Process what is queued, then stop the worker. Idempotent."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def drain(self) -> list[T]:
        """Take every waiting item (after the worker stopped)."""
        items: list[T] = []
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Marker):
                item.done.set()
            else:
                items.append(item)
        return items

    # -- worker

    def _take(self) -> tuple[list[T], list[_Marker]]:
        batch: list[T] = []
        markers: list[_Marker] = []
        queue = self._queue
        while queue and len(batch) < self._batch_size:
            item = queue.popleft()
            if isinstance(item, _Marker):
                markers.append(item)
                break  # everything before the marker is in this batch
            batch.append(item)
        return batch, markers

    def _run(self) -> None:
        next_tick = 0.0
        while True:
            stopping = self._stop.is_set()
            batch, markers = self._take()
            try:
                if batch:
                    self._process(batch)
                if markers or time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + self._tick_interval
            except Exception as exc:  # the worker must survive anything
                self._on_error(exc)
                time.sleep(0.05)
            finally:
                for marker in markers:
                    marker.done.set()
            if stopping and not self._queue:
                return
            if not self._queue:
                self._wake.wait(self._poll)
                self._wake.clear()
