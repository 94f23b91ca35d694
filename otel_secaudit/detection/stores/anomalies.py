"""Scans and device histories in the shared Redis store (every instance sees the same counts).

:class:`SharedAnomalies` runs ``scan.lua`` (the bucketed 404/405 window of
:class:`~otel_secaudit.detection.scans.ScanCounter`) and ``devices.lua`` (the per-user history
of :class:`~otel_secaudit.detection.devices.DeviceHistory`) on the detector's Redis store: the
same client, the same shards (a key's state lives in its shard, under the shard's hash tag),
one script per shard and batch, called from the anomaly worker thread only. It goes through
the detector's :class:`~otel_secaudit.detection.failover.FailoverStore`: while Redis fails or
backs off a call returns None and the caller counts in this process instead.

Key layout, beside the detector's (``P`` = the shard prefix): ``P sc:<host key>`` (hash of
5 s buckets), ``P sp:<host key>`` / ``P st:<host key>`` (probed paths, trace IDs),
``P ss:<host key>`` (signalled-until), ``P seen:scan``; ``P d:<user key>`` (hash
``d:<device>`` / ``n:<network>`` -> last seen), ``P seen:device``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..devices import MAX_REMEMBERED, SeenLogin
from ..failover import FailoverStore
from ..scans import Probe, ScanCrossing
from .redis import RedisStore, _script, _text

__all__ = ["SharedAnomalies", "shared_anomalies"]


def shared_anomalies(store: object) -> SharedAnomalies | None:
    """The Redis side for the detector's ``store`` when it is a shared Redis store (wrapped in
    its failover), else None (state stays in the process)."""
    if isinstance(store, FailoverStore) and isinstance(store.store, RedisStore):
        return SharedAnomalies(store)
    return None


class SharedAnomalies:
    """Scan counts and device histories in Redis (see the module docstring)."""

    def __init__(self, failover: FailoverStore) -> None:
        redis_store = failover.store
        assert isinstance(redis_store, RedisStore)
        self._failover = failover
        self._redis = redis_store
        self._scan = redis_store.client.register_script(_script("scan.lua")[0])
        self._devices = redis_store.client.register_script(_script("devices.lua")[0])

    def scans(
        self, probes: Sequence[Probe], threshold: int, blocking: bool
    ) -> list[ScanCrossing] | None:
        """Count ``probes``; the crossings, or None when Redis is not available."""
        return self._failover.shared(lambda _: self._apply_scans(probes, threshold, blocking))

    def devices(self, logins: Sequence[SeenLogin], period: float) -> list[str | None] | None:
        """Judge and remember ``logins``; their reasons, or None when Redis is not available."""
        return self._failover.shared(lambda _: self._apply_devices(logins, period))

    def close(self) -> None:
        """Nothing of its own: the detector's store closes the client."""

    def _apply_scans(
        self, probes: Sequence[Probe], threshold: int, blocking: bool
    ) -> list[ScanCrossing]:
        store = self._redis
        packed: dict[int, list[Any]] = {}
        for probe in probes:
            packed.setdefault(store.shard_of(probe.key), []).extend(
                (probe.key, int(probe.blockable), probe.trace_id, repr(probe.at), probe.path)
            )
        header = [threshold, int(blocking), store.shard_max_keys]
        calls = [
            (store.prefixes[shard], [*header, store.prefixes[shard], *rows])
            for shard, rows in sorted(packed.items())
        ]
        out = []
        for rows in store._run("scan.lua", self._scan, calls):
            for row in rows:
                key, count, at, blockable, n = (_text(v) for v in row[:5])
                paths = tuple(_text(v) for v in row[5 : 5 + int(n)])
                traces = tuple(dict.fromkeys(_text(v) for v in row[5 + int(n) :]))
                out.append(
                    ScanCrossing(
                        key, int(count), threshold, float(at), paths, traces, blockable == "1"
                    )
                )
        return out

    def _apply_devices(self, logins: Sequence[SeenLogin], period: float) -> list[str | None]:
        store = self._redis
        packed: dict[int, list[int]] = {}
        args: dict[int, list[Any]] = {}
        for index, login in enumerate(logins):
            shard = store.shard_of(login.user_key)
            packed.setdefault(shard, []).append(index)
            args.setdefault(shard, []).extend(
                (login.user_key, login.device or "", login.network or "", repr(login.at))
            )
        header = [repr(float(period)), MAX_REMEMBERED, store.shard_max_keys]
        shards = sorted(packed)
        calls = [(store.prefixes[s], [*header, store.prefixes[s], *args[s]]) for s in shards]
        reasons: list[str | None] = [None] * len(logins)
        for shard, result in zip(
            shards, store._run("devices.lua", self._devices, calls), strict=True
        ):
            for index, reason in zip(packed[shard], result, strict=True):
                reasons[index] = _text(reason) or None
        return reasons
