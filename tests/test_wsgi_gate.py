"""The WSGI gate: a blocked client of a Flask application is refused at ``Flask.__call__``,
before contrib's Flask instrumentation opens its server span (otel_secaudit.web.wsgi_gate),
under a server span of otel_secaudit's own; real Flask apps driven through werkzeug's WSGI
test client, contrib's FlaskInstrumentor and WSGI middleware, the SDK's in-memory exporters.
Django's ``WSGIHandler.__call__`` gate is exercised under gunicorn in tests/test_django.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask
import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from otel_secaudit import SecAuditInstrumentor
from otel_secaudit.auth.patching import is_patched

from .conftest import SDK, block_after_two_401s

ATTACKER = "203.0.113.9"
OBSERVER = "198.51.100.21"
FORGED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
FORGED = {"traceparent": f"00-{FORGED_TRACE}-00f067aa0ba902b7-01"}


@pytest.fixture(autouse=True)
def clean_instrumentation() -> Iterator[None]:
    yield
    instrumentor = SecAuditInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def _app(calls: list[str]) -> flask.Flask:
    app = flask.Flask("gated")

    @app.get("/private")
    def private() -> Any:
        calls.append("private")
        flask.abort(401)

    @app.get("/ok")
    def ok() -> Any:
        calls.append("ok")
        return {"ok": "yes"}

    return app


def _get(app: Any, path: str, client: str = ATTACKER, **headers: str) -> Any:
    http = app.test_client() if isinstance(app, flask.Flask) else None
    if http is None:  # a plain WSGI callable around the Flask app
        from werkzeug.test import Client

        # buffered: the app's iterable is read and closed, which ends contrib's WSGI span
        return Client(app).get(
            path, headers=headers, environ_base={"REMOTE_ADDR": client}, buffered=True
        )
    return http.get(path, headers=headers, environ_base={"REMOTE_ADDR": client})


def _block(app: Any) -> None:
    """Two 401s from the attacker block it (host_threshold=2)."""
    block_after_two_401s(lambda: _get(app, "/private"))


@pytest.fixture
def blocking(make_sdk: Any) -> SDK:
    sdk: SDK = make_sdk(host_threshold=2, block_seconds=60)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    return sdk


def _instrumented(calls: list[str], sdk: SDK) -> flask.Flask:
    app = _app(calls)
    FlaskInstrumentor.instrument_app(app, tracer_provider=sdk.tracer_provider)
    return app


def test_a_blocked_flask_client_is_refused_before_contribs_span(blocking: SDK) -> None:
    calls: list[str] = []
    app = _instrumented(calls, blocking)
    _block(app)
    before = len(blocking.spans())
    response = _get(app, "/private/alice@example.com", **FORGED, **{"User-Agent": "curl/8"})
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.data == b"Too Many Requests"
    assert calls == ["private", "private"]  # the application never ran for the refusal
    (span,) = blocking.spans()[before:]  # contrib opened none
    assert span.kind.name == "SERVER"
    assert span.instrumentation_scope.name == "otel_secaudit"
    assert span.name == "GET"
    assert span.parent is None  # a root span: the forged traceparent is not continued
    assert format(span.context.trace_id, "032x") != FORGED_TRACE
    assert dict(span.attributes) == {
        "http.response.status_code": 429,
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/private/[REDACTED]",
        "client.address": ATTACKER,
        "network.peer.address": ATTACKER,
        "user_agent.original": "curl/8",
    }
    (event,) = [e for e in span.events if e.name == "request.blocked"]
    assert event.attributes["security.block.count"] == 1
    (record,) = blocking.security_logs("request.blocked")
    assert record.trace_id == span.context.trace_id
    assert record.attributes["client.address"] == ATTACKER
    assert record.attributes["http.response.status_code"] == 429
    assert "alice" not in repr(dict(record.attributes))
    assert blocking.total("security.requests.blocked") == 1


def test_every_flask_refusal_is_counted_and_recorded_once_a_minute(blocking: SDK) -> None:
    app = _instrumented([], blocking)
    _block(app)
    for _ in range(4):
        assert _get(app, "/private").status_code == 429
    assert blocking.total("security.requests.blocked") == 4
    assert len(blocking.security_logs("request.blocked")) == 1
    ours = [s for s in blocking.server_spans() if s.instrumentation_scope.name == "otel_secaudit"]
    assert len(ours) == 4


def test_other_flask_clients_pass_the_gate_once_checked(blocking: SDK) -> None:
    """While a block is active another client passes (looked up once: no refusal counted, not
    by the adapter either) and gets contrib's span."""
    calls: list[str] = []
    app = _instrumented(calls, blocking)
    _block(app)
    before = len(blocking.server_spans())
    assert _get(app, "/ok", client=OBSERVER).status_code == 200
    assert calls[-1] == "ok"
    (span,) = blocking.server_spans()[before:]
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.flask"
    assert span.attributes["http.route"] == "/ok"
    assert blocking.total("security.requests.blocked") == 0


def test_an_unsampled_flask_refusal_still_counts_and_records(make_sdk: Any) -> None:
    sdk: SDK = make_sdk(ALWAYS_OFF, host_threshold=2, block_seconds=60)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = _instrumented([], sdk)
    _block(app)
    assert _get(app, "/private").status_code == 429
    assert list(sdk.spans()) == []
    assert len(sdk.security_logs("request.blocked")) == 1
    assert sdk.total("security.requests.blocked") == 1


def test_inside_an_outer_wsgi_span_the_adapter_refuses_there(blocking: SDK) -> None:
    """Contrib's WSGI middleware around the Flask app opens the span before Flask.__call__:
    the gate steps aside and the Flask adapter refuses inside that span."""
    calls: list[str] = []
    app = OpenTelemetryMiddleware(_app(calls), tracer_provider=blocking.tracer_provider)
    _block(app)
    before = len(blocking.server_spans())
    assert _get(app, "/private").status_code == 429
    assert calls == ["private", "private"]
    (span,) = blocking.server_spans()[before:]
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.wsgi"
    assert [e.name for e in span.events] == ["request.blocked"]
    assert blocking.total("security.requests.blocked") == 1


def test_without_blocks_flask_requests_are_not_gated(make_sdk: Any) -> None:
    sdk: SDK = make_sdk(host_threshold=2)  # observe only: BLOCK_SECONDS=0
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = _instrumented([], sdk)
    for _ in range(4):
        assert _get(app, "/private").status_code == 401
    scopes = {s.instrumentation_scope.name for s in sdk.server_spans()}
    assert scopes == {"opentelemetry.instrumentation.flask"}


def test_uninstrument_takes_the_gate_out(blocking: SDK) -> None:
    assert is_patched(flask.Flask, "__call__")
    SecAuditInstrumentor().uninstrument()
    assert not is_patched(flask.Flask, "__call__")
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    assert not is_patched(WSGIHandler, "__call__")
    assert not is_patched(ASGIHandler, "__call__")


def test_a_proxy_fix_inside_the_app_cannot_open_a_bypass(blocking: SDK) -> None:
    """werkzeug's ProxyFix on ``app.wsgi_app`` rewrites REMOTE_ADDR after the gate looked
    (the gate sees the proxy, the Flask adapter the client): the gate's 'not blocked' holds
    for the address it checked only, so the blocked client behind the proxy is still
    refused."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    calls: list[str] = []
    app = _instrumented(calls, blocking)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    forwarded = {"X-Forwarded-For": ATTACKER}
    block_after_two_401s(lambda: _get(app, "/private", client="127.0.0.1", **forwarded))
    assert _get(app, "/private", client="127.0.0.1", **forwarded).status_code == 429
    assert calls == ["private", "private"]
    assert blocking.total("security.requests.blocked") == 1
    assert _get(app, "/ok", client="127.0.0.1").status_code == 200
