"""``security.events`` counted in-process and reported by an asynchronous counter (see
:class:`EventTally`); the recorder holds one per meter provider."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from . import attributes as attr

__all__ = ["EventTally", "event_tally_for"]

_EVENT_TALLY_SIZE = 1024


class EventTally:
    """``security.events``, tallied in-process and reported by an asynchronous counter.

    ``security.events`` is ``security.violations``' twin without route and status: counting it
    through a second synchronous counter doubled the SDK's per-event metric cost (an
    aggregation lookup and an exemplar each). Same name, unit and points; no exemplars (those
    are on ``security.violations``, where they point at the evidence). One tally per meter
    provider, shared by every recorder built on it: the SDK keeps only the first callback of
    an instrument registered twice, and a counter is cumulative across replaced recorders.
    """

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        meter.create_observable_counter(
            attr.METRIC_EVENTS,
            callbacks=[self._observe],
            unit="{event}",
            description="Security events by outcome",
        )

    def add(self, name: str, outcome: str) -> None:
        key = (name, outcome)
        with self._lock:
            counts = self._counts
            if key not in counts and len(counts) >= _EVENT_TALLY_SIZE:
                key = ("other", outcome)  # custom names come from code, but stay bounded
            counts[key] = counts.get(key, 0) + 1

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        return [
            Observation(count, {attr.EVENT_NAME: name, attr.EVENT_OUTCOME: outcome})
            for (name, outcome), count in counts
        ]


_event_tallies: weakref.WeakKeyDictionary[Any, EventTally] = weakref.WeakKeyDictionary()
_event_tallies_lock = threading.Lock()


def event_tally_for(provider: Any, meter: Meter) -> EventTally:
    """The tally of ``provider`` (built with ``meter`` the first time)."""
    with _event_tallies_lock:
        tally = _event_tallies.get(provider)
        if tally is None:
            tally = _event_tallies[provider] = EventTally(meter)
        return tally
