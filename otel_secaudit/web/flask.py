"""Flask: request hooks inside contrib's server span, Flask-Login's signals, Flask-WTF's
CSRFError.

Contrib's ``FlaskInstrumentor`` opens the server span in a ``before_request`` hook, so a
middleware around ``Flask.wsgi_app`` would run outside it. :func:`instrument_flask` (called by
the ``otel_secaudit`` instrumentor under ``opentelemetry-instrument``) instead adds, to each
app on its first request, a ``before_request`` hook placed right after contrib's (first when
contrib is absent, so before the app's own hooks and Flask-WTF's CSRF check), an
``after_request`` hook that runs after the app's own, and a ``teardown_request`` hook that runs
before contrib's closes the span. Inside the span they:

* refuse a blocked client with 429 and ``Retry-After`` before any view or app hook runs, when
  the gate at ``Flask.__call__`` (:mod:`otel_secaudit.web.wsgi_gate`, before contrib's span)
  did not already: it steps aside when a span is current before Flask runs, and checks only
  the address it saw (``ProxyFix`` inside the app may rewrite it);
* record the status and login rules' events (``http.route`` = the URL rule, ``/items/<id>``,
  as contrib puts it on the span); the submitted user name is what Werkzeug parsed for the
  view, read after it (``request.form``: the first of duplicate fields; ``get_json()``: the
  last of duplicate keys), chunked and large bodies included;
* scrub secret query values and captured secret headers from the span.

When the application imports Flask-Login, ``user_logged_in`` -> ``auth.login.succeeded``
(``user.id`` = ``get_id()``), ``user_logged_out`` -> ``auth.logout`` and
``user_unauthorized`` -> ``auth.unauthenticated``. Events of a request carry the signed-in
user's id: Flask-Login's ``current_user`` when the app uses Flask-Login, else ``g.user`` (its
``id``) or ``session["user_id"]`` (Flask's tutorial style), else ``g.user_id``.
Flask-WTF's ``CSRFError`` becomes ``request.csrf_mismatch`` with a reason code.
:func:`uninstrument_flask` removes the hooks and the signal receivers.
"""

from __future__ import annotations

import functools
import logging
import sys
import weakref
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Final

from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from ..auth.patching import is_patched
from ..context import request_scope
from ..imports import when_imported
from . import wsgi_core, wsgi_gate
from .exchange import checked_by_gate
from .route_check import flask_routes, warn_unmatched

__all__ = ["csrf_reason_code", "instrument_flask", "uninstrument_flask"]

_log = logging.getLogger(__name__)

_EXCHANGE_KEY: Final = "otel_secaudit.flask.exchange"
_SCOPE_KEY: Final = "otel_secaudit.flask.scope"
_HOOKED: Final = "_otel_secaudit_hooks"
_PATCHED: Final = ("preprocess_request", "handle_http_exception", "__call__")

_CSRF_REASONS: Final = {
    "The CSRF token is missing.": "csrf_token_missing",
    "The CSRF session token is missing.": "csrf_session_token_missing",
    "The CSRF token has expired.": "csrf_token_expired",
    "The CSRF token is invalid.": "csrf_token_invalid",
    "The CSRF tokens do not match.": "csrf_token_incorrect",
    "The referrer header is missing.": "no_referer",
    "The referrer does not match the host.": "bad_referer",
}


#: The apps that got the hooks, to take them out again.
_hooked_apps: weakref.WeakSet[Any] = weakref.WeakSet()


def csrf_reason_code(description: str | None) -> str:
    """A short code for Flask-WTF's CSRF failure description."""
    return _CSRF_REASONS.get(description or "", "csrf_failed")


# --------------------------------------------------------------------------------------------
# Request hooks


def _id_text(value: object) -> str | None:
    if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
        return str(value)
    return None


def _id_of(user: object) -> str | None:
    """``g.user``'s id: a mapping's (a database row) ``id``, else its ``id`` attribute."""
    if isinstance(user, Mapping):
        return _id_text(user.get("id"))
    try:
        return _id_text(user["id"])  # type: ignore[index]  # sqlite3.Row and the like
    except Exception:
        return _id_text(getattr(user, "id", None))


def _user_id() -> str | None:
    """The signed-in user's id, without loading a user the app did not load: Flask-Login's
    user of this request when the app touched ``current_user``, else the id Flask-Login keeps
    in the (signed) session; else ``g.user``'s id, ``session["user_id"]``, ``g.user_id``.
    Flask-Login merely being importable changes nothing."""
    import flask

    user = flask.g.get("_login_user")
    if user is not None:
        if getattr(user, "is_authenticated", False) is not True:
            return None
        return _id_text(user.get_id())
    session = flask.session
    found = _id_text(session.get("_user_id"))  # Flask-Login's session key
    if found is None:
        g_user = flask.g.get("user")
        found = _id_of(g_user) if g_user is not None else None
    if found is None:
        found = _id_text(session.get("user_id"))
    if found is None:
        found = _id_text(flask.g.get("user_id"))
    return found


def _user_names(request: Any, fields: tuple[str, ...]) -> tuple[str, ...]:
    """The submitted user names as the view read them: Werkzeug's parsed form (parsed now, from
    the cached or unread stream, when the view did not) or JSON document. A form Werkzeug
    refuses (413, 400) names no user."""
    from werkzeug.exceptions import HTTPException

    is_form = not request.is_json and request.mimetype in wsgi_core.FORM_TYPES
    return wsgi_core.parsed_user_names(
        fields,
        form=(lambda: request.form) if is_form else None,
        document=(lambda: request.get_json(silent=True)) if request.is_json else None,
        refused=(HTTPException,),
    )


def _before_request() -> Any:
    """Inside contrib's server span (its own ``before_request`` hook runs first)."""
    import flask

    proxy: Any = flask.request
    request = proxy._get_current_object()  # the real object: route_of outlives the proxy
    environ = request.environ
    exchange = wsgi_core.begin(
        environ,
        where="flask.prepare",
        capture_headers=wsgi_core.capture_headers_enabled(),
        route_of=lambda: getattr(request.url_rule, "rule", None),
        user_id_of=_user_id,
    )
    if exchange is None:
        return None
    scope: AbstractContextManager[Any] = request_scope(exchange.request)
    scope.__enter__()
    environ[_SCOPE_KEY] = scope  # left in teardown_request
    refusal = wsgi_core.admit(
        exchange,
        functools.partial(_user_names, request),
        checked=checked_by_gate(environ, exchange),
    )
    if refusal is not None:
        return flask.Response(refusal.body, status=refusal.status, headers=refusal.headers())
    environ[_EXCHANGE_KEY] = exchange
    return None


def _after_request(response: Any) -> Any:
    import flask

    exchange = flask.request.environ.get(_EXCHANGE_KEY)
    if exchange is not None:
        observation = exchange.request.auth
        if observation is not None and observation.checks:
            # Flask-Login sends user_logged_in for every login it lets in: an app that has a
            # LoginManager and checked a password without that signal refused the login.
            if getattr(flask.current_app, "login_manager", None) is not None:
                observation.expects_login_signal = True
        challenge = functools.partial(response.headers.get, "WWW-Authenticate")
        wsgi_core.finish(exchange, response.status_code, challenge)
    return response


def _teardown_request(error: BaseException | None) -> None:
    import flask

    environ = flask.request.environ
    exchange = environ.pop(_EXCHANGE_KEY, None)
    if exchange is not None and error is not None:
        exchange.failed()  # no response went through after_request (500)
    scope = environ.pop(_SCOPE_KEY, None)
    if scope is not None:
        try:
            scope.__exit__(None, None, None)
        except ValueError:  # a context switch in between (async view): nothing to reset
            pass


def _hook_app(app: Any) -> None:
    """Our hooks, once per app: before_request right after contrib's, after_request last to
    run, teardown_request first to run (before contrib's ends the span)."""
    before = app.before_request_funcs.setdefault(None, [])
    contrib = getattr(app, "_before_request", None)
    position = before.index(contrib) + 1 if contrib in before else 0
    before.insert(position, _before_request)
    app.after_request_funcs.setdefault(None, []).insert(0, _after_request)
    app.teardown_request_funcs.setdefault(None, []).append(_teardown_request)
    setattr(app, _HOOKED, True)
    _hooked_apps.add(app)
    warn_unmatched(lambda: flask_routes(app), "Flask")


def _unhook_app(app: Any) -> None:
    for table, hook in (
        (app.before_request_funcs, _before_request),
        (app.after_request_funcs, _after_request),
        (app.teardown_request_funcs, _teardown_request),
    ):
        hooks = table.get(None, [])
        if hook in hooks:
            hooks.remove(hook)
    if app.__dict__.get(_HOOKED):
        delattr(app, _HOOKED)


def _hooking_app(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``Flask.preprocess_request``: the app gets its hooks at its first request."""
    if not instance.__dict__.get(_HOOKED):
        try:
            _hook_app(instance)
        except Exception:
            _log.exception("otel_secaudit: could not add the Flask hooks to %r", instance)
            setattr(instance, _HOOKED, True)  # do not retry on every request
    return wrapped(*args, **kwargs)


def _is_csrf_error(error: Any) -> bool:
    try:
        from flask_wtf.csrf import CSRFError
    except ImportError:
        return False
    return isinstance(error, CSRFError)


def _noting_csrf_error(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``Flask.handle_http_exception``: Flask-WTF's ``CSRFError`` is ``request.csrf_mismatch``."""
    error = args[0] if args else kwargs.get("e")
    if _is_csrf_error(error):
        wsgi_core.record_signal("request.csrf_mismatch", reason=csrf_reason_code(error.description))
    return wrapped(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# Flask-Login signals


def _user_fields(user: Any) -> dict[str, Any]:
    get_id = getattr(user, "get_id", None)
    value = get_id() if callable(get_id) else None
    return {"user_id": str(value)} if value is not None else {}


def _on_logged_in(sender: Any, user: Any = None, **kw: Any) -> None:
    fields = _user_fields(user)
    wsgi_core.record_login_success(fields.get("user_id"), **fields)


def _on_logged_out(sender: Any, user: Any = None, **kw: Any) -> None:
    wsgi_core.record_signal("auth.logout", **_user_fields(user))


def _on_unauthorized(sender: Any, **kw: Any) -> None:
    wsgi_core.record_signal("auth.unauthenticated", reason="login_required")


def _flask_login_signals() -> list[tuple[Any, Any]]:
    """Flask-Login's signals and our receivers; none while the application has not imported
    Flask-Login (it is never imported on the application's behalf)."""
    signals = sys.modules.get("flask_login.signals")
    if signals is None:
        return []
    return [
        (signals.user_logged_in, _on_logged_in),
        (signals.user_logged_out, _on_logged_out),
        (signals.user_unauthorized, _on_unauthorized),
    ]


# --------------------------------------------------------------------------------------------
# Installing


def _install() -> None:
    from flask.app import Flask

    if not is_patched(Flask, "preprocess_request"):
        wrap_function_wrapper(Flask, "preprocess_request", _hooking_app)
        wrap_function_wrapper(Flask, "handle_http_exception", _noting_csrf_error)
        # the WSGI entry: a blocked client is refused before contrib's span (wsgi_gate)
        wrap_function_wrapper(Flask, "__call__", wsgi_gate.gated_call)
    # Flask-Login's signals when the application imports it (now, if it has)
    when_imported("flask_login.signals", _connect_flask_login, "Flask-Login")


def _connect_flask_login(_module: Any) -> None:
    for signal, receiver in _flask_login_signals():
        signal.connect(receiver, weak=False)  # once: blinker keys receivers by identity


def _uninstall() -> None:
    from flask.app import Flask

    for name in _PATCHED:
        unwrap(Flask, name)
    for signal, receiver in _flask_login_signals():
        signal.disconnect(receiver)
    for app in list(_hooked_apps):
        _unhook_app(app)
    _hooked_apps.clear()


def instrument_flask() -> bool:
    """Instrument Flask when it is installed; False (and nothing done) when it is not.
    Never raises."""
    return wsgi_core.install_adapter("Flask", "flask.app", _install)


def uninstrument_flask() -> None:
    """Undo :func:`instrument_flask`. Never raises."""
    wsgi_core.uninstall_adapter("Flask", "flask.app", _uninstall)
