"""Refuse a blocked client before contrib's Django or Flask instrumentation runs (WSGI), as
:mod:`otel_secaudit.web.gate` does for Starlette and FastAPI: a flood gets cheaper once it is
blocked, not dearer.

Contrib opens the server span inside the framework (Flask's ``before_request``, Django's
middleware), so a request the adapters refuse there costs the framework's request object,
contrib's span and HTTP metrics, and the refusal. The gate runs at the WSGI entry of the
application, before any of that: ``Flask.__call__`` and Django's ``WSGIHandler.__call__``
(patched by the adapters of :mod:`otel_secaudit.web.flask` and :mod:`otel_secaudit.web.django`).

* With no block active in the process (the usual case) it costs a few attribute reads.
* With blocks active it resolves the client address from the environ as the adapters do
  (``REMOTE_ADDR``, trusted proxies and their header included) and asks the detector, which
  counts every refusal in ``security.requests.blocked``. A client that is not blocked goes on
  and the adapter does not look the same address up again (environ key
  :data:`~otel_secaudit.web.exchange.BLOCK_CHECKED`; an address that middleware inside the
  application rewrote is looked up by the adapter).
* A blocked client gets 429 with ``Retry-After`` under a root server span of otel_secaudit's
  own, with the same attributes as the ASGI gate's (``url.scheme`` from ``wsgi.url_scheme``);
  ``request.blocked``, when due, is a span event on it and a log record in its trace.

A span already current at that point (contrib's ``OpenTelemetryMiddleware`` wrapped around the
WSGI application) makes the gate step aside: the adapter refuses inside that span, as before.
Django served through ASGI gets the ASGI gate instead, at ``ASGIHandler.__call__``
(:func:`otel_secaudit.web.gate.gated_call`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .. import runtime as _runtime
from . import gate, wsgi_core

__all__ = ["gated_call", "refused_early"]

_REASON: Final = {429: "Too Many Requests"}


def refused_early(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> list[bytes] | None:
    """The body of the 429 answer (already started with ``start_response``) when the client of
    ``environ`` is blocked and no span is current yet; None when the application must run.
    Never raises on its own account (an error is counted and the request goes on to the
    adapter); what ``start_response`` raises propagates as it would from the application."""
    try:
        if not gate.blocks_active() or gate.in_span():
            return None
        rt = _runtime.current()
        exchange = wsgi_core.open_exchange(environ, mark=False)
    except Exception as exc:  # security plumbing never breaks the request
        _runtime.current().recorder.internal_error(exc, "wsgi.gate")
        return None
    scheme = environ.get("wsgi.url_scheme")
    with gate.refusing(rt, exchange, environ, scheme if isinstance(scheme, str) else None) as (
        refusal
    ):
        if refusal is None:
            return None
        status = f"{refusal.status} {_REASON.get(refusal.status, '')}".rstrip()
        start_response(status, refusal.headers())
        return [refusal.body]


def gated_call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A wrapt wrapper for a WSGI application's ``__call__(environ, start_response)``: the
    gate first."""
    if len(args) == 2 and not kwargs and gate.blocks_active():  # a few reads when none is
        body = refused_early(args[0], args[1])
        if body is not None:
            return body
    return wrapped(*args, **kwargs)
