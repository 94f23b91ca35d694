"""The blocks this instance enforces, and the aggregation of refused requests.

:class:`BlockTable` is read on every request (one dictionary lookup, no lock, no I/O). It
learns blocks from the crossings this instance reports and, with a shared store, from the
store's list of active blocks (refreshed by the worker, every 0.3 s by default).

:class:`RefusalTally` makes the audit trail of a block flood-proof (CONTRACT section 7): every
refused request is counted in ``security.requests.blocked``, but a ``request.blocked`` record
is written at most once per key per ``interval`` (60 s), carrying ``security.block.count``,
the requests refused since the previous record for that key (this one included).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["BlockTable", "Refusal", "RefusalTally"]


class BlockTable:
    """key -> blocked-until (epoch seconds). Reads take no lock (a single ``dict.get``);
    writers serialize on a lock."""

    __slots__ = ("_lock", "_until")

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def until(self, key: str) -> float:
        """Blocked-until time of ``key``; 0.0 when none (may lie in the past)."""
        return self._until.get(key, 0.0)

    def start(self, key: str, until: float) -> None:
        """A block this instance started (or learnt of)."""
        with self._lock:
            self._until[key] = until

    def end(self, key: str, until: float) -> None:
        """A block ended (only if it is still the one ending at ``until``)."""
        with self._lock:
            if self._until.get(key) == until:
                del self._until[key]

    def replace(self, active: dict[str, float]) -> None:
        """The shared store's complete list of active blocks."""
        with self._lock:
            self._until = active

    def __len__(self) -> int:
        return len(self._until)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused because its client is blocked (:meth:`AbuseDetector.refusal`)."""

    #: the blocked host key (the address, or its IPv6 network)
    key: str
    #: seconds the block still lasts
    seconds_left: float
    #: whole seconds for the ``Retry-After`` header (at least 1)
    retry_after: int
    #: > 0: record ``request.blocked`` for this request with ``security.block.count`` = this
    #: (requests refused since the previous record for the key, this one included); 0: do not
    #: (one was recorded for this key less than 60 s ago)
    record_count: int


class RefusalTally:
    """Per blocked key: when the last ``request.blocked`` record was written and how many
    refusals happened since. Bounded by the number of blocked keys (:meth:`forget` at block
    end)."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        #: key -> [time of the last record, refusals not yet in a record]
        self._keys: dict[str, list[float]] = {}

    def refused(self, key: str, now: float) -> int:
        """Count one refusal of ``key``; the ``security.block.count`` to record now, or 0."""
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                self._keys[key] = [now, 0]
                return 1
            if now - state[0] >= self.interval:
                count = int(state[1]) + 1
                state[0], state[1] = now, 0
                return count
            state[1] += 1
            return 0

    def forget(self, key: str) -> None:
        """The key's block ended."""
        with self._lock:
            self._keys.pop(key, None)
