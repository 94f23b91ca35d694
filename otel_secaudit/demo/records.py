"""What the report reads: the records of an OTLP/JSON recording, and the value helpers every
part of the report shares (times, printable text).

:class:`Recording` holds the decoded log records, spans and metric points of the input, and the
lines that were skipped (:class:`Problem`). The decoding itself is
:mod:`otel_secaudit.demo.otlp_json`; the summary :mod:`otel_secaudit.demo.summary`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

__all__ = [
    "MAX_SHOWN",
    "MAX_TIME_NS",
    "LogEntry",
    "MetricPoint",
    "Problem",
    "Recording",
    "ReportError",
    "SpanEntry",
    "SpanEventEntry",
    "format_time",
    "printable",
]

#: The last nanosecond a calendar holds (9999-12-31T23:59:59.999999999Z). A timestamp beyond
#: it (or before the epoch) is hostile input: its line is skipped like a malformed one.
MAX_TIME_NS: Final = 253_402_300_799_999_999_999


class ReportError(Exception):
    """The input cannot be summarized; the message says why (shown without a traceback)."""


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
    """One span event."""

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
    """Everything read from the input (with a query: what matched it, see
    :func:`otel_secaudit.demo.otlp_json.load`)."""

    files: list[Path] = field(default_factory=list)
    logs: list[LogEntry] = field(default_factory=list)
    spans: list[SpanEntry] = field(default_factory=list)
    points: list[MetricPoint] = field(default_factory=list)
    requests: int = 0
    problems: list[Problem] = field(default_factory=list)
    skipped_lines: int = 0
    #: the filters the records were selected by (empty: everything was kept)
    filters: dict[str, Any] = field(default_factory=dict)


def iso_time(time_ns: int) -> str:
    """UTC ISO 8601 with milliseconds; ``-`` for 0 or a time no calendar holds."""
    if not time_ns:
        return "-"
    try:
        moment = datetime.fromtimestamp(time_ns / 1e9, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):
        return "-"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def format_time(time_ns: int) -> str:
    """UTC ISO 8601 with milliseconds."""
    return iso_time(time_ns)


#: Control characters (C0, DEL, C1), lone surrogates and the invisible / direction-changing
#: characters the README's redaction section lists: shown escaped, so a value cannot move the
#: cursor, start an OSC 8 terminal hyperlink or reorder what the reader sees.
_UNPRINTABLE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\u061c\ufeff\ud800-\udfff]"
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
