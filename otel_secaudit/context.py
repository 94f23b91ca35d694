"""The request-context hook: how the web integration lends request attributes to ``record()``.

The ASGI middleware opens a :class:`RequestContext` for each request with :func:`request_scope`;
every ``record()`` made while it is open adds the request's method, route, path, status, client
address, user agent and user id. The recorder also marks the context with every event name it
recorded and whether one was a failure, so the middleware does not add a second status event
for the same response (one request, one violation) nor repeat an event name.

This module knows nothing about HTTP frameworks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .auth.state import AuthObservation

__all__ = ["RequestContext", "current_request", "enter_request", "leave_request", "request_scope"]


@dataclass(slots=True)
class RequestContext:
    """What is known about the request being served. Values are already sanitized by the
    web integration except where noted; the recorder escapes and caps them again anyway.

    ``route`` must be low-cardinality (a route template or a fixed placeholder): it is a
    metric attribute. ``user_id_resolver`` is called lazily, at most once per ``record()``.
    """

    method: str | None = None
    route: str | None = None
    path: str | None = None
    status_code: int | None = None
    client_address: str | None = None
    peer_address: str | None = None
    user_agent: str | None = None
    user_id: str | None = None
    user_id_resolver: Callable[[], str | None] | None = None
    #: Set by the recorder when a failure event was recorded during this request.
    failure_recorded: bool = False
    #: Every event name the recorder recorded during this request (no event name twice: a
    #: login-route or status rule does not repeat what the application or a framework
    #: signal already recorded).
    recorded_names: set[str] = field(default_factory=set)
    #: The request's server span (opened by the HTTP instrumentation), when there is one: a
    #: span event recorded on it leaves out the request attributes the span carries itself.
    server_span: object | None = None
    #: Password checks and token decodes the instrumented libraries saw during this request
    #: (:mod:`otel_secaudit.auth`); None until the first one.
    auth: AuthObservation | None = None

    def resolve_user_id(self) -> str | None:
        """The user id, from ``user_id`` or, once, from ``user_id_resolver`` (the framework's
        authenticated user), else the subject of a token decoded during the request."""
        if self.user_id is None and self.user_id_resolver is not None:
            resolver, self.user_id_resolver = self.user_id_resolver, None
            try:
                value = resolver()
            except Exception:  # a resolver must never break recording
                value = None
            if value is not None:
                self.user_id = str(value)
        if self.user_id is None and self.auth is not None:
            return self.auth.token_user_id
        return self.user_id


_current_request: ContextVar[RequestContext | None] = ContextVar(
    "otel_secaudit_request", default=None
)


def current_request() -> RequestContext | None:
    """The request being served in this context, if any."""
    return _current_request.get()


def enter_request(request: RequestContext) -> Token[RequestContext | None]:
    """Make ``request`` current until :func:`leave_request` with the returned token: the
    adapters' hot path (one ContextVar set, no context-manager object per request)."""
    return _current_request.set(request)


def leave_request(token: Token[RequestContext | None]) -> None:
    """Undo :func:`enter_request`."""
    _current_request.reset(token)


@contextmanager
def request_scope(request: RequestContext) -> Iterator[RequestContext]:
    """Make ``request`` the current request for the duration of the ``with`` block."""
    token = _current_request.set(request)
    try:
        yield request
    finally:
        _current_request.reset(token)
