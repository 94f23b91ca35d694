"""Flask: request hooks inside contrib's server span, Flask-Login's signals, Flask-WTF's
CSRFError.

Contrib's ``FlaskInstrumentor`` opens the server span in a ``before_request`` hook, so a
middleware around ``Flask.wsgi_app`` would run outside it. :func:`instrument_flask` (called by
the ``otel_secaudit`` instrumentor under ``opentelemetry-instrument``) instead adds, to each
app on its first request, a ``before_request`` hook placed right after contrib's (first when
contrib is absent, so before the app's own hooks and Flask-WTF's CSRF check), an
``after_request`` hook that runs after the app's own, and a ``teardown_request`` hook that runs
before contrib's closes the span. Inside the span they:

* refuse a blocked client with 429 and ``Retry-After`` before any view or app hook runs;
* record the status and login rules' events (``http.route`` = the URL rule, ``/items/<id>``,
  as contrib puts it on the span); the submitted user name is what Werkzeug parsed for the
  view, read after it (``request.form``: the first of duplicate fields; ``get_json()``: the
  last of duplicate keys), chunked and large bodies included;
* scrub secret query values and captured secret headers from the span.

When Flask-Login is installed, ``user_logged_in`` -> ``auth.login.succeeded`` (``user.id`` =
``get_id()``), ``user_logged_out`` -> ``auth.logout`` and ``user_unauthorized`` ->
``auth.unauthenticated``. Events of a request carry the signed-in user's id: Flask-Login's
``current_user`` when the app uses Flask-Login, else ``g.user`` (its ``id``) or
``session["user_id"]`` (Flask's tutorial style), else ``g.user_id``.
Flask-WTF's ``CSRFError`` becomes ``request.csrf_mismatch`` with a reason code.
:func:`uninstrument_flask` removes the hooks and the signal receivers.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Final

from .. import runtime
from ..context import request_scope
from .route_check import flask_routes, warn_unmatched
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

__all__ = ["csrf_reason_code", "instrument_flask", "uninstrument_flask"]

_log = logging.getLogger(__name__)

_EXCHANGE_KEY: Final = "otel_secaudit.flask.exchange"
_SCOPE_KEY: Final = "otel_secaudit.flask.scope"
_HOOKED: Final = "_otel_secaudit_hooks"

_CSRF_REASONS: Final = {
    "The CSRF token is missing.": "csrf_token_missing",
    "The CSRF session token is missing.": "csrf_session_token_missing",
    "The CSRF token has expired.": "csrf_token_expired",
    "The CSRF token is invalid.": "csrf_token_invalid",
    "The CSRF tokens do not match.": "csrf_token_incorrect",
    "The referrer header is missing.": "no_referer",
    "The referrer does not match the host.": "bad_referer",
}


class _State:
    active = False
    capture_headers = False
    originals: dict[str, Any] = {}
    apps: weakref.WeakSet[Any] = weakref.WeakSet()
    signals: list[tuple[Any, Any]] = []


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
    the cached or unread stream, when the view did not) or JSON document."""
    from werkzeug.exceptions import HTTPException

    if request.is_json:
        return names_from_json(request.get_json(silent=True), fields)
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            return names_from_form(request.form, fields)
        except HTTPException:  # a form Werkzeug refuses (413, 400) names no user
            return ()
    return ()


def _before_request() -> Any:
    import flask

    proxy: Any = flask.request
    request = proxy._get_current_object()  # the real object: route_of outlives the proxy
    environ = request.environ
    if not _State.active or ENVIRON_MARKER in environ:
        return None
    try:
        exchange = open_exchange(
            environ,
            route_of=lambda: getattr(request.url_rule, "rule", None),
            user_id_of=_user_id,
        )
        scrub_span(environ, headers=_State.capture_headers)
    except Exception as exc:  # security plumbing never breaks the request
        runtime.current().recorder.internal_error(exc, "flask.prepare")
        return None
    scope: AbstractContextManager[Any] = request_scope(exchange.request)
    scope.__enter__()
    environ[_SCOPE_KEY] = scope  # left in teardown_request
    refusal = exchange.refusal()
    if refusal is not None:
        return flask.Response(refusal.body, status=refusal.status, headers=refusal.headers())
    environ[_EXCHANGE_KEY] = exchange
    if exchange.user_fields:
        exchange.read_user_names(functools.partial(_user_names, request, exchange.user_fields))
    return None


def _after_request(response: Any) -> Any:
    import flask

    exchange = flask.request.environ.get(_EXCHANGE_KEY)
    if exchange is not None:
        status = response.status_code
        observation = exchange.request.auth
        if observation is not None and observation.checks:
            # Flask-Login sends user_logged_in for every login it lets in: an app that has a
            # LoginManager and checked a password without that signal refused the login.
            if getattr(flask.current_app, "login_manager", None) is not None:
                observation.expects_login_signal = True
        challenge = response.headers.get("WWW-Authenticate") if status == 401 else None
        exchange.respond(status, challenge)
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
    _State.apps.add(app)
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


def _patched_preprocess_request(original: Any) -> Any:
    @functools.wraps(original)
    def preprocess_request(self: Any) -> Any:
        if _State.active and not self.__dict__.get(_HOOKED):
            try:
                _hook_app(self)
            except Exception:
                _log.exception("otel_secaudit: could not add the Flask hooks to %r", self)
                setattr(self, _HOOKED, True)  # do not retry on every request
        return original(self)

    return preprocess_request


def _is_csrf_error(error: Any) -> bool:
    try:
        from flask_wtf.csrf import CSRFError
    except ImportError:
        return False
    return isinstance(error, CSRFError)


def _patched_handle_http_exception(original: Any) -> Any:
    @functools.wraps(original)
    def handle_http_exception(self: Any, e: Any) -> Any:
        if _State.active and _is_csrf_error(e):
            record_signal("request.csrf_mismatch", reason=csrf_reason_code(e.description))
        return original(self, e)

    return handle_http_exception


# --------------------------------------------------------------------------------------------
# Flask-Login signals


def _user_fields(user: Any) -> dict[str, Any]:
    get_id = getattr(user, "get_id", None)
    value = get_id() if callable(get_id) else None
    return {"user_id": str(value)} if value is not None else {}


def _on_logged_in(sender: Any, user: Any = None, **kw: Any) -> None:
    fields = _user_fields(user)
    record_login_success(fields.get("user_id"), **fields)


def _on_logged_out(sender: Any, user: Any = None, **kw: Any) -> None:
    record_signal("auth.logout", **_user_fields(user))


def _on_unauthorized(sender: Any, **kw: Any) -> None:
    record_signal("auth.unauthenticated", reason="login_required")


def _connect_flask_login() -> None:
    try:
        from flask_login import signals
    except ImportError:
        return
    for signal, receiver in (
        (signals.user_logged_in, _on_logged_in),
        (signals.user_logged_out, _on_logged_out),
        (signals.user_unauthorized, _on_unauthorized),
    ):
        signal.connect(receiver, weak=False)
        _State.signals.append((signal, receiver))


# --------------------------------------------------------------------------------------------
# Installing


def instrument_flask() -> bool:
    """Instrument Flask when it is installed; False (and nothing done) when it is not.
    Never raises."""
    try:
        from flask.app import Flask
    except ImportError:
        return False
    register_exit_flush()
    try:
        _State.active = True
        _State.capture_headers = capture_headers_enabled()
        if not _State.originals:
            for name, patch in (
                ("preprocess_request", _patched_preprocess_request),
                ("handle_http_exception", _patched_handle_http_exception),
            ):
                original = Flask.__dict__[name]
                _State.originals[name] = original
                setattr(Flask, name, patch(original))
        if not _State.signals:
            _connect_flask_login()
    except Exception:
        _log.exception("otel_secaudit: Flask instrumentation failed; the app runs without it")
    return True


def uninstrument_flask() -> None:
    """Undo :func:`instrument_flask`. Never raises."""
    try:
        from flask.app import Flask
    except ImportError:
        return
    _State.active = False
    try:
        for name, original in _State.originals.items():
            setattr(Flask, name, original)
        _State.originals = {}
        for signal, receiver in _State.signals:
            signal.disconnect(receiver)
        _State.signals = []
        for app in list(_State.apps):
            _unhook_app(app)
        _State.apps = weakref.WeakSet()
    except Exception:
        _log.exception("otel_secaudit: could not fully undo the Flask instrumentation")
