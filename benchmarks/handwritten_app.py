"""The test app with a hand-written security middleware: the floor the plugin is measured against.

``HandWrittenSecurityMiddleware`` is what a team would write without otel_secaudit to get the
same three SDK signals for a 401/403/429 answer: one log record (Logs API, ``event_name``,
the request attributes), one span event with the same attributes on the current (server) span,
and one counter point (event name, category, route, status). No redaction, no detection, no
login routes: only the signals. ``benchmarks/http_overhead.py`` serves ``app`` from here under
``opentelemetry-instrument`` (contrib's instrumentation on, otel_secaudit off).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber, get_logger
from opentelemetry.metrics import get_meter

from harness.apps.secapp import create_app

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: status -> (event name, category), as the plugin's default status rules
EVENTS = {
    401: ("auth.unauthenticated", "authentication"),
    403: ("authz.permission_denied", "authorization"),
    429: ("request.rate_limited", "abuse"),
}


class HandWrittenSecurityMiddleware:
    """Pure ASGI middleware: a log record, a span event and a counter point per 401/403/429."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self._logger: Any = None
        self._counter: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in EVENTS:
                self._record(scope, message["status"])
            await send(message)

        await self.app(scope, receive, send_and_record)

    def _record(self, scope: Scope, status: int) -> None:
        if self._logger is None:  # the SDK providers exist once the app serves
            self._logger = get_logger("handwritten")
            self._counter = get_meter("handwritten").create_counter("security.violations")
        name, category = EVENTS[status]
        route = getattr(scope.get("route"), "path", None)
        client = scope.get("client") or ("", 0)
        user_agent = ""
        for key, value in scope["headers"]:
            if key == b"user-agent":
                user_agent = value.decode("latin-1")
        attributes = {
            "security.event.name": name,
            "security.event.category": category,
            "security.event.outcome": "failure",
            "http.request.method": scope["method"],
            "http.route": route or "",
            "url.path": scope["path"],
            "http.response.status_code": status,
            "client.address": client[0],
            "network.peer.address": client[0],
            "user_agent.original": user_agent,
        }
        now = time.time_ns()
        self._logger.emit(
            timestamp=now,
            observed_timestamp=now,
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            attributes=attributes,
            event_name=name,
        )
        trace.get_current_span().add_event(name, attributes, timestamp=now)
        self._counter.add(
            1,
            {
                "security.event.name": name,
                "security.event.category": category,
                "http.route": route or "",
                "http.response.status_code": status,
            },
        )


app = create_app()
app.add_middleware(HandWrittenSecurityMiddleware)
