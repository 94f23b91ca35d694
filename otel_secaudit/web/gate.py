"""Refuse a blocked client before the HTTP instrumentation runs: a flood gets cheaper once it
is blocked, not dearer.

:class:`~otel_secaudit.web.asgi.SecAuditMiddleware` runs inside the server span, so a refused
request used to cost everything contrib's instrumentation does for any request (the server
span, a span per ``send``, the HTTP duration and size metrics) plus the refusal itself: about
what contrib's own 403 costs. The gate runs earlier, in ``Starlette.__call__`` (patched by
:mod:`otel_secaudit.web.starlette`), before the application's middleware stack, where
contrib's ``FastAPIInstrumentor``/``StarletteInstrumentor`` open the server span:

* With no block active in the process (the usual case) it costs a few attribute reads.
* With blocks active, it resolves the client address (trusted proxies included) and asks the
  detector, which counts every refusal in ``security.requests.blocked``. A client that is not
  blocked goes on and the middleware does not look the same address up again (scope key
  :data:`~otel_secaudit.web.exchange.BLOCK_CHECKED`; a client address that middleware inside the
  application rewrote is looked up by the middleware).
* A blocked client gets 429 with ``Retry-After`` from the gate, under a server span of
  otel_secaudit's own (scope ``otel_secaudit``; named after the method; ``http.request.method``,
  ``url.scheme``, ``url.path`` (scrubbed), ``client.address``, ``network.peer.address``,
  ``user_agent.original``, ``http.response.status_code`` 429; not routed, so no
  ``http.route``: the ``request.blocked`` record has it). It is a root span: the
  client's ``traceparent`` is not continued (a blocked client is not trusted to place its
  requests in a trace). ``request.blocked``, when due (at most once per key per 60 s), is a
  span event on it and a log record carrying its trace id. Contrib's HTTP server metrics do
  not count these requests; ``security.requests.blocked`` counts every one.

When a span is already current at that point (FastAPI's own telemetry, an
``OpenTelemetryMiddleware`` wrapped around the whole application, an ASGI server's
instrumentation), the gate steps aside and the middleware refuses inside that span, as before.

:func:`gated_call` puts the same gate in front of Django's ``ASGIHandler``.
:func:`blocks_active`, :func:`in_span` and :func:`refusing` are shared with the WSGI gate
of Flask and Django (:mod:`otel_secaudit.web.wsgi_gate`).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from .. import attributes as attr
from .. import runtime as _runtime
from ..context import enter_request, leave_request
from .asgi import (
    BLOCK_CHECKED,
    Receive,
    Send,
    open_exchange,
    send_refusal,
    send_websocket_refusal,
    websocket_refusal_status,
)
from .exchange import Exchange, RefusalResponse
from .web_request import WebRequest

__all__ = [
    "blocks_active",
    "gated",
    "gated_call",
    "in_span",
    "refusal_span",
    "refused_early",
    "refusing",
    "wanted",
]

Scope = MutableMapping[str, Any]


def blocks_active() -> bool:
    """Whether some client is blocked in this process (blocks on and at least one running):
    the per-request cost of a gate when none is (a few attribute reads). Never raises."""
    try:
        rt = _runtime.current()
        detector = rt.detector
        return detector is not None and rt.settings.block_seconds > 0 and len(detector.blocks) > 0
    except Exception:
        return False


def wanted(scope: Scope) -> bool:
    """Whether :func:`refused_early` has anything to check for ``scope``: an HTTP request or
    a WebSocket handshake while some client is blocked in this process. The per-request cost
    of the gate when no block is active (a few attribute reads, no coroutine). Never
    raises."""
    return blocks_active() and scope.get("type") in ("http", "websocket")


def in_span() -> bool:
    """Whether a span (sampled or not) is current already: a gate then steps aside and the
    framework adapter refuses inside that span."""
    return trace.get_current_span().get_span_context().is_valid


async def refused_early(
    scope: Scope, send: Send, app: Any = None, receive: Receive | None = None
) -> bool:
    """Answer ``scope``'s request with 429 when its client is blocked and no span is current
    yet (``app``: the Starlette application, whose routes name the refused request's route;
    a WebSocket handshake is refused too when ``receive`` is given, see
    :func:`~otel_secaudit.web.asgi.send_websocket_refusal`); True when answered (the
    application must not run). Never raises on its own account
    (an error is counted and the request goes on to the middleware); what ``send`` raises
    (a client gone) propagates as it would from the application."""
    try:
        rt = _runtime.current()
        if not wanted(scope):
            return False
        websocket = scope.get("type") == "websocket"
        if in_span() or (websocket and receive is None):  # the middleware refuses there
            return False
        if app is not None and "app" not in scope:
            scope["app"] = app  # as Starlette sets it: the route a refused request would match
        exchange = open_exchange(scope, trace.INVALID_SPAN)
    except Exception as exc:  # security plumbing never breaks the request
        _runtime.current().recorder.internal_error(exc, "asgi.gate")
        return False
    scheme = scope.get("scheme")
    status = websocket_refusal_status(scope) if websocket else 429
    with refusing(rt, exchange, scope, scheme if isinstance(scheme, str) else None, status) as (
        refusal
    ):
        if refusal is None:
            return False
        if websocket and receive is not None:
            await send_websocket_refusal(receive, send, refusal)
        else:
            await send_refusal(send, refusal)
        return True


@contextmanager
def refusing(
    rt: _runtime.Runtime,
    exchange: Exchange,
    carrier: MutableMapping[str, Any],
    scheme: str | None,
    status: int = 429,
) -> Iterator[RefusalResponse | None]:
    """The gates' decision on ``exchange``'s client, the request current while it is made
    (with a shared store a refusal that writes no record now is remembered with its request,
    for the record another instance may leave to this one). Yields None for a client that is
    not blocked, after marking ``carrier`` (the ASGI scope or WSGI environ,
    :data:`~otel_secaudit.web.exchange.BLOCK_CHECKED`) so the adapter does not look the same
    address up again; else the :class:`RefusalResponse` with ``status``, with the refusal's
    own server span current (:func:`refusal_span`) while the caller sends it."""
    request = exchange.request
    token = enter_request(request)
    try:
        decision = exchange.block_decision()  # never raises
        if decision is None:
            carrier[BLOCK_CHECKED] = request.client_address
            yield None
            return
        with refusal_span(rt, request, scheme, status):
            yield exchange.refuse(decision, status)
    finally:
        leave_request(token)


def gated_call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A wrapt wrapper for an ASGI application's ``__call__(scope, receive, send)`` (Django's
    ``ASGIHandler``): the application's own coroutine, unless a block is active; then a
    coroutine that runs the gate first."""
    if len(args) == 3 and not kwargs and wanted(args[0]):
        return gated(wrapped, args)
    return wrapped(*args, **kwargs)


async def gated(wrapped: Any, args: Any, app: Any = None) -> None:
    """``wrapped(scope, receive, send)`` (an ASGI application's ``__call__``, ``args``) behind
    the gate, while some client is blocked (``app``: see :func:`refused_early`)."""
    scope, receive, send = args
    if await refused_early(scope, send, app, receive=receive):
        return
    await wrapped(*args)


@contextmanager
def refusal_span(
    rt: _runtime.Runtime, request: WebRequest, scheme: str | None, status: int = 429
) -> Iterator[None]:
    """Current while a gate refuses ``request``: its own server span (a root span), which the
    ``request.blocked`` records of the request belong to (``request.server_span`` when it
    records). Never raises on its own account (an invalid span when the tracer fails: the
    refusal still goes out, and the error is counted); ends the span when left."""
    span = _server_span(rt, request, scheme, status)
    if span.is_recording():
        request.server_span = span
    context_token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(context_token)
        span.end()


def _server_span(
    rt: _runtime.Runtime, request: WebRequest, scheme: str | None, status: int
) -> trace.Span:
    try:
        return rt.tracer().start_span(
            request.method or "GET",  # a WebSocket handshake (no method in its scope) is a GET
            context=otel_context.Context(),  # a root span: the client's traceparent is not trusted
            kind=trace.SpanKind.SERVER,
            attributes=_span_attributes(request, scheme, status),
        )
    except Exception as exc:
        rt.recorder.internal_error(exc, "gate.span")
        return trace.INVALID_SPAN


def _span_attributes(request: WebRequest, scheme: str | None, status: int) -> dict[str, Any]:
    """The refused request's server span attributes (semantic conventions), from the
    exchange's sanitized request."""
    attributes: dict[str, Any] = {attr.HTTP_STATUS: status}
    for key, value in (
        (attr.HTTP_METHOD, request.method),
        ("url.scheme", scheme if scheme in ("http", "https", "ws", "wss") else None),
        # as on contrib's spans: e-mail addresses replaced, not routed (routing a refused
        # request would cost more than the rest of the refusal)
        (attr.URL_PATH, request.unrouted_path),
        (attr.CLIENT_ADDRESS, request.client_address),
        (attr.NETWORK_PEER_ADDRESS, request.peer_address),
        (attr.USER_AGENT, request.user_agent),
    ):
        if isinstance(value, str) and value:
            attributes[key] = value
    return attributes
