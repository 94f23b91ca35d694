"""The request's authentication event from what was observed (README, "Logins without
configuration"): the password checks and token decodes :mod:`otel_secaudit.auth` noted on the
request, and an RFC 6750 ``WWW-Authenticate`` answer. Called by
:meth:`~otel_secaudit.web.exchange.Exchange.respond` before the login-route and status rules,
so ASGI, WSGI, Django and Flask share it.

Precedence, for a request that checked a password:

1. an event the application or a framework signal recorded (Django's ``user_logged_in`` /
   ``user_login_failed``, Flask-Login's) wins: nothing is added;
2. a failed check with no later passing one is ``auth.login.failed`` (``security.reason``
   ``invalid_credentials``; one event per submitted user name candidate), or
   ``auth.password.change_failed`` on a route whose route-scoped status rule names
   ``auth.password.changed``, or the failure event of the route-scoped rule matching the
   answer (a reset route checking its token's password fingerprint:
   ``auth.password.reset_failed``); a 200 answer never turns it into a success;
3. a passing check is ``auth.login.succeeded``, unless a route-scoped status rule matches the
   answer (it is more specific), the route's rules say it is no login route, or the answer
   refuses the login (a 4xx, or a framework that sends a success signal sent none):
   ``auth.login.failed`` with ``security.reason`` ``login_not_allowed``.

A token decode that raised is its ``auth.token.*`` event (or the route-scoped failure rule's,
``auth.password.reset_failed`` on a reset route, with the token's reason), whatever the
status; a 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` is
``auth.token.invalid``. One request, one violation: nothing is added when the application
recorded a failure itself.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final, Protocol

from .. import attributes as attr
from ..auth.state import AuthObservation, TokenFailure

if TYPE_CHECKING:
    from .. import runtime as _runtime
    from ..route_rules import StatusRule

__all__ = ["ExchangeView", "RequestView", "bearer_invalid_token", "observed_outcome"]


class RequestView(Protocol):
    """What observed outcomes use of the exchange's request (a
    :class:`~.web_request.WebRequest`)."""

    @property
    def auth(self) -> AuthObservation | None:
        """What the observed libraries saw during the request."""

    @property
    def method(self) -> str | None:
        """The request method."""

    @property
    def route(self) -> str | None:
        """The matched route template."""

    @property
    def raw_path(self) -> str | None:
        """The request path as received, for matching rules."""

    @property
    def recorded_names(self) -> set[str]:
        """The event names recorded for the request so far."""

    @property
    def failure_recorded(self) -> bool:
        """Whether a violation was recorded for the request."""


class ExchangeView(Protocol):
    """What observed outcomes use of a :class:`~.exchange.Exchange` (which calls them)."""

    @property
    def runtime(self) -> _runtime.Runtime:
        """The runtime the exchange records through."""

    @property
    def request(self) -> RequestView:
        """The request."""

    def scoped_rule(self, status: int) -> StatusRule | None:
        """The route-scoped status rule matching this answer, if any."""

    def submitted_user_names(self) -> tuple[str, ...]:
        """The user names the login request submitted."""

    def login_succeeded(self, name: str | None) -> None:
        """Record ``auth.login.succeeded`` (once per request)."""


LOGIN_SUCCEEDED: Final = "auth.login.succeeded"
LOGIN_FAILED: Final = "auth.login.failed"
PASSWORD_CHANGED: Final = "auth.password.changed"
PASSWORD_CHANGE_FAILED: Final = "auth.password.change_failed"
TOKEN_INVALID: Final = "auth.token.invalid"
_BEARER_INVALID: Final = re.compile(
    r"\bbearer\b[^\n]{0,512}?\berror\s*=\s*\"?invalid_token\b", re.IGNORECASE
)


def bearer_invalid_token(value: str | None) -> bool:
    """Whether a ``WWW-Authenticate`` value is RFC 6750's ``Bearer error="invalid_token"``."""
    return bool(value) and _BEARER_INVALID.search(value[:1024]) is not None  # type: ignore[index]


def observed_outcome(exchange: ExchangeView, status: int, www_authenticate: str | None) -> bool:
    """Record the request's observed authentication event, if any; True when that settles the
    response (no login-route or status rule is applied then)."""
    observation = exchange.request.auth
    if observation is not None:
        if observation.token_failure is not None:
            return _token_failed(exchange, status, observation.token_failure)
        if observation.checks:
            return _checked(exchange, status, observation)
    if status == 401 and bearer_invalid_token(www_authenticate):
        failure = TokenFailure(TOKEN_INVALID, "invalid_token", "", "bearer")
        return _token_failed(exchange, status, failure)
    return False


def _token_failed(exchange: ExchangeView, status: int, failure: TokenFailure) -> bool:
    request = exchange.request
    if request.failure_recorded:
        return True  # one request, one violation: the application recorded its own
    rule = exchange.scoped_rule(status)
    name = rule.event if rule is not None and rule.outcome == "failure" else failure.event
    if name in request.recorded_names:
        return True
    internal = {attr.ERROR_TYPE: failure.error_type} if failure.error_type else None
    exchange.runtime.recorder.emit(name, {"reason": failure.reason}, internal_attributes=internal)
    return True


def _app_decided(exchange: ExchangeView) -> bool:
    request = exchange.request
    names = request.recorded_names
    return request.failure_recorded or LOGIN_SUCCEEDED in names or PASSWORD_CHANGED in names


def _checked(exchange: ExchangeView, status: int, observation: AuthObservation) -> bool:
    if _app_decided(exchange):
        return True
    request = exchange.request
    route_events = exchange.runtime.settings.status_events.route_events(
        request.method, request.route, request.raw_path
    )
    names = exchange.submitted_user_names()
    scoped = exchange.scoped_rule(status)
    if observation.check_failed:
        if PASSWORD_CHANGED in route_events:
            event = PASSWORD_CHANGE_FAILED
        elif scoped is not None and scoped.outcome == "failure":
            event = scoped.event  # what the route is (a reset route's fingerprint check)
        else:
            event = LOGIN_FAILED
        _record_each(exchange, event, names, reason="invalid_credentials")
        return True
    if scoped is not None:
        return False  # the more specific route-scoped rule says what this answer is
    if route_events and not any(name.startswith("auth.login.") for name in route_events):
        return False  # the route's rules say it is no login (a change-password endpoint)
    if status < 200 or status == 429 or status >= 500:
        return False
    if status >= 400 or (
        observation.expects_login_signal and LOGIN_SUCCEEDED not in request.recorded_names
    ):
        _record_each(exchange, LOGIN_FAILED, names, reason="login_not_allowed")
        return True
    exchange.login_succeeded(names[0] if len(names) == 1 else None)
    return True


def _record_each(exchange: ExchangeView, event: str, names: tuple[str, ...], **fields: Any) -> None:
    """One event per submitted user name candidate (an ambiguous body counts the failure for
    each), or one without ``user.hash`` when the body named nobody."""
    recorder = exchange.runtime.recorder
    if not names:
        recorder.record(event, **fields)
        return
    for name in names:
        recorder.record(event, user_name=name, **fields)
