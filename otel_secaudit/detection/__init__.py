"""Abuse detection: escalate repeated violations per client address and per user, block.

Pieces, one job each (the README's "Abuse detection and blocks"):

* :mod:`.window`: the moving-window algorithm (:class:`Policy`, :class:`Hit`,
  :class:`Crossing`, :class:`KeyWindow`), repeat-offender doubling;
* :mod:`.stores`: the :class:`Store` protocol, :class:`MemoryStore`, :class:`RedisStore` (Lua
  in ``.lua`` files) and :func:`build_store`, the one place a store URI becomes a store;
* :mod:`.keys`: host keys (IPv6 networks, IPv4-mapped addresses, allowlist);
* :mod:`.failover`, :mod:`.handoff`, :mod:`.blocks`, :mod:`.emission`: Redis failover, the
  request-path queue and its worker, the blocks enforced here and ``request.blocked``
  aggregation, the ``abuse.*`` events;
* :mod:`.scans`, :mod:`.devices`: ``abuse.scan`` (404/405 per client address) and
  ``auth.login.new_device`` (``request.attack_tool``'s list is :mod:`otel_secaudit.attack_tools`,
  below configuration, which validates its extra tokens); :mod:`.anomalies` feeds both off the
  request path;
* :mod:`.detector`: :class:`AbuseDetector`, which wires them;
* :mod:`.processor`: :class:`SecAuditSpanProcessor`, which hands a span's violations to the
  detector when the span ends (violations without such a span go to it directly).

Usage (the runtime puts these together in :func:`otel_secaudit.runtime.build`)::

    detector = enable_detection(recorder)      # reads recorder.settings
    ...
    refusal = detector.refusal(client_address)  # web integration, on every request
    if refusal is not None:                     # 429, Retry-After: refusal.retry_after
        if refusal.record_count:
            recorder.record("request.blocked", reason="blocked",
                            attributes={BLOCK_COUNT: refusal.record_count})
"""

from __future__ import annotations

from ..attributes import BLOCK_COUNT, BLOCK_SECONDS
from ..recorder import SecurityRecorder
from .blocks import Refusal
from .detector import AbuseDetector
from .keys import HostKeys
from .processor import SecAuditSpanProcessor
from .stores import MemoryStore, RedisStore, Store, build_store, parse_store_uri
from .window import HOST, USER, Crossing, Hit, KeyWindow, Policy

__all__ = [
    "BLOCK_COUNT",
    "BLOCK_SECONDS",
    "HOST",
    "USER",
    "AbuseDetector",
    "Crossing",
    "Hit",
    "HostKeys",
    "KeyWindow",
    "MemoryStore",
    "Policy",
    "RedisStore",
    "Refusal",
    "SecAuditSpanProcessor",
    "Store",
    "build_store",
    "disable_detection",
    "enable_detection",
    "parse_store_uri",
]


def enable_detection(recorder: SecurityRecorder) -> AbuseDetector:
    """A detector on a recorder built on its own (tests, scripts; the runtime wires its own in
    :func:`otel_secaudit.runtime.build`): built from ``recorder.settings`` and made the
    recorder's ``violation_sink`` and ``login_sink``: every violation the recorder writes
    reaches it, at the end of its span when a :class:`SecAuditSpanProcessor` serves the span's
    provider, else at once."""
    detector = AbuseDetector(recorder)
    recorder.violation_sink = detector.submit
    recorder.login_sink = detector.anomalies.login
    return detector


def disable_detection(recorder: SecurityRecorder, detector: AbuseDetector) -> None:
    """Undo :func:`enable_detection`: unhook the recorder and shut the detector down."""
    if recorder.violation_sink == detector.submit:
        recorder.violation_sink = None
    if recorder.login_sink == detector.anomalies.login:
        recorder.login_sink = None
    detector.shutdown()
