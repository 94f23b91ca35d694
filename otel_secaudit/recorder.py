"""Turns one security event into a log record, a span event and counter increments.

The recorder touches no HTTP: request attributes come from :mod:`otel_secaudit.context`.

Signals for one event (docs/reference.md, "Signals for one event"):

1. a log record through the Logs API (scope ``otel_secaudit``, ``event_name``, severity,
   timestamp, trace context of the current span, sanitized attributes);
2. a span event with the same name and attributes on the current span when it is recording;
3. ``security.events`` (every event) and ``security.violations`` (failures), with only the
   low-cardinality attributes of docs/reference.md, "Metrics".

Abuse detection sees every violation exactly once. A violation recorded on a recording span
of a provider that a :class:`~otel_secaudit.detection.processor.SecAuditSpanProcessor` serves
is marked on that span; the processor hands it to :attr:`SecurityRecorder.violation_sink` (the
detector's ``submit``) when the span ends. Any other violation (no span, an unsampled span, a
span of another TracerProvider) goes to ``violation_sink`` directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry._logs import LoggerProvider, get_logger
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider, get_meter, get_meter_provider
from typing_extensions import TypedDict, Unpack

from . import attributes as attr
from .config import Settings
from .context import RequestContext, current_request
from .event_tally import event_tally_for
from .events import EventSpec, InvalidEventError, Login, Violation, resolve_event, severity_number
from .internal_errors import InternalErrors
from .redaction import (
    MAX_USER_AGENT_LENGTH,
    MAX_VALUE_LENGTH,
    REDACTED,
    Redactor,
    Sanitized,
    hash_identity,
)
from .version import __version__

if TYPE_CHECKING:
    from .delivery import Delivery

__all__ = ["EventFields", "SecAuditInputError", "SecurityRecorder"]

_log = logging.getLogger("otel_secaudit")

_FIELD_NAMES = frozenset({"outcome", "severity", "user_name", "attributes", *attr.FIELD_KEYS})
_METRIC_ATTRIBUTE_CACHE_SIZE = 4096
_USER_HASH_CACHE_SIZE = 4096
_LOGIN_SUCCEEDED = "auth.login.succeeded"


class SecAuditInputError(ValueError):
    """Raised by ``record()`` in strict mode only: the event or a field is not acceptable."""


class EventFields(TypedDict, total=False):
    """Keyword fields of :func:`otel_secaudit.record` (all optional)."""

    outcome: str
    severity: str | int
    user_id: str | int
    user_name: str
    client_address: str
    user_agent: str
    tenant_id: str | int
    requested_tenant_id: str | int
    resource_type: str
    resource_id: str | int
    action: str
    permission: str
    reason: str
    attributes: Mapping[str, Any]


class RecorderStats:
    """Plain in-process counts, readable without a metric reader (tests, demo, health)."""

    def __init__(self, errors: InternalErrors) -> None:
        self._lock = threading.Lock()
        self._errors = errors
        self.recorded = 0
        self.dropped = 0
        self.input_problems = 0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts: dict[str, Any] = {
                "recorded": self.recorded,
                "dropped": self.dropped,
                "input_problems": self.input_problems,
            }
        counts["internal_errors"] = self._errors.snapshot()
        return counts


class SecurityRecorder:
    """Records security events as OpenTelemetry signals.

    Args:
        settings: configuration; default :meth:`Settings.load` with ``lenient=True``.
        logger_provider: Logs API provider (default: the global one); unused with ``delivery``.
        meter_provider: Metrics API provider (default: the global one).
        delivery: where the records go (default: :func:`otel_secaudit.delivery.build` here).
        errors: the internal-error count shared with the other parts (default: a new one).
        violation_sink: receives every violation that feeds abuse detection.
        login_sink: receives every ``auth.login.succeeded`` (new-device detection).

    :func:`otel_secaudit.runtime.build` puts a recorder together with its delivery and its
    detector. The instruments ``abuse_signals`` and ``requests_blocked`` are created here so
    that detection and the web integration share one meter.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        logger_provider: LoggerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        delivery: Delivery | None = None,
        errors: InternalErrors | None = None,
        violation_sink: Callable[[Violation], None] | None = None,
        login_sink: Callable[[Login], None] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings.load(lenient=True)
        self._errors = errors if errors is not None else InternalErrors(meter_provider)
        self._redactor = Redactor(self.settings.redact_keys)
        self._hash_key = self.settings.effective_hash_key
        meter = get_meter(attr.SCOPE_NAME, __version__, meter_provider=meter_provider)
        self.meter = meter
        self._violations = meter.create_counter(
            attr.METRIC_VIOLATIONS, unit="{violation}", description="Security violations"
        )
        self._event_tally = event_tally_for(meter_provider or get_meter_provider(), meter)
        self.abuse_signals = meter.create_counter(
            attr.METRIC_ABUSE_SIGNALS, unit="{signal}", description="Abuse escalations"
        )
        self.requests_blocked = meter.create_counter(
            attr.METRIC_REQUESTS_BLOCKED, unit="{request}", description="Requests blocked"
        )
        self._metric_attributes: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._user_hashes: dict[str, str] = {}
        self._logged_problems: set[str] = set()
        self.stats = RecorderStats(self._errors)
        self.violation_sink = violation_sink  # see the module doc
        self.login_sink = login_sink
        from .detection.processor import hold_violation

        self._hold_violation = hold_violation
        if delivery is None:
            from . import delivery as delivering  # the SDK is imported only when needed

            delivery = delivering.build(
                self.settings.spool_dir,
                self.settings.spool_max_bytes,
                logger_provider=logger_provider,
                meter_provider=meter_provider,
                on_error=self._errors,
            )
        #: Durable delivery (OTEL_SECAUDIT_SPOOL_DIR) or counted drops: otel_secaudit.delivery.
        self.delivery = delivery
        self._logger = get_logger(
            attr.SCOPE_NAME, __version__, logger_provider=delivery.records_provider
        )

    # -- public ---------------------------------------------------------------------------

    def record(self, name: str, /, **fields: Unpack[EventFields]) -> None:
        """Record one security event. Never raises, except :class:`SecAuditInputError` in
        strict mode. See :func:`otel_secaudit.record`."""
        try:
            self.emit(name, fields)
        except SecAuditInputError:
            if self.settings.strict:
                raise
        except Exception as exc:  # rule 1: never break the host application
            self.internal_error(exc)

    def emit(
        self,
        name: str,
        fields: Mapping[str, Any],
        *,
        body: Any = None,
        context: Context | None = None,
        internal_attributes: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record an event; the building block of :meth:`record` and of the abuse detector.

        ``body`` is the log record body (the detector's breakdown of violations); ``context``
        the OpenTelemetry context whose span the event belongs to (default: current).
        ``internal_attributes`` are trusted attributes computed by otel_secaudit itself (the
        detector's ``security.abuse.*``, including trace IDs that redaction would blank); they
        bypass redaction and may set reserved keys, so never pass caller data through them.
        Returns False when the event was dropped for bad input (production mode).

        Raises:
            SecAuditInputError: bad input (the caller decides whether to re-raise).
        """
        try:
            spec = resolve_event(name, fields.get("outcome"))
        except InvalidEventError as exc:
            self._input_problem(f"event dropped: {exc}", dropped=True)
            return False
        acc = Sanitized()
        request = current_request()  # looked up once per event
        attributes, request_attributes = self._attributes(spec, fields, acc, request)
        severity = fields.get("severity")
        number = spec.severity_number
        if severity is not None:
            try:
                number = severity_number(severity)
            except InvalidEventError as exc:
                acc.problems.append(str(exc))
        if acc.problems:
            # Production mode keeps the event (minus the bad fields): a violation is never hidden.
            self._input_problem(f"{spec.name}: " + "; ".join(acc.problems[:5]), dropped=False)
        if acc.count:
            attributes[attr.REDACTED_COUNT] = acc.count
        if internal_attributes:
            attributes.update(internal_attributes)

        now = time.time_ns()
        span = trace.get_current_span(context)
        # ``attributes`` are the event's own; the log record gets the request's too. So does
        # the span event, unless its span is the request's server span, which carries them.
        event_attributes = attributes
        if request_attributes:
            attributes = {**request_attributes, **attributes}
            if span is not request.server_span:  # type: ignore[union-attr]
                event_attributes = attributes
        self._signal(spec, attributes, event_attributes, number, body, context, span, now, request)
        if request is not None:
            request.recorded_names.add(spec.name)
        if spec.is_violation:
            self._violation(spec, attributes, span, now, request)
        elif spec.name == _LOGIN_SUCCEEDED and self.login_sink is not None:
            self.login_sink(_login(attributes, span.get_span_context(), now))
        return True

    def _signal(
        self,
        spec: EventSpec,
        attributes: dict[str, Any],
        event_attributes: dict[str, Any],
        number: Any,
        body: Any,
        context: Context | None,
        span: trace.Span,
        now: int,
        request: RequestContext | None,
    ) -> None:
        """Log record (``attributes``), span event (``event_attributes``) and counters. Each
        signal on its own: a broken processor or exporter behind one of them must not take the
        others down (a violation is never hidden)."""
        try:
            self._logger.emit(
                timestamp=now,
                observed_timestamp=now,
                context=context,
                severity_number=number,
                severity_text=number.name,
                body=body,
                attributes=attributes,
                event_name=spec.name,
            )
        except Exception as exc:
            self.internal_error(exc, "record.log")
        if self.settings.span_events and span.is_recording():
            try:
                span.add_event(spec.name, event_attributes, timestamp=now)
            except Exception as exc:
                self.internal_error(exc, "record.span_event")
        try:
            self._count(spec, request)
        except Exception as exc:
            self.internal_error(exc, "record.metrics")
        with self.stats._lock:
            self.stats.recorded += 1

    def _violation(
        self,
        spec: EventSpec,
        attributes: Mapping[str, Any],
        span: trace.Span,
        now: int,
        request: RequestContext | None,
    ) -> None:
        """Mark the request (one request, one violation) and hand the violation to abuse
        detection: every one, directly, whichever TracerProvider made the span (or none)."""
        if request is not None:
            request.failure_recorded = True
        sink = self.violation_sink
        if sink is None or not spec.feeds_detection:
            return
        span_context = span.get_span_context()
        violation = Violation(
            name=spec.name,
            client_address=_detection_key(attributes.get(attr.CLIENT_ADDRESS)),
            user_key=_detection_key(attributes.get(attr.USER_ID))
            or _detection_key(attributes.get(attr.USER_HASH)),
            trace_id=format(span_context.trace_id, "032x") if span_context.is_valid else "",
            timestamp=now / 1e9,
        )
        # On a span that a SecAuditSpanProcessor serves, detection happens when the span ends;
        # otherwise (no span, unsampled, another provider) now: never hidden, counted once.
        if not (span.is_recording() and self._hold_violation(span, violation, sink)):
            sink(violation)

    def internal_error(
        self, exc: BaseException, where: str = "record", *, log: bool = True
    ) -> None:
        """Count an internal error and log it (with its traceback) the first time its kind is
        seen; ``log=False``: count only (the caller logged one line of its own, e.g. a store
        outage, which is expected and needs no traceback). Never raises."""
        self._errors(exc, where, log=log)

    def close(self, timeout_millis: int = 5000) -> None:
        """Deliver spooled records for up to ``timeout_millis``, then stop the spool (if any);
        undelivered records stay on disk and are replayed on the next start."""
        self.delivery.close(timeout_millis)

    # -- internals ------------------------------------------------------------------------

    def _input_problem(self, message: str, *, dropped: bool) -> None:
        if self.settings.strict:
            raise SecAuditInputError(message)
        with self.stats._lock:
            self.stats.input_problems += 1
            if dropped:
                self.stats.dropped += 1
            first = len(self._logged_problems) < 256 and message not in self._logged_problems
            if first:
                self._logged_problems.add(message)
        self._errors.count("invalid_event" if dropped else "invalid_field")
        if first:
            _log.warning("otel_secaudit: %s", message)

    def _attributes(
        self,
        spec: EventSpec,
        fields: Mapping[str, Any],
        acc: Sanitized,
        request: RequestContext | None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The event's own attributes (``security.*``, ``user.*``, fields, extra attributes)
        and the request's (``http.*``, ``url.path``, addresses, user agent; None without a
        request). A field overrides the request's value of the same key; an extra attribute
        never does."""
        attributes: dict[str, Any] = {
            attr.EVENT_NAME: spec.name,
            attr.EVENT_CATEGORY: spec.category,
            attr.EVENT_OUTCOME: spec.outcome,
        }
        request_attributes: dict[str, Any] | None = None
        if request is not None:
            request_attributes = self._request_attributes(request, acc)
            user_id = request.resolve_user_id()
            if user_id is not None:
                self._set_text(attributes, attr.USER_ID, user_id, acc)

        for field_name, value in fields.items():
            if value is None:
                continue
            field_key = attr.FIELD_KEYS.get(field_name)
            if field_key is not None:
                self._set_text(attributes, field_key, value, acc)
            elif field_name == "user_name":
                self._user_name(value, attributes, acc)
            elif field_name not in _FIELD_NAMES:
                acc.problems.append(
                    f"unknown field {field_name[:40]!r}; put extra data in attributes={{...}}"
                )
        extra = fields.get("attributes")
        if extra is not None:
            for extra_key, extra_value in self._redactor.extra(extra, acc).items():
                if extra_key not in attributes and (
                    request_attributes is None or extra_key not in request_attributes
                ):
                    attributes[extra_key] = extra_value
        return attributes, request_attributes

    def _request_attributes(self, request: RequestContext, acc: Sanitized) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        for key, value in (
            (attr.HTTP_METHOD, request.method),
            (attr.HTTP_ROUTE, request.route),
            (attr.URL_PATH, request.path),
            (attr.CLIENT_ADDRESS, request.client_address),
            (attr.NETWORK_PEER_ADDRESS, request.peer_address),
            (attr.USER_AGENT, request.user_agent),
        ):
            if value is not None:
                self._set_text(attributes, key, value, acc)
        if request.status_code is not None:
            attributes[attr.HTTP_STATUS] = request.status_code
        return attributes

    def _set_text(
        self, attributes: dict[str, Any], key: str, value: object, acc: Sanitized
    ) -> None:
        """Sanitize a caller- or request-supplied value into ``attributes[key]``.

        Identifiers (user.id, tenant and resource ids) are redacted only when they contain a
        known secret format (docs/reference.md, "Attributes"); everything else is free text."""
        limit = MAX_USER_AGENT_LENGTH if key == attr.USER_AGENT else MAX_VALUE_LENGTH
        if key in (attr.USER_ID, attr.TENANT_ID, attr.TENANT_REQUESTED_ID, attr.RESOURCE_ID):
            text = self._redactor.identifier(value, acc, limit)
        else:
            text = self._redactor.text(value, acc, limit)
        if text is not None:
            attributes[key] = text

    def _user_name(self, value: object, attributes: dict[str, Any], acc: Sanitized) -> None:
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "backslashreplace")
        if not isinstance(value, str):
            acc.problems.append(f"user_name must be str, not {type(value).__name__}")
            return
        # A brute force repeats one user name: remember recent hashes (bounded).
        hashed = self._user_hashes.get(value)
        if hashed is None:
            hashed = hash_identity(self._hash_key, value)
            if len(self._user_hashes) >= _USER_HASH_CACHE_SIZE:
                self._user_hashes.clear()
            self._user_hashes[value] = hashed
        attributes[attr.USER_HASH] = hashed
        if self.settings.record_user_name:
            text = self._redactor.text(value, acc)
            if text is not None:
                attributes[attr.USER_NAME] = text

    def _count(self, spec: EventSpec, request: RequestContext | None) -> None:
        self._event_tally.add(spec.name, spec.outcome)
        if spec.is_violation:
            self._violations.add(1, self._violation_attributes(spec, request))

    def _violation_attributes(
        self, spec: EventSpec, request: RequestContext | None
    ) -> dict[str, Any]:
        # Metric attribute values come from the plugin's own request context, never from the
        # caller's attributes (free text there would become metric series and exemplars).
        route = request.route if request is not None else None
        status = request.status_code if request is not None else None
        cache_key = (spec.name, route, status)
        cached = self._metric_attributes.get(cache_key)
        if cached is not None:
            return cached
        attributes: dict[str, Any] = {
            attr.EVENT_NAME: spec.name,
            attr.EVENT_CATEGORY: spec.category,
        }
        if route is not None:
            attributes[attr.HTTP_ROUTE] = route
        if status is not None:
            attributes[attr.HTTP_STATUS] = status
        if len(self._metric_attributes) >= _METRIC_ATTRIBUTE_CACHE_SIZE:
            # Defence in depth: whatever an integration passes as route, metric series stay
            # bounded; the log record keeps the real route.
            attributes[attr.HTTP_ROUTE] = "other"
        else:
            self._metric_attributes[cache_key] = attributes
        return attributes


def _detection_key(value: object) -> str | None:
    """A detection key, never a redacted value: ``[REDACTED]`` would merge every user whose
    id was blanked into one key (docs/reference.md, "Attributes")."""
    if isinstance(value, str) and value and REDACTED not in value:
        return value
    return None


def _login(attributes: Mapping[str, Any], span_context: Any, now: int) -> Login:
    """A successful login for new-device detection (its sink only queues it)."""
    user_id = _detection_key(attributes.get(attr.USER_ID))
    agent = attributes.get(attr.USER_AGENT)
    valid = span_context.is_valid
    return Login(
        user_key=user_id or _detection_key(attributes.get(attr.USER_HASH)) or "",
        hashed=user_id is None,
        user_agent=agent if isinstance(agent, str) else None,
        client_address=_detection_key(attributes.get(attr.CLIENT_ADDRESS)),
        trace_id=format(span_context.trace_id, "032x") if valid else "",
        span_id=format(span_context.span_id, "016x") if valid else "",
        at=now / 1e9,
    )
