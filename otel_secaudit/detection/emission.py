"""How detection speaks: ``abuse.host``, ``abuse.user``, ``abuse.scan``, ``abuse.block.started``
and ``abuse.block.ended`` (and a ``request.blocked`` no request was there to write, with a
shared store), through the recorder (docs/reference.md; the README's "Abuse detection and blocks").

``abuse.*`` events are about a key, not about the request that happens to be current, so they
are emitted in an empty :mod:`contextvars` context (no request attributes leak in), linked to
the trace of the last triggering violation. (``request.blocked`` is about the refused request:
the web integration records it, see :meth:`AbuseDetector.refusal`.)
"""

from __future__ import annotations

import contextvars
import re
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from .. import attributes as attr
from ..context import request_scope
from ..recorder import SecurityRecorder
from .blocks import RefusedRequest
from .scans import SCAN, SCAN_WINDOW_SECONDS, ScanCrossing
from .window import HOST, Crossing

__all__ = ["AbuseEmitter"]


_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class AbuseEmitter:
    """Turns crossings and block ends into events. Never raises (errors are counted
    through ``recorder.internal_error``)."""

    def __init__(self, recorder: SecurityRecorder) -> None:
        self.recorder = recorder

    def crossing(self, crossing: Crossing) -> None:
        """``abuse.host`` / ``abuse.user`` (+ ``security.abuse.signals``), and
        ``abuse.block.started`` when the crossing started a block."""
        contextvars.Context().run(self._crossing, crossing)

    def block_ended(self, key: str) -> None:
        """``abuse.block.ended`` (emitted once per block across instances by the caller)."""
        contextvars.Context().run(self._block_ended, key)

    def refusals(self, key: str, count: int, last: RefusedRequest | None = None) -> None:
        """``request.blocked`` written by the detector's worker: a shared store gave this
        instance the key's record right and no refused request of the key came to use it (see
        :mod:`.blocks`): in the context of ``last``, the key's last refused request that wrote
        no record (its request attributes and trace; no span event, its span has ended)."""
        contextvars.Context().run(self._refusals, key, count, last)

    def _refusals(self, key: str, count: int, last: RefusedRequest | None) -> None:
        try:
            internal: dict[str, Any] = {attr.BLOCK_COUNT: count}
            context = None
            span_context = last.span_context if last is not None else None
            if span_context is None and last is not None and last.request is not None:
                # refused before its server span opened (the ASGI gate): that span's trace
                server_span = last.request.server_span
                if isinstance(server_span, trace.Span):
                    span_context = server_span.get_span_context()
            if span_context is not None and span_context.is_valid:
                context = trace.set_span_in_context(NonRecordingSpan(span_context))
            if last is not None and last.request is not None:
                with request_scope(last.request):
                    self.recorder.emit(
                        "request.blocked",
                        {"reason": "blocked"},
                        context=context,
                        internal_attributes=internal,
                    )
                return
            _set_client(internal, key)
            self.recorder.emit(
                "request.blocked",
                {"reason": "blocked"},
                context=context,
                internal_attributes=internal,
            )
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.report")

    def _crossing(self, crossing: Crossing) -> None:
        recorder = self.recorder
        try:
            internal: dict[str, Any] = {
                attr.ABUSE_SCOPE: crossing.scope,
                attr.ABUSE_KEY: crossing.key,
                attr.ABUSE_COUNT: crossing.count,
                attr.ABUSE_THRESHOLD: crossing.threshold,
                attr.ABUSE_WINDOW_S: _number(crossing.window_seconds),
                attr.ABUSE_TRACE_IDS: tuple(t for t in crossing.trace_ids if _HEX32.match(t)),
            }
            if crossing.scope == HOST:
                _set_client(internal, crossing.key)
            elif _HEX64.match(crossing.key):
                internal[attr.USER_HASH] = crossing.key
            else:
                internal[attr.USER_ID] = crossing.key
            context = _context_of(crossing.trace_ids)
            recorder.emit(
                "abuse.host" if crossing.scope == HOST else "abuse.user",
                {},
                body=dict(crossing.breakdown),
                context=context,
                internal_attributes=internal,
            )
            recorder.abuse_signals.add(1, {attr.ABUSE_SCOPE: crossing.scope})
            if crossing.block_seconds:
                self._block_started(crossing.key, crossing.block_seconds, context)
        except Exception as exc:
            recorder.internal_error(exc, "detection.report")

    def scan(self, crossing: ScanCrossing, block_seconds: float) -> None:
        """``abuse.scan`` (+ ``security.abuse.signals``), and ``abuse.block.started`` when
        the scan blocked the key (``block_seconds`` > 0)."""
        contextvars.Context().run(self._scan, crossing, block_seconds)

    def _scan(self, crossing: ScanCrossing, block_seconds: float) -> None:
        recorder = self.recorder
        try:
            internal: dict[str, Any] = {
                attr.ABUSE_SCOPE: SCAN,
                attr.ABUSE_KEY: crossing.key,
                attr.ABUSE_COUNT: crossing.count,
                attr.ABUSE_THRESHOLD: crossing.threshold,
                attr.ABUSE_WINDOW_S: _number(SCAN_WINDOW_SECONDS),
                attr.ABUSE_TRACE_IDS: tuple(t for t in crossing.trace_ids if _HEX32.match(t)),
            }
            _set_client(internal, crossing.key)
            context = _context_of(crossing.trace_ids)
            # The paths go through redaction like url.path (they are request data).
            fields = {"attributes": {attr.SCAN_PATHS: crossing.paths}}
            recorder.emit("abuse.scan", fields, context=context, internal_attributes=internal)
            recorder.abuse_signals.add(1, {attr.ABUSE_SCOPE: SCAN})
            if block_seconds:
                self._block_started(crossing.key, block_seconds, context)
        except Exception as exc:
            recorder.internal_error(exc, "detection.report")

    def _block_started(self, key: str, seconds: float, context: Context | None) -> None:
        started: dict[str, Any] = {
            attr.ABUSE_SCOPE: HOST,
            attr.ABUSE_KEY: key,
            attr.BLOCK_SECONDS: _number(seconds),
        }
        _set_client(started, key)
        self.recorder.emit("abuse.block.started", {}, context=context, internal_attributes=started)

    def _block_ended(self, key: str) -> None:
        try:
            internal: dict[str, Any] = {attr.ABUSE_SCOPE: HOST, attr.ABUSE_KEY: key}
            _set_client(internal, key)
            self.recorder.emit("abuse.block.ended", {}, internal_attributes=internal)
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.report")


def _set_client(attributes: dict[str, Any], key: str) -> None:
    # A network key (2001:db8:1:2::/64) is many clients: no client.address then.
    if "/" not in key:
        attributes[attr.CLIENT_ADDRESS] = key


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _context_of(trace_ids: tuple[str, ...]) -> Context | None:
    """A context whose span carries the trace ID of the last triggering violation."""
    for trace_id in reversed(trace_ids):
        if _HEX32.match(trace_id):
            span_context = SpanContext(
                trace_id=int(trace_id, 16),
                span_id=0,  # unknown: the log record links to the trace, not to a span
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            return trace.set_span_in_context(NonRecordingSpan(span_context))
    return None
