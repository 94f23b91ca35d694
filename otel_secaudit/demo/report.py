"""Read OTLP/JSON files back and summarize the security telemetry in them.

Input: a folder written by ``otel-secaudit demo`` (``logs.jsonl``, ``traces.jsonl``,
``metrics.jsonl``), a collector ``file`` exporter archive file (one export request per line,
any name), or a folder of such ``.json`` / ``.jsonl`` files (searched recursively; rotated
archives included). Each line is one ``Export{Logs,Trace,Metrics}ServiceRequest`` in OTLP/JSON.

Corrupt input: a line that is not JSON, or not an OTLP export request, is skipped and reported
(file and line number) in :attr:`Recording.problems`; the summary says how many were skipped.
A truncated last line (a writer that died mid-line) is the common case and must not make the
rest of an archive unreadable. With ``strict=True`` the first corrupt line raises
:class:`ReportError` instead. A path that does not exist, or a folder holding no OTLP data,
raises :class:`ReportError`.

The live report at the end of ``otel-secaudit demo`` is built by this module from the files the
demo just wrote, so ``otel-secaudit report`` on that folder shows the same numbers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from .. import attributes as attr

__all__ = [
    "AbuseSignal",
    "BlockEvent",
    "LogEntry",
    "ReportError",
    "Recording",
    "SpanEntry",
    "Summary",
    "load",
    "printable",
    "summarize",
    "timeline",
]

SCOPE_NAME: Final = attr.SCOPE_NAME
#: CONTRACT section 3 (``security.abuse.block_s`` of older recordings is read too).
BLOCK_SECONDS: Final = "security.block.seconds"
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_SUFFIXES: Final = (".json", ".jsonl", ".ndjson")
_MAX_PROBLEMS_KEPT: Final = 50
#: abuse.* events are the detector's output, not offences of their own.
_DETECTOR_EVENTS: Final = frozenset(
    {"abuse.host", "abuse.user", "abuse.block.started", "abuse.block.ended"}
)


class ReportError(Exception):
    """The input cannot be summarized; the message says why (shown without a traceback)."""


# -- the records ----------------------------------------------------------------------------


@dataclass
class LogEntry:
    """One log record."""

    time_ns: int
    event_name: str
    severity: str
    trace_id: str
    span_id: str
    scope: str
    attributes: dict[str, Any]
    body: Any


@dataclass
class SpanEventEntry:
    time_ns: int
    name: str
    attributes: dict[str, Any]


@dataclass
class SpanEntry:
    """One span with its events."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_ns: int
    end_ns: int
    status_code: int
    scope: str
    attributes: dict[str, Any]
    events: list[SpanEventEntry]


@dataclass
class MetricPoint:
    """One sum/gauge data point."""

    metric: str
    scope: str
    series: tuple[Any, ...]  # identifies the cumulative stream (resource, start time, attributes)
    attributes: dict[str, Any]
    value: float
    time_ns: int
    cumulative: bool


@dataclass
class Problem:
    """A line that was skipped."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Recording:
    """Everything read from the input."""

    files: list[Path] = field(default_factory=list)
    logs: list[LogEntry] = field(default_factory=list)
    spans: list[SpanEntry] = field(default_factory=list)
    points: list[MetricPoint] = field(default_factory=list)
    requests: int = 0
    problems: list[Problem] = field(default_factory=list)
    skipped_lines: int = 0


# -- decoding -------------------------------------------------------------------------------


def _any_value(value: Any) -> Any:
    """An OTLP/JSON ``AnyValue`` as a Python value."""
    if not isinstance(value, dict) or not value:
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_any_value(item) for item in (value["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in value:
        return _attributes((value["kvlistValue"] or {}).get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _attributes(key_values: Any) -> dict[str, Any]:
    if not isinstance(key_values, list):
        return {}
    return {
        str(item.get("key")): _any_value(item.get("value"))
        for item in key_values
        if isinstance(item, dict)
    }


def _hex_id(value: Any, length: int) -> str:
    """Hex as the collector writes it; base64 (protobuf's default JSON) converted."""
    if not isinstance(value, str) or not value:
        return ""
    lowered = value.lower()
    if len(lowered) == length and all(c in "0123456789abcdef" for c in lowered):
        return lowered
    try:
        decoded = base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return ""
    return decoded if len(decoded) == length else ""


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


def _decode_logs(request: dict[str, Any], out: Recording) -> None:
    for resource_logs in request.get("resourceLogs") or []:
        for scope_logs in resource_logs.get("scopeLogs") or []:
            scope = str((scope_logs.get("scope") or {}).get("name", ""))
            for log in scope_logs.get("logRecords") or []:
                attributes = _attributes(log.get("attributes"))
                name = log.get("eventName") or attributes.get(attr.EVENT_NAME) or ""
                out.logs.append(
                    LogEntry(
                        time_ns=_int(log.get("timeUnixNano"))
                        or _int(log.get("observedTimeUnixNano")),
                        event_name=str(name),
                        severity=str(log.get("severityText", "")),
                        trace_id=_hex_id(log.get("traceId"), 32),
                        span_id=_hex_id(log.get("spanId"), 16),
                        scope=scope,
                        attributes=attributes,
                        body=_any_value(log.get("body")),
                    )
                )


def _decode_spans(request: dict[str, Any], out: Recording) -> None:
    for resource_spans in request.get("resourceSpans") or []:
        for scope_spans in resource_spans.get("scopeSpans") or []:
            scope = str((scope_spans.get("scope") or {}).get("name", ""))
            for span in scope_spans.get("spans") or []:
                out.spans.append(
                    SpanEntry(
                        trace_id=_hex_id(span.get("traceId"), 32),
                        span_id=_hex_id(span.get("spanId"), 16),
                        parent_span_id=_hex_id(span.get("parentSpanId"), 16),
                        name=str(span.get("name", "")),
                        start_ns=_int(span.get("startTimeUnixNano")),
                        end_ns=_int(span.get("endTimeUnixNano")),
                        status_code=_int((span.get("status") or {}).get("code")),
                        scope=scope,
                        attributes=_attributes(span.get("attributes")),
                        events=[
                            SpanEventEntry(
                                _int(event.get("timeUnixNano")),
                                str(event.get("name", "")),
                                _attributes(event.get("attributes")),
                            )
                            for event in span.get("events") or []
                        ],
                    )
                )


def _decode_metrics(request: dict[str, Any], out: Recording) -> None:
    for resource_metrics in request.get("resourceMetrics") or []:
        resource = _attributes((resource_metrics.get("resource") or {}).get("attributes"))
        resource_key = tuple(sorted((k, repr(v)) for k, v in resource.items()))
        for scope_metrics in resource_metrics.get("scopeMetrics") or []:
            scope = str((scope_metrics.get("scope") or {}).get("name", ""))
            for metric in scope_metrics.get("metrics") or []:
                name = str(metric.get("name", ""))
                if "sum" in metric:
                    data = metric["sum"] or {}
                    # AGGREGATION_TEMPORALITY_DELTA = 1, CUMULATIVE = 2
                    cumulative = _int(data.get("aggregationTemporality")) != 1
                elif "gauge" in metric:
                    data, cumulative = metric["gauge"] or {}, True
                else:
                    continue  # histograms and summaries are not part of this report
                for point in data.get("dataPoints") or []:
                    attributes = _attributes(point.get("attributes"))
                    if "asInt" in point:
                        value: float = _int(point["asInt"])
                    else:
                        value = float(point.get("asDouble", 0.0))
                    series = (
                        resource_key,
                        scope,
                        name,
                        _int(point.get("startTimeUnixNano")),
                        tuple(sorted((k, repr(v)) for k, v in attributes.items())),
                    )
                    out.points.append(
                        MetricPoint(
                            name,
                            scope,
                            series,
                            attributes,
                            value,
                            _int(point.get("timeUnixNano")),
                            cumulative,
                        )
                    )


def _files_of(path: Path) -> list[Path]:
    if not path.exists():
        raise ReportError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ReportError(f"{path}: not a file or directory")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(_SUFFIXES))
    if not files:
        raise ReportError(
            f"{path}: no OTLP/JSON files here (expected logs.jsonl, traces.jsonl, metrics.jsonl "
            "or collector file-exporter .json/.jsonl archives)"
        )
    return files


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open("r", encoding="utf-8", errors="strict") as handle:
            yield from enumerate(handle, start=1)
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from None


#: What a malformed line can make the decoders raise (wrong JSON types, ``int("zz")``,
#: nesting deeper than the JSON parser's recursion limit): the line is skipped, never fatal.
_DECODE_ERRORS: Final = (ValueError, TypeError, AttributeError, KeyError, RecursionError)


def _decode_line(line: str) -> Recording | str:
    """One line as a :class:`Recording` of its own, or the reason it cannot be read.

    Decoding goes into a fresh recording, so a line that fails half-way adds nothing."""
    try:
        request = json.loads(line)
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON ({exc.msg}, column {exc.colno})"
        if not line.endswith("\n"):
            reason += ", truncated last line"
        return reason
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    if not isinstance(request, dict):
        return "not an OTLP export request (expected a JSON object)"
    part = Recording()
    try:
        if "resourceLogs" in request:
            _decode_logs(request, part)
        elif "resourceSpans" in request:
            _decode_spans(request, part)
        elif "resourceMetrics" in request:
            _decode_metrics(request, part)
        else:
            return "not an OTLP export request (no resourceLogs, resourceSpans or resourceMetrics)"
    except _DECODE_ERRORS as exc:
        return f"malformed OTLP export request ({type(exc).__name__})"
    return part


def load(path: Path | str, *, strict: bool = False) -> Recording:
    """Read every OTLP/JSON export request under ``path``.

    A line that cannot be read is skipped and listed in :attr:`Recording.problems` (file and
    line number), whatever it holds.

    Raises:
        ReportError: missing path, no OTLP files, unreadable file, nothing usable at all, or
            (``strict``) a corrupt line.
    """
    root = Path(path)
    out = Recording(files=_files_of(root))
    for file in out.files:
        for number, line in _lines(file):
            if not line.strip():
                continue
            decoded = _decode_line(line)
            if isinstance(decoded, Recording):
                out.logs.extend(decoded.logs)
                out.spans.extend(decoded.spans)
                out.points.extend(decoded.points)
                out.requests += 1
                continue
            problem = Problem(str(file), number, decoded)
            if strict:
                raise ReportError(f"corrupt input: {problem}")
            out.skipped_lines += 1
            if len(out.problems) < _MAX_PROBLEMS_KEPT:
                out.problems.append(problem)
    if out.requests == 0:
        detail = f"; first problem: {out.problems[0]}" if out.problems else ""
        raise ReportError(f"{root}: no OTLP export requests could be read{detail}")
    return out


# -- the summary ----------------------------------------------------------------------------


@dataclass
class AbuseSignal:
    """One ``abuse.host`` / ``abuse.user`` record: what crossed which threshold, and why."""

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
    """One ``abuse.block.started`` / ``abuse.block.ended`` record."""

    time: str
    event: str
    address: str
    block_s: float
    trace_id: str


@dataclass
class Summary:
    """The numbers the report shows (also printed as JSON with ``--json``)."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(time_ns: int) -> str:
    if not time_ns:
        return "-"
    try:
        moment = datetime.fromtimestamp(time_ns / 1e9, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):  # a timestamp no calendar holds
        return "-"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def security_logs(recording: Recording) -> list[LogEntry]:
    """The otel_secaudit security event records, in time order."""
    records = [
        log
        for log in recording.logs
        if log.event_name and (log.scope == SCOPE_NAME or attr.EVENT_NAME in log.attributes)
    ]
    records.sort(key=lambda log: log.time_ns)
    return records


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


def _number(value: float) -> Any:
    return int(value) if float(value).is_integer() else value


def _block(log: LogEntry, earlier: list[BlockEvent]) -> BlockEvent:
    """A block record; an ``abuse.block.ended`` (which carries no length) shows the length of
    the block it ends."""
    a = log.attributes
    address = str(a.get(attr.CLIENT_ADDRESS) or a.get(attr.ABUSE_KEY, ""))
    seconds = _float(a.get(BLOCK_SECONDS, a.get("security.abuse.block_s")))
    if not seconds and log.event_name == "abuse.block.ended":
        started = [
            b.block_s for b in earlier if b.event == "abuse.block.started" and b.address == address
        ]
        seconds = started[-1] if started else 0.0
    return BlockEvent(
        time=_iso(log.time_ns),
        event=log.event_name,
        address=address,
        block_s=seconds,
        trace_id=log.trace_id,
    )


def summarize(recording: Recording, top: int = 5) -> Summary:
    """The report's numbers from a :class:`Recording`."""
    records = security_logs(recording)
    events: Counter[str] = Counter()
    outcomes: dict[str, str] = {}
    addresses: Counter[str] = Counter()
    users: Counter[str] = Counter()
    signals: list[AbuseSignal] = []
    blocks: list[BlockEvent] = []
    violations = 0
    for log in records:
        a = log.attributes
        events[log.event_name] += 1
        outcome = str(a.get(attr.EVENT_OUTCOME, ""))
        outcomes.setdefault(log.event_name, outcome)
        if log.event_name in ("abuse.host", "abuse.user"):
            signals.append(
                AbuseSignal(
                    time=_iso(log.time_ns),
                    event=log.event_name,
                    scope=str(a.get(attr.ABUSE_SCOPE, "")),
                    key=str(a.get(attr.ABUSE_KEY, "")),
                    count=_int(a.get(attr.ABUSE_COUNT)),
                    threshold=_int(a.get(attr.ABUSE_THRESHOLD)),
                    window_s=_float(a.get(attr.ABUSE_WINDOW_S)),
                    breakdown=log.body if isinstance(log.body, dict) else {},
                    trace_ids=_strings(a.get(attr.ABUSE_TRACE_IDS)),
                )
            )
        elif log.event_name in ("abuse.block.started", "abuse.block.ended"):
            blocks.append(_block(log, blocks))
        if outcome == "failure" and log.event_name not in _DETECTOR_EVENTS:
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
        blocks=blocks,
        counters=_counter_totals(recording.points),
        top_addresses=addresses.most_common(top),
        top_users=users.most_common(top),
    )


# -- one trace ------------------------------------------------------------------------------


@dataclass
class TimelineRow:
    time_ns: int
    kind: str  # span, span event, log
    name: str
    detail: str


_DETAIL_KEYS: Final = (
    attr.HTTP_METHOD,
    "http.method",  # the contrib instrumentations' pre-stable semantic conventions
    attr.HTTP_ROUTE,
    attr.HTTP_STATUS,
    "http.status_code",
    attr.CLIENT_ADDRESS,
    attr.USER_ID,
    attr.USER_HASH,
    attr.USER_AGENT,
    attr.REASON,
    attr.PERMISSION,
    attr.TENANT_ID,
    attr.TENANT_REQUESTED_ID,
    attr.RESOURCE_TYPE,
    attr.RESOURCE_ID,
    attr.ERROR_TYPE,
    attr.TOKEN_JTI_PREFIX,
    attr.ABUSE_SCOPE,
    attr.ABUSE_KEY,
    attr.ABUSE_COUNT,
)


def _detail(attributes: dict[str, Any]) -> str:
    parts = []
    for key in _DETAIL_KEYS:
        if key in attributes and attributes[key] not in (None, ""):
            value = str(attributes[key])
            if key == attr.USER_HASH:
                value = value[:16]
            parts.append(f"{key}={value}")
    return " ".join(parts)


def timeline(recording: Recording, trace_id: str) -> list[TimelineRow]:
    """Spans (start and end), span events and log records of one trace, in time order.

    Raises:
        ReportError: a malformed trace ID, or one that is not in the recording.
    """
    wanted = trace_id.strip().lower()
    if not _TRACE_ID.match(wanted):
        raise ReportError(f"{trace_id!r} is not a trace ID (32 hex characters)")
    rows: list[TimelineRow] = []
    for span in recording.spans:
        if span.trace_id != wanted:
            continue
        detail = _detail(span.attributes)
        if span.parent_span_id:
            detail = f"parent={span.parent_span_id} {detail}".strip()
        rows.append(
            TimelineRow(span.start_ns, "span start", span.name, f"id={span.span_id} " + detail)
        )
        duration_ms = (span.end_ns - span.start_ns) / 1e6
        status = span.attributes.get(attr.HTTP_STATUS, span.attributes.get("http.status_code"))
        ended = f"id={span.span_id} duration={duration_ms:.1f}ms"
        if status is not None:
            ended += f" status={status}"
        rows.append(TimelineRow(span.end_ns, "span end", span.name, ended))
        for event in span.events:
            rows.append(
                TimelineRow(event.time_ns, "span event", event.name, _detail(event.attributes))
            )
    for log in recording.logs:
        if log.trace_id == wanted:
            name = log.event_name or str(log.body)[:60]
            rows.append(
                TimelineRow(
                    log.time_ns, f"log {log.severity}".strip(), name, _detail(log.attributes)
                )
            )
    if not rows:
        raise ReportError(f"trace {wanted} is not in this recording")
    order = {"span start": 0, "span event": 1}
    rows.sort(key=lambda row: (row.time_ns, order.get(row.kind, 2)))
    return rows


#: Control characters (C0, DEL, C1) and the invisible / direction-changing characters of
#: CONTRACT section 3: shown escaped, so a value cannot move the cursor, start an OSC 8
#: terminal hyperlink or reorder what the reader sees.
_UNPRINTABLE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\u061c\ufeff]"
)
MAX_SHOWN: Final = 300


def printable(value: Any, limit: int = MAX_SHOWN) -> str:
    """A telemetry value as one line of plain text for a human: unprintable characters
    escaped (``\\x1b``, ``\\u202e``), cut to ``limit`` characters with an ellipsis.

    This is not markup escaping: renderers still show the result as text, never as markup
    (rich ``Text``, HTML-escaped)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return _UNPRINTABLE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def format_time(time_ns: int) -> str:
    """UTC ISO 8601 with milliseconds."""
    return _iso(time_ns)
