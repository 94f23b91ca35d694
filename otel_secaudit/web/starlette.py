"""Where :class:`~otel_secaudit.web.asgi.SecAuditMiddleware` goes in a Starlette/FastAPI app,
so that it runs inside the server span whatever creates the span and whatever the order of
setup calls.

The layouts, and why one position serves them all:

* FastAPI's own telemetry opens the span in ``FastAPI.__call__``, around the whole stack.
* Contrib's ``FastAPIInstrumentor`` wraps the app's ``build_middleware_stack``: its
  ``OpenTelemetryMiddleware`` goes around everything after the outer ``ServerErrorMiddleware``,
  so the user middleware list is inside the span.
* Contrib's ``StarletteInstrumentor`` and an app that calls
  ``app.add_middleware(OpenTelemetryMiddleware)`` itself put the span middleware INTO the user
  middleware list; middleware added later goes outside it.

So the security middleware is inserted into the user middleware list at build time, right after
the last ``OpenTelemetryMiddleware`` entry (or first when there is none): outermost of the
application's own middleware (blocks before any application code, the final status seen), and
inside every server span.

Two patch points make that hold for every order of setup calls: the class methods
``build_middleware_stack`` of Starlette and FastAPI (the normal path), and ``Starlette.__call__``,
which checks once per built stack that the middleware is in it. The second one catches the app
that ``FastAPIInstrumentor.instrument_app(app)`` wrapped *before* we patched the class: contrib
keeps the bound method it wrapped, which never reaches our class patch, so the stack is rebuilt
through contrib's wrapper with the middleware in the list.

Both are ``wrapt`` wrappers (undone with contrib's ``unwrap``); the middleware's options ride in
the wrappers, so whether Starlette is patched, and with what, is read from Starlette itself.
"""

from __future__ import annotations

import functools
import logging
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final

from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from .. import runtime as _runtime
from ..auth.patching import is_patched
from ..imports import when_imported
from . import gate
from .asgi import SecAuditMiddleware
from .route_check import starlette_routes, warn_unmatched

__all__ = ["patch", "unpatch", "with_secaudit"]

_log = logging.getLogger(__name__)

#: The stack an app was last checked with (so the check runs once per built stack).
_CHECKED: Final = "_otel_secaudit_checked_stack"
_MAX_STACK_DEPTH: Final = 64

#: The apps whose stack was built with the middleware (rebuilt without it by :func:`unpatch`).
_apps: weakref.WeakSet[Any] = weakref.WeakSet()
#: The patch points: (module, class, method).
_POINTS: Final = (
    ("starlette.applications", "Starlette", "build_middleware_stack"),
    ("starlette.applications", "Starlette", "__call__"),
    ("fastapi.applications", "FastAPI", "build_middleware_stack"),
)


def _is_otel_middleware(cls: Any) -> bool:
    """Contrib's ``OpenTelemetryMiddleware`` (or a subclass), without importing contrib."""
    for klass in getattr(cls, "__mro__", ()):
        if (
            klass.__name__ == "OpenTelemetryMiddleware"
            and klass.__module__ == "opentelemetry.instrumentation.asgi"
        ):
            return True
    return False


def has_secaudit(middleware: Any) -> bool:
    """Whether a user middleware list already holds the security middleware."""
    return any(getattr(item, "cls", None) is SecAuditMiddleware for item in middleware or ())


def with_secaudit(middleware: list[Any], **options: Any) -> list[Any]:
    """``middleware`` with the security middleware right after the last
    ``OpenTelemetryMiddleware`` entry (first when there is none)."""
    from starlette.middleware import Middleware

    position = 0
    for index, item in enumerate(middleware):
        if _is_otel_middleware(getattr(item, "cls", None)):
            position = index + 1
    entry = Middleware(SecAuditMiddleware, **options)
    return [*middleware[:position], entry, *middleware[position:]]


def _layers(stack: Any) -> Iterator[Any]:
    """The layers of a built middleware stack, outermost first (each one's ``app`` is the
    next), at most :data:`_MAX_STACK_DEPTH`."""
    for _ in range(_MAX_STACK_DEPTH):
        if stack is None:
            return
        yield stack
        stack = getattr(stack, "app", None)


def _stack_has_secaudit(stack: Any) -> bool:
    return any(isinstance(layer, SecAuditMiddleware) for layer in _layers(stack))


def _learn_header_capture(stack: Any) -> None:
    """Tell the security middleware in ``stack`` whether the span middleware outside it
    captures request headers (contrib's ``http_capture_headers_server_request``, from the
    environment or ``instrument_app``): when none does, no request's span is scanned for
    captured headers. Unknown (no contrib middleware, another layout): every span is."""
    spans: list[Any] = []
    for layer in _layers(stack):
        if isinstance(layer, SecAuditMiddleware):
            if spans and all(hasattr(s, "http_capture_headers_server_request") for s in spans):
                layer.captured_headers = any(s.http_capture_headers_server_request for s in spans)
            return
        if _is_otel_middleware(type(layer)):
            spans.append(layer)


def _inner_proxy_rewriters(stack: Any) -> list[str]:
    """Names of the layers inside the security middleware of ``stack`` that rewrite the client
    address from forwarding headers (uvicorn's ``ProxyHeadersMiddleware``, or a subclass): the
    middleware reads the address before they run."""
    found: list[str] = []
    inside = False
    for layer in _layers(stack):
        if isinstance(layer, SecAuditMiddleware):
            inside = True
        elif inside and any(
            klass.__name__ == "ProxyHeadersMiddleware"
            and klass.__module__.startswith("uvicorn.middleware")
            for klass in type(layer).__mro__
        ):
            found.append(type(layer).__name__)
    return found


def _warn_inner_proxy(app: Any, stack: Any) -> None:
    """A warning at start when ``app`` rewrites client addresses inside the security middleware
    while OTEL_SECAUDIT_TRUSTED_PROXIES is unset: every request would then carry the proxy's
    address, and violations, abuse signals and blocks would all be keyed on it (one
    brute-forcer could get every user refused). Never raises."""
    try:
        rewriters = _inner_proxy_rewriters(stack)
        if rewriters and not _runtime.current().settings.trusted_proxies:
            _log.warning(
                "otel_secaudit: %r rewrites client addresses with %s, which runs after "
                "otel_secaudit has read them: with OTEL_SECAUDIT_TRUSTED_PROXIES unset, "
                "violations and blocks are keyed on the proxy's address. Set "
                "OTEL_SECAUDIT_TRUSTED_PROXIES to the proxy's CIDR (or let uvicorn rewrite "
                "the address: --proxy-headers --forwarded-allow-ips).",
                app,
                rewriters[0],
            )
    except Exception:  # a warning must never cost the application its start
        _log.debug("otel_secaudit: proxy check failed", exc_info=True)


def _build_with_secaudit(app: Any, build: Callable[[], Any], options: dict[str, Any]) -> Any:
    """Build ``app``'s stack with the security middleware in its user middleware list."""
    saved = app.user_middleware
    try:
        app.user_middleware = with_secaudit(list(saved), **options)
        stack = build()
        _learn_header_capture(stack)
    finally:
        app.user_middleware = saved
    if app not in _apps:  # once per app, when its stack is first built (at start)
        warn_unmatched(lambda: starlette_routes(app), "Starlette")
        _warn_inner_proxy(app, stack)
    _apps.add(app)
    return stack


def _build(options: dict[str, Any], wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``build_middleware_stack`` with the security middleware in the list."""
    if has_secaudit(instance.user_middleware):
        return wrapped(*args, **kwargs)
    try:
        stack = _build_with_secaudit(instance, lambda: wrapped(*args, **kwargs), options)
    except Exception:
        _log.exception("otel_secaudit: could not add the middleware to %r", instance)
        return wrapped(*args, **kwargs)
    setattr(instance, _CHECKED, stack)
    return stack


def _ensure_in_stack(app: Any, options: dict[str, Any]) -> None:
    """Rebuild a stack that bypassed the class patch (see the module documentation)."""
    stack = app.middleware_stack
    if stack is None or getattr(app, _CHECKED, None) is stack:
        return
    if not _stack_has_secaudit(stack):
        stack = _build_with_secaudit(app, app.build_middleware_stack, options)
        app.middleware_stack = stack
    else:  # contrib's FastAPIInstrumentor wrapped the stack our build returned: its span
        _learn_header_capture(stack)  # middleware is known only now
    setattr(app, _CHECKED, stack)


def _call(options: dict[str, Any], wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``Starlette.__call__``: the built stack checked once for the middleware; a blocked
    client refused before the stack (and the server span in it) runs (:mod:`.gate`).

    Synchronous: it returns Starlette's own coroutine (or the gate's), so the patch adds no
    coroutine frame to every ``await`` of the request."""
    try:
        if instance.middleware_stack is None:
            instance.middleware_stack = instance.build_middleware_stack()
        _ensure_in_stack(instance, options)
    except Exception:
        _log.exception("otel_secaudit: could not check the middleware of %r", instance)
    if len(args) == 3 and not kwargs and gate.wanted(args[0]):
        return gate.gated(wrapped, args, instance)  # while some client is blocked
    return wrapped(*args, **kwargs)


def _real_class(module: str, name: str) -> type | None:
    """The framework's own class, when its module is imported: instrumentors replace the
    *names* ``starlette.applications.Starlette`` / ``fastapi.FastAPI`` by subclasses, which
    define no methods of their own."""
    found = sys.modules.get(module)
    cls = getattr(found, name, None) if found is not None else None
    for klass in getattr(cls, "__mro__", ()):
        if klass.__module__ == module and klass.__qualname__ == name:
            return klass
    return None


def patch(**options: Any) -> bool:
    """Patch Starlette (and FastAPI), now when imported, else when the application imports
    them (:func:`otel_secaudit.imports.when_imported`); False when Starlette is not installed.
    ``options`` are the middleware's keyword arguments (``user_id_resolver``); patching again
    replaces them."""
    _unwrap_points()
    wrappers = {"build_middleware_stack": _build, "__call__": _call}

    def patching(module_name: str) -> Callable[[Any], None]:
        def patch_module(_module: Any) -> None:
            for module, name, method in _POINTS:
                klass = _real_class(module, name) if module == module_name else None
                # a class's own method only (FastAPI inherits __call__ from Starlette)
                if klass is not None and method in klass.__dict__ and not is_patched(klass, method):
                    wrapper = functools.partial(wrappers[method], options)
                    wrap_function_wrapper(klass, method, wrapper)

        return patch_module

    if not when_imported("starlette.applications", patching("starlette.applications"), "Starlette"):
        return False
    when_imported("fastapi.applications", patching("fastapi.applications"), "FastAPI")
    return True


def _unwrap_points() -> None:
    for module, name, method in _POINTS:
        klass = _real_class(module, name)
        if klass is not None and is_patched(klass, method):  # its own, not an inherited one
            try:
                unwrap(klass, method)
            except Exception:
                _log.exception("otel_secaudit: could not restore %s.%s", name, method)


def unpatch() -> None:
    """Restore the original methods; apps that built their stack with the middleware rebuild
    it without on their next request."""
    _unwrap_points()
    for app in list(_apps):
        try:
            app.middleware_stack = None
            if hasattr(app, _CHECKED):
                delattr(app, _CHECKED)
        except Exception:
            pass
    _apps.clear()


def add_to_app(app: Any, **options: Any) -> None:
    """Add the middleware to one app's user middleware list (explicit ``instrument_app``)."""
    if has_secaudit(app.user_middleware):
        return
    app.user_middleware[:] = with_secaudit(list(app.user_middleware), **options)
    app.middleware_stack = None  # rebuilt on the next request, with the middleware


def remove_from_app(app: Any) -> None:
    """Remove what :func:`add_to_app` added."""
    app.user_middleware[:] = [
        item for item in app.user_middleware if getattr(item, "cls", None) is not SecAuditMiddleware
    ]
    app.middleware_stack = None
