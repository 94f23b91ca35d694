"""Scans: one client address answered 404/405 too often (``abuse.scan``, OWASP
``malicious_excess_404``).

A scanner probes routes that do not exist (``/.env``, ``/wp-login.php``, ``/.git/config``...).
The 404 and 405 answers are not recorded one by one (a scan would flood the audit trail);
they are counted per host key (the address, or its IPv6 network, as for ``abuse.host``) in a
60 s window, and ``OTEL_SECAUDIT_SCAN_THRESHOLD`` of them raise one ``abuse.scan`` with
``security.abuse.count`` and up to 10 of the probed paths (``security.scan.paths``).

The window is bucketed: 12 buckets of 5 s per key, so a key costs the same memory whatever the
threshold and the rate (the count covers the last 55 to 60 s: a 5 s granularity, never more
than 60 s). After a crossing the key's count restarts; without blocks a key signals at most
once per 60 s, with blocks on the crossing blocks it (:meth:`AbuseDetector.escalate`, sharing
``abuse.host``'s repeat-offender doubling).

:class:`ScanCounter` is the in-process state (an LRU capped at ``OTEL_SECAUDIT_MAX_KEYS``
keys, each at most 12 buckets and 10 paths of at most :data:`MAX_PATH_LENGTH` characters);
``stores/scan.lua`` runs the same algorithm in Redis for instances that share a store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

__all__ = [
    "BUCKET_SECONDS",
    "MAX_PATHS",
    "MAX_PATH_LENGTH",
    "SCAN",
    "SCAN_WINDOW_SECONDS",
    "Probe",
    "ScanCounter",
    "ScanCrossing",
    "is_probe_status",
]

#: ``security.abuse.scope`` of ``abuse.scan`` (and of its ``security.abuse.signals``).
SCAN: Final = "scan"
#: The window of the contract: 404/405 answers within 60 s.
SCAN_WINDOW_SECONDS: Final = 60.0
BUCKET_SECONDS: Final = 5.0
_BUCKETS: Final = int(SCAN_WINDOW_SECONDS / BUCKET_SECONDS)
#: Paths reported with ``abuse.scan`` (``security.scan.paths``), and kept per key.
MAX_PATHS: Final = 10
#: A probed path is kept and reported up to this many characters.
MAX_PATH_LENGTH: Final = 128
#: How many trace IDs of probes are kept per key as evidence.
MAX_TRACE_IDS: Final = 5


def is_probe_status(status: int) -> bool:
    """404 (no such route) and 405 (no such method on it) are what a scan gets."""
    return status == 404 or status == 405


class Probe(NamedTuple):
    """One 404/405 answer as the scan counter sees it."""

    #: the host key (address or IPv6 network)
    key: str
    #: the request path (scrubbed, capped at :data:`MAX_PATH_LENGTH`), or "" when unknown
    path: str
    trace_id: str
    at: float
    #: the key may be blocked (blocks on and not allowlisted)
    blockable: bool = False


@dataclass(frozen=True, slots=True)
class ScanCrossing:
    """A key reached the scan threshold within 60 s."""

    key: str
    count: int
    threshold: int
    at: float
    #: up to :data:`MAX_PATHS` distinct probed paths, oldest first
    paths: tuple[str, ...]
    #: trace IDs of the last probes (evidence)
    trace_ids: tuple[str, ...]
    blockable: bool


class _KeyScan:
    """The bucketed window of one key."""

    __slots__ = ("buckets", "paths", "trace_ids", "signalled_until")

    def __init__(self) -> None:
        #: [bucket index, count] pairs, oldest first, at most _BUCKETS of them
        self.buckets: list[list[int]] = []
        self.paths: list[str] = []
        self.trace_ids: list[str] = []
        self.signalled_until = 0.0

    def hit(self, probe: Probe) -> int:
        """Count ``probe``; the key's count within the window."""
        bucket = int(probe.at // BUCKET_SECONDS)
        buckets = self.buckets
        while buckets and buckets[0][0] <= bucket - _BUCKETS:
            del buckets[0]
        if not buckets:  # an idle key starts over: old paths are not this scan's evidence
            self.paths.clear()
            self.trace_ids.clear()
        if buckets and buckets[-1][0] >= bucket:
            buckets[-1][1] += 1  # same bucket (or a clock step back: counted in the last)
        else:
            buckets.append([bucket, 1])
        path = probe.path[:MAX_PATH_LENGTH]
        if path and len(self.paths) < MAX_PATHS and path not in self.paths:
            self.paths.append(path)
        if probe.trace_id:
            self.trace_ids.append(probe.trace_id)
            if len(self.trace_ids) > MAX_TRACE_IDS:
                del self.trace_ids[0]
        return sum(count for _, count in buckets)

    def restart(self) -> None:
        self.buckets = []
        self.paths = []
        self.trace_ids = []


class ScanCounter:
    """In-process scan state: per host key, 404/405 answers within 60 s (see the module
    docstring). Thread-safe; no I/O.

    Args:
        max_keys: keys tracked at once; the least recently seen is dropped first (counted in
            :attr:`evictions`).
    """

    in_process = True

    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _KeyScan] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0
        self.probes = 0

    def apply(self, probes: Sequence[Probe], threshold: int, blocking: bool) -> list[ScanCrossing]:
        """Count ``probes`` in order; the crossings. ``blocking``: blocks are on (a blockable
        key's crossing blocks it, so the once-per-60 s rule does not apply to it)."""
        out: list[ScanCrossing] = []
        with self._lock:
            for probe in probes:
                crossing = self._hit(probe, threshold, blocking)
                if crossing is not None:
                    out.append(crossing)
        return out

    def _hit(self, probe: Probe, threshold: int, blocking: bool) -> ScanCrossing | None:
        self.probes += 1
        state = self._keys.get(probe.key)
        if state is None:
            if len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
                self.evictions += 1
            state = self._keys[probe.key] = _KeyScan()
        else:
            self._keys.move_to_end(probe.key)
        count = state.hit(probe)
        if count < threshold:
            return None
        blocks = blocking and probe.blockable
        if not blocks and probe.at < state.signalled_until:
            return None
        crossing = ScanCrossing(
            probe.key,
            count,
            threshold,
            probe.at,
            tuple(state.paths),
            tuple(dict.fromkeys(state.trace_ids)),
            blocks,
        )
        state.restart()
        if not blocks:
            state.signalled_until = probe.at + SCAN_WINDOW_SECONDS
        return crossing

    def tracked_keys(self) -> int:
        """Keys currently tracked."""
        return len(self._keys)

    def close(self) -> None:
        """Nothing to release."""
