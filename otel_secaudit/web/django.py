"""Django: a security middleware inside the server span, the auth signals and CSRF failures.

Zero-code: under ``opentelemetry-instrument`` (with ``opentelemetry-instrumentation-django``)
the ``otel_secaudit`` instrumentor calls :func:`instrument_django`, which

* inserts :class:`SecAuditDjangoMiddleware` into ``settings.MIDDLEWARE`` right after contrib's
  middleware (the entry from its module :data:`CONTRIB_MIDDLEWARE_MODULE`; first when contrib
  is absent), the way contrib inserts its own, so it runs inside the server span and before
  every other middleware: blocks (429 with ``Retry-After``, no view, no session lookup; the
  gate at ``WSGIHandler.__call__`` (:mod:`otel_secaudit.web.wsgi_gate`) or
  ``ASGIHandler.__call__`` (:func:`otel_secaudit.web.gate.gated_call`) refuses earlier
  still, before contrib's span),
  status rules, login routes, trusted-proxy client address, URL and captured-header scrubbing
  of the span. The insertion is done at instrument time when ``DJANGO_SETTINGS_MODULE`` is
  set, and checked again when Django builds its middleware chain (``BaseHandler.
  load_middleware``, wrapped with ``wrapt``; whether that wrapper is in place is whether the
  adapter is on), so the order of instrumentors and of ``django.setup()`` does not matter;
* connects ``user_login_failed`` -> ``auth.login.failed`` (``user.hash`` of the credentials'
  user name; nothing else of the credentials), ``user_logged_in`` -> ``auth.login.succeeded``
  (``user.id`` = the user's pk; plus ``auth.login.succeeded_after_failures`` when that user
  name had failures in the window) and ``user_logged_out`` -> ``auth.logout``;
* points ``CSRF_FAILURE_VIEW`` at :func:`csrf_failure`, which records
  ``request.csrf_mismatch`` with a reason code (``csrf_token_missing``, ``no_csrf_cookie``,
  ``bad_origin``...) and then calls the view that was configured.
* observes ``django.contrib.auth.views.redirect_to_login`` (what ``login_required``,
  ``permission_required``, ``user_passes_test``, the access mixins, ``LoginRequiredMiddleware``
  and the admin call to send a visitor to a login page): a *signed-in* user redirected there is
  ``authz.permission_denied`` (``security.reason`` ``login_redirect``, that user's ``user.id``),
  a visitor who is not signed in is no violation (:mod:`otel_secaudit.web.django_redirects`;
  patched once Django's apps are loaded, when Django builds its middleware chain).

The submitted user name of an authentication attempt is what Django parsed for the view, read
after it: ``request.POST`` (the last of duplicate fields) or a JSON ``request.body`` decoded by
``json.loads`` (the last of duplicate keys).

``http.route`` is the resolver match's ``route`` (``accounts/login/``, no leading slash, as
contrib puts it on the span); rules written with or without a leading ``/`` match it. Events
of a request carry the authenticated user's id (``request.user.pk``, read only when an event is
recorded). :func:`uninstrument_django` undoes all of it; a middleware chain Django already
built keeps the middleware object, which then passes requests through untouched. The
request's steps are :mod:`otel_secaudit.web.wsgi_core`'s, as for any WSGI application.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Final

from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from ..auth.patching import is_patched, observation_of, patch
from ..context import current_request, request_scope
from ..imports import when_imported
from . import django_redirects as redirects
from . import gate, wsgi_core, wsgi_gate
from .exchange import RefusalResponse, checked_by_gate
from .route_check import django_routes, warn_unmatched

__all__ = [
    "CONTRIB_MIDDLEWARE_MODULE",
    "MIDDLEWARE_PATH",
    "SecAuditDjangoMiddleware",
    "csrf_failure",
    "csrf_reason_code",
    "instrument_django",
    "is_contrib_middleware",
    "is_instrumented",
    "uninstrument_django",
]

_log = logging.getLogger(__name__)

MIDDLEWARE_PATH: Final = "otel_secaudit.web.django.SecAuditDjangoMiddleware"
CSRF_VIEW_PATH: Final = "otel_secaudit.web.django.csrf_failure"
#: The public module of contrib's Django middleware (the class in it is private to contrib).
CONTRIB_MIDDLEWARE_MODULE: Final = "opentelemetry.instrumentation.django.middleware.otel_middleware"
_DEFAULT_CSRF_VIEW: Final = "django.views.csrf.csrf_failure"
_DISPATCH_UID: Final = "otel_secaudit"
_LOGIN_FORM: Final = ("django.contrib.auth.forms", "AuthenticationForm", "clean")
#: The ``CSRF_FAILURE_VIEW`` configured before instrumenting (a setting, kept to answer with it).
_configured_csrf_view: list[str] = []


def is_contrib_middleware(entry: object) -> bool:
    """Whether a ``MIDDLEWARE`` entry is contrib's server-span middleware, matched by its
    public module path."""
    return isinstance(entry, str) and entry.rpartition(".")[0] == CONTRIB_MIDDLEWARE_MODULE


def is_instrumented(handler: type | None = None) -> bool:
    """Whether :func:`instrument_django` is in effect (its patch of Django's
    ``BaseHandler.load_middleware`` is in place); ``handler`` is ``BaseHandler`` when the caller
    holds it already."""
    if handler is None:
        from django.core.handlers.base import BaseHandler

        handler = BaseHandler
    return is_patched(handler, "load_middleware")


# --------------------------------------------------------------------------------------------
# The middleware


def _route_of(request: Any) -> str | None:
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None) if match is not None else None
    return route if isinstance(route, str) and route else None


def _user_id_of(request: Any) -> str | None:
    user = getattr(request, "user", None)  # AuthenticationMiddleware's lazy user
    if user is None or getattr(user, "is_authenticated", False) is not True:
        return None
    pk = getattr(user, "pk", None)
    return None if pk is None else str(pk)


def _challenge(response: Any) -> str | None:
    try:
        return response.get("WWW-Authenticate")  # type: ignore[no-any-return]
    except Exception:  # not an HttpResponse: no challenge to read
        return None


def _refusal_response(refusal: RefusalResponse) -> Any:
    from django.http import HttpResponse

    response = HttpResponse(refusal.body, status=refusal.status, content_type="text/plain")
    response["Retry-After"] = str(refusal.retry_after)
    return response


def _user_names(request: Any, fields: tuple[str, ...]) -> tuple[str, ...]:
    """The submitted user names as the view read them: ``request.POST`` (parsed now when the
    view did not) or the JSON ``request.body`` (Django holds the whole body,
    DATA_UPLOAD_MAX_MEMORY_SIZE; decoded as the view decodes it, ``json.loads``). A body Django
    refuses (too large, too many fields, a stream the view consumed itself) names no user."""
    from django.core.exceptions import BadRequest, RequestDataTooBig, TooManyFieldsSent
    from django.http.multipartparser import MultiPartParserError
    from django.http.request import RawPostDataException

    content_type = getattr(request, "content_type", None) or ""
    is_json = content_type.startswith("application/") and content_type.endswith("json")
    return wsgi_core.parsed_user_names(
        fields,
        form=(lambda: request.POST) if content_type in wsgi_core.FORM_TYPES else None,
        document=(lambda: json.loads(request.body)) if is_json else None,
        refused=(
            ValueError,
            RecursionError,
            BadRequest,
            RequestDataTooBig,
            TooManyFieldsSent,
            MultiPartParserError,
            RawPostDataException,
        ),
    )


class SecAuditDjangoMiddleware:
    """Django middleware (new style, sync); see the module documentation."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self._capture_headers = wsgi_core.capture_headers_enabled()
        from django.core.handlers.base import BaseHandler

        self._handler = BaseHandler  # is_instrumented() without an import per request
        _patch_login_form()  # the apps are ready now: django.contrib.auth.forms imports

    def __call__(self, request: Any) -> Any:
        exchange = None
        if is_instrumented(self._handler):
            exchange = wsgi_core.begin(
                request.META,
                where="django.prepare",
                capture_headers=self._capture_headers,
                route_of=functools.partial(_route_of, request),
                user_id_of=functools.partial(_user_id_of, request),
            )
        if exchange is None:
            return self.get_response(request)
        with request_scope(exchange.request):
            refusal = wsgi_core.admit(
                exchange,
                functools.partial(_user_names, request),
                # the gate leaves its mark in the WSGI environ (META) or the ASGI scope
                checked=checked_by_gate(getattr(request, "scope", None) or request.META, exchange),
            )
            if refusal is not None:
                return _refusal_response(refusal)
            with redirects.watching() as noted:
                # Django turns a view's exception into a response (403 for PermissionDenied,
                # 500) inside get_response, so the status is always known here.
                response = self.get_response(request)
            status = int(getattr(response, "status_code", 500))
            try:
                user_id = functools.partial(_user_id_of, request)
                redirects.record_login_redirect(exchange, status, noted, user_id)
            except Exception as exc:
                exchange.runtime.recorder.internal_error(exc, "django.login_redirect")
            wsgi_core.finish(exchange, status, functools.partial(_challenge, response))
            return response


def _expect_login_signal(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``AuthenticationForm.clean`` (LoginView, the admin): Django sends ``user_logged_in``
    for every login such a form lets in, so a passing password check without that signal is
    a login the form refused (``confirm_login_allowed``: inactive, or no staff account)."""
    request = current_request()
    observation = observation_of(request) if request is not None else None
    if observation is not None:
        observation.expects_login_signal = True
    return wrapped(*args, **kwargs)


def _patch_login_form() -> None:
    """Observe ``AuthenticationForm.clean`` (idempotent: a wrapped method is left alone)."""
    if not is_instrumented():
        return
    module, cls, method = _LOGIN_FORM
    try:
        patch(module, f"{cls}.{method}", _expect_login_signal)
    except Exception:  # django.contrib.auth not installed in this project
        pass


# --------------------------------------------------------------------------------------------
# CSRF failures

_CSRF_REASONS: Final = (
    ("Origin checking failed", "bad_origin"),
    ("Referer checking failed - no Referer", "no_referer"),
    ("Referer checking failed - Referer is malformed", "malformed_referer"),
    ("Referer checking failed - Referer is insecure", "insecure_referer"),
    ("Referer checking failed", "bad_referer"),
    ("CSRF cookie not set", "no_csrf_cookie"),
    ("CSRF token missing", "csrf_token_missing"),
    ("has incorrect length", "csrf_token_malformed"),
    ("has invalid characters", "csrf_token_malformed"),
    ("incorrect", "csrf_token_incorrect"),
)


def csrf_reason_code(reason: str) -> str:
    """A short code for Django's CSRF failure reason (the reason text may quote the request's
    Origin or Referer, so it is never exported)."""
    for needle, code in _CSRF_REASONS:
        if needle in reason:
            return code
    return "csrf_failed"


def csrf_failure(request: Any, reason: str = "", **kwargs: Any) -> Any:
    """``CSRF_FAILURE_VIEW`` while instrumented: records ``request.csrf_mismatch`` and answers
    with the view that was configured before."""
    if is_instrumented():
        wsgi_core.record_signal("request.csrf_mismatch", reason=csrf_reason_code(str(reason)))
    from django.urls import get_callable

    view = get_callable(_configured_csrf_view[0] if _configured_csrf_view else _DEFAULT_CSRF_VIEW)
    return view(request, reason=reason, **kwargs)


# --------------------------------------------------------------------------------------------
# Auth signals


def _on_login_failed(sender: Any, credentials: Any = None, request: Any = None, **kw: Any) -> None:
    name = None
    try:
        from django.contrib.auth import get_user_model

        field = get_user_model().USERNAME_FIELD
        if isinstance(credentials, dict):
            name = credentials.get(field, credentials.get("username"))
    except Exception:  # an unusual user model: record without user.hash
        name = None
    fields: dict[str, Any] = {"reason": "invalid_credentials"}
    if isinstance(name, str) and name:
        fields["user_name"] = name
    wsgi_core.record_signal("auth.login.failed", **fields)


def _on_logged_in(sender: Any, request: Any = None, user: Any = None, **kw: Any) -> None:
    pk = getattr(user, "pk", None)
    get_username = getattr(user, "get_username", None)
    name = get_username() if callable(get_username) else None
    wsgi_core.record_login_success(
        name if isinstance(name, str) else None,
        **({"user_id": str(pk)} if pk is not None else {}),
    )


def _on_logged_out(sender: Any, request: Any = None, user: Any = None, **kw: Any) -> None:
    pk = getattr(user, "pk", None)
    wsgi_core.record_signal("auth.logout", **({"user_id": str(pk)} if pk is not None else {}))


def _signals() -> list[tuple[Any, Any]]:
    from django.contrib.auth import signals

    return [
        (signals.user_login_failed, _on_login_failed),
        (signals.user_logged_in, _on_logged_in),
        (signals.user_logged_out, _on_logged_out),
    ]


# --------------------------------------------------------------------------------------------
# Installing


def _settings_ready() -> bool:
    from django.conf import settings

    return bool(settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE"))


def _install_into_settings() -> None:
    """Put the middleware right after contrib's (or first) and the CSRF failure view in
    place; idempotent, and repositions the middleware when contrib was inserted later.

    A ``MIDDLEWARE`` list is edited in place: code that holds the list (contrib's
    instrumentor, which inserts and later removes its own entries in the list it read) keeps
    editing the list Django reads. A tuple (Django allows one) cannot be, and becomes a list,
    as contrib does."""
    from django.conf import settings

    current = getattr(settings, "MIDDLEWARE", None)
    middleware = current if isinstance(current, list) else list(current or [])
    position = _after_contrib(middleware)
    if position >= len(middleware) or middleware[position] != MIDDLEWARE_PATH:
        while MIDDLEWARE_PATH in middleware:
            middleware.remove(MIDDLEWARE_PATH)
        middleware.insert(_after_contrib(middleware), MIDDLEWARE_PATH)
    if middleware is not current:
        settings.MIDDLEWARE = middleware
    current = getattr(settings, "CSRF_FAILURE_VIEW", _DEFAULT_CSRF_VIEW)
    if current != CSRF_VIEW_PATH:
        _configured_csrf_view[:] = [str(current)]
        settings.CSRF_FAILURE_VIEW = CSRF_VIEW_PATH


def _after_contrib(middleware: list[Any]) -> int:
    """The position right after contrib's middleware entry (0 when it has none)."""
    for index, entry in enumerate(middleware):
        if is_contrib_middleware(entry):
            return index + 1
    return 0


def _remove_from_settings() -> None:
    from django.conf import settings

    if not settings.configured:
        return
    middleware = getattr(settings, "MIDDLEWARE", None)
    if isinstance(middleware, list):  # in place, like the insertion
        while MIDDLEWARE_PATH in middleware:
            middleware.remove(MIDDLEWARE_PATH)
    elif middleware is not None and MIDDLEWARE_PATH in middleware:
        settings.MIDDLEWARE = type(middleware)(i for i in middleware if i != MIDDLEWARE_PATH)
    if getattr(settings, "CSRF_FAILURE_VIEW", None) == CSRF_VIEW_PATH:
        view = _configured_csrf_view[0] if _configured_csrf_view else _DEFAULT_CSRF_VIEW
        settings.CSRF_FAILURE_VIEW = view


def _building_middleware(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``BaseHandler.load_middleware``: the middleware put in place again before Django reads
    the setting, and Django's auth views observed once its apps are loaded."""
    try:
        _install_into_settings()
    except Exception:
        _log.exception("otel_secaudit: could not add the Django middleware")
    result = wrapped(*args, **kwargs)
    try:  # Django's apps are loaded now: its auth views can be imported
        redirects.patch()
    except Exception:
        _log.exception("otel_secaudit: could not observe Django's redirect_to_login")
    warn_unmatched(django_routes, "Django")
    return result


#: (module, handler class, wrapt wrapper of its ``__call__``): Django's WSGI and ASGI entries.
_GATES: Final = (
    ("django.core.handlers.wsgi", "WSGIHandler", wsgi_gate.gated_call),
    ("django.core.handlers.asgi", "ASGIHandler", gate.gated_call),
)


def _gate(handler: str, wrapper: Any, module: Any) -> None:
    """Put the gate in front of ``module.handler.__call__`` (once)."""
    klass = getattr(module, handler)
    if not is_patched(klass, "__call__"):
        wrap_function_wrapper(klass, "__call__", wrapper)


def _install() -> None:
    from django.apps import apps
    from django.core.handlers.base import BaseHandler

    for signal, receiver in _signals():
        signal.connect(receiver, weak=False, dispatch_uid=_DISPATCH_UID)
    if not is_patched(BaseHandler, "load_middleware"):
        wrap_function_wrapper(BaseHandler, "load_middleware", _building_middleware)
    # The entries a blocked client is refused at, before contrib's span (wsgi_gate, gate), when
    # the application imports its handler (a WSGI site never loads the ASGI one, and back).
    for module, handler, wrapper in _GATES:
        when_imported(module, functools.partial(_gate, handler, wrapper), "Django")
    if apps.ready:  # instrumented after django.setup(): nothing else will patch it
        redirects.patch()
    if _settings_ready():
        try:
            _install_into_settings()
        except Exception:  # settings not importable yet (gunicorn --chdir/--pythonpath)
            _log.debug("otel_secaudit: Django settings not loaded yet", exc_info=True)


def _uninstall() -> None:
    from django.core.handlers.base import BaseHandler

    unwrap(BaseHandler, "load_middleware")
    for module, handler, _wrapper in _GATES:
        unwrap(f"{module}.{handler}", "__call__")  # nothing when it was never imported
    for signal, _receiver in _signals():
        signal.disconnect(dispatch_uid=_DISPATCH_UID)
    redirects.unpatch()
    module, cls, method = _LOGIN_FORM
    unwrap(f"{module}.{cls}", method)  # nothing when it was never imported
    _remove_from_settings()


def instrument_django() -> bool:
    """Instrument Django when it is installed; False (and nothing done) when it is not.
    Never raises."""
    return wsgi_core.install_adapter("Django", "django", _install)


def uninstrument_django() -> None:
    """Undo :func:`instrument_django`. Never raises."""
    wsgi_core.uninstall_adapter("Django", "django", _uninstall)
