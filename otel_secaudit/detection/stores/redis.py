"""Store shared by every instance through Redis (every ``OTEL_SECAUDIT_STORE`` Redis form).

Each batch is one ``EVALSHA`` of ``apply.lua`` (one round trip, atomic), so "signal once",
"block once", repeat-offender doubling and the key cap hold across instances. Block expiry is
``housekeeping.lua``. The scripts ship in the package and are read with
:mod:`importlib.resources`. Every key starts with the prefix, whose ``{...}`` is a Redis
Cluster hash tag, so each script touches a single slot (``KEYS[1]`` names one key of it).

The client is made in one place, :func:`~.redis_clients.redis_client`, from the URI; a ready
client can be passed instead (``RedisStore(uri, client=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from ..window import HOST, USER, Crossing, Entry, Hit, Policy, crossing_of
from .base import DEFAULT_MAX_BLOCKS, DEFAULT_MAX_KEYS, Housekeeping
from .redis_clients import redis_client

__all__ = ["DEFAULT_PREFIX", "RedisStore"]

#: Every key starts with this; ``{...}`` is the Redis Cluster hash tag (one slot for all).
DEFAULT_PREFIX = "{secaudit:abuse}:"


@cache
def _script(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


class RedisStore:
    """Store shared by all instances through Redis (see the module docstring).

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
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.uri = uri
        self.max_keys = max_keys
        self.prefix = prefix
        self.client = client if client is not None else redis_client(uri, timeout)
        self._blocks_key = prefix + "blocks"
        self._apply = self.client.register_script(_script("apply.lua"))
        self._housekeeping = self.client.register_script(_script("housekeeping.lua"))
        #: violations applied
        self.violations = 0

    def apply(self, hits: Sequence[Hit], policy: Policy) -> list[Crossing]:
        """Count ``hits`` in one atomic round trip; return the crossings."""
        if not hits:
            return []
        args: list[Any] = [
            repr(policy.window_seconds),
            policy.host_threshold,
            policy.user_threshold,
            repr(policy.block_seconds),
            repr(policy.block_max_seconds),
            self.max_keys,
            self.prefix,
        ]
        for hit in hits:
            tail = f"\t{hit.name}\t{hit.trace_id}\t{hit.at!r}\t"
            if hit.host:
                args.append((HOST + "\t1" if hit.blockable else HOST + "\t0") + tail + hit.host)
            if hit.user:
                args.append(USER + "\t0" + tail + hit.user)
        rows = self._apply(keys=[self._blocks_key], args=args)
        self.violations += len(hits)
        return [self._crossing(row, policy) for row in rows]

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
        entries = self.client.lrange(f"{self.prefix}w:{scope}:{key}", 0, -1)
        return sum(1 for raw in entries if float(_text(raw).split("|", 1)[0]) > now - window)

    def housekeeping(self, now: float, limit: int = DEFAULT_MAX_BLOCKS) -> Housekeeping:
        """End due blocks (each once across instances) and list the active ones."""
        expired_raw, active_raw = self._housekeeping(
            keys=[self._blocks_key], args=[repr(now), limit]
        )
        return Housekeeping(_pairs(expired_raw), dict(_pairs(active_raw)))

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
