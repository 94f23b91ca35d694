"""Store shared by every instance through Redis (every ``OTEL_SECAUDIT_STORE`` Redis form).

Each batch is one ``EVALSHA`` of ``apply.lua`` per shard (atomic per shard; the shards of a
batch go out in one pipeline), so "signal once", "block once", repeat-offender doubling and the
key cap hold across instances. Block expiry is ``housekeeping.lua``; the right to write a
blocked key's ``request.blocked`` record, once per key per 60 s across instances, is
``refusals.lua``; an operator's early release (``otel-secaudit blocks release``) is
``release.lua``. The scripts ship in the package and are read with :mod:`importlib.resources`.
Time is always the caller's clock, never the server's.

**Key layout** (what an operator's tool iterates; :attr:`RedisStore.prefixes` lists the
shards' prefixes, :meth:`RedisStore.prefix_of` names a key's). The state is split into
``shards`` shards; a key (client address or network, or user key) belongs to shard
``crc32(key) % shards``; every Redis key of a shard starts with the shard's prefix ``P``,
whose ``{...}`` is a Redis Cluster hash tag, so each script call touches one slot:

* ``P w:<scope>:<key>``: list of ``at|name|trace_id``, the key's last ``threshold`` violations;
* ``P s:<scope>:<key>``: signalled-until of an observe-only key;
* ``P b:<key>``: hash ``{until, offences}`` of a blockable host key's last block;
* ``P blocks``: sorted set host key -> blocked-until (the active blocks of the shard);
* ``P seen:<scope>``: sorted set key -> last seen, the shard's share of the key cap;
* ``P rl:<key>`` / ``P rc:<key>``: who holds the current 60 s ``request.blocked`` record of a
  blocked key, and the refusals counted by instances since the last record.

A standalone server (and a Sentinel-managed one) has one shard, prefix ``{secaudit:abuse}:``.
A ``redis+cluster://`` store has :data:`CLUSTER_SHARDS` shards whose hash tags are chosen to
fall in evenly spaced slots (:func:`shard_prefixes`), so a cluster's masters (which own
contiguous slot ranges) share the state evenly and a batch's scripts run on all of them at
once: a cluster adds capacity, not only failover. ``OTEL_SECAUDIT_MAX_KEYS`` stays a per-scope
total: each shard keeps ``ceil(max_keys / shards)`` keys per scope, its least recently seen
dropped first (so the order is exact within a shard, approximate across shards).

The client is made in one place, :func:`~.redis_clients.redis_client`, from the URI; a ready
client can be passed instead (``RedisStore(uri, client=...)``).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any, Final

from ...store_uris import CLUSTER, parse_redis_uri
from ..window import HOST, USER, Crossing, Entry, Hit, Policy, crossing_of
from .base import DEFAULT_MAX_BLOCKS, DEFAULT_MAX_KEYS, BlockInfo, Housekeeping
from .redis_clients import redis_client

__all__ = ["CLUSTER_SHARDS", "DEFAULT_PREFIX", "RedisStore", "shard_prefixes"]

#: Every key of a one-shard store starts with this; ``{...}`` is the Redis Cluster hash tag.
DEFAULT_PREFIX: Final = "{secaudit:abuse}:"
#: Shards of a ``redis+cluster://`` store. Fixed: every instance must agree on it.
CLUSTER_SHARDS: Final = 16
#: How long one instance holds a blocked key's ``request.blocked`` record (the README's "Abuse
#: detection and blocks": once per key per 60 s).
RECORD_INTERVAL: Final = 60.0
_SLOTS: Final = 16384


@cache
def _script(name: str) -> tuple[str, str]:
    source = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return source, hashlib.sha1(source.encode("utf-8")).hexdigest()


def _crc16(data: bytes) -> int:
    """CRC16-XMODEM, Redis Cluster's key hash (redis-py is not imported until a client is)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def key_slot(tag: str) -> int:
    """The Redis Cluster slot of a hash tag's contents."""
    return _crc16(tag.encode("utf-8")) % _SLOTS


@cache
def shard_prefixes(shards: int, base: str = "secaudit:abuse") -> tuple[str, ...]:
    """The key prefixes of ``shards`` shards (see the module docstring): one shard is
    ``{base}:``; of several, shard ``i``'s hash tag is ``base:i`` (or ``base:i.j``, the first
    ``j`` that qualifies) whose slot lies in the ``i``-th of ``shards`` equal slot ranges."""
    if shards == 1:
        return ("{" + base + "}:",)
    out = []
    for i in range(shards):
        low, high = i * _SLOTS // shards, (i + 1) * _SLOTS // shards
        tag, j = f"{base}:{i}", 0
        while not low <= key_slot(tag) < high:
            j += 1
            tag = f"{base}:{i}.{j}"
        out.append("{" + tag + "}:")
    return tuple(out)


class RedisStore:
    """Store shared by all instances through Redis (see the module docstring).

    Args:
        uri: a Redis store URI (``redis+cluster://`` gets :data:`CLUSTER_SHARDS` shards).
        max_keys: keys tracked per scope, in total over the shards.
        prefix: the hash tag's contents are taken from it (``{secaudit:abuse}:``).
        timeout: socket timeouts of the client built from ``uri``.
        client: a ready redis-py client instead.
        shards: override the number of shards (tests).

    Connection and I/O errors propagate to the caller (the detector's worker thread, through
    :class:`~otel_secaudit.detection.failover.FailoverStore`); nothing here runs on a request.
    Creating the store does no network I/O.
    """

    in_process = False

    def __init__(
        self,
        uri: str,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 2.0,
        client: Any = None,
        shards: int | None = None,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        if shards is None:
            shards = CLUSTER_SHARDS if parse_redis_uri(uri).kind == CLUSTER else 1
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.uri = uri
        self.max_keys = max_keys
        self.shards = shards
        #: each shard's share of the per-scope key cap
        self.shard_max_keys = math.ceil(max_keys / shards)
        base = prefix.strip(":").strip("{}") or "secaudit:abuse"
        #: the key prefix of each shard (its ``{...}`` a hash tag), index = shard number
        self.prefixes = shard_prefixes(shards, base)
        self.client = client if client is not None else redis_client(uri, timeout)
        self._apply = self.client.register_script(_script("apply.lua")[0])
        self._housekeeping = self.client.register_script(_script("housekeeping.lua")[0])
        self._refusals = self.client.register_script(_script("refusals.lua")[0])
        self._release = self.client.register_script(_script("release.lua")[0])
        #: violations applied
        self.violations = 0

    @property
    def prefix(self) -> str:
        """The prefix of a one-shard store (the first shard's otherwise)."""
        return self.prefixes[0]

    def shard_of(self, key: str) -> int:
        """The shard that holds ``key``'s state (stable across processes and versions)."""
        if self.shards == 1:
            return 0
        return zlib.crc32(key.encode("utf-8", "replace")) % self.shards

    def prefix_of(self, key: str) -> str:
        """The prefix of every Redis key that holds ``key``'s state."""
        return self.prefixes[self.shard_of(key)]

    # -- counting

    def apply(self, hits: Sequence[Hit], policy: Policy) -> list[Crossing]:
        """Count ``hits`` in one atomic script per shard (one pipeline); return the
        crossings."""
        if not hits:
            return []
        packed: dict[int, list[str]] = {}
        for hit in hits:
            tail = f"\t{hit.name}\t{hit.trace_id}\t{hit.at!r}\t"
            if hit.host:
                scope = HOST + "\t1" if hit.blockable else HOST + "\t0"
                packed.setdefault(self.shard_of(hit.host), []).append(scope + tail + hit.host)
            if hit.user:
                packed.setdefault(self.shard_of(hit.user), []).append(
                    USER + "\t0" + tail + hit.user
                )
        header: list[Any] = [
            repr(policy.window_seconds),
            policy.host_threshold,
            policy.user_threshold,
            repr(policy.block_seconds),
            repr(policy.block_max_seconds),
            self.shard_max_keys,
        ]
        calls = [
            (self.prefixes[shard], [*header, self.prefixes[shard], *rows])
            for shard, rows in sorted(packed.items())
        ]
        results = self._run("apply.lua", self._apply, calls)
        self.violations += len(hits)
        return [self._crossing(row, policy) for rows in results for row in rows]

    @staticmethod
    def _crossing(row: Sequence[Any], policy: Policy) -> Crossing:
        scope, key, at_s, seconds_s, previous_s = (_text(v) for v in row[:5])
        entries: list[Entry] = []
        for raw in row[5:]:
            at_e, name, trace_id = _text(raw).split("|", 2)
            entries.append((float(at_e), name, trace_id))
        return crossing_of(
            scope, key, entries, policy, float(at_s), float(seconds_s), float(previous_s)
        )

    def recent(self, scope: str, key: str, now: float, window: float) -> int:
        """Violations of ``key`` within the window: one ``LRANGE``."""
        entries = self.client.lrange(f"{self.prefix_of(key)}w:{scope}:{key}", 0, -1)
        return sum(1 for raw in entries if float(_text(raw).split("|", 1)[0]) > now - window)

    # -- blocks

    def housekeeping(self, now: float, limit: int = DEFAULT_MAX_BLOCKS) -> Housekeeping:
        """End due blocks (each once across instances) and list the active ones, every shard
        in one pipeline."""
        calls = [(prefix, [repr(now), limit]) for prefix in self.prefixes]
        expired: list[tuple[str, float]] = []
        active: dict[str, float] = {}
        for expired_raw, active_raw in self._run("housekeeping.lua", self._housekeeping, calls):
            expired += _pairs(expired_raw)
            for key, until in _pairs(active_raw):
                if len(active) < limit:
                    active[key] = until
        return Housekeeping(expired, active)

    def claim_refusal_records(
        self, claims: Iterable[tuple[str, int]], now: float
    ) -> dict[str, int]:
        """For blocked keys this instance refused without recording (``(key, refusals not yet
        in a record)``): add the refusals to the key's shared count, and take the key's
        ``request.blocked`` record for the next :data:`RECORD_INTERVAL` seconds where no
        instance holds it. Returns key -> ``security.block.count`` to record (the refusals
        all instances counted since the key's last record) for the keys taken."""
        packed: dict[int, list[Any]] = {}
        for key, count in claims:
            packed.setdefault(self.shard_of(key), []).extend((key, int(count)))
        if not packed:
            return {}
        calls = [
            (self.prefixes[shard], [self.prefixes[shard], repr(RECORD_INTERVAL), repr(now), *args])
            for shard, args in sorted(packed.items())
        ]
        granted: dict[str, int] = {}
        for flat in self._run("refusals.lua", self._refusals, calls):
            for i in range(0, len(flat) - 1, 2):
                granted[_text(flat[i])] = int(flat[i + 1])
        return granted

    def list_blocks(self, now: float, limit: int = DEFAULT_MAX_BLOCKS) -> list[BlockInfo]:
        """The blocks still running at ``now`` (up to ``limit``), the longest-lasting first,
        with each key's offences, from every shard: two pipelined round trips (each shard's
        blocks, then one ``HGET`` per block)."""
        pipe = self.client.pipeline(transaction=False)
        for prefix in self.prefixes:
            pipe.zrevrangebyscore(
                prefix + "blocks", "+inf", f"({now!r}", start=0, num=limit, withscores=True
            )
        found = [(_text(member), float(score)) for rows in pipe.execute() for member, score in rows]
        found.sort(key=lambda item: (-item[1], item[0]))
        found = found[:limit]
        if not found:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key, _ in found:
            pipe.hget(f"{self.prefix_of(key)}b:{key}", "offences")
        offences = pipe.execute()
        return [
            BlockInfo(key, until, int(_text(count)) if count is not None else 0)
            for (key, until), count in zip(found, offences, strict=True)
        ]

    def release(self, key: str, now: float, window: float, forget: bool = False) -> BlockInfo:
        """End ``key``'s block now in every instance (they drop it at their next refresh) and
        restart its count; its repeat-offender history is kept (``forget``: dropped). One
        atomic script on the key's shard (``release.lua``). Returns the block released
        (``until`` 0.0 when none was running)."""
        prefix = self.prefix_of(key)
        until, offences = self._release(
            keys=[prefix + "blocks"],
            args=[key, repr(now), "1" if forget else "0", prefix, max(1, int(window * 1000))],
        )
        return BlockInfo(key, float(_text(until)), int(_text(offences)))

    # -- plumbing

    def _run(self, name: str, script: Any, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """One script call per ``(prefix, args)`` (``KEYS[1]`` = ``prefix .. 'blocks'``):
        alone, through redis-py's script (which loads it when missing); several, in one
        non-transactional pipeline (a cluster client writes every master its share before
        reading any answer, so the masters run them in parallel). Raises the first error."""
        if len(calls) == 1:
            prefix, args = calls[0]
            return [script(keys=[prefix + "blocks"], args=args)]
        from redis.exceptions import NoScriptError

        source, sha = _script(name)
        results = self._pipeline(sha, calls)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:  # not yet on some server (new, restarted, failed over): load, run those
            self.client.script_load(source)  # a cluster client loads it on every master
            for i, result in zip(
                missing, self._pipeline(sha, [calls[i] for i in missing]), strict=True
            ):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    def _pipeline(self, sha: str, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for prefix, args in calls:
            pipe.evalsha(sha, 1, prefix + "blocks", *args)
        return list(pipe.execute(raise_on_error=False))

    def stats(self) -> dict[str, int]:
        """``processed``: violations applied by this instance."""
        return {"processed": self.violations}

    def close(self) -> None:
        """Close the connections; never raises."""
        try:
            self.client.close()
        except Exception:  # closing must not raise
            pass


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> list[tuple[str, float]]:
    return [(_text(flat[i]), float(_text(flat[i + 1]))) for i in range(0, len(flat) - 1, 2)]
