"""Read OTLP/JSON files back and summarize the security telemetry in them.

This module is the report's front door; the work is done by small modules, one concern each:

* :mod:`.records`: the decoded records (:class:`Recording`), times and printable text;
* :mod:`.otlp_json`: files, lines and OTLP/JSON export requests, streamed; corrupt and hostile
  lines skipped and named (:func:`load`);
* :mod:`.filters`: incident queries (:class:`Query`: events, time, user, address, trace);
* :mod:`.summary`: the numbers (:func:`summarize`), linear in the records;
* here: the timeline of one trace (:func:`timeline`).

The live report at the end of ``otel-secaudit demo`` is built from the files the demo just
wrote, so ``otel-secaudit report`` on that folder shows the same numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from .. import attributes as attr
from .filters import Query
from .otlp_json import SCOPE_NAME, load
from .records import (
    MAX_SHOWN,
    LogEntry,
    MetricPoint,
    Problem,
    Recording,
    ReportError,
    SpanEntry,
    SpanEventEntry,
    format_time,
    printable,
)
from .summary import AbuseSignal, BlockEvent, Summary, security_logs, summarize

__all__ = [
    "MAX_SHOWN",
    "SCOPE_NAME",
    "AbuseSignal",
    "BlockEvent",
    "LogEntry",
    "MetricPoint",
    "Problem",
    "Query",
    "Recording",
    "ReportError",
    "SpanEntry",
    "SpanEventEntry",
    "Summary",
    "TimelineRow",
    "format_time",
    "load",
    "printable",
    "security_logs",
    "summarize",
    "timeline",
]

_TRACE_ID: Final = re.compile(r"^[0-9a-f]{32}$")


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
