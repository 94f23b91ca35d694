"""Pure ASGI middleware: the ASGI adapter of :mod:`otel_secaudit.web.exchange`.

:class:`SecAuditMiddleware` is what :class:`otel_secaudit.SecAuditInstrumentor` puts into every
Starlette/FastAPI application, inside the server span. It can also be added by hand::

    from otel_secaudit.web.asgi import SecAuditMiddleware

    app.add_middleware(SecAuditMiddleware)
    app.add_middleware(SecAuditMiddleware, user_id_resolver=lambda scope: scope.get("uid"))

For each HTTP request it opens an :class:`~otel_secaudit.web.exchange.Exchange` (client address
through trusted proxies, request context for every ``record()``), answers 429 to blocked
clients before the application runs, reads the submitted user name(s) from the body chunks the
application itself receives (as Starlette parses them, see
:mod:`otel_secaudit.web.user_names`; nothing is read ahead or replayed), records the
status/login events at response start, and scrubs secret query values and captured secret
headers from the current server span.

Lifespan: on shutdown the process-wide runtime is flushed (detector queue, SDK pipelines,
spool) before ``lifespan.shutdown.complete`` goes out, because uvicorn re-raises SIGTERM after
its graceful shutdown and ``atexit`` never runs. Lifespan messages pass through untouched; an
application without lifespan support is not affected. A WebSocket handshake from a blocked
client is refused (:func:`send_websocket_refusal`: 429 through the ``websocket.http.response``
extension, else a close before accept, which the server answers with 403); other websockets
pass through untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final

from opentelemetry import trace

from .. import runtime as _runtime
from ..context import enter_request, leave_request
from .client import header_values
from .exchange import BLOCK_CHECKED, Exchange, RefusalResponse, checked_by_gate
from .server_span import may_hold_email, scrub_server_span
from .user_names import BodyNames

__all__ = [
    "BLOCK_CHECKED",
    "SCOPE_MARKER",
    "SecAuditMiddleware",
    "UserIdResolver",
    "open_exchange",
    "send_refusal",
    "send_websocket_refusal",
    "websocket_refusal_status",
    "route_template",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: ``callable(scope) -> user id or None``; called lazily, only when an event is recorded.
UserIdResolver = Callable[[Scope], "str | int | None"]

#: Scope key marking a request already handled by an outer SecAuditMiddleware (mounted apps).
SCOPE_MARKER: Final = "otel_secaudit.request"
_MOUNT_KEY: Final = "otel_secaudit.mount"
MAX_ROUTE_LENGTH: Final = 256


# -- route template ---------------------------------------------------------------------------


def _enter_mount(scope: Scope) -> None:
    """Called when a request enters a mounted Starlette app: ``scope["route"]`` is the Mount."""
    mount = scope.get("route")
    path = getattr(mount, "path", None)
    if isinstance(path, str) and path:
        outer = scope.get(_MOUNT_KEY)
        prefix = outer[0] if outer else ""
        scope[_MOUNT_KEY] = ((prefix + path)[:MAX_ROUTE_LENGTH], mount)


def _fastapi_effective_path(scope: Scope) -> str | None:
    """FastAPI >= 0.137 runs routes of included routers without copying them: the matched
    route's own ``path`` lacks the router prefix, which only its effective route context
    carries. Private FastAPI state, read in this one place (tests/test_layouts.py fails when it
    moves); contrib's FastAPI instrumentation reports the same template."""
    state = scope.get("fastapi")
    if state is None or not (type(state) is dict or isinstance(state, Mapping)):
        return None
    path = getattr(state.get("effective_route_context"), "path", None)
    return path if isinstance(path, str) else None


def route_template(scope: Scope) -> str | None:
    """The matched route's template with router and mount prefixes, or None (before routing,
    or when no route matched)."""
    route = scope.get("route")
    if route is None:
        return None
    path = _fastapi_effective_path(scope) or getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    mount = scope.get(_MOUNT_KEY)
    if mount is not None:
        prefix, mount_route = mount
        path = prefix if route is mount_route else prefix + path
    return path[:MAX_ROUTE_LENGTH]


def _routes_of(app: Any) -> Any:
    routes = getattr(app, "routes", None)
    if routes is None:
        return ()
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.137.2: prefixes kept
    except ImportError:
        return routes
    return iter_route_contexts(routes)


def matched_route(scope: Scope) -> str | None:
    """The template of the route a request *would* match, without running it: for requests
    answered before routing (blocked clients), as contrib's instrumentations compute it."""
    from starlette.routing import Match

    partial = None
    for route in _routes_of(scope.get("app")):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            path = getattr(route, "path", None)
            if hasattr(route, "routes") and isinstance(path, str):  # a Mount
                path = path.rstrip("/") + "/{path}"
            return path[:MAX_ROUTE_LENGTH] if isinstance(path, str) else None
        if match == Match.PARTIAL and partial is None:
            partial = getattr(route, "path", None)
    return partial[:MAX_ROUTE_LENGTH] if isinstance(partial, str) else None


def _route_of(scope: Scope) -> Callable[[], str | None]:
    def route() -> str | None:
        if "route" in scope:
            return route_template(scope)
        return matched_route(scope)

    return route


# -- user id ----------------------------------------------------------------------------------


def _id_text(value: object) -> str | None:
    if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
        return str(value)
    return None


def user_id_from_scope(scope: Scope) -> str | None:
    """``scope["user"]`` (Starlette AuthenticationMiddleware) when authenticated, else
    ``request.state.user_id``."""
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False) is True:
        for name in ("id", "user_id", "identity"):
            found = _id_text(getattr(user, name, None))
            if found is not None:
                return found
    state = scope.get("state")
    if type(state) is dict or isinstance(state, Mapping):
        return _id_text(state.get("user_id"))
    return _id_text(getattr(state, "user_id", None)) if state is not None else None


def _first_header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return str(value[:512].decode("latin-1"))
    return None


def _www_authenticate(message: Message) -> str | None:
    """The ``WWW-Authenticate`` header of a response start message (RFC 6750 challenges)."""
    for key, value in message.get("headers") or ():
        if isinstance(key, bytes) and key.lower() == b"www-authenticate":
            return bytes(value[:1024]).decode("latin-1")
    return None


# -- user names -------------------------------------------------------------------------------


_BODYLESS_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


def _user_names_tee(exchange: Exchange, scope: Scope, receive: Receive) -> Receive:
    """A ``receive`` that also hands each body chunk the application reads to a
    :class:`~otel_secaudit.web.user_names.BodyNames` (bounded memory, parsed only when the
    names are asked for or the body is large), registered as the exchange's name reader.
    ``receive`` itself when the request cannot name a user (no body method, not a form or
    JSON, no user fields)."""
    if scope.get("method") in _BODYLESS_METHODS:
        return receive
    fields = exchange.user_fields
    if not fields:
        return receive
    reader = BodyNames(_first_header(scope, b"content-type"), fields)
    if not reader.wanted:
        return receive
    exchange.read_user_names(reader.names)

    async def tee() -> Message:
        message = await receive()
        if message.get("type") == "http.request":
            body = message.get("body") or b""
            reader.feed(body, more=bool(message.get("more_body", False)))
        return message

    return tee


def _route_path(scope: Scope) -> str | None:
    """The path Starlette routes on: ``scope["path"]`` without ``root_path`` (uvicorn
    ``--root-path /api`` puts the prefix in ``path``, as the ASGI spec says), None when there is
    no prefix to take off."""
    path, root = scope.get("path"), scope.get("root_path")
    if isinstance(path, str) and isinstance(root, str) and root and path.startswith(root):
        return path[len(root) :] or "/"
    return None


def open_exchange(
    scope: Scope, span: trace.Span, user_id_resolver: UserIdResolver | None = None
) -> Exchange:
    """The :class:`~otel_secaudit.web.exchange.Exchange` of one HTTP ``scope``; ``span`` is the
    current span (the request's server span when the instrumentation opened one)."""
    headers = scope.get("headers") or ()
    client = scope.get("client")

    def user_id_of() -> str | None:
        if user_id_resolver is not None:
            value = user_id_resolver(scope)
            if value is not None:
                return str(value)
        return user_id_from_scope(scope)

    return Exchange.open(
        span=span,
        method=scope.get("method"),
        path=scope.get("path"),
        peer=client[0] if client else None,
        header=lambda name: header_values(headers, name),
        user_agent=_first_header(scope, b"user-agent"),
        route_of=_route_of(scope),
        user_id_of=user_id_of,
        route_path=_route_path(scope),
    )


# -- the middleware ---------------------------------------------------------------------------


class SecAuditMiddleware:
    """Pure ASGI middleware; see the module documentation.

    Args:
        app: the ASGI application to wrap.
        user_id_resolver: ``callable(scope) -> user id or None``, tried before ``scope["user"]``
            and ``request.state.user_id``; called lazily, only when an event is recorded.
    """

    def __init__(self, app: ASGIApp, *, user_id_resolver: UserIdResolver | None = None) -> None:
        self.app = app
        self._user_id_resolver = user_id_resolver
        #: Whether the server span may carry captured request headers to scrub (False when
        #: the instrumentation around this middleware is known to capture none; see
        #: :mod:`otel_secaudit.web.starlette`).
        self.captured_headers = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One coroutine frame per request (this one): every ``await`` of the request passes
        # through each frame of the stack.
        if scope.get("type") != "http" or SCOPE_MARKER in scope:
            await self._pass(scope, receive, send)
            return
        scope[SCOPE_MARKER] = True
        try:
            exchange = self._open(scope)
        except Exception as exc:  # security plumbing never breaks the request
            _runtime.current().recorder.internal_error(exc, "asgi.prepare")
            await self.app(scope, receive, send)
            return
        token = enter_request(exchange.request)
        try:
            # A client the gate (before the server span) found not blocked is not looked up
            # again.
            refusal = None if checked_by_gate(scope, exchange) else exchange.refusal()
            if refusal is not None:
                await send_refusal(send, refusal)
                return
            receive = _tee(exchange, scope, receive)
            started = False

            async def send_wrapper(message: Message) -> None:
                nonlocal started
                if not started and message.get("type") == "http.response.start":
                    started = True
                    status = message.get("status")
                    if isinstance(status, int):
                        challenge = _www_authenticate(message) if status == 401 else None
                        exchange.respond(status, challenge)
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            except Exception:
                if not started:
                    exchange.failed()  # ServerErrorMiddleware outside answers 500
                raise
        finally:
            leave_request(token)

    async def _pass(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan (flushed on shutdown), websockets (a blocked client's handshake refused,
        else untouched), and requests an outer security middleware owns (a mounted
        sub-application: the mount's template is remembered, so routes below it are reported
        in full)."""
        kind = scope.get("type")
        if kind == "lifespan":
            await self.app(scope, receive, _flushing_on_shutdown(send))
            return
        if kind == "http":
            _enter_mount(scope)
        elif kind == "websocket" and SCOPE_MARKER not in scope:
            scope[SCOPE_MARKER] = True
            if await self._websocket_refused(scope, receive, send):
                return
        await self.app(scope, receive, send)

    async def _websocket_refused(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Refuse a blocked client's WebSocket handshake (:func:`send_websocket_refusal`);
        True when refused. Never raises on its own account."""
        try:
            exchange = open_exchange(scope, trace.get_current_span(), self._user_id_resolver)
            if checked_by_gate(scope, exchange):
                return False
        except Exception as exc:  # security plumbing never breaks the connection
            _runtime.current().recorder.internal_error(exc, "asgi.websocket")
            return False
        token = enter_request(exchange.request)
        try:
            decision = exchange.block_decision()  # never raises
            if decision is None:
                return False
            refusal = exchange.refuse(decision, websocket_refusal_status(scope))
        finally:
            leave_request(token)
        await send_websocket_refusal(receive, send, refusal)
        return True

    def _open(self, scope: Scope) -> Exchange:
        span = trace.get_current_span()
        exchange = open_exchange(scope, span, self._user_id_resolver)
        try:
            # Captured headers are scrubbed whether contrib was asked for them through the
            # environment or through instrument_app(http_capture_headers_server_request=...).
            # The URL attributes only when there is something to replace: a query string,
            # or an '@' in the path (contrib builds its URL paths from the decoded path; an
            # '@' in the Host header is userinfo to contrib, which redacts it itself).
            query = scope.get("query_string") or b""
            path = scope.get("path")
            emails = not exchange.runtime.settings.record_user_name and (
                bool(query) or (isinstance(path, str) and may_hold_email(path))
            )
            scrub_server_span(span, query, headers=self.captured_headers, emails=emails)
        except Exception as exc:
            exchange.runtime.recorder.internal_error(exc, "asgi.scrub")
        return exchange


async def send_refusal(send: Send, refusal: RefusalResponse) -> None:
    """Answer a blocked client: 429, ``Retry-After``, a short body."""
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [(k.encode(), v.encode()) for k, v in refusal.headers()],
        }
    )
    await send({"type": "http.response.body", "body": refusal.body})


def websocket_refusal_status(scope: Scope) -> int:
    """The status a blocked client's WebSocket handshake gets: 429 when the server lets the
    application answer the handshake itself (the ASGI ``websocket.http.response`` extension),
    else 403 (a close before accept, which the server answers with 403)."""
    extensions = scope.get("extensions")
    offered = isinstance(extensions, Mapping) and "websocket.http.response" in extensions
    return 429 if offered else 403


async def send_websocket_refusal(receive: Receive, send: Send, refusal: RefusalResponse) -> None:
    """Refuse a WebSocket handshake (``refusal.status`` from
    :func:`websocket_refusal_status`): 429 with ``Retry-After`` as an HTTP response, or a
    close before accept (code 1008, policy violation); nothing when the client left first."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    if refusal.status == 429:
        await send(
            {
                "type": "websocket.http.response.start",
                "status": refusal.status,
                "headers": [(k.encode(), v.encode()) for k, v in refusal.headers()],
            }
        )
        await send({"type": "websocket.http.response.body", "body": refusal.body})
        return
    await send({"type": "websocket.close", "code": 1008})


def _tee(exchange: Exchange, scope: Scope, receive: Receive) -> Receive:
    """:func:`_user_names_tee`, or ``receive`` itself when that fails (counted)."""
    try:
        return _user_names_tee(exchange, scope, receive)
    except Exception as exc:  # security plumbing never breaks the request
        exchange.runtime.recorder.internal_error(exc, "asgi.user_names")
        return receive


def _flushing_on_shutdown(send: Send) -> Send:
    """A lifespan ``send`` that flushes the runtime before the server hears that shutdown is
    complete (or failed), so the last audit records leave before the process exits."""

    async def lifespan_send(message: Message) -> None:
        if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            await _flush()
        await send(message)

    return lifespan_send


async def _flush() -> None:
    rt = _runtime.current()
    try:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, rt.flush)
    except Exception as exc:  # e.g. no executor at shutdown: flush on the loop instead
        rt.recorder.internal_error(exc, "asgi.lifespan_flush")
        rt.flush()
