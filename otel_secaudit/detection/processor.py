"""A span processor that feeds abuse detection from the violation events of finished spans.

``on_end`` runs after the span is complete, so the violation knows the span's final
attributes (``client.address`` set by the server instrumentation). Events on sampled-out
(non-recording) spans never reach a processor: the recorder hands those violations to the
detector itself (see :mod:`otel_secaudit.recorder`), so every violation is counted once.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .. import attributes as attr
from ..events import CATALOGUE, FAILURE, Violation
from .detector import AbuseDetector

__all__ = ["AbuseSpanProcessor"]


class AbuseSpanProcessor(SpanProcessor):
    """Submits the violation events of every ended span to an :class:`AbuseDetector`.

    Cheap for spans without events (one attribute read and a length test). Never raises.
    Set :attr:`enabled` to False to switch it off: the SDK cannot remove a span processor.
    """

    def __init__(self, detector: AbuseDetector) -> None:
        self.detector = detector
        self.enabled = True

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Submit each violation event of ``span`` to the detector."""
        try:
            # Most spans have no events and must stop here, cheaply (this runs for every span):
            # truth-testing the SDK's BoundedList calls its Python ``__len__`` and
            # ``span.events`` copies it into a tuple, so test the deque inside it (C). Any other
            # span shape raises AttributeError and takes the public path below.
            if not span._events._dq:  # type: ignore[attr-defined]
                return
            if self.enabled:
                self._scan(span, span._events)
        except AttributeError:
            self._on_end_public(span)
        except Exception as exc:  # the SDK calls processors without try/except
            self.detector.recorder.internal_error(exc, "detection.processor")

    def _on_end_public(self, span: ReadableSpan) -> None:
        try:
            events = span.events
            if events and self.enabled:
                self._scan(span, events)
        except Exception as exc:
            self.detector.recorder.internal_error(exc, "detection.processor")

    def _scan(self, span: ReadableSpan, events: Any) -> None:
        span_attributes = span.attributes or {}
        context = span.get_span_context()
        trace_id = format(context.trace_id, "032x") if context is not None else ""
        submit = self.detector.submit
        for event in list(events):
            name = event.name
            attributes = event.attributes or {}
            spec = CATALOGUE.get(name)
            if spec is not None:
                if not spec.feeds_detection:
                    continue
            elif (
                attributes.get(attr.EVENT_NAME) != name
                or attributes.get(attr.EVENT_OUTCOME) != FAILURE
                or name.startswith("abuse.")
            ):
                continue  # not a security violation recorded by otel_secaudit
            address = attributes.get(attr.CLIENT_ADDRESS) or span_attributes.get(
                attr.CLIENT_ADDRESS
            )
            user_key = attributes.get(attr.USER_ID) or attributes.get(attr.USER_HASH)
            submit(
                Violation(
                    name=name,
                    client_address=address if isinstance(address, str) and address else None,
                    user_key=str(user_key) if user_key else None,
                    trace_id=trace_id,
                    timestamp=(event.timestamp or 0) / 1e9,
                )
            )

    def shutdown(self) -> None:
        """Nothing to release (the detector is shut down by ``disable_detection``)."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait for the detector's queue to be applied."""
        try:
            return self.detector.flush(timeout_millis / 1000)
        except Exception:
            return False
