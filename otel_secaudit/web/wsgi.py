"""WSGI: the request core (:mod:`otel_secaudit.web.exchange`) for WSGI environs, and a plain
WSGI middleware for WSGI applications that are neither Django nor Flask.

Under ``opentelemetry-instrument``, :class:`SecAuditWSGIMiddleware` is put inside every
contrib ``opentelemetry.instrumentation.wsgi.OpenTelemetryMiddleware`` (so it runs inside the
server span that middleware opens). By hand::

    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from otel_secaudit.web.wsgi import SecAuditWSGIMiddleware

    application = OpenTelemetryMiddleware(SecAuditWSGIMiddleware(application))

For each request it resolves the client address through the trusted proxies, refuses a blocked
client with 429 and ``Retry-After`` before the application runs, reads the submitted user
name(s) from the body bytes the application itself reads from ``wsgi.input`` (nothing read ahead;
url-encoded, multipart and JSON bodies, the last of duplicate fields, see
:mod:`otel_secaudit.web.user_names`), records the status and login rules' events at
``start_response``, and scrubs secret query values and captured secret headers from the server
span. The Django and Flask adapters use the same functions (:func:`open_exchange`,
:func:`scrub_span`) and read the user names from what their framework parsed, so there is one
WSGI reading of a request.

Shutdown: :func:`register_exit_flush` flushes the runtime (detector queue, SDK pipelines,
spool) when a process exits normally, which is how a gunicorn worker ends (``sys.exit`` after
its graceful shutdown); the hook is registered once, in the master, and inherited by every
forked worker.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from opentelemetry import trace

from .. import runtime
from ..context import current_request, request_scope
from .exchange import LOGIN_SUCCEEDED, Exchange, record_after_failures
from .server_span import scrub_server_span
from .user_names import BodyNames

__all__ = [
    "ENVIRON_MARKER",
    "SecAuditWSGIMiddleware",
    "capture_headers_enabled",
    "environ_header",
    "instrument_wsgi",
    "open_exchange",
    "read_user_names",
    "record_login_success",
    "record_signal",
    "register_exit_flush",
    "scrub_span",
    "uninstrument_wsgi",
    "www_authenticate",
]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

#: Environ key marking a request already handled by an outer adapter (one exchange a request).
ENVIRON_MARKER: Final = "otel_secaudit.exchange"
_CAPTURE_HEADERS_ENV: Final = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"


def environ_header(environ: Environ) -> Callable[[str], Sequence[str]]:
    """``header(name) -> values`` over a WSGI environ (servers join repeated headers with
    commas into one ``HTTP_*`` value)."""

    def header(name: str) -> Sequence[str]:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        return (value,) if isinstance(value, str) else ()

    return header


def open_exchange(
    environ: Environ,
    *,
    route_of: Callable[[], str | None] | None = None,
    user_id_of: Callable[[], str | None] | None = None,
) -> Exchange:
    """The :class:`Exchange` of one WSGI request; marks ``environ`` as handled."""
    environ[ENVIRON_MARKER] = True
    return Exchange.open(
        method=environ.get("REQUEST_METHOD"),
        path=environ.get("PATH_INFO"),
        peer=environ.get("REMOTE_ADDR"),
        header=environ_header(environ),
        user_agent=environ.get("HTTP_USER_AGENT"),
        route_of=route_of,
        user_id_of=user_id_of,
    )


def capture_headers_enabled() -> bool:
    """Whether contrib captures request headers on the server span (then they are scrubbed)."""
    return bool(os.environ.get(_CAPTURE_HEADERS_ENV, "").strip())


def scrub_span(environ: Environ, *, headers: bool | None = None) -> None:
    """Scrub the current (server) span's URL attributes (secret query values; e-mail addresses
    unless OTEL_SECAUDIT_RECORD_USER_NAME=true) and, when contrib captures them, request
    headers; cheap when the request has no query string, no ``@`` in its path and headers are
    not captured."""
    query = environ.get("QUERY_STRING") or ""
    capture = capture_headers_enabled() if headers is None else headers
    # an '@' in the (decoded) path may be an e-mail address in contrib's URL attributes
    emails = "@" in (environ.get("PATH_INFO") or "")
    if query or capture or emails:
        if emails or query:
            emails = not runtime.current().settings.record_user_name
        scrub_server_span(trace.get_current_span(), query, headers=capture, emails=emails)


class _NamesInput:
    """``wsgi.input`` as the application reads it, each chunk also handed to a
    :class:`~otel_secaudit.web.user_names.BodyNames`."""

    def __init__(self, stream: Any, reader: BodyNames, length: int | None) -> None:
        self._stream = stream
        self._reader = reader
        self._left = length

    def _seen(self, data: bytes) -> bytes:
        if self._left is not None:
            self._left -= len(data)
        self._reader.feed(data, more=bool(data) and (self._left is None or self._left > 0))
        return data

    def read(self, *args: Any) -> bytes:
        return self._seen(self._stream.read(*args))

    def readline(self, *args: Any) -> bytes:
        return self._seen(self._stream.readline(*args))

    def readlines(self, *args: Any) -> list[bytes]:
        return [self._seen(line) for line in self._stream.readlines(*args)]

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            yield self._seen(line)

    def __getattr__(self, name: str) -> Any:  # close(), and what a server adds
        return getattr(self._stream, name)


def read_user_names(exchange: Exchange, environ: Environ) -> None:
    """Give the exchange the submitted user names of a plain WSGI application's request: the
    body is read as the application reads ``wsgi.input`` (chunked bodies too), nothing ahead."""
    fields = exchange.user_fields
    stream = environ.get("wsgi.input")
    if not fields or stream is None or environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
        return
    reader = BodyNames(environ.get("CONTENT_TYPE"), fields)
    if not reader.wanted:
        return
    try:
        length: int | None = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        length = None  # chunked: the body ends where the stream ends
    environ["wsgi.input"] = _NamesInput(stream, reader, length)
    exchange.read_user_names(reader.names)


def record_signal(name: str, **fields: Any) -> None:
    """Record an event a framework signal reports (Django's ``user_logged_in``, Flask-Login's,
    a CSRF failure), and note it on the current request so a login-route or status rule does
    not record the same name again. Never raises."""
    recorder = None
    try:
        recorder = runtime.current().recorder
        recorder.record(name, **fields)  # notes ``name`` on the current request
    except Exception as exc:  # a signal receiver must never break the login
        if recorder is not None:
            recorder.internal_error(exc, "web.signal")


def record_login_success(user_name: str | None, **fields: Any) -> None:
    """A framework's login signal (Django's or Flask-Login's ``user_logged_in``):
    ``auth.login.succeeded``, and ``auth.login.succeeded_after_failures`` (with
    ``security.abuse.count``) when ``user_name``'s user key had violations in the window, as a
    login route's rule would; both noted on the request so the rule does not repeat them. The
    window count is the exchange core's (one Redis round trip, on successful logins only).
    Never raises."""
    record_signal(LOGIN_SUCCEEDED, **fields)
    if not user_name:
        return
    rt = None
    try:
        rt = runtime.current()
        record_after_failures(rt, current_request(), user_name, fields)
    except Exception as exc:  # a signal receiver must never break the login
        if rt is not None:
            rt.recorder.internal_error(exc, "web.signal")


def www_authenticate(headers: Any) -> str | None:
    """The ``WWW-Authenticate`` value among WSGI response ``headers`` (RFC 6750 challenges)."""
    try:
        for key, value in headers or ():
            if isinstance(key, str) and key.lower() == "www-authenticate":
                return str(value)[:1024]
    except (TypeError, ValueError):  # malformed headers are the server's to reject
        return None
    return None


def _status_code(status: str) -> int:
    try:
        return int(status[:3])
    except (TypeError, ValueError):
        return 0


_exit_flush_registered = False


def _flush_at_exit() -> None:
    try:
        runtime.current().flush()
    except Exception:  # exiting anyway
        pass


def register_exit_flush() -> None:
    """Flush the runtime when the process exits normally (gunicorn workers, runserver on
    Ctrl-C); registered once. Registered after the SDK's own exit hook, so it runs first and
    the abuse events it causes still leave through the live pipelines."""
    global _exit_flush_registered
    if not _exit_flush_registered:
        _exit_flush_registered = True
        atexit.register(_flush_at_exit)


class SecAuditWSGIMiddleware:
    """Plain WSGI middleware; see the module documentation.

    Args:
        app: the WSGI application to wrap.
        user_id_resolver: ``callable(environ) -> user id or None``, called lazily, only when
            an event is recorded.
    """

    def __init__(
        self, app: WSGIApp, *, user_id_resolver: Callable[[Environ], Any] | None = None
    ) -> None:
        self.app = app
        self._user_id_resolver = user_id_resolver
        self._capture_headers = capture_headers_enabled()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if ENVIRON_MARKER in environ:  # an outer adapter owns this request
            return self.app(environ, start_response)
        try:
            exchange = open_exchange(environ, user_id_of=self._user_id_of(environ))
            scrub_span(environ, headers=self._capture_headers)
        except Exception as exc:  # security plumbing never breaks the request
            runtime.current().recorder.internal_error(exc, "wsgi.prepare")
            return self.app(environ, start_response)
        with request_scope(exchange.request):
            refusal = exchange.refusal()
            if refusal is not None:
                start_response("429 Too Many Requests", refusal.headers())
                return [refusal.body]
            try:
                read_user_names(exchange, environ)
            except Exception as exc:
                exchange.runtime.recorder.internal_error(exc, "wsgi.user_names")

            def start(status: str, headers: Any, exc_info: Any = None) -> Any:
                # Also called while the body is iterated, outside the ``with`` below.
                code = _status_code(status)
                with request_scope(exchange.request):
                    exchange.respond(code, www_authenticate(headers) if code == 401 else None)
                if exc_info is not None:
                    return start_response(status, headers, exc_info)
                return start_response(status, headers)

            try:
                result = self.app(environ, start)
            except Exception:
                exchange.failed()
                raise
        if isinstance(result, (list, tuple)):  # answered already: nothing left to watch
            return result
        return _ClosingIterable(result, exchange)

    def _user_id_of(self, environ: Environ) -> Callable[[], str | None] | None:
        resolver = self._user_id_resolver
        if resolver is None:
            return None

        def user_id() -> str | None:
            value = resolver(environ)
            return None if value is None else str(value)

        return user_id


class _ClosingIterable:
    """The application's response iterable, with the request context open while it is
    iterated (streaming views may record) and a 500 noted when it raises before answering."""

    __slots__ = ("_result", "_exchange")

    def __init__(self, result: Iterable[bytes], exchange: Exchange) -> None:
        self._result = result
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        with request_scope(self._exchange.request):
            try:
                yield from self._result
            except Exception:
                self._exchange.failed()
                raise

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if callable(close):
            close()


# --------------------------------------------------------------------------------------------
# Inside contrib's OpenTelemetryMiddleware

_original_init: Any = None
_original_call: Any = None


def instrument_wsgi() -> bool:
    """Make every contrib ``OpenTelemetryMiddleware`` wrap its application in
    :class:`SecAuditWSGIMiddleware` (inside its server span), whatever the order of setup
    calls: one built from now on at construction, one built before (a module-level
    ``application = OpenTelemetryMiddleware(app)`` imported before the instrumentor ran) at
    its first request. Also flushes at process exit. False (and nothing patched) when
    contrib's WSGI instrumentation is not installed. Never raises."""
    global _original_init, _original_call
    try:
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    except ImportError:
        return False
    register_exit_flush()
    if _original_init is not None:
        return True
    original = OpenTelemetryMiddleware.__init__
    original_call = OpenTelemetryMiddleware.__call__

    def __init__(self: Any, wsgi: Any, *args: Any, **kwargs: Any) -> None:
        original(self, _secured(wsgi), *args, **kwargs)

    def __call__(self: Any, environ: Environ, start_response: StartResponse) -> Any:
        try:
            wsgi = getattr(self, "wsgi", None)
            if wsgi is not None and not isinstance(wsgi, SecAuditWSGIMiddleware):
                self.wsgi = _secured(wsgi)  # built before instrument_wsgi(): secured now
        except Exception as exc:  # never stop the request
            runtime.current().recorder.internal_error(exc, "wsgi.instrument")
        return original_call(self, environ, start_response)

    _original_init, _original_call = original, original_call
    OpenTelemetryMiddleware.__init__ = __init__  # type: ignore[method-assign]
    OpenTelemetryMiddleware.__call__ = __call__  # type: ignore[method-assign]
    return True


def _secured(wsgi: Any) -> Any:
    return wsgi if isinstance(wsgi, SecAuditWSGIMiddleware) else _InstrumentedWSGIMiddleware(wsgi)


class _InstrumentedWSGIMiddleware(SecAuditWSGIMiddleware):
    """The middleware :func:`instrument_wsgi` adds: it passes requests through untouched once
    :func:`uninstrument_wsgi` ran (one added by hand stays active)."""

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if _original_init is None:
            return self.app(environ, start_response)
        return super().__call__(environ, start_response)


def uninstrument_wsgi() -> None:
    """Undo :func:`instrument_wsgi`: middlewares built from now on get no security middleware,
    and the ones it added to middlewares already built pass requests through."""
    global _original_init, _original_call
    if _original_init is None:
        return
    try:
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    except ImportError:
        return
    OpenTelemetryMiddleware.__init__ = _original_init  # type: ignore[method-assign]
    OpenTelemetryMiddleware.__call__ = _original_call  # type: ignore[method-assign]
    _original_init = _original_call = None
