"""Pure ASGI middleware: request context, status events, trusted-proxy client resolution, blocks.

:class:`SecAuditMiddleware` is what :class:`otel_secaudit.SecAuditInstrumentor` inserts into
every Starlette/FastAPI app. It can also be added by hand::

    from otel_secaudit.asgi import SecAuditMiddleware

    app.add_middleware(SecAuditMiddleware)                      # process-wide recorder
    app.add_middleware(SecAuditMiddleware, user_id_resolver=lambda scope: scope.get("uid"))

For each HTTP request it:

* resolves ``client.address`` from the socket peer, believing ``X-Forwarded-For`` (preferred)
  or ``Forwarded`` only when the peer is in OTEL_SECAUDIT_TRUSTED_PROXIES: the chain is walked
  from the right, trusted hops are skipped, and the rightmost untrusted hop is the client;
* opens a :class:`otel_secaudit.RequestContext` so every ``record()`` made while serving the
  request carries method, route template, path, status, client, peer, user agent and user id;
* records the responses listed in OTEL_SECAUDIT_STATUS_EVENTS (method, route, status) unless
  the application already recorded a failure for this request (one request, one violation);
* when the abuse detector reports the client address as blocked, answers 429 with
  ``Retry-After`` and records one ``request.blocked``, without calling the application.

Bodies are never read. Websocket and lifespan traffic passes through untouched. Everything the
middleware does for security is wrapped: an internal error is counted
(``otel_secaudit.internal.errors``) and the request proceeds normally.

This module knows nothing about Redis or about how blocks are stored.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlencode

from opentelemetry import trace

from . import attributes as attr
from .context import RequestContext, request_scope
from .recorder import SecurityRecorder
from .redaction import REDACTED, is_secret_key, looks_like_secret

__all__ = [
    "UNMATCHED_ROUTE",
    "BlockChecker",
    "SecAuditMiddleware",
    "UserIdResolver",
    "resolve_client_address",
    "scrub_span_secrets",
    "scrub_url_attributes",
    "set_default_detector",
]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``callable(scope) -> user id or None``; called lazily, only when an event is recorded.
UserIdResolver = Callable[[Scope], "str | int | None"]

#: ``http.route`` of a request no route matched (404s, scanners): one bounded series.
UNMATCHED_ROUTE: Final = "unmatched"
#: Scope key marking a request already handled by an outer SecAuditMiddleware (mounted apps).
SCOPE_MARKER: Final = "otel_secaudit.request"

MAX_FORWARDED_HEADER_BYTES: Final = 4096
MAX_FORWARDED_HOPS: Final = 32
MAX_ROUTE_LENGTH: Final = 256
MAX_PATH_LENGTH: Final = 1024
MAX_USER_AGENT_BYTES: Final = 512
_BLOCKED_BODY: Final = b"Too Many Requests"


class BlockChecker(Protocol):
    """What the middleware needs from the abuse detector."""

    def is_blocked(self, address: str) -> float:
        """Seconds remaining of a block on ``address``; 0.0 when not blocked."""
        ...


_default_detector: BlockChecker | None = None


def set_default_detector(detector: BlockChecker | None) -> None:
    """The detector every middleware without an explicit ``detector=`` enforces blocks with
    (set by the instrumentor after ``enable_detection``)."""
    global _default_detector
    _default_detector = detector


# --------------------------------------------------------------------------------------------
# Client address


@lru_cache(maxsize=4096)
def _normalize_ip(text: str) -> str | None:
    """A canonical IP string, or None. Cached: peers repeat, and garbage is bounded by size."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _parse_hop(raw: str) -> str | None:
    """One hop of X-Forwarded-For / Forwarded ``for=``: strip quotes, brackets and port."""
    hop = raw.strip().strip('"').strip()
    if not hop or len(hop) > 64:
        return None
    if hop.startswith("["):  # [v6] or [v6]:port
        end = hop.find("]")
        if end < 0:
            return None
        return _normalize_ip(hop[1:end])
    if hop.count(":") == 1:  # v4:port
        hop = hop.partition(":")[0]
    return _normalize_ip(hop)


def _joined_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    """Repeated headers joined with commas in order, decoded latin-1 (never fails). Over
    :data:`MAX_FORWARDED_HEADER_BYTES` only the RIGHT end is kept: the hops our own proxies
    appended are there, the left end is whatever the client claimed."""
    joined = b",".join(value for key, value in headers if key.lower() == name)
    if len(joined) > MAX_FORWARDED_HEADER_BYTES:
        joined = joined[-MAX_FORWARDED_HEADER_BYTES:]
        joined = joined.partition(b",")[2]  # drop the cut hop
    return joined.decode("latin-1")


def _forwarded_for(value: str) -> list[str]:
    """``for=`` parameters of RFC 7239 ``Forwarded`` headers, left to right."""
    hops: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            key, sep, param = pair.partition("=")
            if sep and key.strip().lower() == "for":
                hops.append(param)
    return hops


def resolve_client_address(
    peer: str | None,
    headers: Iterable[tuple[bytes, bytes]],
    trusted_proxies: tuple[IPNetwork, ...],
) -> str | None:
    """The client address of a request.

    ``X-Forwarded-For`` (preferred) or ``Forwarded`` is believed only when the socket ``peer``
    is in ``trusted_proxies``; the chain is walked from the right, trusted hops are skipped, and
    the rightmost untrusted hop is the client. Hops that are not IP addresses at that position
    (``unknown``, ``_hidden``, garbage) make the client unknown (None) rather than blaming the
    proxy. Header size and hop count are capped; nothing here raises on bad input.

    >>> nets = (ipaddress.ip_network("10.0.0.0/8"),)
    >>> resolve_client_address("10.0.0.5", [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9")], nets)
    '203.0.113.9'
    >>> resolve_client_address("198.51.100.7", [(b"x-forwarded-for", b"6.6.6.6")], nets)
    '198.51.100.7'
    """
    if peer is None:
        return None
    peer_ip = _normalize_ip(peer)
    if peer_ip is None:
        return peer[:64]  # unix socket paths, test clients: not an IP, not trusted
    if not trusted_proxies or not _is_trusted(peer_ip, trusted_proxies):
        return peer_ip
    header_list = list(headers)
    forwarded_for = _joined_header(header_list, b"x-forwarded-for")
    if forwarded_for.strip():
        raw_hops = forwarded_for.split(",")
    else:
        raw_hops = _forwarded_for(_joined_header(header_list, b"forwarded"))
    if not raw_hops:
        return peer_ip
    client = peer_ip
    for raw in reversed(raw_hops[-MAX_FORWARDED_HOPS:]):
        hop = _parse_hop(raw)
        if hop is None:
            return None
        client = hop
        if not _is_trusted(hop, trusted_proxies):
            return hop
    return client  # every hop we looked at is a trusted proxy: the leftmost one


@lru_cache(maxsize=4096)
def _is_trusted_cached(ip: str, trusted: tuple[IPNetwork, ...]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address.version == net.version and address in net for net in trusted)


def _is_trusted(ip: str, trusted: tuple[IPNetwork, ...]) -> bool:
    return _is_trusted_cached(ip, trusted)


# --------------------------------------------------------------------------------------------
# Request context


_MOUNT_KEY: Final = "otel_secaudit.mount"


def _enter_mount(scope: Scope) -> None:
    """Called when a request enters a mounted Starlette app: ``scope["route"]`` is the Mount."""
    mount = scope.get("route")
    path = getattr(mount, "path", None)
    if isinstance(path, str) and path:
        outer = scope.get(_MOUNT_KEY)
        prefix = outer[0] if outer else ""
        scope[_MOUNT_KEY] = ((prefix + path)[:MAX_ROUTE_LENGTH], mount)


def _route_template(scope: Scope) -> str | None:
    """The matched route's template (set by Starlette routing after matching), prefixed with
    the templates of the mounts it lives under, or None before routing."""
    route = scope.get("route")
    if route is None:
        return None
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    mount = scope.get(_MOUNT_KEY)
    if mount is not None:
        prefix, mount_route = mount
        path = prefix if route is mount_route else prefix + path
    return path[:MAX_ROUTE_LENGTH]


class HTTPRequestContext(RequestContext):
    """A :class:`RequestContext` whose ``route`` follows the ASGI scope: Starlette sets
    ``scope["route"]`` only after routing, while the context is opened before it."""

    __slots__ = ("_scope", "_route")

    def __init__(self, scope: Scope, **fields: Any) -> None:
        self._scope = scope
        self._route: str | None = None
        super().__init__(**fields)

    @property  # type: ignore[override]
    def route(self) -> str | None:
        if self._route is not None:
            return self._route
        return _route_template(self._scope)

    @route.setter
    def route(self, value: str | None) -> None:
        self._route = value


def _user_id_from_scope(scope: Scope) -> str | None:
    """``scope["user"]`` (Starlette AuthenticationMiddleware) when authenticated, else
    ``request.state.user_id``."""
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False) is True:
        for name in ("id", "user_id", "identity"):
            value = getattr(user, name, None)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
                return str(value)
    state = scope.get("state")
    value = None
    if isinstance(state, Mapping):
        value = state.get("user_id")
    elif state is not None:
        value = getattr(state, "user_id", None)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
        return str(value)
    return None


def _first_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name or key.lower() == name:
            return value[:MAX_USER_AGENT_BYTES].decode("latin-1")
    return None


# --------------------------------------------------------------------------------------------
# The middleware


class SecAuditMiddleware:
    """Pure ASGI middleware; see the module documentation.

    Args:
        app: the ASGI application to wrap.
        recorder: the recorder to use (default: the process-wide one, looked up per request).
        detector: enforces blocks (default: the one the instrumentor enabled, if any).
        user_id_resolver: ``callable(scope) -> user id or None``, tried before ``scope["user"]``
            and ``request.state.user_id``; called lazily, only when an event is recorded.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        recorder: SecurityRecorder | None = None,
        detector: BlockChecker | None = None,
        user_id_resolver: UserIdResolver | None = None,
    ) -> None:
        self.app = app
        self._recorder = recorder
        self._detector = detector
        self._user_id_resolver = user_id_resolver
        # The contrib ASGI middleware captures request headers only when asked to; scrub the
        # captured ones only then (it costs a walk over the span's attributes).
        self._scrub_headers = bool(
            os.environ.get("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "").strip()
        )

    def _current_recorder(self) -> SecurityRecorder:
        if self._recorder is not None:
            return self._recorder
        from . import runtime

        return runtime.current().recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        if SCOPE_MARKER in scope:
            # A mounted sub-application: the outer middleware owns the request; remember the
            # mount's template so routes below it are reported in full.
            try:
                _enter_mount(scope)
            except Exception:  # pragma: no cover - defensive
                pass
            await self.app(scope, receive, send)
            return
        recorder: SecurityRecorder | None = None
        try:
            recorder = self._current_recorder()
            request = self._open(scope, recorder)
            blocked_for = self._blocked_for(request, recorder)
        except Exception as exc:  # rule 1: security plumbing never breaks the request
            if recorder is not None:
                recorder.internal_error(exc, "asgi.prepare")
            await self.app(scope, receive, send)
            return

        if self._scrub_headers or scope.get("query_string"):
            try:
                scrub_span_secrets(trace.get_current_span(), headers=self._scrub_headers)
            except Exception as exc:
                recorder.internal_error(exc, "asgi.scrub")

        with request_scope(request):
            if blocked_for > 0:
                await self._reject(request, recorder, blocked_for, send)
                return
            status_events = recorder.settings.status_events
            started = False

            async def send_wrapper(message: Message) -> None:
                nonlocal started
                if not started and message.get("type") == "http.response.start":
                    started = True
                    try:
                        status = int(message["status"])
                        request.status_code = status
                        if status in status_events and not request.failure_recorded:
                            self._status_event(request, recorder, status_events[status])
                    except Exception as exc:
                        recorder.internal_error(exc, "asgi.status")
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            except Exception:
                if not started:
                    # ServerErrorMiddleware outside us answers 500.
                    try:
                        request.status_code = 500
                        if 500 in status_events and not request.failure_recorded:
                            self._status_event(request, recorder, status_events[500])
                    except Exception as exc:
                        recorder.internal_error(exc, "asgi.status")
                raise

    # -- internals ------------------------------------------------------------------------

    def _open(self, scope: Scope, recorder: SecurityRecorder) -> HTTPRequestContext:
        scope[SCOPE_MARKER] = True
        headers = scope.get("headers") or ()
        client = scope.get("client")
        peer = client[0] if client else None
        peer_ip = _normalize_ip(peer) if isinstance(peer, str) else None
        if not isinstance(peer, str):
            peer = None
        method = scope.get("method")
        path = scope.get("path")
        resolver = self._user_id_resolver

        def resolve_user_id() -> str | None:
            if resolver is not None:
                value = resolver(scope)
                if value is not None:
                    return str(value)
            return _user_id_from_scope(scope)

        return HTTPRequestContext(
            scope,
            method=method[:32] if isinstance(method, str) else None,
            path=path[:MAX_PATH_LENGTH] if isinstance(path, str) else None,
            client_address=resolve_client_address(peer, headers, recorder.settings.trusted_proxies),
            peer_address=peer_ip if peer_ip is not None else (peer[:64] if peer else None),
            user_agent=_first_header(headers, b"user-agent"),
            user_id_resolver=resolve_user_id,
        )

    def _blocked_for(self, request: RequestContext, recorder: SecurityRecorder) -> float:
        if recorder.settings.block_seconds <= 0 or request.client_address is None:
            return 0.0
        detector = self._detector if self._detector is not None else _default_detector
        if detector is None:
            return 0.0
        remaining = detector.is_blocked(request.client_address)
        return float(remaining) if remaining and remaining > 0 else 0.0

    @staticmethod
    def _fix_route(request: RequestContext) -> None:
        if request.route is None:
            request.route = UNMATCHED_ROUTE

    def _status_event(self, request: RequestContext, recorder: SecurityRecorder, name: str) -> None:
        self._fix_route(request)
        recorder.record(name)

    async def _reject(
        self, request: RequestContext, recorder: SecurityRecorder, remaining: float, send: Send
    ) -> None:
        retry_after = str(max(1, math.ceil(remaining)))
        try:
            request.status_code = 429
            self._fix_route(request)
            recorder.record("request.blocked", reason="blocked")
            recorder.requests_blocked.add(1, {attr.ABUSE_SCOPE: "host"})
        except Exception as exc:
            recorder.internal_error(exc, "asgi.block")
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_BLOCKED_BODY)).encode()),
                    (b"retry-after", retry_after.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BLOCKED_BODY})


# --------------------------------------------------------------------------------------------
# Span attributes written by other instrumentations


_URL_ATTRIBUTES: Final = ("http.url", "http.target", "url.full", "url.query")


def redact_query(query: str, is_secret: Callable[[str], bool] = is_secret_key) -> str:
    """A query string with values of secret-named parameters (``token``, ``password``,
    ``api_key``...) and secret-shaped values replaced by ``[REDACTED]``."""
    if not query:
        return query
    try:
        pairs = parse_qsl(query, keep_blank_values=True)
    except ValueError:
        return REDACTED
    changed = False
    out = []
    for key, value in pairs:
        if value and (is_secret(key) or looks_like_secret(value) or looks_like_secret(key)):
            out.append((key, REDACTED))
            changed = True
        else:
            out.append((key, value))
    return urlencode(out) if changed else query


def _redact_url_value(key: str, value: str) -> str:
    if key == "url.query":
        return redact_query(value)
    base, sep, query = value.partition("?")
    if not sep:
        return value
    fragment = ""
    if "#" in query:
        query, _, fragment = query.partition("#")
        fragment = "#" + fragment
    return base + "?" + redact_query(query) + fragment


_HEADER_PREFIX: Final = "http.request.header."


def scrub_span_secrets(span: Any, *, headers: bool = False) -> None:
    """Scrub a live server span: secret query values in its URL attributes (see
    :func:`scrub_url_attributes`) and, with ``headers``, the values of captured request headers
    naming a secret (``http.request.header.authorization``, ``...cookie``, ``...x_api_key``),
    which the contrib ASGI middleware exports unless OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_
    SANITIZE_FIELDS lists them."""
    scrub_url_attributes(span)
    if not headers:
        return
    attributes = getattr(span, "attributes", None)
    if not attributes:
        return
    for key in [k for k in attributes if k.startswith(_HEADER_PREFIX)]:
        name = key[len(_HEADER_PREFIX) :]
        if is_secret_key(name):
            span.set_attribute(key, (REDACTED,))
        else:
            value = attributes[key]
            values = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, str) and looks_like_secret(v) for v in values):
                span.set_attribute(key, (REDACTED,))


def scrub_url_attributes(span: Any) -> None:
    """Rewrite ``http.url``, ``http.target``, ``url.full`` and ``url.query`` of a live span
    with secret query values redacted.

    The contrib ASGI instrumentation exports ``http.url`` (old semantic conventions) with the
    full query string, and FastAPI's own telemetry exports ``url.query``; both redact only a
    few cloud-signature parameters, so ``?token=...`` or ``?password=...`` would leave the
    process. Both set these attributes before calling the application (contrib sets them twice,
    after the span started, so a span processor's ``on_start`` is too early) and never again;
    the middleware calls this on the current server span when the request has a query string.
    """
    attributes = getattr(span, "attributes", None)
    if not attributes:
        return
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str) and ("?" in value or key == "url.query"):
            cleaned = _redact_url_value(key, value)
            if cleaned != value:
                span.set_attribute(key, cleaned)
