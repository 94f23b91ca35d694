"""The WSGI adapters in process, through real WSGI calls (Werkzeug's test client): the plain
middleware inside contrib's OpenTelemetryMiddleware, blocks from a real detector, login bodies
replayed to the app; instrumenting a framework that is not installed; uninstrument restoring
Flask, Django and contrib's WSGI middleware."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from otel_secaudit import runtime
from otel_secaudit.web import django as django_adapter
from otel_secaudit.web import flask as flask_adapter
from otel_secaudit.web import wsgi as wsgi_adapter


def make_app(calls: list[str]) -> Any:
    """A bare WSGI app: /ok 200, /forbidden 403, POST /login 401 unless the body says alice."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        calls.append(path)
        if path == "/login":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            ok = b"username=alice" in body
            start_response("200 OK" if ok else "401 Unauthorized", [("content-length", "2")])
            return [body[:2]]
        status = "403 Forbidden" if path == "/forbidden" else "200 OK"
        start_response(status, [("content-length", "2")])
        return [b"hi"]

    return app


@pytest.fixture
def contrib_wsgi() -> Iterator[Any]:
    pytest.importorskip("opentelemetry.instrumentation.wsgi")
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    wsgi_adapter.instrument_wsgi()
    yield OpenTelemetryMiddleware
    wsgi_adapter.uninstrument_wsgi()


def test_plain_wsgi_middleware_runs_inside_contribs_server_span(
    make_sdk: Any, contrib_wsgi: Any
) -> None:
    sdk = make_sdk(login_routes="POST /login")
    calls: list[str] = []
    app = contrib_wsgi(make_app(calls), tracer_provider=sdk.tracer_provider)
    client = Client(app)
    assert client.get("/forbidden?token=QSECRET-1&page=2").status_code == 403
    response = client.post("/login", data={"username": "mallory", "password": "pw-SECRET"})
    assert response.status_code == 401
    assert response.data == b"us"  # the app read the whole body the plugin had read
    assert client.get("/ok").status_code == 200

    logs = {log.log_record.event_name: log.log_record for log in sdk.logs()}
    assert set(logs) == {"authz.permission_denied", "auth.login.failed"}
    assert logs["auth.login.failed"].attributes["security.reason"] == "http_401"
    assert "user.hash" in logs["auth.login.failed"].attributes
    spans = {span.context.trace_id: span for span in sdk.spans()}
    denied = logs["authz.permission_denied"]
    span = spans[denied.trace_id]  # contrib's server span
    assert span.context.span_id == denied.span_id
    assert [event.name for event in span.events] == ["authz.permission_denied"]
    assert "QSECRET-1" not in str(dict(span.attributes or {}))
    assert "page=2" in str(dict(span.attributes or {}))


def test_blocked_client_gets_429_with_retry_after_before_the_app(
    make_sdk: Any, contrib_wsgi: Any
) -> None:
    sdk = make_sdk(host_threshold=2, block_seconds=30)
    rt = runtime.build(
        recorder=sdk.recorder,
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
        logger_provider=sdk.logger_provider,
    )
    previous = runtime.swap(rt)
    try:
        calls: list[str] = []
        client = Client(contrib_wsgi(make_app(calls), tracer_provider=sdk.tracer_provider))
        peer = {"REMOTE_ADDR": "192.0.2.9"}  # Werkzeug's test environ has no peer address
        for _ in range(2):
            assert client.get("/forbidden", environ_base=peer).status_code == 403
        assert rt.flush()
        refused = client.get("/forbidden", environ_base=peer)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert calls == ["/forbidden", "/forbidden"]  # the app never saw the refused request
        names = [log.log_record.event_name for log in sdk.logs()]
        assert names.count("request.blocked") == 1
        assert "request.rate_limited" not in names  # one request, one event
        # another client is not blocked
        assert client.get("/ok", environ_base={"REMOTE_ADDR": "192.0.2.10"}).status_code == 200
    finally:
        runtime.swap(previous)
        rt.close()


def test_frameworks_that_are_not_installed_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("django", "flask", "flask.app", "opentelemetry.instrumentation.wsgi"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    assert django_adapter.instrument_django() is False
    assert flask_adapter.instrument_flask() is False
    assert wsgi_adapter.instrument_wsgi() is False
    django_adapter.uninstrument_django()
    flask_adapter.uninstrument_flask()
    wsgi_adapter.uninstrument_wsgi()


def test_uninstrument_restores_flask_and_flask_login(sdk: Any) -> None:
    pytest.importorskip("flask_login")
    from flask.app import Flask
    from flask_login import signals

    from harness.apps.flask_app import create_app

    flask_adapter.uninstrument_flask()  # whatever an earlier test left instrumented
    before = (Flask.__dict__["preprocess_request"], Flask.__dict__["handle_http_exception"])
    receivers = len(signals.user_logged_in.receivers)
    flask_adapter.instrument_flask()
    try:
        assert Flask.__dict__["preprocess_request"] is not before[0]
        app = create_app()
        assert app.test_client().get("/forbidden").status_code == 403
        assert [log.log_record.event_name for log in sdk.logs()] == ["authz.permission_denied"]
        assert flask_adapter._before_request in app.before_request_funcs[None]
    finally:
        flask_adapter.uninstrument_flask()
    after = (Flask.__dict__["preprocess_request"], Flask.__dict__["handle_http_exception"])
    assert after == before
    assert len(signals.user_logged_in.receivers) == receivers
    assert flask_adapter._before_request not in app.before_request_funcs[None]
    assert flask_adapter._after_request not in app.after_request_funcs[None]
    assert app.test_client().get("/forbidden").status_code == 403
    assert len(sdk.logs()) == 1  # nothing recorded once uninstrumented


def test_middleware_built_before_instrument_gets_the_security_layer(make_sdk: Any) -> None:
    """The security middleware runs inside the server span whatever the order of
    setup calls: a module-level ``OpenTelemetryMiddleware(app)`` built before the instrumentor
    ran records its status events and exports no query secret."""
    pytest.importorskip("opentelemetry.instrumentation.wsgi")
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    sdk = make_sdk()
    wsgi_adapter.uninstrument_wsgi()  # whatever an earlier test left instrumented
    calls: list[str] = []
    app = OpenTelemetryMiddleware(make_app(calls), tracer_provider=sdk.tracer_provider)
    wsgi_adapter.instrument_wsgi()
    try:
        client = Client(app)
        assert client.get("/forbidden?token=QSECRET-2&page=2").status_code == 403
        assert client.get("/ok").status_code == 200
    finally:
        wsgi_adapter.uninstrument_wsgi()
    assert calls == ["/forbidden", "/ok"]
    [denied] = [log.log_record for log in sdk.logs()]
    assert denied.event_name == "authz.permission_denied"
    spans = {span.context.span_id: span for span in sdk.spans()}
    span = spans[denied.span_id]  # contrib's server span
    assert [event.name for event in span.events] == ["authz.permission_denied"]
    exported = str([dict(s.attributes or {}) for s in sdk.spans()])
    assert "QSECRET-2" not in exported and "page=2" in exported
    # after uninstrument it passes requests through
    assert Client(app).get("/forbidden").status_code == 403
    assert len(sdk.logs()) == 1


def test_email_in_the_path_leaves_no_wsgi_url_attribute(make_sdk: Any, contrib_wsgi: Any) -> None:
    sdk = make_sdk()
    app = contrib_wsgi(make_app([]), tracer_provider=sdk.tracer_provider)
    response = Client(app).get("/password-recovery/alice%40example.com?q=juniper%20lumen")
    assert response.status_code == 200 and response.data == b"hi"
    response.close()
    (span,) = sdk.spans()
    exported = repr(dict(span.attributes or {}))
    assert "alice" not in exported, exported
    assert "[REDACTED]" in exported and "juniper" in exported


def test_uninstrument_restores_contribs_wsgi_middleware(sdk: Any) -> None:
    pytest.importorskip("opentelemetry.instrumentation.wsgi")
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    wsgi_adapter.uninstrument_wsgi()  # whatever an earlier test left instrumented
    original, original_call = OpenTelemetryMiddleware.__init__, OpenTelemetryMiddleware.__call__
    wsgi_adapter.instrument_wsgi()
    wrapped = OpenTelemetryMiddleware(make_app([]), tracer_provider=sdk.tracer_provider)
    assert isinstance(wrapped.wsgi, wsgi_adapter.SecAuditWSGIMiddleware)
    assert Client(wrapped).get("/forbidden").status_code == 403
    assert len(sdk.logs()) == 1
    wsgi_adapter.uninstrument_wsgi()
    assert OpenTelemetryMiddleware.__init__ is original
    assert OpenTelemetryMiddleware.__call__ is original_call
    assert not isinstance(OpenTelemetryMiddleware(make_app([])).wsgi, type(wrapped.wsgi))
    # the one it added before passes requests through now
    assert Client(wrapped).get("/forbidden").status_code == 403
    assert len(sdk.logs()) == 1


def test_a_failing_adapter_install_is_logged_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from otel_secaudit.web import wsgi_core

    def install() -> None:
        raise RuntimeError("patching failed")

    with caplog.at_level("ERROR", logger="otel_secaudit.web.wsgi_core"):
        assert wsgi_core.install_adapter("Flask", "flask.app", install) is True
        wsgi_core.uninstall_adapter("Flask", "flask.app", install)
    assert [r.getMessage() for r in caplog.records] == [
        "otel_secaudit: Flask instrumentation failed; the app runs without it",
        "otel_secaudit: could not fully undo the Flask instrumentation",
    ]
    assert wsgi_core.install_adapter("Nothing", "otel_secaudit_no_such_module", install) is False


def test_the_exit_flush_runs_once_at_exit_however_often_it_was_registered() -> None:
    """Each adapter registers the exit flush when instrumented: a process that exits flushes
    its runtime once."""
    import subprocess
    import textwrap

    code = textwrap.dedent(
        """
        from otel_secaudit.web import wsgi_core

        class Runtime:
            def flush(self):
                print("flushed", flush=True)

        wsgi_core.runtime.current = Runtime
        for _ in range(3):
            wsgi_core.register_exit_flush()
        print("exiting", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["exiting", "flushed"]


def test_instrumenting_twice_wraps_once_and_uninstrument_restores_the_originals() -> None:
    pytest.importorskip("opentelemetry.instrumentation.wsgi")
    from flask.app import Flask
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    from otel_secaudit.auth.patching import is_patched

    wsgi_adapter.uninstrument_wsgi()  # whatever an earlier test left instrumented
    flask_adapter.uninstrument_flask()
    originals = (
        OpenTelemetryMiddleware.__dict__["__init__"],
        Flask.__dict__["preprocess_request"],
    )
    for _ in range(2):
        wsgi_adapter.instrument_wsgi()
        flask_adapter.instrument_flask()
    try:
        assert is_patched(OpenTelemetryMiddleware, "__init__")
        assert is_patched(Flask, "preprocess_request")
        # one wrapper each, around the original
        assert OpenTelemetryMiddleware.__dict__["__init__"].__wrapped__ is originals[0]
        assert Flask.__dict__["preprocess_request"].__wrapped__ is originals[1]
    finally:
        wsgi_adapter.uninstrument_wsgi()
        flask_adapter.uninstrument_flask()
    assert not is_patched(OpenTelemetryMiddleware, "__init__")
    assert OpenTelemetryMiddleware.__dict__["__init__"] is originals[0]
    assert Flask.__dict__["preprocess_request"] is originals[1]
