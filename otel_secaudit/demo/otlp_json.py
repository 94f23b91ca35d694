"""Reading OTLP/JSON back: files, lines, export requests, records.

Input: a folder written by ``otel-secaudit demo`` or the ``otlp_json_dir`` exporters
(``logs.jsonl``, ``traces.jsonl``, ``metrics.jsonl``), a collector ``file`` exporter archive
file (one export request per line, any name), or a folder of such ``.json`` / ``.jsonl`` files
(searched recursively; rotated archives included). Each line is one
``Export{Logs,Trace,Metrics}ServiceRequest`` in OTLP/JSON.

Corrupt input: a line that is not JSON, not an OTLP export request, longer than
``max_line_bytes``, not UTF-8, or holding a timestamp no calendar holds (before 1970 or past
the year 9999), is skipped and reported (file and line number) in
:attr:`~.records.Recording.problems`. A truncated last line (a writer that died mid-line) is
the common case and must not make the rest of an archive unreadable. With ``strict=True`` the
first corrupt line raises :class:`~.records.ReportError` instead. A path that does not exist,
or a folder holding no OTLP data, raises :class:`~.records.ReportError`.

Streaming: lines are read one at a time and decoded one at a time. With an active
:class:`~.filters.Query` only the matching security log records are kept, and the spans of
their traces (and of their evidence traces) are picked up in a second pass that decodes only
the span lines naming one of those trace IDs, so memory follows what matched, not the size of
the archive. Metric points are not read then (counters cannot be filtered by user, address or
time). With a trace filter, other libraries' log records of that trace are kept too (the
trace's timeline shows them).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

from .. import attributes as attr
from .filters import Query
from .records import (
    MAX_TIME_NS,
    LogEntry,
    MetricPoint,
    Problem,
    Recording,
    ReportError,
    SpanEntry,
    SpanEventEntry,
)

__all__ = ["MAX_LINE_BYTES", "Progress", "is_security_log", "load"]

SCOPE_NAME: Final = attr.SCOPE_NAME
_SUFFIXES: Final = (".json", ".jsonl", ".ndjson")
_MAX_PROBLEMS_KEPT: Final = 50
#: A longer line is skipped (and reported) without being held in memory.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024
#: Trace IDs whose spans a filtered report keeps, at most.
_MAX_WANTED_TRACES: Final = 100_000
_KIND: Final = re.compile(rb'\s*\{\s*"resource(Logs|Spans|Metrics)"')
_HEX: Final = re.compile("[0-9a-f]+")
_HEX_TRACE_ID: Final = re.compile(rb'"traceId"\s*:\s*"([0-9a-fA-F]{32})"')
#: What a malformed line can make the decoders raise (wrong JSON types, ``int("zz")``,
#: nesting deeper than the JSON parser's recursion limit): the line is skipped, never fatal.
_DECODE_ERRORS: Final = (ValueError, TypeError, AttributeError, KeyError, RecursionError)


class Progress(Protocol):
    """Told how far reading has come (the CLI draws a bar on a terminal)."""

    def start(self, description: str, total_bytes: int) -> None:
        """A pass over ``total_bytes`` begins."""

    def advance(self, done_bytes: int) -> None:
        """``done_bytes`` more were read."""


class _OutOfRange(ValueError):
    """A timestamp no calendar holds."""


# -- values ---------------------------------------------------------------------------------


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
    if len(lowered) == length and _HEX.fullmatch(lowered):
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


def _time(value: Any, field: str) -> int:
    """A ``*UnixNano`` field: 0 when absent or unreadable; out of the calendar raises."""
    nanos = _int(value)
    if not 0 <= nanos <= MAX_TIME_NS:
        raise _OutOfRange(f"{field} out of range (before 1970 or past the year 9999)")
    return nanos


def is_security_log(log: LogEntry) -> bool:
    """An otel_secaudit security event record (ours, or one that says it is)."""
    return bool(log.event_name) and (log.scope == SCOPE_NAME or attr.EVENT_NAME in log.attributes)


# -- export requests ------------------------------------------------------------------------


def _decode_logs(request: dict[str, Any], out: Recording) -> None:
    for resource_logs in request.get("resourceLogs") or []:
        for scope_logs in resource_logs.get("scopeLogs") or []:
            scope = str((scope_logs.get("scope") or {}).get("name", ""))
            for log in scope_logs.get("logRecords") or []:
                attributes = _attributes(log.get("attributes"))
                name = log.get("eventName") or attributes.get(attr.EVENT_NAME) or ""
                out.logs.append(
                    LogEntry(
                        time_ns=_time(log.get("timeUnixNano"), "timeUnixNano")
                        or _time(log.get("observedTimeUnixNano"), "observedTimeUnixNano"),
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
                        start_ns=_time(span.get("startTimeUnixNano"), "startTimeUnixNano"),
                        end_ns=_time(span.get("endTimeUnixNano"), "endTimeUnixNano"),
                        status_code=_int((span.get("status") or {}).get("code")),
                        scope=scope,
                        attributes=_attributes(span.get("attributes")),
                        events=[
                            SpanEventEntry(
                                _time(event.get("timeUnixNano"), "timeUnixNano"),
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
                _decode_metric(metric, resource_key, scope, out)


def _decode_metric(metric: dict[str, Any], resource_key: Any, scope: str, out: Recording) -> None:
    name = str(metric.get("name", ""))
    if "sum" in metric:
        data = metric["sum"] or {}
        # AGGREGATION_TEMPORALITY_DELTA = 1, CUMULATIVE = 2
        cumulative = _int(data.get("aggregationTemporality")) != 1
    elif "gauge" in metric:
        data, cumulative = metric["gauge"] or {}, True
    else:
        return  # histograms and summaries are not part of this report
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
            _time(point.get("startTimeUnixNano"), "startTimeUnixNano"),
            tuple(sorted((k, repr(v)) for k, v in attributes.items())),
        )
        out.points.append(
            MetricPoint(
                name,
                scope,
                series,
                attributes,
                value,
                _time(point.get("timeUnixNano"), "timeUnixNano"),
                cumulative,
            )
        )


_DECODERS: Final[dict[str, Callable[[dict[str, Any], Recording], None]]] = {
    "resourceLogs": _decode_logs,
    "resourceSpans": _decode_spans,
    "resourceMetrics": _decode_metrics,
}


def decode_line(line: str) -> Recording | str:
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
    decoder = next((_DECODERS[key] for key in _DECODERS if key in request), None)
    if decoder is None:
        return "not an OTLP export request (no resourceLogs, resourceSpans or resourceMetrics)"
    try:
        decoder(request, part)
    except _OutOfRange as exc:
        return f"hostile timestamp: {exc}"
    except _DECODE_ERRORS as exc:
        return f"malformed OTLP export request ({type(exc).__name__})"
    return part


# -- files and lines ------------------------------------------------------------------------


def files_of(path: Path) -> list[Path]:
    """The OTLP/JSON files under ``path`` (itself, when it is a file), sorted.

    Raises:
        ReportError: no such path, or a folder without OTLP/JSON files.
    """
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


def _raw_lines(handle: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """Lines as bytes; None for a line longer than ``limit`` (read past, never held)."""
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = handle.readline(1 << 20)
            yield None
            continue
        yield line


class _Reader:
    """Walks the files line by line, counting bytes for the progress bar and collecting the
    problems of skipped lines."""

    def __init__(
        self, out: Recording, strict: bool, progress: Progress | None, max_line_bytes: int
    ) -> None:
        self.out, self.strict, self.progress = out, strict, progress
        self.max_line_bytes = max_line_bytes
        self.too_long = f"line longer than {max_line_bytes} bytes"

    def lines(self, description: str, *, again: bool = False) -> Iterator[tuple[Path, int, bytes]]:
        """(file, line number, raw line) of every non-blank line; a line too long is a
        problem (reported on the first pass only, ``again=False``), not a line."""
        if self.progress is not None:
            total = sum(_size(file) for file in self.out.files)
            self.progress.start(description, total)
        for file in self.out.files:
            try:
                with file.open("rb") as handle:
                    pending = 0
                    for number, raw in enumerate(_raw_lines(handle, self.max_line_bytes), 1):
                        if raw is None:
                            if not again:
                                self.problem(file, number, self.too_long)
                            continue
                        pending += len(raw)
                        if self.progress is not None and pending >= 1 << 20:
                            self.progress.advance(pending)
                            pending = 0
                        if raw.strip():
                            yield file, number, raw
                    if self.progress is not None and pending:
                        self.progress.advance(pending)
            except OSError as exc:
                raise ReportError(f"{file}: cannot read: {exc.strerror or exc}") from None

    def text(self, file: Path, number: int, raw: bytes) -> str | None:
        """The line as text; a line that is not UTF-8 is a problem (the whole file, when it
        is the first line: a binary file)."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if number == 1:
                raise ReportError(f"{file}: not a UTF-8 text file ({exc.reason})") from None
            self.problem(file, number, f"not UTF-8 text ({exc.reason})")
            return None

    def problem(self, file: Path, number: int, reason: str) -> None:
        problem = Problem(str(file), number, reason)
        if self.strict:
            raise ReportError(f"corrupt input: {problem}")
        self.out.skipped_lines += 1
        if len(self.out.problems) < _MAX_PROBLEMS_KEPT:
            self.out.problems.append(problem)

    def decode(self, file: Path, number: int, raw: bytes) -> Recording | None:
        line = self.text(file, number, raw)
        if line is None:
            return None
        decoded = decode_line(line)
        if isinstance(decoded, str):
            self.problem(file, number, decoded)
            return None
        self.out.requests += 1
        return decoded


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return 0


def load(
    path: Path | str,
    *,
    strict: bool = False,
    query: Query | None = None,
    progress: Progress | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Recording:
    """Read the OTLP/JSON export requests under ``path``; with an active ``query`` only the
    security log records it matches and the spans of their traces (see the module docstring).

    A line that cannot be read is skipped and listed in :attr:`Recording.problems` (file and
    line number), whatever it holds.

    Raises:
        ReportError: missing path, no OTLP files, unreadable file, nothing usable at all, or
            (``strict``) a corrupt line.
    """
    root = Path(path)
    out = Recording(files=files_of(root))
    reader = _Reader(out, strict, progress, max_line_bytes)
    if query is None or not query.active:
        for file, number, raw in reader.lines("reading"):
            decoded = reader.decode(file, number, raw)
            if decoded is not None:
                out.logs.extend(decoded.logs)
                out.spans.extend(decoded.spans)
                out.points.extend(decoded.points)
    else:
        _load_matching(reader, query)
    if out.requests == 0:
        detail = f"; first problem: {out.problems[0]}" if out.problems else ""
        raise ReportError(f"{root}: no OTLP export requests could be read{detail}")
    return out


def _load_matching(reader: _Reader, query: Query) -> None:
    """Pass 1: the matching security log records (span lines are only noted); pass 2: the
    spans of their traces."""
    out = reader.out
    out.filters = query.describe()
    wanted: set[str] = set()
    span_lines = 0
    for file, number, raw in reader.lines("filtering"):
        kind = _KIND.match(raw)
        if kind is not None and kind.group(1) != b"Logs":
            span_lines += kind.group(1) == b"Spans"
            continue  # spans: pass 2; metrics: not filterable
        decoded = reader.decode(file, number, raw)
        if decoded is None:
            continue
        for log in decoded.logs:
            if is_security_log(log) and query.matches(log):
                out.logs.append(log)
                _want(wanted, log)
            elif log.trace_id in query.trace_ids:  # another library's record of the trace
                out.logs.append(log)
        out.spans.extend(span for span in decoded.spans if span.trace_id in wanted)
    if not wanted or not span_lines:
        return
    for file, number, raw in reader.lines("evidence traces", again=True):
        kind = _KIND.match(raw)
        if kind is None or kind.group(1) != b"Spans" or not _names_wanted(raw, wanted):
            continue
        decoded = reader.decode(file, number, raw)
        if decoded is not None:
            out.spans.extend(span for span in decoded.spans if span.trace_id in wanted)


def _want(wanted: set[str], log: LogEntry) -> None:
    if len(wanted) >= _MAX_WANTED_TRACES:
        return
    if log.trace_id:
        wanted.add(log.trace_id)
    evidence = log.attributes.get(attr.ABUSE_TRACE_IDS)
    if isinstance(evidence, list):
        wanted.update(str(trace_id).lower() for trace_id in evidence[:100])


def _names_wanted(raw: bytes, wanted: set[str]) -> bool:
    """Whether a span line may hold a wanted trace: one of its hex trace IDs is wanted, or
    its IDs are base64 (protobuf's JSON form: decode to know)."""
    found = False
    for match in _HEX_TRACE_ID.finditer(raw):
        found = True
        if match.group(1).decode("ascii").lower() in wanted:
            return True
    return not found and b'"traceId"' in raw
