"""In-process store (``memory://``, the default): the algorithm of :mod:`..window` over
per-scope LRU dictionaries, behind the :class:`~otel_secaudit.detection.stores.Store` protocol.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..window import HOST, USER, Crossing, Hit, KeyWindow, Policy, crossing_of
from .base import DEFAULT_MAX_BLOCKS, DEFAULT_MAX_KEYS, BlockInfo, Housekeeping

__all__ = ["MemoryStore"]

# Kinds of entries in the expiry heap: a block ends; a key's offences are forgotten.
_END, _FORGET = 0, 1


@dataclass(slots=True)
class _Block:
    until: float
    offences: int
    #: when the key's offences are forgotten (one window after the block ends)
    forget_at: float
    active: bool = True


class MemoryStore:
    """In-process store: per-scope LRU of :class:`KeyWindow` capped at ``max_keys`` keys.

    Memory is bounded by ``max_keys * (host_threshold + user_threshold)`` entries whatever
    attackers send (measured worst case at the defaults, 20,000 keys per scope with every
    window full of distinct trace IDs: about 57 MiB; typical floods of one-off addresses use
    far less, see tests/test_detection.py). The least recently seen key is evicted first and
    every eviction is counted (:attr:`evictions`). Evicting a key forgets its recent
    violations, so a flood of distinct addresses can make detection miss a slow attacker; the
    eviction count makes that visible. Blocks are kept apart from the windows (an eviction
    never lifts a block), up to ``max_blocks`` at once.
    """

    in_process = True

    def __init__(
        self, max_keys: int = DEFAULT_MAX_KEYS, max_blocks: int = DEFAULT_MAX_BLOCKS
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.max_keys = max_keys
        self.max_blocks = max_blocks
        self._lock = threading.Lock()
        self._hosts: OrderedDict[str, KeyWindow] = OrderedDict()
        self._users: OrderedDict[str, KeyWindow] = OrderedDict()
        self._blocks: dict[str, _Block] = {}
        self._expiries: list[tuple[float, int, str]] = []
        #: keys evicted by the LRU cap (both scopes)
        self.evictions = 0
        #: blocks dropped because more than ``max_blocks`` keys were blocked at once
        self.blocks_evicted = 0
        #: violations counted
        self.violations = 0

    # -- counting

    def count(
        self,
        host: str | None,
        user: str | None,
        name: str,
        trace_id: str,
        at: float,
        policy: Policy,
        blockable: bool = False,
    ) -> list[Crossing]:
        """Count one violation against its host and user keys; returns the crossings,
        usually none."""
        return self.apply((Hit(host, user, name, trace_id, at, blockable),), policy)

    def apply(self, hits: Sequence[Hit], policy: Policy) -> list[Crossing]:
        """Count ``hits`` in order, atomically; return the crossings."""
        out: list[Crossing] = []
        with self._lock:
            for hit in hits:
                self._count(hit, policy, out)
        return out

    def _count(self, hit: Hit, policy: Policy, crossings: list[Crossing]) -> None:
        # caller holds the lock; appends the crossings of ``hit`` to ``crossings``
        self.violations += 1
        window = policy.window_seconds
        host, user, name, trace_id, at, blockable = hit
        if host:
            blocking = blockable and policy.block_seconds > 0
            block = self._blocks.get(host) if blocking else None
            since = block.until if block is not None else 0.0
            state = self._window(self._hosts, host)
            entries = state.hit(at, name, trace_id, policy.host_threshold, window, since, blocking)
            if entries is not None:
                seconds = ended = 0.0
                if blocking:
                    # a block that ended but was not yet reported ends now, exactly once
                    ended = block.until if block is not None and block.active else 0.0
                    seconds = self._block(host, block, at, policy)
                crossings.append(crossing_of(HOST, host, entries, policy, at, seconds, ended))
        if user:
            state = self._window(self._users, user)
            entries = state.hit(at, name, trace_id, policy.user_threshold, window)
            if entries is not None:
                crossings.append(crossing_of(USER, user, entries, policy, at))

    def _window(self, windows: OrderedDict[str, KeyWindow], key: str) -> KeyWindow:
        # caller holds the lock; LRU: the least recently seen key goes first
        state = windows.get(key)
        if state is None:
            if len(windows) >= self.max_keys:
                windows.popitem(last=False)
                self.evictions += 1
            state = windows[key] = KeyWindow()
        else:
            windows.move_to_end(key)
        return state

    def recent(self, scope: str, key: str, now: float, window: float) -> int:
        """Violations of ``key`` within the window (read only: the LRU order is unchanged)."""
        with self._lock:
            state = (self._hosts if scope == HOST else self._users).get(key)
            if state is None:
                return 0
            return sum(1 for at, _, _ in state.entries if at > now - window)

    def tracked_keys(self) -> int:
        """Number of keys currently tracked (both scopes)."""
        return len(self._hosts) + len(self._users)

    # -- blocks

    def _block(self, key: str, previous: _Block | None, at: float, policy: Policy) -> float:
        # caller holds the lock; returns the new block's length
        offences = previous.offences if previous is not None else 0
        seconds = policy.block_length(offences)
        until = at + seconds
        if previous is None and len(self._blocks) >= self.max_blocks:
            self._evict_a_block()
        self._blocks[key] = _Block(until, offences + 1, until + policy.window_seconds)
        heapq.heappush(self._expiries, (until, _END, key))
        heapq.heappush(self._expiries, (until + policy.window_seconds, _FORGET, key))
        return seconds

    def _evict_a_block(self) -> None:
        # caller holds the lock; the block (or offence record) that ends first goes
        while self._expiries:
            _, _, victim = heapq.heappop(self._expiries)
            if self._blocks.pop(victim, None) is not None:
                self.blocks_evicted += 1
                return

    def active_blocks(self, limit: int = DEFAULT_MAX_BLOCKS) -> dict[str, float]:
        """Up to ``limit`` blocks not yet ended: key -> until."""
        with self._lock:
            out: dict[str, float] = {}
            for key, block in self._blocks.items():
                if block.active:
                    out[key] = block.until
                    if len(out) >= limit:
                        break
            return out

    def list_blocks(self, now: float, limit: int = DEFAULT_MAX_BLOCKS) -> list[BlockInfo]:
        """The blocks still running at ``now`` (up to ``limit``), the longest-lasting first."""
        with self._lock:
            found = [
                BlockInfo(key, block.until, block.offences)
                for key, block in self._blocks.items()
                if block.active and block.until > now
            ]
        found.sort(key=lambda info: (-info.until, info.key))
        return found[:limit]

    def release(self, key: str, now: float, window: float, forget: bool = False) -> BlockInfo:
        """End ``key``'s block now and restart its count; its repeat-offender history (the
        offences that double its next block) is kept for one ``window``, or dropped with
        ``forget``. Returns the block released (``until`` 0.0 when none was running)."""
        with self._lock:
            self._hosts.pop(key, None)
            block = self._blocks.get(key)
            if block is None:
                return BlockInfo(key, 0.0, 0)
            running = block.active and block.until > now
            released = BlockInfo(key, block.until if running else 0.0, block.offences)
            if forget:
                del self._blocks[key]
                return released
            if running:
                # no abuse.block.ended later: the release is the block's end record
                block.active, block.until = False, now
                block.forget_at = now + window
                heapq.heappush(self._expiries, (block.forget_at, _FORGET, key))
            return released

    def housekeeping(self, now: float, limit: int = DEFAULT_MAX_BLOCKS) -> Housekeeping:
        """End the blocks whose time has come (each returned once) and forget offences one
        window after their block ended. ``active`` is None: every block this store starts is
        reported through :meth:`apply`, so its user already knows them."""
        expired = []
        with self._lock:
            heap = self._expiries
            while heap and heap[0][0] <= now:
                at, kind, key = heapq.heappop(heap)
                block = self._blocks.get(key)
                if block is None:
                    continue
                if kind == _END and block.active and block.until == at:
                    block.active = False
                    expired.append((key, at))
                elif kind == _FORGET and block.forget_at == at:
                    del self._blocks[key]
        return Housekeeping(expired, None)

    def stats(self) -> dict[str, int]:
        """``processed``, ``evictions``, ``tracked_keys``."""
        return {
            "processed": self.violations,
            "evictions": self.evictions,
            "tracked_keys": self.tracked_keys(),
        }

    def close(self) -> None:
        """Nothing to release."""
