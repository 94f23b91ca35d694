"""The blocks this instance enforces, and the aggregation of refused requests.

:class:`BlockTable` is read on every request (one dictionary lookup, no lock, no I/O). It
learns blocks from the crossings this instance reports and, with a shared store, from the
store's list of active blocks (refreshed by the worker, every 0.3 s by default).

:class:`RefusalTally` makes the audit trail of a block flood-proof (see the README, "Blocks"):
every refused request is counted in ``security.requests.blocked``, but a ``request.blocked``
record is written at most once per key per ``interval`` (60 s), carrying
``security.block.count``, the requests refused since the previous record for that key (this
one included).

With a store shared by several instances (``shared=True``) that holds across all of them, and
the request path still does no I/O: a refusal with no record right in hand is only counted
(:meth:`RefusalTally.refused` returns 0); the detector's worker hands those counts to the
store (:meth:`RefusalTally.demand`), which gives the key's record right for the next 60 s to
one instance, with the count of refusals every instance made since the key's last record
(:meth:`RefusalTally.grant`); that instance's next refusal of the key writes the record. A
right that no refusal used within :data:`GRANT_GRACE` seconds (the client stopped) is handed
back by :meth:`RefusalTally.unused`, for the worker to write the record itself, in the
context of the last refused request of the key it counted (its request attributes and trace;
the server span has ended, so no span event then). The first record of a block so comes one
worker tick (0.3 s) late.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import trace

from ..context import RequestContext, current_request

__all__ = ["GRANT_GRACE", "BlockTable", "Refusal", "RefusalTally", "RefusedRequest"]

#: Seconds a granted record right waits for a refusal before the worker writes the record.
GRANT_GRACE: Final = 1.0


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

    def drop(self, key: str) -> None:
        """A block released early (whichever block ``key`` had)."""
        with self._lock:
            self._until.pop(key, None)

    def replace(self, active: dict[str, float]) -> list[str]:
        """The shared store's complete list of active blocks; returns the keys that left the
        table (ended, or released by an operator)."""
        with self._lock:
            previous, self._until = self._until, active
        return [key for key in previous if key not in active]

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


@dataclass(frozen=True, slots=True)
class RefusedRequest:
    """The context of a refused request that wrote no record (for a record written later)."""

    #: the request (its attributes), when refused inside a request scope
    request: RequestContext | None
    #: the span context of the request's span (its trace), or None
    span_context: Any = None


def _refused_request() -> RefusedRequest:
    span_context = trace.get_current_span().get_span_context()
    return RefusedRequest(current_request(), span_context if span_context.is_valid else None)


@dataclass(slots=True)
class _Right:
    """Shared mode: one blocked key's record right as this instance sees it."""

    #: this instance holds the key's record right until then (0 = does not)
    held_until: float = 0.0
    #: > 0: a granted right not used yet, with this count from the store
    granted: int = 0
    granted_at: float = 0.0
    #: refusals not yet in a record nor handed to the store
    pending: int = 0
    #: the last refused request that wrote no record
    last: RefusedRequest | None = field(default=None)


class RefusalTally:
    """Per blocked key: when the last ``request.blocked`` record was written and how many
    refusals happened since (see the module docstring for ``shared``). Bounded by the number
    of blocked keys (:meth:`forget` at block end)."""

    def __init__(self, interval: float = 60.0, *, shared: bool = False) -> None:
        self.interval = interval
        self.shared = shared
        self._lock = threading.Lock()
        #: key -> [time of the last record, refusals not yet in a record]
        self._keys: dict[str, list[float]] = {}
        #: shared: key -> its record right
        self._rights: dict[str, _Right] = {}

    def refused(self, key: str, now: float) -> int:
        """Count one refusal of ``key``; the ``security.block.count`` to record now, or 0."""
        if self.shared:
            return self._refused_shared(key, now)
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

    def _refused_shared(self, key: str, now: float) -> int:
        with self._lock:
            right = self._rights.get(key)
            if right is None:
                right = self._rights[key] = _Right()
            if right.granted and now < right.held_until:  # this refusal writes the record
                count = right.granted + right.pending + 1
                right.granted, right.pending, right.last = 0, 0, None
                return count
            right.pending += 1
        last = _refused_request()  # outside the lock: two context lookups
        right.last = last
        return 0

    def demand(self, now: float) -> list[tuple[str, int]]:
        """Shared: (key, refusals) of the keys refused here without a record whose right this
        instance does not hold; the refusals are handed over (to be added to the store's
        count), so they are zeroed here."""
        out = []
        idle = []
        with self._lock:
            for key, right in self._rights.items():
                if right.pending and now >= right.held_until:
                    out.append((key, right.pending))
                    right.pending = 0
                elif not right.pending and not right.granted and now >= right.held_until:
                    # nothing left to hand over or to write: forgotten (another instance may
                    # have collected the block's end; the store keeps the right's time)
                    idle.append(key)
            for key in idle:
                del self._rights[key]
        return out

    def grant(self, granted: dict[str, int], now: float) -> None:
        """Shared: the store gave this instance the record right of these keys for
        ``interval`` seconds, with the refusals counted by every instance since their last
        record."""
        with self._lock:
            for key, count in granted.items():
                right = self._rights.setdefault(key, _Right())
                right.held_until, right.granted, right.granted_at = (
                    now + self.interval,
                    max(1, count),
                    now,
                )

    def unused(
        self, now: float, grace: float = GRANT_GRACE
    ) -> list[tuple[str, int, RefusedRequest | None]]:
        """Shared: (key, count, last refused request) of the rights granted more than
        ``grace`` seconds ago that no refusal used: the worker writes those records itself.
        The right stays held."""
        out = []
        with self._lock:
            for key, right in self._rights.items():
                if right.granted and now - right.granted_at >= grace:
                    out.append((key, right.granted + right.pending, right.last))
                    right.granted, right.pending, right.last = 0, 0, None
        return out

    def forget(self, key: str) -> None:
        """The key's block ended."""
        with self._lock:
            self._keys.pop(key, None)
            self._rights.pop(key, None)
