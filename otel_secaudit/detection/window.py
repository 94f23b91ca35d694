"""The moving-window algorithm of abuse detection, independent of where its state is stored.

Like the ``limits`` library's *moving window*: for each key (a client address or a user) the
store keeps the most recent ``threshold`` violations, oldest first, each as
``(time, name, trace_id)``. The key has reached its threshold when it holds ``threshold``
entries and the oldest of them is younger than the window::

    len(entries) == threshold and entries[0].at > now - window_seconds

That is exact, not an estimate: error bound zero (up to clock skew between instances sharing
a Redis store, since each instance stamps violations with its own clock). Memory per key is
``threshold`` entries, never more, whatever the rate. The entries double as evidence: the
names and trace IDs of the violations that made the key cross are exactly the ones reported
(trace IDs capped at :attr:`Policy.evidence`). The count reported with a crossing is the
number of violations inside the window at that moment, which is the threshold itself: the
window keeps no more than that, and a key signals the first time it gets there.

Signal once per key per window: a crossing marks the key ``signalled_until = now + window``;
the key can only signal again once that time has passed *and* it has crossed again.

:class:`KeyWindow` is the in-memory implementation; the Redis store runs the same algorithm in
a Lua script (:mod:`otel_secaudit.detection.stores`), and the tests run the same scenarios
against both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from ..config import Settings

__all__ = ["HOST", "SCOPES", "USER", "Crossing", "Hit", "KeyWindow", "Policy", "crossing_of"]

HOST: Final = "host"
USER: Final = "user"
SCOPES: Final = (HOST, USER)


@dataclass(frozen=True, slots=True)
class Policy:
    """Thresholds and durations that the stores apply (from :class:`Settings`)."""

    host_threshold: int = 10
    user_threshold: int = 5
    window_seconds: float = 3600.0
    #: 0 = observe only; > 0 = a host crossing blocks the address for this long.
    block_seconds: float = 0.0
    #: At most this many trace IDs are reported as evidence with a crossing.
    evidence: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            host_threshold=settings.host_threshold,
            user_threshold=settings.user_threshold,
            window_seconds=float(settings.window_seconds),
            block_seconds=float(settings.block_seconds),
        )

    def threshold(self, scope: str) -> int:
        return self.host_threshold if scope == HOST else self.user_threshold


class Hit(NamedTuple):
    """One violation counted against one key."""

    scope: str
    key: str
    name: str
    trace_id: str
    at: float


@dataclass(frozen=True, slots=True)
class Crossing:
    """A key crossed its threshold inside the window (reported once per window)."""

    scope: str
    key: str
    count: int
    threshold: int
    window_seconds: float
    at: float
    #: violation name -> count among the violations that triggered the crossing
    breakdown: Mapping[str, int] = field(default_factory=dict)
    #: trace IDs (32 hex) of the triggering violations, oldest first, without duplicates
    trace_ids: tuple[str, ...] = ()
    #: epoch seconds until which the address is now blocked; 0.0 = no block started
    blocked_until: float = 0.0


def crossing_of(
    scope: str,
    key: str,
    entries: list[tuple[float, str, str]],
    policy: Policy,
    at: float,
    blocked_until: float,
) -> Crossing:
    """The :class:`Crossing` a store reports for ``key`` (the same for every store)."""
    breakdown, trace_ids = evidence_of(entries, policy.evidence)
    return Crossing(
        scope=scope,
        key=key,
        count=len(entries),
        threshold=policy.threshold(scope),
        window_seconds=policy.window_seconds,
        at=at,
        breakdown=breakdown,
        trace_ids=trace_ids,
        blocked_until=blocked_until,
    )


def evidence_of(
    entries: list[tuple[float, str, str]], limit: int
) -> tuple[dict[str, int], tuple[str, ...]]:
    """Breakdown by name and de-duplicated trace IDs (the newest ``limit``) of ``entries``."""
    breakdown = dict(Counter(name for _, name, _ in entries))
    seen: dict[str, None] = {}
    for _, _, trace_id in entries:
        if trace_id:
            seen[trace_id] = None
    trace_ids = tuple(seen)
    return breakdown, trace_ids[-limit:] if limit else ()


class KeyWindow:
    """The moving window of one key (see the module docstring)."""

    __slots__ = ("entries", "signalled_until")

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, str]] = []
        self.signalled_until = 0.0

    def hit(self, at: float, name: str, trace_id: str, threshold: int, window: float) -> bool:
        """Count one violation; True when the key crosses now and has not signalled in this
        window (the caller then reports a :class:`Crossing`)."""
        entries = self.entries
        entries.append((at, name, trace_id))
        length = len(entries)
        if length < threshold:
            return False
        if length > threshold:
            del entries[: length - threshold]
        if entries[0][0] > at - window and at >= self.signalled_until:
            self.signalled_until = at + window
            return True
        return False
