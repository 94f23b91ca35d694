"""Abuse detection: escalate repeated violations per client address and per user.

Pieces (one job each): :mod:`.window` (the moving-window algorithm), :mod:`.stores` (the
:class:`Store` protocol, :class:`MemoryStore`, :class:`RedisStore`, :func:`build_store`),
:mod:`.detector` (:class:`AbuseDetector`: counting, ``abuse.*`` events, blocks) and
:mod:`.processor` (:class:`AbuseSpanProcessor`, feeding the detector from finished spans).

Usage::

    from otel_secaudit import get_recorder
    from otel_secaudit.detection import enable_detection

    detector = enable_detection(get_recorder())   # reads OTEL_SECAUDIT_* settings
    ...
    if detector.is_blocked(client_address):        # web integration, on every request
        ...                                        # answer 429
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from ..recorder import SecurityRecorder
from .detector import AbuseDetector
from .processor import AbuseSpanProcessor
from .stores import MemoryStore, RedisStore, Store, build_store
from .window import HOST, USER, Crossing, Hit, KeyWindow, Policy

__all__ = [
    "HOST",
    "USER",
    "AbuseDetector",
    "AbuseSpanProcessor",
    "Crossing",
    "Hit",
    "KeyWindow",
    "MemoryStore",
    "Policy",
    "RedisStore",
    "Store",
    "build_store",
    "disable_detection",
    "enable_detection",
]


def enable_detection(
    recorder: SecurityRecorder, tracer_provider: trace.TracerProvider | None = None
) -> AbuseDetector:
    """Build a detector from ``recorder.settings`` and connect it.

    Violations recorded on sampled-out spans (or without a span) reach the detector through
    ``recorder.violation_sink``; when ``tracer_provider`` (default: the global one) is an SDK
    :class:`TracerProvider`, an :class:`AbuseSpanProcessor` is registered for the rest and
    ``recorder.span_processor_active`` is set, so each violation is counted exactly once.
    """
    detector = AbuseDetector(recorder)
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        processor = AbuseSpanProcessor(detector)
        provider.add_span_processor(processor)
        detector.processor = processor
        recorder.span_processor_active = True
    recorder.violation_sink = detector.submit
    return detector


def disable_detection(recorder: SecurityRecorder, detector: AbuseDetector) -> None:
    """Undo :func:`enable_detection`: switch the processor off (the SDK cannot remove it),
    unhook the recorder and shut the detector down."""
    processor = getattr(detector, "processor", None)
    if processor is not None:
        processor.enabled = False
    recorder.violation_sink = None
    recorder.span_processor_active = False
    detector.shutdown()
