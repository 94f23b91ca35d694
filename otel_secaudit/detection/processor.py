"""``SecAuditSpanProcessor``: abuse escalation computed when a span that carries violations ends.

Where it sits: the instrumentor adds one to the tracer provider it is given (or the global
one); users who wire the SDK by hand add it themselves::

    from otel_secaudit import SecAuditSpanProcessor

    provider = TracerProvider(resource=...)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    provider.add_span_processor(SecAuditSpanProcessor())

What it does: when the recorder writes a violation on a recording span of a provider this
processor serves, it leaves a mark (the violation, keyed by the span's context) with the
processor instead of handing it to the abuse detector at once. When that span ends, ``on_end``
takes the span's marks and hands them to the detector, which counts them per client address
and per user and emits ``abuse.*`` with the trace IDs of the evidence. A span without
violations costs one test of an empty dict at ``on_end`` (no scan of its events, no private
SDK attribute): ``benchmarks/detection.py`` measures it against ``span.end()`` without it.

Sampling and foreign providers never hide a violation: a violation recorded where no span of
a processor is recording (no span, an unsampled span, a span of another TracerProvider) is not
marked; the recorder hands it to the detector directly. A processor tells its own spans from
``on_start``: it remembers the :class:`~opentelemetry.sdk.resources.Resource` object of the
first span it sees start (a span carries its provider's resource object), so a span made by a
provider without this processor is never held.

Long-lived spans (WebSocket, server-sent events, a span that never ends): a violation on a
span older than ``long_span_seconds`` (5 s) goes to the detector at once, and a mark older
than that is handed off by the next sweep (at most once a second, run by the next violation or
span end that finds marks, and by ``force_flush``): a span that stays open delays detection by
about that much. Marks are bounded (``max_pending`` spans): beyond that,
violations go to the detector directly. Every violation is handed off exactly once.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ..events import Violation

__all__ = ["SecAuditSpanProcessor", "hold_violation"]

Sink = Callable[[Violation], None]

#: Processors by the id of the resource object of the provider they serve. The resource is
#: kept with its processor so its id cannot be reused while the entry exists. Module state on
#: purpose: processors live with tracer providers (often built before the runtime), and the
#: recorder finds the processor of the current span here.
_by_resource: dict[int, tuple[Any, weakref.ReferenceType[SecAuditSpanProcessor]]] = {}
_registry_lock = threading.Lock()


class _Held:
    """The violations marked on one open span."""

    __slots__ = ("context", "started_ns", "items")

    def __init__(self, context: Any, started_ns: int) -> None:
        self.context = context  # kept so ``id(context)`` stays this span's while held
        self.started_ns = started_ns
        self.items: list[tuple[Violation, Sink]] = []

    def release(self) -> None:
        for violation, sink in self.items:
            try:
                sink(violation)  # AbuseDetector.submit never raises; anything else must not
            except Exception:  # noqa: S110 - a broken sink must not break span.end()
                pass


class SecAuditSpanProcessor(SpanProcessor):
    """Counts a span's violations for abuse detection when the span ends (see the module
    documentation). Public SDK API only; never raises into ``span.end()``.

    Args:
        long_span_seconds: violations on spans older than this go to the detector at once,
            and marks older than this are handed off without waiting for the span's end.
        max_pending: at most this many open spans hold marks; beyond, violations go to the
            detector directly.
    """

    def __init__(self, *, long_span_seconds: float = 5.0, max_pending: int = 10_000) -> None:
        self._long_ns = int(long_span_seconds * 1e9)
        self._sweep_interval = min(1.0, long_span_seconds / 4)
        self._max_pending = max_pending
        self._pending: dict[int, _Held] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        self._closed = False

    # -- SpanProcessor ----------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Learn the provider this processor serves from its first span's resource; from then
        on ``on_start`` is a no-op (see :meth:`serve`)."""
        try:
            self.serve(span.resource)
        except Exception:  # noqa: S110 - never raise into the application's span
            pass

    def _started(self, span: Span, parent_context: Context | None = None) -> None:
        """``on_start`` once the provider is known: nothing to do."""

    def on_end(self, span: ReadableSpan) -> None:
        """Hand the span's violations (if any) to the detector."""
        if not self._pending:
            return  # the cost of a span without violations when nothing is held
        try:
            with self._lock:
                held = self._pending.pop(id(span.context), None)
            if held is not None:
                held.release()
            self._sweep_if_due()
        except Exception:  # noqa: S110 - never raise into span.end()
            pass

    def shutdown(self) -> None:
        """Hand off every mark and stop holding new ones."""
        self._closed = True
        with _registry_lock:
            for key, (_, ref) in list(_by_resource.items()):
                if ref() is self:
                    del _by_resource[key]
        self._release_all()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Hand off every mark now (the spans' later ends then find nothing to do)."""
        self._release_all()
        return True

    # -- used by the recorder and the instrumentor -------------------------------------------

    def serve(self, resource: Any) -> None:
        """Claim the spans that carry ``resource``, the resource object of the provider this
        processor is added to: the instrumentor calls it when it adds the processor, else the
        first ``on_start`` does. One provider per processor: after this ``on_start`` costs a
        span nothing (the spans of a second provider the same instance was added to are not
        claimed, so their violations go to the detector directly; give each provider its own
        processor)."""
        with _registry_lock:
            if id(resource) not in _by_resource and not self._closed:
                _by_resource[id(resource)] = (resource, weakref.ref(self))
        self.on_start = self._started  # type: ignore[method-assign]

    def hold(self, span: Any, violation: Violation, sink: Sink) -> bool:
        """Mark ``violation`` on ``span`` for hand-off to ``sink`` when the span ends; False
        when this processor does not hold it (span ended, too old, too many marks): the
        caller hands it to ``sink`` itself."""
        started = span.start_time
        if started is None or time.time_ns() - started > self._long_ns or self._closed:
            self._sweep_if_due()  # a long-lived span's earlier marks go too
            return False
        context = span.get_span_context()
        with self._lock:
            # Under the lock: on_end pops under it too, after the span stopped recording, so a
            # mark is either taken by on_end or never made (exactly once).
            if not span.is_recording():
                return False
            held = self._pending.get(id(context))
            if held is None:
                if len(self._pending) >= self._max_pending:
                    return False
                held = self._pending[id(context)] = _Held(context, started)
            held.items.append((violation, sink))
        self._sweep_if_due()
        return True

    @property
    def pending(self) -> int:
        """Open spans holding marks."""
        return len(self._pending)

    # -- internals --------------------------------------------------------------------------

    def _sweep_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_interval
        oldest = time.time_ns() - self._long_ns
        with self._lock:
            stale = [key for key, held in self._pending.items() if held.started_ns < oldest]
            released = [self._pending.pop(key) for key in stale]
        for held in released:
            held.release()

    def _release_all(self) -> None:
        with self._lock:
            released = list(self._pending.values())
            self._pending.clear()
        for held in released:
            held.release()


def hold_violation(span: Any, violation: Violation, sink: Sink) -> bool:
    """Mark ``violation`` on ``span`` when a :class:`SecAuditSpanProcessor` serves the span's
    provider and the span is recording; False otherwise (no span, unsampled, another
    provider): the caller hands the violation to ``sink`` directly."""
    if not _by_resource:
        return False
    entry = _by_resource.get(id(getattr(span, "resource", None)))
    if entry is None:
        return False
    processor = entry[1]()
    if processor is None:
        return False
    try:
        return processor.hold(span, violation, sink)
    except Exception:
        return False


def processor_for(provider: Any) -> SecAuditSpanProcessor | None:
    """The :class:`SecAuditSpanProcessor` serving ``provider``'s resource, if any."""
    entry = _by_resource.get(id(getattr(provider, "resource", None)))
    return entry[1]() if entry is not None else None


def ensure_processor(provider: Any) -> SecAuditSpanProcessor | None:
    """Add a :class:`SecAuditSpanProcessor` to an SDK ``provider`` unless one serves it
    already; None for a provider without ``add_span_processor`` (the API's no-op or proxy
    provider: violations then go to the detector directly)."""
    add = getattr(provider, "add_span_processor", None)
    resource = getattr(provider, "resource", None)
    if not callable(add) or resource is None:
        return None
    existing = processor_for(provider)
    if existing is not None:
        return existing
    processor = SecAuditSpanProcessor()
    processor.serve(resource)
    add(processor)
    return processor
