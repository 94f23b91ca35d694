"""The WSGI request lifecycle shared by the plain WSGI middleware and the Django and Flask
adapters, as contrib's Django and Flask instrumentations reuse its WSGI helpers.

One request goes through the same steps whoever hosts it:

1. :func:`begin`: open the :class:`~otel_secaudit.web.exchange.Exchange` of the environ (the
   client address through the trusted proxies, the route and user id read lazily), mark the
   environ as handled (one exchange a request, whatever adapters are stacked) and scrub the
   server span (secret query values, e-mail addresses, captured secret headers);
2. :func:`admit`: inside the request's scope, the refusal of a blocked client (answered by the
   adapter with 429 and ``Retry-After`` before the application runs), else how the submitted
   user names are read (:func:`parsed_user_names` for a framework's parsed form or JSON body);
3. :func:`finish`: the status, with the ``WWW-Authenticate`` challenge of a 401.

Framework signals (Django's and Flask-Login's ``user_logged_in``, CSRF failures) are recorded
with :func:`record_signal` and :func:`record_login_success`; :func:`register_exit_flush`
flushes the runtime when a process (a gunicorn worker) exits normally;
:func:`install_adapter` and :func:`uninstall_adapter` are how an adapter is put in place and
taken out, never raising into the application.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from opentelemetry import trace

from .. import runtime
from ..context import current_request
from ..imports import when_imported
from .exchange import LOGIN_SUCCEEDED, Exchange, RefusalResponse, record_after_failures
from .server_span import may_hold_email, scrub_server_span
from .user_names import names_from_form, names_from_json

__all__ = [
    "ENVIRON_MARKER",
    "FORM_TYPES",
    "admit",
    "begin",
    "capture_headers_enabled",
    "environ_header",
    "finish",
    "install_adapter",
    "open_exchange",
    "parsed_user_names",
    "record_login_success",
    "record_signal",
    "register_exit_flush",
    "scrub_span",
    "uninstall_adapter",
    "www_authenticate",
]

_log = logging.getLogger(__name__)

Environ = dict[str, Any]
#: ``names(fields)``: the submitted user names of the request, as its framework reads them.
NamesReader = Callable[[tuple[str, ...]], tuple[str, ...]]

#: Environ key marking a request already handled by an outer adapter (one exchange a request).
ENVIRON_MARKER: Final = "otel_secaudit.exchange"
#: The body types whose user names are read from a framework's parsed form.
FORM_TYPES: Final = ("application/x-www-form-urlencoded", "multipart/form-data")
_CAPTURE_HEADERS_ENV: Final = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"
_MAX_CHALLENGE: Final = 1024


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
    mark: bool = True,
) -> Exchange:
    """The :class:`Exchange` of one WSGI request; marks ``environ`` as handled (unless
    ``mark`` is False: the gate of :mod:`otel_secaudit.web.wsgi_gate` looks before the
    adapter)."""
    if mark:
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
    emails = may_hold_email(environ.get("PATH_INFO") or "")
    if query or capture or emails:
        if emails or query:
            emails = not runtime.current().settings.record_user_name
        scrub_server_span(trace.get_current_span(), query, headers=capture, emails=emails)


def begin(
    environ: Environ,
    *,
    where: str,
    capture_headers: bool,
    route_of: Callable[[], str | None] | None = None,
    user_id_of: Callable[[], str | None] | None = None,
) -> Exchange | None:
    """Open the request's exchange and scrub its server span. None, and the application runs
    unobserved, when an outer adapter owns the request or opening fails (counted as an
    internal error at ``where``: security plumbing never breaks the request)."""
    if ENVIRON_MARKER in environ:
        return None
    try:
        exchange = open_exchange(environ, route_of=route_of, user_id_of=user_id_of)
        scrub_span(environ, headers=capture_headers)
    except Exception as exc:
        runtime.current().recorder.internal_error(exc, where)
        return None
    return exchange


def admit(
    exchange: Exchange, names: NamesReader | None = None, *, checked: bool = False
) -> RefusalResponse | None:
    """Before the application, inside the request's scope: the refusal of a blocked client
    (not looked up again when the gate ``checked`` it); else None, with ``names`` (called only
    when an authentication attempt needs them) as the reader of the submitted user names when
    a login route wants them."""
    refusal = None if checked else exchange.refusal()
    if refusal is None and names is not None:
        fields = exchange.user_fields
        if fields:
            exchange.read_user_names(lambda: names(fields))
    return refusal


def finish(exchange: Exchange, status: int, challenge: Callable[[], Any]) -> None:
    """The application answered ``status``; ``challenge()`` is its ``WWW-Authenticate``
    header, read for a 401 only (RFC 6750 ``invalid_token``)."""
    value = challenge() if status == 401 else None
    exchange.respond(status, None if value is None else str(value)[:_MAX_CHALLENGE])


def www_authenticate(headers: Any) -> str | None:
    """The ``WWW-Authenticate`` value among WSGI response ``headers`` (RFC 6750 challenges)."""
    try:
        for key, value in headers or ():
            if isinstance(key, str) and key.lower() == "www-authenticate":
                return str(value)[:_MAX_CHALLENGE]
    except (TypeError, ValueError):  # malformed headers are the server's to reject
        return None
    return None


def parsed_user_names(
    fields: tuple[str, ...],
    *,
    form: Callable[[], Any] | None = None,
    document: Callable[[], object] | None = None,
    refused: tuple[type[BaseException], ...] = (),
) -> tuple[str, ...]:
    """The submitted user names as the application's framework parsed the body for the view:
    its ``form()`` (a form body) or its JSON ``document()`` (a JSON body; give one of the two,
    or neither for another body). A body the framework refuses (an exception in ``refused``:
    too large, too many fields, malformed) names no user."""
    try:
        if form is not None:
            return names_from_form(form(), fields)
        if document is not None:
            return names_from_json(document(), fields)
    except refused:
        return ()
    return ()


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


def _flush_at_exit() -> None:
    try:
        runtime.current().flush()
    except Exception:  # exiting anyway
        pass


def register_exit_flush() -> None:
    """Flush the runtime when the process exits normally (gunicorn workers, runserver on
    Ctrl-C). Registered once (a second call moves the one hook), after the SDK's own exit
    hook, so it runs first and the abuse events it causes still leave through the live
    pipelines."""
    atexit.unregister(_flush_at_exit)
    atexit.register(_flush_at_exit)


def install_adapter(framework: str, module: str, install: Callable[[], None]) -> bool:
    """Run an adapter's ``install()`` when ``module`` (its framework) is imported: now if it
    is, else when the application imports it (:func:`otel_secaudit.imports.when_imported`),
    with the exit flush registered; False (and nothing done) when it is not installed. Never
    raises: a failure is logged and the application runs without the adapter."""

    def installing(_module: Any) -> None:
        register_exit_flush()
        try:
            install()
        except Exception:
            _log.exception(
                "otel_secaudit: %s instrumentation failed; the app runs without it", framework
            )

    return when_imported(module, installing, framework)


def uninstall_adapter(framework: str, module: str, uninstall: Callable[[], None]) -> None:
    """Run an adapter's ``uninstall()`` when ``module`` has been imported (an adapter waiting
    for its import is cancelled by :func:`otel_secaudit.imports.cancel_pending`). Never
    raises."""
    if sys.modules.get(module) is None:
        return
    try:
        uninstall()
    except Exception:
        _log.exception("otel_secaudit: could not fully undo the %s instrumentation", framework)
