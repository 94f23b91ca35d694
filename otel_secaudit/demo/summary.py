"""The report's numbers: events by name, abuse signals with their evidence, blocks, counters,
top offenders. Linear in the number of records whatever they hold (a block's end finds the
length of the block it ends in a dictionary, not by scanning the blocks before it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from .. import attributes as attr
from .otlp_json import SCOPE_NAME, is_security_log
from .records import LogEntry, MetricPoint, Recording, iso_time

__all__ = ["AbuseSignal", "BlockEvent", "Summary", "security_logs", "summarize"]

#: abuse.* events are the detector's output, not offences of their own.
DETECTOR_EVENTS: Final = frozenset(
    {"abuse.host", "abuse.user", "abuse.scan", "abuse.block.started", "abuse.block.ended"}
)
#: The detector's escalations (each one an :class:`AbuseSignal`).
SIGNAL_EVENTS: Final = frozenset({"abuse.host", "abuse.user", "abuse.scan"})


#: The block event of an operator's release (``admin.action``, ``security.action=release_block``).
RELEASED: Final = "released (admin.action)"


@dataclass
class AbuseSignal:
    """One ``abuse.host`` / ``abuse.user`` / ``abuse.scan`` record: what crossed which
    threshold, and why (a scan's ``breakdown`` is its probed paths)."""

    time: str
    event: str
    scope: str
    key: str
    count: int
    threshold: int
    window_s: float
    breakdown: dict[str, Any]
    trace_ids: list[str]


@dataclass
class BlockEvent:
    """One ``abuse.block.started`` / ``abuse.block.ended`` record, or an operator's release
    (event :data:`RELEASED`, the length of the block it ended)."""

    time: str
    event: str
    address: str
    block_s: float
    trace_id: str


@dataclass
class Summary:
    """The numbers the report shows (also printed as JSON with ``--format json``)."""

    files: list[str]
    requests: int
    skipped_lines: int
    log_records: int
    spans: int
    events: dict[str, int]
    outcomes: dict[str, str]
    violations: int
    abuse_signals: list[AbuseSignal]
    blocks: list[BlockEvent]
    counters: dict[str, list[tuple[dict[str, Any], float]]]
    top_addresses: list[tuple[str, int]]
    top_users: list[tuple[str, int]]
    #: the filters applied (empty: the whole recording); see :meth:`.filters.Query.describe`
    filters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def security_logs(recording: Recording) -> list[LogEntry]:
    """The otel_secaudit security event records, in time order."""
    records = [log for log in recording.logs if is_security_log(log)]
    records.sort(key=lambda log: log.time_ns)
    return records


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def _float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return number if number == number else 0.0  # NaN -> 0


def _strings(value: Any) -> list[str]:
    """A list attribute as strings; a scalar (a malformed record) as an empty list."""
    return [str(item) for item in value] if isinstance(value, list) else []


def _number(value: float) -> Any:
    return int(value) if float(value).is_integer() else value


def _counter_totals(points: Iterable[MetricPoint]) -> dict[str, list[tuple[dict[str, Any], float]]]:
    """Per metric and attribute set: the last value of each cumulative stream (summed across
    streams: processes, restarts), or the sum of delta points."""
    last: dict[tuple[Any, ...], MetricPoint] = {}
    delta: dict[tuple[Any, ...], tuple[dict[str, Any], float]] = {}
    for point in points:
        if point.scope != SCOPE_NAME:
            continue
        if point.cumulative:
            seen = last.get(point.series)
            if seen is None or point.time_ns >= seen.time_ns:
                last[point.series] = point
        else:
            previous = delta.get(point.series, (point.attributes, 0.0))[1]
            delta[point.series] = (point.attributes, previous + point.value)
    totals: dict[tuple[str, tuple[Any, ...]], tuple[dict[str, Any], float]] = {}

    def add(series: tuple[Any, ...], attributes: dict[str, Any], value: float) -> None:
        key = (series[2], series[4])
        previous = totals.get(key, (attributes, 0.0))[1]
        totals[key] = (attributes, previous + value)

    for series, point in last.items():
        add(series, point.attributes, point.value)
    for series, (attributes, value) in delta.items():
        add(series, attributes, value)
    out: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for (metric, _), (attributes, value) in sorted(
        totals.items(), key=lambda item: (item[0][0], -item[1][1], item[0][1])
    ):
        out.setdefault(metric, []).append((attributes, _number(value)))
    return out


class _Blocks:
    """Block records in order; an ``abuse.block.ended`` (which carries no length) shows the
    length of the last block started for its address (one dictionary lookup)."""

    def __init__(self) -> None:
        self.events: list[BlockEvent] = []
        self._started: dict[str, float] = {}

    def add(self, log: LogEntry) -> None:
        a = log.attributes
        if log.event_name == "admin.action":  # an operator's early release
            key = str(a.get(attr.ABUSE_KEY, ""))
            seconds = self._started.get(key, 0.0)
            self.events.append(
                BlockEvent(iso_time(log.time_ns), RELEASED, key, seconds, log.trace_id)
            )
            return
        address = str(a.get(attr.CLIENT_ADDRESS) or a.get(attr.ABUSE_KEY, ""))
        # security.abuse.block_s: the block length's key in older recordings
        seconds = _float(a.get(attr.BLOCK_SECONDS, a.get("security.abuse.block_s")))
        if log.event_name == "abuse.block.started":
            self._started[address] = seconds
        elif not seconds:
            seconds = self._started.get(address, 0.0)
        self.events.append(
            BlockEvent(iso_time(log.time_ns), log.event_name, address, seconds, log.trace_id)
        )


def _signal(log: LogEntry) -> AbuseSignal:
    a = log.attributes
    return AbuseSignal(
        time=iso_time(log.time_ns),
        event=log.event_name,
        scope=str(a.get(attr.ABUSE_SCOPE, "")),
        key=str(a.get(attr.ABUSE_KEY, "")),
        count=_int(a.get(attr.ABUSE_COUNT)),
        threshold=_int(a.get(attr.ABUSE_THRESHOLD)),
        window_s=_float(a.get(attr.ABUSE_WINDOW_S)),
        breakdown=log.body
        if isinstance(log.body, dict)
        else {path: 1 for path in _strings(a.get(attr.SCAN_PATHS))},
        trace_ids=_strings(a.get(attr.ABUSE_TRACE_IDS)),
    )


def summarize(recording: Recording, top: int = 5) -> Summary:
    """The report's numbers from a :class:`Recording` (linear in its records)."""
    records = security_logs(recording)
    events: Counter[str] = Counter()
    outcomes: dict[str, str] = {}
    addresses: Counter[str] = Counter()
    users: Counter[str] = Counter()
    signals: list[AbuseSignal] = []
    blocks = _Blocks()
    violations = 0
    for log in records:
        a = log.attributes
        events[log.event_name] += 1
        outcome = str(a.get(attr.EVENT_OUTCOME, ""))
        outcomes.setdefault(log.event_name, outcome)
        if log.event_name in SIGNAL_EVENTS:
            signals.append(_signal(log))
        elif log.event_name in ("abuse.block.started", "abuse.block.ended") or (
            log.event_name == "admin.action" and a.get(attr.ACTION) == "release_block"
        ):
            blocks.add(log)
        if outcome == "failure" and log.event_name not in DETECTOR_EVENTS:
            violations += 1
            address = a.get(attr.CLIENT_ADDRESS)
            if address:
                addresses[str(address)] += 1
            user = a.get(attr.USER_ID)
            if user is not None:
                users[f"user.id={user}"] += 1
            elif a.get(attr.USER_HASH):
                users[f"user.hash={str(a[attr.USER_HASH])[:16]}"] += 1
    return Summary(
        files=[str(path) for path in recording.files],
        requests=recording.requests,
        skipped_lines=recording.skipped_lines,
        log_records=len(records),
        spans=len(recording.spans),
        events=dict(sorted(events.items(), key=lambda item: (-item[1], item[0]))),
        outcomes=outcomes,
        violations=violations,
        abuse_signals=signals,
        blocks=blocks.events,
        counters=_counter_totals(recording.points),
        top_addresses=addresses.most_common(top),
        top_users=users.most_common(top),
        filters=dict(recording.filters),
    )
