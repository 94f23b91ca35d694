"""The security event catalogue (docs/reference.md, "Event catalogue") and event-name validation.

The catalogue is data in one place: every other module (recorder, detection, web
integration, demo, report) looks event specifications up here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from opentelemetry._logs import SeverityNumber

__all__ = [
    "CATALOGUE",
    "EVENT_NAME_PATTERN",
    "FAILURE",
    "SUCCESS",
    "EventSpec",
    "InvalidEventError",
    "Login",
    "Violation",
    "resolve_event",
    "severity_number",
]

SUCCESS: Final = "success"
FAILURE: Final = "failure"
OUTCOMES: Final = frozenset({SUCCESS, FAILURE})

#: Custom event names must look like ``area.thing[.more]`` in lower snake case.
EVENT_NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")

_SEVERITIES: Final[Mapping[str, SeverityNumber]] = MappingProxyType(
    {
        "TRACE": SeverityNumber.TRACE,
        "DEBUG": SeverityNumber.DEBUG,
        "INFO": SeverityNumber.INFO,
        "WARN": SeverityNumber.WARN,
        "WARNING": SeverityNumber.WARN,
        "ERROR": SeverityNumber.ERROR,
        "FATAL": SeverityNumber.FATAL,
        "CRITICAL": SeverityNumber.FATAL,
    }
)


class InvalidEventError(ValueError):
    """An event name, outcome or severity that the catalogue cannot accept."""


@dataclass(frozen=True, slots=True)
class EventSpec:
    """What the catalogue says about one event name.

    ``severity`` is the OpenTelemetry severity text (``DEBUG``, ``INFO``, ``WARN``,
    ``ERROR``); :attr:`severity_number` gives the matching :class:`SeverityNumber`.
    """

    name: str
    category: str
    outcome: str
    severity: str

    @property
    def severity_number(self) -> SeverityNumber:
        return _SEVERITIES[self.severity]

    @property
    def is_violation(self) -> bool:
        """Outcome ``failure``: counted in ``security.violations``."""
        return self.outcome == FAILURE

    @property
    def feeds_detection(self) -> bool:
        """Violations feed abuse detection, except the detector's own ``abuse.*`` events and
        ``request.blocked`` (a refusal the detector itself decided: counting it would count the
        detector's own output as a new offence)."""
        return (
            self.outcome == FAILURE and self.category != "abuse" and self.name != "request.blocked"
        )


def _spec(name: str, outcome: str, severity: str) -> EventSpec:
    return EventSpec(name=name, category=_category_of(name), outcome=outcome, severity=severity)


_CATEGORY_BY_PREFIX: Final = {
    "auth": "authentication",
    "authz": "authorization",
    "request": "request",
    "admin": "admin",
    "data": "data",
    "abuse": "abuse",
}


def _category_of(name: str) -> str:
    prefix = name.split(".", 1)[0]
    return _CATEGORY_BY_PREFIX.get(prefix, prefix)


_S, _F = SUCCESS, FAILURE

#: The contract's event catalogue: name -> :class:`EventSpec`.
CATALOGUE: Final[Mapping[str, EventSpec]] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            _spec("auth.login.succeeded", _S, "INFO"),
            _spec("auth.login.failed", _F, "WARN"),
            _spec("auth.login.succeeded_after_failures", _S, "WARN"),
            _spec("auth.login.new_device", _S, "INFO"),
            _spec("auth.account.locked", _F, "WARN"),
            _spec("auth.logout", _S, "INFO"),
            _spec("auth.sessions.revoked", _S, "INFO"),
            _spec("auth.unauthenticated", _F, "WARN"),
            _spec("auth.token.invalid", _F, "DEBUG"),
            _spec("auth.token.expired", _F, "DEBUG"),
            _spec("auth.token.claims_invalid", _F, "DEBUG"),
            _spec("auth.token.revoked", _F, "INFO"),
            _spec("auth.mfa.failed", _F, "WARN"),
            _spec("auth.mfa.enrolled", _S, "INFO"),
            _spec("auth.mfa.revoked", _S, "INFO"),
            _spec("auth.backup_code.used", _S, "INFO"),
            _spec("auth.password.changed", _S, "INFO"),
            _spec("auth.password.reset_requested", _S, "INFO"),
            _spec("auth.password.reset_completed", _S, "INFO"),
            _spec("auth.password.reset_failed", _F, "WARN"),
            _spec("auth.password.change_failed", _F, "WARN"),
            _spec("auth.email.verified", _S, "INFO"),
            _spec("auth.email.verification_failed", _F, "INFO"),
            _spec("auth.api_key.created", _S, "INFO"),
            _spec("auth.api_key.revoked", _S, "INFO"),
            _spec("authz.permission_denied", _F, "WARN"),
            _spec("authz.cross_tenant", _F, "WARN"),
            _spec("authz.tenant_context_missing", _F, "WARN"),
            _spec("authz.privilege_escalation", _F, "ERROR"),
            _spec("authz.role.changed", _S, "INFO"),
            _spec("request.csrf_mismatch", _F, "WARN"),
            _spec("request.rate_limited", _F, "WARN"),
            _spec("request.blocked", _F, "WARN"),
            _spec("request.attack_tool", _F, "WARN"),
            _spec("admin.action", _S, "INFO"),
            _spec("admin.user.created", _S, "INFO"),
            _spec("admin.user.activated", _S, "INFO"),
            _spec("admin.user.deactivated", _S, "INFO"),
            _spec("admin.user.deleted", _S, "INFO"),
            _spec("admin.quota.changed", _S, "INFO"),
            _spec("admin.config.changed", _S, "INFO"),
            _spec("data.sensitive.accessed", _S, "INFO"),
            _spec("data.exported", _S, "INFO"),
            _spec("data.deleted", _S, "INFO"),
            _spec("data.uploaded", _S, "INFO"),
            _spec("data.upload.failed", _F, "WARN"),
            _spec("abuse.host", _F, "WARN"),
            _spec("abuse.user", _F, "WARN"),
            _spec("abuse.scan", _F, "WARN"),
            _spec("abuse.block.started", _S, "WARN"),
            _spec("abuse.block.ended", _S, "INFO"),
        )
    }
)


def severity_number(severity: str | SeverityNumber | int) -> SeverityNumber:
    """Turn ``"warn"``, ``"WARNING"``, ``SeverityNumber.WARN`` or ``13`` into a SeverityNumber."""
    if isinstance(severity, SeverityNumber):
        return severity
    if isinstance(severity, bool):
        raise InvalidEventError(f"severity must be a name or SeverityNumber, not {severity!r}")
    if isinstance(severity, int):
        try:
            return SeverityNumber(severity)
        except ValueError:
            raise InvalidEventError(f"severity number {severity} is not 1..24") from None
    if isinstance(severity, str):
        found = _SEVERITIES.get(severity.strip().upper())
        if found is not None:
            return found
    raise InvalidEventError(
        f"unknown severity {severity!r}; use one of {', '.join(sorted(_SEVERITIES))}"
    )


def resolve_event(name: object, outcome: object = None) -> EventSpec:
    """Return the :class:`EventSpec` for ``name``.

    A catalogue name returns its catalogue entry (an ``outcome`` given with it must agree).
    A custom name must match :data:`EVENT_NAME_PATTERN` and come with an ``outcome``
    (``"success"`` or ``"failure"``); failures are WARN, successes INFO.

    Raises:
        InvalidEventError: with a message that says what is wrong and how to fix it.
    """
    if not isinstance(name, str):
        raise InvalidEventError(f"event name must be a str, not {type(name).__name__}")
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidEventError(
            f"outcome for {name[:80]!r} must be 'success' or 'failure', not {outcome!r}"
        )
    spec = CATALOGUE.get(name)
    if spec is not None:
        if outcome is not None and outcome != spec.outcome:
            raise InvalidEventError(
                f"{name} is a catalogue event with outcome {spec.outcome!r}; "
                f"outcome {outcome!r} contradicts it"
            )
        return spec
    # fullmatch: with match(), ``$`` accepts a name ending in a newline.
    if len(name) > 128 or not EVENT_NAME_PATTERN.fullmatch(name):
        raise InvalidEventError(
            f"unknown event name {name[:80]!r}: not in the catalogue, and custom names must "
            f"match {EVENT_NAME_PATTERN.pattern} (at most 128 characters)"
        )
    if outcome is None:
        raise InvalidEventError(
            f"custom event {name!r} needs an outcome: outcome='success' or outcome='failure'"
        )
    if name.split(".", 1)[0] == "abuse":
        raise InvalidEventError("the abuse.* namespace is reserved for the abuse detector")
    return EventSpec(
        name=name,
        category=_category_of(name),
        outcome=str(outcome),
        severity="WARN" if outcome == FAILURE else "INFO",
    )


@dataclass(frozen=True, slots=True)
class Violation:
    """One violation as abuse detection sees it.

    ``user_key`` is ``user.id`` when known, else ``user.hash``; ``trace_id`` is the 32-hex trace
    ID of the request (empty when there was no valid span context). ``timestamp`` is seconds
    since the epoch.
    """

    name: str
    client_address: str | None
    user_key: str | None
    trace_id: str
    timestamp: float


@dataclass(frozen=True, slots=True)
class Login:
    """A successful login as new-device detection sees it (handed over on the request thread,
    parsed on the detector's worker).

    ``user_key`` is ``user.id`` when known (``hashed`` False), else ``user.hash``;
    ``user_agent`` and ``client_address`` are the event's (sanitized, capped); ``trace_id`` and
    ``span_id`` are hex, empty without a valid span context; ``at`` is seconds since the epoch.
    """

    user_key: str
    hashed: bool
    user_agent: str | None
    client_address: str | None
    trace_id: str
    span_id: str
    at: float
