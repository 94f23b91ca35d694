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
span. The request's steps are :mod:`otel_secaudit.web.wsgi_core`'s, which the Django and Flask
adapters use too (they read the user names from what their framework parsed), so there is one
WSGI reading of a request.

Shutdown: :func:`~otel_secaudit.web.wsgi_core.register_exit_flush` flushes the runtime
(detector queue, SDK pipelines, spool) when a process exits normally, which is how a gunicorn
worker ends (``sys.exit`` after its graceful shutdown); the hook is registered in the master
and inherited by every forked worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from .. import runtime
from ..auth.patching import is_patched
from ..context import request_scope
from .exchange import Exchange
from .user_names import BodyNames
from .wsgi_core import (
    admit,
    begin,
    capture_headers_enabled,
    finish,
    register_exit_flush,
    www_authenticate,
)

__all__ = [
    "SecAuditWSGIMiddleware",
    "instrument_wsgi",
    "read_user_names",
    "uninstrument_wsgi",
]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_CONTRIB_MODULE = "opentelemetry.instrumentation.wsgi"


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


def _status_code(status: str) -> int:
    try:
        return int(status[:3])
    except (TypeError, ValueError):
        return 0


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
        exchange = begin(
            environ,
            where="wsgi.prepare",
            capture_headers=self._capture_headers,
            user_id_of=self._user_id_of(environ),
        )
        if exchange is None:  # an outer adapter owns this request, or it could not be opened
            return self.app(environ, start_response)
        with request_scope(exchange.request):
            refusal = admit(exchange)
            if refusal is not None:
                start_response("429 Too Many Requests", refusal.headers())
                return [refusal.body]
            try:
                read_user_names(exchange, environ)
            except Exception as exc:
                exchange.runtime.recorder.internal_error(exc, "wsgi.user_names")

            def start(status: str, headers: Any, exc_info: Any = None) -> Any:
                # Also called while the body is iterated, outside the ``with`` below.
                with request_scope(exchange.request):
                    finish(exchange, _status_code(status), lambda: www_authenticate(headers))
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


def _secure_at_init(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
    """``OpenTelemetryMiddleware.__init__``: its application wrapped in the security
    middleware."""
    if args:
        args = (_secured(args[0]), *args[1:])
    elif "wsgi" in kwargs:
        kwargs = {**kwargs, "wsgi": _secured(kwargs["wsgi"])}
    wrapped(*args, **kwargs)


def _secure_at_call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``OpenTelemetryMiddleware.__call__``: one built before :func:`instrument_wsgi` is
    secured at its first request."""
    try:
        wsgi = getattr(instance, "wsgi", None)
        if wsgi is not None and not isinstance(wsgi, SecAuditWSGIMiddleware):
            instance.wsgi = _secured(wsgi)
    except Exception as exc:  # never stop the request
        runtime.current().recorder.internal_error(exc, "wsgi.instrument")
    return wrapped(*args, **kwargs)


def _contrib_middleware() -> type | None:
    try:
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    except ImportError:
        return None
    return OpenTelemetryMiddleware


def instrument_wsgi() -> bool:
    """Make every contrib ``OpenTelemetryMiddleware`` wrap its application in
    :class:`SecAuditWSGIMiddleware` (inside its server span), whatever the order of setup
    calls: one built from now on at construction, one built before (a module-level
    ``application = OpenTelemetryMiddleware(app)`` imported before the instrumentor ran) at
    its first request. Also flushes at process exit. False (and nothing patched) when
    contrib's WSGI instrumentation is not installed. Never raises."""
    middleware = _contrib_middleware()
    if middleware is None:
        return False
    register_exit_flush()
    if not is_patched(middleware, "__init__"):
        wrap_function_wrapper(_CONTRIB_MODULE, "OpenTelemetryMiddleware.__init__", _secure_at_init)
        wrap_function_wrapper(_CONTRIB_MODULE, "OpenTelemetryMiddleware.__call__", _secure_at_call)
    return True


def _secured(wsgi: Any) -> Any:
    return wsgi if isinstance(wsgi, SecAuditWSGIMiddleware) else _InstrumentedWSGIMiddleware(wsgi)


class _InstrumentedWSGIMiddleware(SecAuditWSGIMiddleware):
    """The middleware :func:`instrument_wsgi` adds: it passes requests through untouched once
    :func:`uninstrument_wsgi` ran (one added by hand stays active)."""

    def __init__(self, app: WSGIApp) -> None:
        super().__init__(app)
        self._contrib = _contrib_middleware()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not is_patched(self._contrib, "__init__"):
            return self.app(environ, start_response)
        return super().__call__(environ, start_response)


def uninstrument_wsgi() -> None:
    """Undo :func:`instrument_wsgi`: middlewares built from now on get no security middleware,
    and the ones it added to middlewares already built pass requests through."""
    middleware = _contrib_middleware()
    if middleware is not None:
        unwrap(middleware, "__init__")
        unwrap(middleware, "__call__")
