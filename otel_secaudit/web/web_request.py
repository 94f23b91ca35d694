"""The request context of the web adapters: :class:`WebRequest`, opened by
:meth:`otel_secaudit.web.exchange.Exchange.open` before the framework has routed the request
(so its route is resolved lazily) and current for every ``record()`` of the request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ..context import RequestContext
from ..redaction import scrub_path
from ..redaction.urls import scrub_path_emails

__all__ = ["MAX_ROUTE_LENGTH", "WebRequest"]

MAX_ROUTE_LENGTH: Final = 256


class WebRequest(RequestContext):
    """A :class:`RequestContext` whose ``route`` is resolved lazily: frameworks know the route
    template only after routing, while the context is opened before it. It also remembers the
    event names recorded for the request (no event name twice)."""

    __slots__ = ("_route_of", "_route", "_path", "_emails")

    def __init__(
        self,
        route_of: Callable[[], str | None] | None = None,
        *,
        redact_emails: bool = True,
        method: str | None = None,
        path: str | None = None,
        client_address: str | None = None,
        peer_address: str | None = None,
        user_agent: str | None = None,
        user_id_resolver: Callable[[], str | None] | None = None,
        server_span: object | None = None,
    ) -> None:
        # Every field assigned here, once (the hot path of every request: no keyword
        # forwarding to the dataclass __init__, no property setter).
        self._route_of = route_of
        self._route: str | None = None
        self._path: str | None = path
        #: e-mail addresses in the path become [REDACTED] (not with RECORD_USER_NAME=true)
        self._emails = redact_emails
        self.method = method
        self.status_code = None
        self.client_address = client_address
        self.peer_address = peer_address
        self.user_agent = user_agent
        self.user_id = None
        self.user_id_resolver = user_id_resolver
        self.failure_recorded = False
        self.recorded_names = set()
        self.server_span = server_span
        self.auth = None

    @property  # type: ignore[override]
    def route(self) -> str | None:
        """The matched route template, router prefixes included; None when none matched."""
        if self._route is None and self._route_of is not None:
            try:
                value = self._route_of()
            except Exception:  # a framework quirk must never cost the event itself
                value = None
            if isinstance(value, str) and value:
                self._route = value[:MAX_ROUTE_LENGTH]
        return self._route

    @route.setter
    def route(self, value: str | None) -> None:
        self._route = value

    @property  # type: ignore[override]
    def path(self) -> str | None:
        """The request path; once the route template is known, path parameters that hold a
        secret (``/reset/{token}``) are not copied (:func:`~otel_secaudit.redaction.scrub_path`);
        segments holding an e-mail address never are (unless RECORD_USER_NAME=true)."""
        path = self._path
        if path is None:
            return path
        try:
            route = self.route
            if route is None:
                return self.unrouted_path
            return scrub_path(route, path, emails=self._emails)[0]
        except Exception:  # never export an unscrubbed path: drop it instead
            return None

    @path.setter
    def path(self, value: str | None) -> None:
        self._path = value

    @property
    def raw_path(self) -> str | None:
        """The request path as received (capped), for matching rules."""
        return self._path

    @property
    def unrouted_path(self) -> str | None:
        """The request path without routing it: with no template only e-mail addresses are
        known to be personal, so only they are replaced (unless RECORD_USER_NAME=true); None
        when that fails (never an unscrubbed path)."""
        path = self._path
        if path is None or not self._emails:
            return path
        try:
            return scrub_path_emails(path)[0]
        except Exception:
            return None
