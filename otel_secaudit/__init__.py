"""otel_secaudit: security violations and audit actions as OpenTelemetry signals.

Every security event becomes a log record (Logs API, ``event_name``, trace context as the
correlation ID), a span event on the current span and counters; the abuse detector
escalates brute force per client address and per user (sliding window, memory or Redis) and
can block abusive addresses.

Usage, explicit::

    import otel_secaudit

    otel_secaudit.record("auth.login.failed", user_name=form.username, reason="invalid_credentials")
    otel_secaudit.record("authz.cross_tenant", user_id=user.id, tenant_id=user.tenant,
                         requested_tenant_id=requested)

Usage, zero-code: install the package and run ``opentelemetry-instrument uvicorn app:app``;
``SecAuditInstrumentor`` is registered as the ``otel_secaudit`` instrumentor entry point.

Configuration: ``OTEL_SECAUDIT_*`` environment variables or :func:`configure` (see
:class:`Settings`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import Unpack

from . import runtime
from .config import ConfigError, Settings
from .context import RequestContext, current_request, request_scope
from .events import CATALOGUE, EventSpec, InvalidEventError, Violation, resolve_event
from .operators import ReleasedBlock, release_block
from .recorder import EventFields, SecAuditInputError, SecurityRecorder
from .redaction import REDACTED
from .version import __version__

if TYPE_CHECKING:
    from .detection.processor import SecAuditSpanProcessor
    from .web.instrumentor import SecAuditInstrumentor

__all__ = [
    "CATALOGUE",
    "REDACTED",
    "ConfigError",
    "EventFields",
    "EventSpec",
    "InvalidEventError",
    "ReleasedBlock",
    "RequestContext",
    "SecAuditInputError",
    "SecAuditInstrumentor",
    "SecAuditSpanProcessor",
    "SecurityRecorder",
    "Settings",
    "Violation",
    "__version__",
    "configure",
    "current_request",
    "get_recorder",
    "record",
    "release_block",
    "request_scope",
    "resolve_event",
    "runtime",
]


def get_recorder() -> SecurityRecorder:
    """The process-wide recorder (``runtime.current().recorder``), created on first use from
    the environment (lenient)."""
    return runtime.current().recorder


def configure(*, recorder: SecurityRecorder | None = None, **settings: Any) -> SecurityRecorder:
    """Replace the process-wide runtime (recorder and, when detection is on, the detector).

    Either pass a ready ``recorder`` (tests build one with in-memory providers) or settings
    named like the environment variables (``host_threshold=20``, ``strict=True``). Explicit
    settings are validated strictly: a bad value raises :class:`ConfigError` and leaves the
    current runtime in place. When abuse detection was running, a new detector is built from
    the new settings and the old one is shut down, as is the old spool.
    """
    if recorder is not None and settings:
        raise TypeError("pass either recorder= or settings, not both")
    previous = runtime.current()
    if recorder is None:
        recorder = SecurityRecorder(
            Settings.load(**settings),
            logger_provider=previous.logger_provider,
            meter_provider=previous.meter_provider,
        )
    runtime.install(
        runtime.build(
            recorder=recorder,
            tracer_provider=previous.tracer_provider,
            meter_provider=previous.meter_provider,
            logger_provider=previous.logger_provider,
            detection=previous.detector is not None,
        )
    )
    return recorder


def record(name: str, /, **fields: Unpack[EventFields]) -> None:
    """Record one security event as a log record, a span event and counters.

    Args:
        name: a catalogue name (``auth.login.failed``) or a custom name matching
            ``^[a-z][a-z0-9_]*(\\.[a-z0-9_]+)+$`` given with ``outcome=``.
        **fields: ``outcome``, ``severity``, ``user_id``, ``user_name`` (hashed into
            ``user.hash`` unless OTEL_SECAUDIT_RECORD_USER_NAME=true), ``client_address``,
            ``user_agent``, ``tenant_id``, ``requested_tenant_id``, ``resource_type``,
            ``resource_id``, ``action``, ``permission``, ``reason`` and ``attributes`` (a
            mapping of extra attributes, redacted like everything else).

    Never raises into the caller; bad input is counted and logged. In strict mode
    (``configure(strict=True)`` or OTEL_SECAUDIT_STRICT=true) bad input raises
    :class:`SecAuditInputError` so tests and development catch it.
    """
    runtime.current().recorder.record(name, **fields)


def __getattr__(name: str) -> Any:
    # The instrumentor pulls in opentelemetry-instrumentation; import it only when asked.
    if name == "SecAuditInstrumentor":
        from .web.instrumentor import SecAuditInstrumentor

        return SecAuditInstrumentor
    if name == "SecAuditSpanProcessor":
        from .detection.processor import SecAuditSpanProcessor

        return SecAuditSpanProcessor
    raise AttributeError(f"module 'otel_secaudit' has no attribute {name!r}")
