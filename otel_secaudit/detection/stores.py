"""Where abuse detection keeps its state: a small :class:`Store` protocol, an in-memory store
(the embedded default) and a Redis store shared by every instance.

Chosen by URI, like the ``limits`` library: :func:`build_store` takes
``OTEL_SECAUDIT_STORE`` (``memory://`` or ``redis://[:password@]host:port/db``).

Both stores run the algorithm of :mod:`otel_secaudit.detection.window` and keep, per key, the
last ``threshold`` violations (time, name, trace ID: the evidence), the "signalled in this
window" mark, and the blocked client addresses with their expiry.

Redis layout (prefix ``secaudit:abuse:``): ``w:<scope>:<key>`` a list of ``time|name|trace``
entries capped at the threshold; ``s:<scope>:<key>`` the signalled-until time; ``blocks`` a
sorted set address -> blocked-until. Keys expire after two windows. Each batch is one
``EVALSHA`` (one round trip, atomic), so "signal once" and "block once" hold across instances.
Time is the detector's clock, passed in; the script never reads the server clock.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from .window import HOST, USER, Crossing, Hit, KeyWindow, Policy, crossing_of

__all__ = ["MemoryStore", "RedisStore", "Store", "build_store"]

#: Default cap of tracked keys per scope in the memory store (LRU beyond it).
DEFAULT_MAX_KEYS = 20_000
#: At most this many blocked addresses are kept / cached at once.
DEFAULT_MAX_BLOCKS = 100_000


@runtime_checkable
class Store(Protocol):
    """Storage of abuse-detection state. Implementations must be thread-safe."""

    def apply(self, hits: Sequence[Hit], policy: Policy) -> list[Crossing]:
        """Count ``hits`` in order, atomically; return the crossings (once per key per
        window), starting blocks for host crossings when ``policy.block_seconds > 0``."""
        ...

    def housekeeping(
        self, now: float, limit: int = DEFAULT_MAX_BLOCKS
    ) -> tuple[list[tuple[str, float]], dict[str, float]]:
        """Remove expired blocks and return ``(expired, active)``: the (address, until) pairs
        that expired, each returned exactly once across all users of the store, and up to
        ``limit`` active blocks address -> until."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class MemoryStore:
    """In-process store: per-scope LRU of :class:`KeyWindow` capped at ``max_keys`` keys.

    Memory is bounded by ``max_keys * (host_threshold + user_threshold)`` entries whatever
    attackers send (measured worst case at the defaults, 20,000 keys per scope with every
    window full of distinct trace IDs: about 57 MiB; typical floods of one-off addresses use
    far less, see tests/test_detection.py). The least recently seen key is evicted first and
    every eviction is counted (:attr:`evictions`). Evicting a key forgets its recent
    violations, so a flood of distinct addresses can make detection miss a slow attacker; the
    eviction count makes that visible.
    """

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
        self._windows = {HOST: self._hosts, USER: self._users}
        self._blocks: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []
        #: keys evicted by the LRU cap (both scopes)
        self.evictions = 0
        #: blocks dropped because more than ``max_blocks`` addresses were blocked at once
        self.blocks_evicted = 0
        #: violations counted through :meth:`count`
        self.violations = 0

    # -- counting

    def count(
        self,
        client_address: str | None,
        user_key: str | None,
        name: str,
        trace_id: str,
        at: float,
        policy: Policy,
    ) -> Sequence[Crossing]:
        """Count one violation against its host and user keys (the fast path); returns the
        crossings, usually none."""
        crossings: list[Crossing] | tuple[()] = ()
        window = policy.window_seconds
        with self._lock:
            self.violations += 1
            if client_address:
                state = self._window(self._hosts, client_address)
                if state.hit(at, name, trace_id, policy.host_threshold, window):
                    crossings = [self._crossing(HOST, client_address, state, at, policy)]
            if user_key:
                state = self._window(self._users, user_key)
                if state.hit(at, name, trace_id, policy.user_threshold, window):
                    crossing = self._crossing(USER, user_key, state, at, policy)
                    crossings = [*crossings, crossing]
        return crossings

    def hit(
        self, scope: str, key: str, name: str, trace_id: str, at: float, policy: Policy
    ) -> Crossing | None:
        """Count one hit against one key."""
        with self._lock:
            return self._hit(scope, key, name, trace_id, at, policy)

    def _hit(
        self, scope: str, key: str, name: str, trace_id: str, at: float, policy: Policy
    ) -> Crossing | None:
        # caller holds the lock
        state = self._window(self._windows[scope], key)
        if state.hit(at, name, trace_id, policy.threshold(scope), policy.window_seconds):
            return self._crossing(scope, key, state, at, policy)
        return None

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

    def _crossing(
        self, scope: str, key: str, state: KeyWindow, at: float, policy: Policy
    ) -> Crossing:
        # caller holds the lock
        entries = list(state.entries)
        blocked_until = 0.0
        if scope == HOST and policy.block_seconds > 0:
            blocked_until = at + policy.block_seconds
            self._block(key, blocked_until)
        return crossing_of(scope, key, entries, policy, at, blocked_until)

    def apply(self, hits: Sequence[Hit], policy: Policy) -> list[Crossing]:
        out: list[Crossing] = []
        with self._lock:
            for hit in hits:
                crossing = self._hit(hit.scope, hit.key, hit.name, hit.trace_id, hit.at, policy)
                if crossing is not None:
                    out.append(crossing)
        return out

    def tracked_keys(self) -> int:
        """Number of keys currently tracked (both scopes)."""
        return sum(len(w) for w in self._windows.values())

    # -- blocks

    def _block(self, address: str, until: float) -> None:
        # caller holds the lock
        if address not in self._blocks and len(self._blocks) >= self.max_blocks:
            _, victim = heapq.heappop(self._expiries)
            if self._blocks.pop(victim, None) is not None:
                self.blocks_evicted += 1
        self._blocks[address] = until
        heapq.heappush(self._expiries, (until, address))

    def block_until(self, address: str) -> float:
        """Blocked-until time of ``address`` (0.0 when none); O(1), may be in the past."""
        return self._blocks.get(address, 0.0)

    def end_block(self, address: str, until: float) -> bool:
        """Remove the block of ``address`` if it still ends at ``until``; True if removed
        (the caller then reports the end, exactly once)."""
        with self._lock:
            if self._blocks.get(address) == until:
                del self._blocks[address]
                return True
            return False

    def housekeeping(
        self, now: float, limit: int = DEFAULT_MAX_BLOCKS
    ) -> tuple[list[tuple[str, float]], dict[str, float]]:
        expired = []
        with self._lock:
            heap = self._expiries
            while heap and heap[0][0] <= now:
                until, address = heapq.heappop(heap)
                if self._blocks.get(address) == until:
                    del self._blocks[address]
                    expired.append((address, until))
            if len(heap) > 2 * len(self._blocks) + 64:  # drop stale entries of re-blocks
                self._expiries = [(u, a) for a, u in self._blocks.items()]
                heapq.heapify(self._expiries)
            active = dict(list(self._blocks.items())[:limit])
        return expired, active

    def close(self) -> None:
        pass


# Redis: the algorithm of window.py, one EVALSHA per batch. Keys are built in the script from
# the prefix (a standalone or replicated Redis; not Redis Cluster).
# ARGV[1..6] = window_s, host_threshold, user_threshold, block_s, ttl_ms, prefix;
# then one packed string per hit: scope TAB name TAB trace_id TAB at TAB key (key last: it may
# contain anything). Returns one array per crossing: {scope, key, at, blocked, entry...}.
_APPLY_LUA = """
local window = tonumber(ARGV[1])
local thresholds = {host = tonumber(ARGV[2]), user = tonumber(ARGV[3])}
local block_s = tonumber(ARGV[4])
local ttl_ms = tonumber(ARGV[5])
local prefix = ARGV[6]
local blocks_key = prefix .. 'blocks'
local packed = '^(%a+)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$'
local out = {}
for i = 7, #ARGV do
  local scope, name, trace, at_s, key = string.match(ARGV[i], packed)
  local at = tonumber(at_s)
  local wkey = prefix .. 'w:' .. scope .. ':' .. key
  local threshold = thresholds[scope]
  local length = redis.call('RPUSH', wkey, at_s .. '|' .. name .. '|' .. trace)
  if length > threshold then
    redis.call('LTRIM', wkey, -threshold, -1)
    length = threshold
  end
  redis.call('PEXPIRE', wkey, ttl_ms)
  if length == threshold then
    local oldest = redis.call('LINDEX', wkey, 0)
    local oldest_at = tonumber(string.match(oldest, '^([^|]*)'))
    if oldest_at > at - window then
      local skey = prefix .. 's:' .. scope .. ':' .. key
      local signalled_until = tonumber(redis.call('GET', skey) or '0')
      if at >= signalled_until then
        redis.call('SET', skey, tostring(at + window), 'PX', ttl_ms)
        local blocked = '0'
        if scope == 'host' and block_s > 0 then
          redis.call('ZADD', blocks_key, at + block_s, key)
          blocked = '1'
        end
        local row = {scope, key, at_s, blocked}
        for _, entry in ipairs(redis.call('LRANGE', wkey, 0, -1)) do
          row[#row + 1] = entry
        end
        out[#out + 1] = row
      end
    end
  end
end
return out
"""

# KEYS[1] = blocks zset; ARGV[1] = now, ARGV[2] = limit of active blocks returned.
# Returns {expired members+scores..., '|', active members+scores...} (flat, WITHSCORES).
_HOUSEKEEPING_LUA = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES')
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
local active = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[2]))
return {expired, active}
"""


class RedisStore:
    """Store shared by all instances through one Redis server (redis-py).

    Connection and I/O errors propagate to the caller (the detector's worker thread), which
    falls back to a memory store and retries with backoff; nothing here runs on a request.
    Creating the store does no network I/O (redis-py connects lazily).
    """

    def __init__(
        self,
        uri: str,
        *,
        prefix: str = "secaudit:abuse:",
        timeout: float = 2.0,
        client: Any = None,
    ) -> None:
        import redis  # optional dependency: pip install otel-secaudit[redis]
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.uri = uri
        self.prefix = prefix
        self.client = client or redis.Redis.from_url(
            uri,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # The detector owns retrying (with backoff, off the request path).
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._blocks_key = prefix + "blocks"
        self._apply = self.client.register_script(_APPLY_LUA)
        self._housekeeping = self.client.register_script(_HOUSEKEEPING_LUA)

    def apply(self, hits: Sequence[Hit], policy: Policy) -> list[Crossing]:
        if not hits:
            return []
        args: list[Any] = [
            repr(policy.window_seconds),
            policy.host_threshold,
            policy.user_threshold,
            repr(policy.block_seconds),
            int(policy.window_seconds * 2000) + 1000,
            self.prefix,
        ]
        args += [f"{h.scope}\t{h.name}\t{h.trace_id}\t{h.at!r}\t{h.key}" for h in hits]
        rows = self._apply(args=args)
        out = []
        for row in rows:
            scope, key, at_s, blocked = (_text(v) for v in row[:4])
            entries = []
            for raw in row[4:]:
                at_e, name, trace_id = _text(raw).split("|", 2)
                entries.append((float(at_e), name, trace_id))
            at = float(at_s)
            blocked_until = at + policy.block_seconds if blocked == "1" else 0.0
            out.append(crossing_of(scope, key, entries, policy, at, blocked_until))
        return out

    def housekeeping(
        self, now: float, limit: int = DEFAULT_MAX_BLOCKS
    ) -> tuple[list[tuple[str, float]], dict[str, float]]:
        expired_raw, active_raw = self._housekeeping(
            keys=[self._blocks_key], args=[repr(now), limit]
        )
        return _pairs(expired_raw), dict(_pairs(active_raw))

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing must not raise
            pass


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> list[tuple[str, float]]:
    return [(_text(flat[i]), float(_text(flat[i + 1]))) for i in range(0, len(flat) - 1, 2)]


def build_store(uri: str, **options: Any) -> Store:
    """A store for ``uri``: ``memory://`` -> :class:`MemoryStore`, ``redis://...``,
    ``rediss://...`` or ``unix://...`` -> :class:`RedisStore`. Does no network I/O.

    Raises:
        ValueError: unknown scheme.
        ImportError: a Redis URI without redis-py installed.
    """
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryStore(**options)
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(uri, **options)
    raise ValueError(f"unknown store {uri!r}; expected memory:// or redis://host:port/db")
