"""The gate: a blocked client is refused before contrib's instrumentation opens its server span
(otel_secaudit.web.gate), under a server span of otel_secaudit's own, with real FastAPI and
Starlette apps over httpx's ASGI transport."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import fastapi
import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from otel_secaudit import SecAuditInstrumentor

from .conftest import SDK, block_after_two_401s, uninstrument_web

ATTACKER = "203.0.113.7"
OBSERVER = "198.51.100.20"
#: a traceparent the attacker sends: its trace must not be continued
FORGED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
FORGED = {"traceparent": f"00-{FORGED_TRACE}-00f067aa0ba902b7-01"}


@pytest.fixture(autouse=True)
def clean_instrumentation() -> Iterator[None]:
    yield
    uninstrument_web()


def _app(calls: list[str]) -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.get("/private")
    async def private() -> None:
        calls.append("private")
        raise fastapi.HTTPException(401)

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        calls.append("ok")
        return {"ok": "yes"}

    return app


def _get(
    app: Any, path: str, client: str = ATTACKER, headers: dict[str, str] | None = None
) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get(path, headers=headers)

    return asyncio.run(run())


def _block(app: Any) -> None:
    """Two 401s from the attacker block it (host_threshold=2)."""
    block_after_two_401s(lambda: _get(app, "/private"))


def _refused_handshake(app: Any) -> Any:
    """The denial the attacker's WebSocket handshake to ``/ws`` gets (Starlette's TestClient
    offers the websocket.http.response extension)."""
    from starlette.testclient import TestClient, WebSocketDenialResponse

    with TestClient(app, client=(ATTACKER, 4000)) as http:
        with pytest.raises(WebSocketDenialResponse) as denied:
            with http.websocket_connect("/ws"):
                pass
    return denied.value


@pytest.fixture
def blocking(make_sdk: Any) -> SDK:
    sdk: SDK = make_sdk(host_threshold=2, block_seconds=60)
    FastAPIInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    return sdk


def test_a_blocked_client_is_refused_under_a_server_span_of_our_own(blocking: SDK) -> None:
    calls: list[str] = []
    app = _app(calls)
    _block(app)
    before = len(blocking.server_spans())
    every_before = len(blocking.spans())
    path = "/private/alice@example.com"
    response = _get(app, path, headers={**FORGED, "user-agent": "curl/8"})
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert calls == ["private", "private"]  # the application never ran for the refusal
    spans = blocking.server_spans()
    assert len(spans) == before + 1  # contrib opened none (and no send spans either)
    assert len(blocking.spans()) == every_before + 1
    span = spans[-1]
    assert span.instrumentation_scope.name == "otel_secaudit"
    assert span.name == "GET"
    assert span.parent is None  # a root span
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
    # request.blocked: a span event on that span (without the request attributes the span
    # carries) and a log record (with them) in its trace
    (event,) = [e for e in span.events if e.name == "request.blocked"]
    assert event.attributes["security.block.count"] == 1
    assert "client.address" not in event.attributes
    (record,) = blocking.security_logs("request.blocked")
    assert record.trace_id == span.context.trace_id
    assert record.attributes["client.address"] == ATTACKER
    assert record.attributes["http.response.status_code"] == 429
    assert "alice" not in repr(dict(record.attributes))
    assert blocking.total("security.requests.blocked") == 1


def test_every_refusal_is_counted_and_recorded_once_a_minute(blocking: SDK) -> None:
    calls: list[str] = []
    app = _app(calls)
    _block(app)
    for _ in range(5):
        assert _get(app, "/private").status_code == 429
    assert blocking.total("security.requests.blocked") == 5
    assert len(blocking.security_logs("request.blocked")) == 1
    ours = [s for s in blocking.server_spans() if s.instrumentation_scope.name == "otel_secaudit"]
    assert len(ours) == 5


def test_other_clients_go_through_once_checked(blocking: SDK) -> None:
    """While a block is active, another client passes the gate (looked up once, not again in
    the middleware) and gets contrib's span as before."""
    calls: list[str] = []
    app = _app(calls)
    _block(app)
    before = len(blocking.server_spans())
    assert _get(app, "/ok", client=OBSERVER).status_code == 200
    assert calls[-1] == "ok"
    (span,) = blocking.server_spans()[before:]
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.fastapi"
    assert span.attributes["http.route"] == "/ok"
    assert blocking.total("security.requests.blocked") == 0


def test_an_unsampled_refusal_still_counts_and_records(make_sdk: Any) -> None:
    """Sampling never hides a violation: with every span dropped, the refusal is counted and
    request.blocked still goes out as a log record."""
    sdk: SDK = make_sdk(ALWAYS_OFF, host_threshold=2, block_seconds=60)
    FastAPIInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = _app([])
    _block(app)
    assert _get(app, "/private").status_code == 429
    assert list(sdk.spans()) == []
    assert len(sdk.security_logs("request.blocked")) == 1
    assert sdk.total("security.requests.blocked") == 1


def test_inside_an_outer_server_span_the_middleware_refuses_there(make_sdk: Any) -> None:
    """An OpenTelemetryMiddleware around the whole application opens the span before
    Starlette runs: the gate steps aside and the refusal happens inside that span."""
    sdk: SDK = make_sdk(host_threshold=2, block_seconds=60)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = OpenTelemetryMiddleware(_app([]), tracer_provider=sdk.tracer_provider)
    _block(app)
    before = len(sdk.server_spans())
    assert _get(app, "/private").status_code == 429
    (span,) = sdk.server_spans()[before:]
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"
    assert [e.name for e in span.events] == ["request.blocked"]
    assert sdk.total("security.requests.blocked") == 1


def test_without_blocks_the_gate_does_nothing(make_sdk: Any) -> None:
    """Observe-only (BLOCK_SECONDS=0): no refusal, contrib's span for every request."""
    sdk: SDK = make_sdk(host_threshold=2)
    FastAPIInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = _app([])
    for _ in range(4):
        assert _get(app, "/private").status_code == 401
    scopes = {s.instrumentation_scope.name for s in sdk.server_spans()}
    assert scopes == {"opentelemetry.instrumentation.fastapi"}


def test_inside_an_unsampled_outer_span_no_span_of_ours_is_made(make_sdk: Any) -> None:
    """An outer instrumentation's span that was sampled out is still the request's span: the
    gate steps aside (no root span of ours beside the dropped trace), the middleware refuses,
    and the refusal is counted and recorded."""
    from opentelemetry.sdk.trace import TracerProvider

    sdk: SDK = make_sdk(host_threshold=2, block_seconds=60)  # samples everything
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    dropping = TracerProvider(sampler=ALWAYS_OFF)  # the outer instrumentation's provider
    app = OpenTelemetryMiddleware(_app([]), tracer_provider=dropping)
    _block(app)
    assert _get(app, "/private").status_code == 429
    assert [s for s in sdk.spans() if s.instrumentation_scope.name == "otel_secaudit"] == []
    assert len(sdk.security_logs("request.blocked")) == 1
    assert sdk.total("security.requests.blocked") == 1


def test_a_proxy_middleware_before_ours_cannot_open_a_bypass(blocking: SDK) -> None:
    """The security middleware added by hand inside uvicorn's ProxyHeadersMiddleware sees the
    client the proxy middleware rewrote, while the gate (before the stack) saw the proxy: the
    gate's 'not blocked' holds for the address it checked only, so the blocked client behind
    the proxy is still refused by the middleware."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from otel_secaudit.web.asgi import SecAuditMiddleware

    calls: list[str] = []
    app = _app(calls)
    app.add_middleware(SecAuditMiddleware)
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=["127.0.0.1"])  # outside ours
    forwarded = {"x-forwarded-for": ATTACKER}
    block_after_two_401s(lambda: _get(app, "/private", client="127.0.0.1", headers=forwarded))
    assert _get(app, "/private", client="127.0.0.1", headers=forwarded).status_code == 429
    assert calls == ["private", "private"]
    assert blocking.total("security.requests.blocked") == 1
    assert _get(app, "/ok", client="127.0.0.1").status_code == 200  # the proxy is not blocked


def test_a_blocked_clients_websocket_handshake_is_refused(blocking: SDK) -> None:
    """A block refuses the client's WebSocket handshakes too (a blocked brute-forcer must not
    go on over a socket): 429 with Retry-After through the websocket.http.response extension,
    under our span; the endpoint never runs, another client connects."""
    from starlette.testclient import TestClient

    from harness.apps.secapp import create_app

    app = create_app()
    _block(app)
    denied = _refused_handshake(app)
    assert denied.status_code == 429
    assert 1 <= int(denied.headers["retry-after"]) <= 60
    assert app.state.calls["ws"] == 0
    ours = [s for s in blocking.server_spans() if s.instrumentation_scope.name == "otel_secaudit"]
    assert len(ours) == 1 and ours[0].attributes["http.response.status_code"] == 429
    assert ours[0].attributes["url.scheme"] == "ws"
    (record,) = blocking.security_logs("request.blocked")
    assert record.trace_id == ours[0].context.trace_id
    assert record.attributes["http.response.status_code"] == 429
    assert blocking.total("security.requests.blocked") == 1
    with TestClient(app, client=(OBSERVER, 4000)) as http:
        with http.websocket_connect("/ws") as socket:
            socket.send_text("hello")
            assert socket.receive_text() == "hello"
    assert app.state.calls["ws"] == 1


def test_without_the_http_response_extension_the_handshake_is_closed(blocking: SDK) -> None:
    """A server that does not offer websocket.http.response gets a close before accept (code
    1008), which it answers with 403; the record says 403."""
    from harness.apps.secapp import create_app

    app = create_app()
    _block(app)
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": (ATTACKER, 4000),
        "server": ("test", 80),
        "subprotocols": [],
    }
    asyncio.run(app(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert app.state.calls["ws"] == 0
    (record,) = blocking.security_logs("request.blocked")
    assert record.attributes["http.response.status_code"] == 403


def test_inside_an_outer_span_the_middleware_refuses_the_handshake(make_sdk: Any) -> None:
    """With contrib's ASGI middleware around the app (a span current before Starlette runs)
    the gate steps aside and the security middleware refuses the handshake inside that span."""

    from harness.apps.secapp import create_app

    sdk: SDK = make_sdk(host_threshold=2, block_seconds=60)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    inner = create_app()
    app = OpenTelemetryMiddleware(inner, tracer_provider=sdk.tracer_provider)
    _block(app)
    denied = _refused_handshake(app)
    assert denied.status_code == 429
    assert inner.state.calls["ws"] == 0
    assert sdk.total("security.requests.blocked") == 1
    assert not [s for s in sdk.spans() if s.instrumentation_scope.name == "otel_secaudit"]


@pytest.mark.parametrize("trusted", [False, True])
def test_a_proxy_middleware_inside_ours_is_warned_about_at_start(
    make_sdk: Any, caplog: pytest.LogCaptureFixture, trusted: bool
) -> None:
    """uvicorn's ProxyHeadersMiddleware added to the app runs inside the security middleware,
    which reads the client address first: without OTEL_SECAUDIT_TRUSTED_PROXIES every
    violation (and block) would be keyed on the proxy, so the start says so, once."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    settings = {"trusted_proxies": "127.0.0.1/32"} if trusted else {}
    sdk: SDK = make_sdk(**settings)
    FastAPIInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = _app([])
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=["127.0.0.1"])
    with caplog.at_level("WARNING", logger="otel_secaudit"):
        for _ in range(2):
            assert _get(app, "/ok", client="127.0.0.1").status_code == 200
    warnings = [
        r.getMessage() for r in caplog.records if "ProxyHeadersMiddleware" in r.getMessage()
    ]
    if trusted:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert "OTEL_SECAUDIT_TRUSTED_PROXIES" in warnings[0]
