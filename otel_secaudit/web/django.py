"""Django: a security middleware inside the server span, the auth signals and CSRF failures.

Zero-code: under ``opentelemetry-instrument`` (with ``opentelemetry-instrumentation-django``)
the ``otel_secaudit`` instrumentor calls :func:`instrument_django`, which

* inserts :class:`SecAuditDjangoMiddleware` into ``settings.MIDDLEWARE`` right after contrib's
  ``_DjangoMiddleware`` (first when contrib is absent), the way contrib inserts its own, so it
  runs inside the server span and before every other middleware: blocks (429 with
  ``Retry-After``, no view, no session lookup), status rules, login routes, trusted-proxy client
  address, URL and captured-header scrubbing of the span. The insertion is done at instrument
  time when ``DJANGO_SETTINGS_MODULE`` is set, and checked again when Django builds its
  middleware chain (``BaseHandler.load_middleware``), so the order of instrumentors and of
  ``django.setup()`` does not matter;
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
built keeps the middleware object, which then passes requests through untouched.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any, Final

from .. import runtime
from ..auth.patching import Patched, observation_of, patch, unpatch
from ..context import current_request, request_scope
from . import django_redirects as redirects
from .exchange import RefusalResponse
from .route_check import django_routes, warn_unmatched
from .user_names import names_from_form, names_from_json
from .wsgi import (
    ENVIRON_MARKER,
    capture_headers_enabled,
    open_exchange,
    record_login_success,
    record_signal,
    register_exit_flush,
    scrub_span,
)

__all__ = [
    "MIDDLEWARE_PATH",
    "SecAuditDjangoMiddleware",
    "csrf_failure",
    "csrf_reason_code",
    "instrument_django",
    "uninstrument_django",
]

_log = logging.getLogger(__name__)

MIDDLEWARE_PATH: Final = "otel_secaudit.web.django.SecAuditDjangoMiddleware"
CSRF_VIEW_PATH: Final = "otel_secaudit.web.django.csrf_failure"
CONTRIB_MIDDLEWARE: Final = (
    "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"
)
_DEFAULT_CSRF_VIEW: Final = "django.views.csrf.csrf_failure"
_DISPATCH_UID: Final = "otel_secaudit"


class _State:
    active = False
    original_csrf_view: str | None = None
    original_load_middleware: Any = None
    login_form_patches: list[Patched] | None = None


_FORM_TYPES: Final = ("application/x-www-form-urlencoded", "multipart/form-data")


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
        value = response.get("WWW-Authenticate")
    except Exception:  # not an HttpResponse: no challenge to read
        return None
    return str(value)[:1024] if value is not None else None


def _refusal_response(refusal: RefusalResponse) -> Any:
    from django.http import HttpResponse

    response = HttpResponse(refusal.body, status=refusal.status, content_type="text/plain")
    response["Retry-After"] = str(refusal.retry_after)
    return response


def _user_names(request: Any, fields: tuple[str, ...]) -> tuple[str, ...]:
    """The submitted user names as the view read them: ``request.POST`` (parsed now when the
    view did not) or the JSON ``request.body``. A body Django refuses (too large, too many
    fields, a stream the view consumed itself) names no user."""
    from django.core.exceptions import BadRequest, RequestDataTooBig, TooManyFieldsSent
    from django.http.multipartparser import MultiPartParserError
    from django.http.request import RawPostDataException

    content_type = getattr(request, "content_type", None) or ""
    try:
        if content_type in _FORM_TYPES:
            return names_from_form(request.POST, fields)
        if content_type.startswith("application/") and content_type.endswith("json"):
            # Django holds the whole body (DATA_UPLOAD_MAX_MEMORY_SIZE): decoded as the view
            # decodes it, json.loads
            return names_from_json(json.loads(request.body), fields)
    except (
        ValueError,
        RecursionError,
        BadRequest,
        RequestDataTooBig,
        TooManyFieldsSent,
        MultiPartParserError,
        RawPostDataException,
    ):
        return ()
    return ()


class SecAuditDjangoMiddleware:
    """Django middleware (new style, sync); see the module documentation."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self._capture_headers = capture_headers_enabled()
        _patch_login_form()  # the apps are ready now: django.contrib.auth.forms imports

    def __call__(self, request: Any) -> Any:
        environ = request.META
        if not _State.active or ENVIRON_MARKER in environ:
            return self.get_response(request)
        try:
            exchange = open_exchange(
                environ,
                route_of=functools.partial(_route_of, request),
                user_id_of=functools.partial(_user_id_of, request),
            )
            scrub_span(environ, headers=self._capture_headers)
        except Exception as exc:  # security plumbing never breaks the request
            runtime.current().recorder.internal_error(exc, "django.prepare")
            return self.get_response(request)
        with request_scope(exchange.request):
            refusal = exchange.refusal()
            if refusal is not None:
                return _refusal_response(refusal)
            if exchange.user_fields:
                exchange.read_user_names(
                    functools.partial(_user_names, request, exchange.user_fields)
                )
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
            exchange.respond(status, _challenge(response) if status == 401 else None)
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
    if _State.login_form_patches is not None or not _State.active:
        return
    try:
        _State.login_form_patches = patch(
            "django.contrib.auth.forms", "AuthenticationForm.clean", _expect_login_signal
        )
    except Exception:  # django.contrib.auth not installed in this project
        _State.login_form_patches = []


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
    if _State.active:
        record_signal("request.csrf_mismatch", reason=csrf_reason_code(str(reason)))
    from django.urls import get_callable

    view = get_callable(_State.original_csrf_view or _DEFAULT_CSRF_VIEW)
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
    record_signal("auth.login.failed", **fields)


def _on_logged_in(sender: Any, request: Any = None, user: Any = None, **kw: Any) -> None:
    pk = getattr(user, "pk", None)
    get_username = getattr(user, "get_username", None)
    name = get_username() if callable(get_username) else None
    record_login_success(
        name if isinstance(name, str) else None,
        **({"user_id": str(pk)} if pk is not None else {}),
    )


def _on_logged_out(sender: Any, request: Any = None, user: Any = None, **kw: Any) -> None:
    pk = getattr(user, "pk", None)
    record_signal("auth.logout", **({"user_id": str(pk)} if pk is not None else {}))


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
    import os

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
    position = middleware.index(CONTRIB_MIDDLEWARE) + 1 if CONTRIB_MIDDLEWARE in middleware else 0
    if position >= len(middleware) or middleware[position] != MIDDLEWARE_PATH:
        while MIDDLEWARE_PATH in middleware:
            middleware.remove(MIDDLEWARE_PATH)
        position = (
            middleware.index(CONTRIB_MIDDLEWARE) + 1 if CONTRIB_MIDDLEWARE in middleware else 0
        )
        middleware.insert(position, MIDDLEWARE_PATH)
    if middleware is not current:
        settings.MIDDLEWARE = middleware
    current = getattr(settings, "CSRF_FAILURE_VIEW", _DEFAULT_CSRF_VIEW)
    if current != CSRF_VIEW_PATH:
        _State.original_csrf_view = current
        settings.CSRF_FAILURE_VIEW = CSRF_VIEW_PATH


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
        settings.CSRF_FAILURE_VIEW = _State.original_csrf_view or _DEFAULT_CSRF_VIEW


def _patch_load_middleware() -> None:
    from django.core.handlers.base import BaseHandler

    if _State.original_load_middleware is not None:
        return
    original = BaseHandler.load_middleware

    @functools.wraps(original)
    def load_middleware(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _State.active:
            try:
                _install_into_settings()
            except Exception:
                _log.exception("otel_secaudit: could not add the Django middleware")
        result = original(self, *args, **kwargs)
        if _State.active:  # Django's apps are loaded now: its auth views can be imported
            try:
                redirects.patch()
            except Exception:
                _log.exception("otel_secaudit: could not observe Django's redirect_to_login")
            warn_unmatched(django_routes, "Django")
        return result

    _State.original_load_middleware = original
    BaseHandler.load_middleware = load_middleware  # type: ignore[method-assign]


def instrument_django() -> bool:
    """Instrument Django when it is installed; False (and nothing done) when it is not.
    Never raises."""
    try:
        import django  # noqa: F401
    except ImportError:
        return False
    register_exit_flush()
    try:
        _State.active = True
        for signal, receiver in _signals():
            signal.connect(receiver, weak=False, dispatch_uid=_DISPATCH_UID)
        _patch_load_middleware()
        from django.apps import apps

        if apps.ready:  # instrumented after django.setup(): nothing else will patch it
            redirects.patch()
        if _settings_ready():
            try:
                _install_into_settings()
            except Exception:  # settings not importable yet (gunicorn --chdir/--pythonpath)
                _log.debug("otel_secaudit: Django settings not loaded yet", exc_info=True)
    except Exception:
        _log.exception("otel_secaudit: Django instrumentation failed; the app runs without it")
    return True


def uninstrument_django() -> None:
    """Undo :func:`instrument_django`. Never raises."""
    try:
        import django  # noqa: F401
    except ImportError:
        return
    _State.active = False
    try:
        for signal, _receiver in _signals():
            signal.disconnect(dispatch_uid=_DISPATCH_UID)
        if _State.original_load_middleware is not None:
            from django.core.handlers.base import BaseHandler

            BaseHandler.load_middleware = _State.original_load_middleware  # type: ignore
            _State.original_load_middleware = None
        redirects.unpatch()
        if _State.login_form_patches:
            unpatch(_State.login_form_patches)
        _State.login_form_patches = None
        _remove_from_settings()
    except Exception:
        _log.exception("otel_secaudit: could not fully undo the Django instrumentation")
