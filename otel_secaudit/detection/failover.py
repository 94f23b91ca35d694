"""A shared store that falls back to counting in memory while it fails.

Redis failures (down, slow, wrong password) never reach the request: the batch is counted in
the local :class:`MemoryStore`, the failure is logged as one warning line per kind of error
(its exception class, never a traceback: a failover would otherwise print one per kind and per
instance) and counted (``stats["redis_errors"]`` and ``otel_secaudit.internal.errors``, through
``on_error``, which must not log a traceback of its own), and the shared store is
retried with exponential backoff (0.25 s to 5 s) until it answers again. Counts made during
the outage stay local to the instance (they are not merged back), so the shared view may miss
that period's violations. A batch that times out (2 s) is counted locally although Redis may
have applied it after all: a slow Redis can make the two views count it twice, never zero
times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from .stores.base import DEFAULT_MAX_BLOCKS, BlockInfo, Housekeeping, Store
from .stores.memory import MemoryStore
from .window import Crossing, Hit, Policy

T = TypeVar("T")

__all__ = ["FailoverStore"]

_log = logging.getLogger("otel_secaudit.detection")

#: Backoff after a failure: doubles from the first value up to the second (seconds).
BACKOFF = (0.25, 5.0)


class FailoverStore:
    """Wraps a shared ``store``; counts in ``local`` while it fails (see the module docstring).

    Args:
        store: the shared store (its errors are caught here).
        local: the in-process store used meanwhile.
        on_error: told about every failure (the recorder's ``internal_error``).
        monotonic: the clock of the backoff (tests).
    """

    in_process = False

    def __init__(
        self,
        store: Store,
        local: MemoryStore,
        on_error: Callable[[BaseException], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.local = local
        self._on_error = on_error
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = 0.0
        self.errors = 0
        #: exception classes already logged (one warning line each, per instance)
        self._logged: set[str] = set()
        #: True while counting locally because the shared store failed
        self.fallback_active = False

    def available(self) -> bool:
        """False while backing off after a failure."""
        return self._monotonic() >= self._retry_at

    def apply(self, hits: Sequence[Hit], policy: Policy) -> list[Crossing]:
        """Apply ``hits`` to the shared store, or locally when it fails or is backing off."""
        if self.available():
            try:
                crossings = self.store.apply(hits, policy)
            except Exception as exc:
                self._failed(exc)
            else:
                self._succeeded()
                return crossings
        return self.local.apply(hits, policy)

    def recent(self, scope: str, key: str, now: float, window: float) -> int:
        """From the shared store, or the local one while it fails."""
        if self.available():
            try:
                return self.store.recent(scope, key, now, window)
            except Exception as exc:
                self._failed(exc)
        return self.local.recent(scope, key, now, window)

    def shared(self, call: Callable[[Store], T]) -> T | None:
        """Run ``call`` on the shared store with this failover's backoff and error reporting;
        None while it backs off or when it fails (the caller then works locally)."""
        if not self.available():
            return None
        try:
            result = call(self.store)
        except Exception as exc:
            self._failed(exc)
            return None
        self._succeeded()
        return result

    def housekeeping(self, now: float, limit: int = DEFAULT_MAX_BLOCKS) -> Housekeeping:
        """Local expiries, plus the shared store's expiries and active blocks (merged with the
        local ones) when it answers; ``active`` is None while it does not."""
        expired = list(self.local.housekeeping(now, limit).expired)
        if not self.available():
            return Housekeeping(expired, None)
        try:
            shared = self.store.housekeeping(now, limit)
        except Exception as exc:
            self._failed(exc)
            return Housekeeping(expired, None)
        self._succeeded()
        active = dict(shared.active or {})
        active.update(self.local.active_blocks(limit))
        return Housekeeping(expired + shared.expired, active)

    def claim_refusal_records(self, claims: list[tuple[str, int]], now: float) -> dict[str, int]:
        """The shared store's record rights (see :mod:`.blocks`); while it fails, every claim
        is granted (per instance then, as the counting)."""
        claim = getattr(self.store, "claim_refusal_records", None)
        if claim is not None and self.available():
            try:
                granted: dict[str, int] = claim(claims, now)
            except Exception as exc:
                self._failed(exc)
            else:
                self._succeeded()
                return granted
        return dict(claims)

    def list_blocks(self, now: float, limit: int = DEFAULT_MAX_BLOCKS) -> list[BlockInfo]:
        """The shared store's running blocks and this instance's local ones (counted while
        the shared store failed). Raises what the shared store raises."""
        found = {info.key: info for info in self.local.list_blocks(now, limit)}
        found.update((info.key, info) for info in self.store.list_blocks(now, limit))
        return sorted(found.values(), key=lambda info: (-info.until, info.key))[:limit]

    def release(self, key: str, now: float, window: float, forget: bool = False) -> BlockInfo:
        """Release in the shared store and locally. Raises what the shared store raises
        (after the local release)."""
        local = self.local.release(key, now, window, forget)
        shared = self.store.release(key, now, window, forget)
        return shared if shared.until or not local.until else local

    def _succeeded(self) -> None:
        if self.fallback_active:
            self.fallback_active = False
            _log.warning("otel_secaudit: Redis store is back; detection is shared again")
        self._backoff = 0.0

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self._backoff = min(self._backoff * 2 or BACKOFF[0], BACKOFF[1])
            self._retry_at = self._monotonic() + self._backoff
            self.fallback_active = True
            kind = type(exc).__name__
            first = kind not in self._logged and len(self._logged) < 64
            self._logged.add(kind)
        if first:
            _log.warning(
                "otel_secaudit: Redis store failed (%s: %s); counting in memory on this "
                "instance until it answers again",
                kind,
                " ".join(str(exc).split())[:300],  # one line, whatever the server said
            )
        self._on_error(exc)

    def stats(self) -> dict[str, int]:
        """Both stores' counters summed, plus ``redis_errors`` and ``fallback_active``."""
        out = self.local.stats()
        for name, value in self.store.stats().items():
            out[name] = out.get(name, 0) + value
        out["redis_errors"] = self.errors
        out["fallback_active"] = int(self.fallback_active)
        return out

    def close(self) -> None:
        """Close both stores."""
        self.store.close()
        self.local.close()
