"""The moving-window algorithm of abuse detection, independent of where its state is stored.

Like the ``limits`` library's *moving window*: for each key (a client address or network, or a
user) the store keeps the most recent ``threshold`` violations, oldest first, each as
``(time, name, trace_id)``. The key has reached its threshold when it holds ``threshold``
entries and the oldest of them is younger than the window::

    len(entries) == threshold and entries[0].at > now - window_seconds

That is exact, not an estimate: error bound zero (up to clock skew between instances sharing
a Redis store, since each instance stamps violations with its own clock). Memory per key is
``threshold`` entries, never more, whatever the rate. The entries double as evidence: the
names and trace IDs of the violations that made the key cross are exactly the ones reported
(trace IDs capped at :attr:`Policy.evidence`). The count reported with a crossing is the
threshold itself: the window keeps no more than that.

What a crossing does depends on whether the key can be blocked (the README's "Abuse
detection and blocks", repeat offenders):

* **observe only** (user keys, allowlisted networks, ``block_seconds == 0``): the key signals
  once per window; a crossing marks it ``signalled_until = now + window``, and it can only
  signal again once that time has passed *and* it has crossed again;
* **blocking** (host keys with ``block_seconds > 0``): every crossing starts a block, and the
  key's count restarts when the block ends (violations stamped before its end never count,
  so a repeat offender needs ``threshold`` fresh violations after its block). Each block is
  twice as long as the previous one of that key (fail2ban's ``bantime.increment``), up to
  ``block_max_seconds``. A key's offences are forgotten one window after its last block
  ended.

:class:`KeyWindow` is the in-memory implementation; the Redis store runs the same algorithm in
``stores/apply.lua``, and the tests run the same scenarios against both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:  # config imports the stores' URI parser: no import cycle at runtime
    from ..config import Settings

__all__ = ["HOST", "USER", "Crossing", "Entry", "Hit", "KeyWindow", "Policy", "crossing_of"]

HOST: Final = "host"
USER: Final = "user"

#: One counted violation: (epoch seconds, event name, trace ID or "").
Entry = tuple[float, str, str]


@dataclass(frozen=True, slots=True)
class Policy:
    """Thresholds and durations that the stores apply (from :class:`Settings`)."""

    host_threshold: int = 10
    user_threshold: int = 5
    window_seconds: float = 3600.0
    #: 0 = observe only; > 0 = a host crossing blocks the key for this long (first offence).
    block_seconds: float = 0.0
    #: A repeat offender's block doubles each time, up to this.
    block_max_seconds: float = 86400.0
    #: At most this many trace IDs are reported as evidence with a crossing.
    evidence: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy of ``settings`` (the README's "Configuration")."""
        return cls(
            host_threshold=settings.host_threshold,
            user_threshold=settings.user_threshold,
            window_seconds=float(settings.window_seconds),
            block_seconds=float(settings.block_seconds),
            block_max_seconds=float(settings.block_max_seconds),
        )

    def threshold(self, scope: str) -> int:
        """The threshold of ``scope`` (:data:`HOST` or :data:`USER`)."""
        return self.host_threshold if scope == HOST else self.user_threshold

    def block_length(self, offences: int) -> float:
        """Length of a key's block after ``offences`` earlier blocks: doubling from
        ``block_seconds``, capped at ``block_max_seconds`` (never below ``block_seconds``)."""
        cap = max(self.block_max_seconds, self.block_seconds)
        return min(self.block_seconds * 2.0 ** min(offences, 64), cap)


class Hit(NamedTuple):
    """One violation as the stores count it: against its host key and its user key."""

    #: client address, or its IPv6 network (``2001:db8:1:2::/64``); None when unknown
    host: str | None
    #: ``user.id``, else ``user.hash``; None when unknown
    user: str | None
    name: str
    trace_id: str
    at: float
    #: the host key may be blocked (blocks on and not allowlisted)
    blockable: bool = False


@dataclass(frozen=True, slots=True)
class Crossing:
    """A key crossed its threshold inside the window."""

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
    #: epoch seconds until which the key is now blocked; 0.0 = no block started
    blocked_until: float = 0.0
    #: length of the block that started (0.0 = none)
    block_seconds: float = 0.0
    #: the end time of the key's previous block when it had ended but its end was not yet
    #: reported (the key re-offended before housekeeping saw it): report it first (0.0 = none)
    previous_block_until: float = 0.0


def crossing_of(
    scope: str,
    key: str,
    entries: list[Entry],
    policy: Policy,
    at: float,
    block_seconds: float = 0.0,
    previous_block_until: float = 0.0,
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
        blocked_until=at + block_seconds if block_seconds else 0.0,
        block_seconds=block_seconds,
        previous_block_until=previous_block_until,
    )


def evidence_of(entries: list[Entry], limit: int) -> tuple[dict[str, int], tuple[str, ...]]:
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
        self.entries: list[Entry] = []
        self.signalled_until = 0.0

    def hit(
        self,
        at: float,
        name: str,
        trace_id: str,
        threshold: int,
        window: float,
        since: float = 0.0,
        blocking: bool = False,
    ) -> list[Entry] | None:
        """Count one violation; return the triggering entries when the key crosses now (the
        caller then reports a :class:`Crossing`), else None.

        ``since``: violations before this time do not count (the end of the key's current or
        last block). ``blocking``: a crossing starts a block, so the count restarts and the
        once-per-window rule does not apply.
        """
        if at < since:
            return None  # blocked at that time: the count restarts when the block ends
        entries = self.entries
        entries.append((at, name, trace_id))
        length = len(entries)
        if length < threshold:
            return None
        if length > threshold:
            del entries[: length - threshold]
        oldest = entries[0][0]
        if oldest <= at - window or oldest < since:
            return None
        if blocking:
            self.entries = []
            return entries
        if at >= self.signalled_until:
            self.signalled_until = at + window
            return list(entries)
        return None
