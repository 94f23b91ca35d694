"""Every way an app gets its server span, with real apps and real HTTP (httpx ASGITransport):
the security middleware runs INSIDE the span, so a blocked request still has a server span, the
event's span is the server span, and query secrets are scrubbed on it. Plus http.route of
included routers (FastAPI >= 0.137) and of blocked requests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import fastapi
import fastapi.applications
import httpx
import pytest
import starlette.applications
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.starlette import StarletteInstrumentor
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from otel_secaudit import SecAuditInstrumentor, runtime
from otel_secaudit.web.asgi import SecAuditMiddleware

from .conftest import SDK, uninstrument_web

ORIGINAL_STARLETTE = starlette.applications.Starlette
ORIGINAL_FASTAPI = fastapi.FastAPI
SECRET = "QUERYSECRET-7f3a9"


@pytest.fixture(autouse=True)
def clean_instrumentation() -> Iterator[None]:
    yield
    uninstrument_web()
    assert starlette.applications.Starlette is ORIGINAL_STARLETTE
    assert fastapi.FastAPI is ORIGINAL_FASTAPI


@pytest.fixture
def blocking_sdk(make_sdk: Any) -> SDK:
    """Two violations from one address block it for a minute."""
    sdk: SDK = make_sdk(host_threshold=2, block_seconds=60)
    return sdk


def request(app: Any, path: str, client: str = "203.0.113.7") -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get(path)

    return asyncio.run(run())


async def denied(request: Any) -> PlainTextResponse:
    return PlainTextResponse("no", status_code=403)


async def fine(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app(**kwargs: Any) -> Any:
    # looked up at call time: StarletteInstrumentor replaces the name with its subclass
    return starlette.applications.Starlette(
        routes=[Route("/denied/{thing}", denied), Route("/fine", fine)], **kwargs
    )


def fastapi_app(**kwargs: Any) -> Any:
    app = fastapi.FastAPI(**kwargs)
    app.add_api_route("/denied/{thing}", _fastapi_denied)
    app.add_api_route("/fine", _fastapi_fine)
    return app


async def _fastapi_denied(thing: str) -> None:
    raise fastapi.HTTPException(403)


async def _fastapi_fine() -> dict[str, bool]:
    return {"ok": True}


def check_inside_the_span(sdk: SDK, app: Any) -> None:
    """The assertions every layout must pass."""
    # 1. query secrets are scrubbed on the server span, other parameters kept as sent
    assert request(app, f"/fine?token={SECRET}&page=2", client="198.51.100.1").status_code == 200
    (span,) = sdk.server_spans()
    exported = repr(dict(span.attributes))
    assert SECRET not in exported
    assert "page=2" in exported
    # 2. the status event belongs to the server span
    assert request(app, "/denied/a").status_code == 403
    span = sdk.server_spans()[-1]
    (record,) = sdk.security_logs("authz.permission_denied")
    assert record.span_id == span.context.span_id
    assert record.attributes["http.route"] == "/denied/{thing}"
    assert [e.name for e in span.events] == ["authz.permission_denied"]
    # 3. a blocked request has a server span, and the request.blocked event is on it
    assert request(app, "/denied/b").status_code == 403  # second violation: blocked
    detector = runtime.current().detector
    assert detector is not None and detector.flush(5.0)
    response = request(app, "/denied/c")
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 60
    blocked_span = sdk.server_spans()[-1]
    (blocked,) = sdk.security_logs("request.blocked")
    assert blocked.span_id == blocked_span.context.span_id
    assert blocked.attributes["http.route"] == "/denied/{thing}"  # the route it asked for
    # 4. a blocked request to no route has no http.route (never a placeholder)
    for _ in range(2):
        assert request(app, "/denied/d", client="203.0.113.8").status_code == 403
    assert detector.flush(5.0)
    assert request(app, "/no/such/page", client="203.0.113.8").status_code == 429
    unmatched = sdk.security_logs("request.blocked")[-1]
    assert unmatched.attributes["client.address"] == "203.0.113.8"
    assert "http.route" not in unmatched.attributes


def test_starlette_instrumentor_then_secaudit(blocking_sdk: SDK) -> None:
    StarletteInstrumentor().instrument(tracer_provider=blocking_sdk.tracer_provider)
    SecAuditInstrumentor().instrument(tracer_provider=blocking_sdk.tracer_provider)
    check_inside_the_span(blocking_sdk, starlette_app())


def test_secaudit_then_starlette_instrumentor_with_later_user_middleware(
    blocking_sdk: SDK,
) -> None:
    SecAuditInstrumentor().instrument(tracer_provider=blocking_sdk.tracer_provider)
    StarletteInstrumentor().instrument(tracer_provider=blocking_sdk.tracer_provider)
    app = starlette_app()
    app.add_middleware(GZipMiddleware)  # added after the span middleware: outside it
    check_inside_the_span(blocking_sdk, app)


def test_app_added_opentelemetry_middleware_itself(blocking_sdk: SDK) -> None:
    SecAuditInstrumentor().instrument(tracer_provider=blocking_sdk.tracer_provider)
    app = starlette_app(
        middleware=[
            Middleware(GZipMiddleware),
            Middleware(OpenTelemetryMiddleware, tracer_provider=blocking_sdk.tracer_provider),
        ]
    )
    check_inside_the_span(blocking_sdk, app)


def test_app_wrapped_in_opentelemetry_middleware(blocking_sdk: SDK) -> None:
    SecAuditInstrumentor().instrument(tracer_provider=blocking_sdk.tracer_provider)
    app = OpenTelemetryMiddleware(fastapi_app(), tracer_provider=blocking_sdk.tracer_provider)
    check_inside_the_span(blocking_sdk, app)


@pytest.mark.parametrize("order", ["instrument_app-first", "secaudit-first"])
def test_fastapi_instrumentor_instrument_app_either_order(blocking_sdk: SDK, order: str) -> None:
    app = fastapi_app()
    providers = {"tracer_provider": blocking_sdk.tracer_provider}
    if order == "instrument_app-first":
        FastAPIInstrumentor.instrument_app(app, **providers)
        SecAuditInstrumentor().instrument(**providers)
    else:
        SecAuditInstrumentor().instrument(**providers)
        FastAPIInstrumentor.instrument_app(app, **providers)
    check_inside_the_span(blocking_sdk, app)
    FastAPIInstrumentor.uninstrument_app(app)


def test_fastapi_instrumentor_global_before_secaudit(blocking_sdk: SDK) -> None:
    FastAPIInstrumentor().instrument(tracer_provider=blocking_sdk.tracer_provider)
    SecAuditInstrumentor().instrument(tracer_provider=blocking_sdk.tracer_provider)
    check_inside_the_span(blocking_sdk, fastapi_app())


@pytest.mark.newest_sdk  # FastAPI's own telemetry exports no span on SDK 1.39 (test_instrumentor)
def test_fastapi_own_telemetry(blocking_sdk: SDK) -> None:
    SecAuditInstrumentor().instrument(tracer_provider=blocking_sdk.tracer_provider)
    app = fastapi_app(
        telemetry={"tracer_provider": blocking_sdk.tracer_provider, "operation_spans": False}
    )
    check_inside_the_span(blocking_sdk, app)


# -- routes -----------------------------------------------------------------------------------


def _router_app() -> Any:
    app = fastapi.FastAPI()
    users = fastapi.APIRouter()

    @users.get("/me")
    async def me() -> None:
        raise fastapi.HTTPException(401)

    @users.get("/{user_id}/reset/{token}")
    async def reset(user_id: str, token: str) -> None:
        raise fastapi.HTTPException(403)

    app.include_router(users, prefix="/users")
    nested = fastapi.APIRouter(prefix="/v2")
    nested.include_router(users, prefix="/people")
    app.include_router(nested)
    return app


@pytest.mark.parametrize(
    ("path", "route"),
    [("/users/me", "/users/me"), ("/v2/people/me", "/v2/people/me")],
)
def test_included_router_routes_keep_their_prefix(sdk: SDK, path: str, route: str) -> None:
    """FastAPI >= 0.137 runs included routes without copying them (their own path is /me);
    http.route is the full template, as FastAPI's instrumentation reports it."""
    FastAPIInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = _router_app()
    assert request(app, path).status_code == 401
    (record,) = sdk.security_logs()
    assert record.attributes["http.route"] == route
    (span,) = sdk.server_spans()
    assert span.attributes["http.route"] == route
    assert sdk.total("security.violations", http__route=route) == 1


def test_path_tokens_are_not_copied_into_url_path(sdk: SDK) -> None:
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    token = "pwreset-4f9c2e71b6a84d0e"
    assert request(_router_app(), f"/users/42/reset/{token}").status_code == 403
    (record,) = sdk.security_logs()
    assert record.attributes["http.route"] == "/users/{user_id}/reset/{token}"
    assert token not in repr(dict(record.attributes))
    assert record.attributes["url.path"].startswith("/users/42/reset/")


def test_fastapi_private_route_state_is_still_there() -> None:
    """route_template() reads FastAPI's effective route context (private); this fails when a
    FastAPI release moves it, instead of silently losing router prefixes."""
    from otel_secaudit.web.asgi import route_template

    seen: list[str | None] = []
    app = _router_app()

    class Probe:
        def __init__(self, inner: Any) -> None:
            self.app = inner

        async def __call__(self, scope: Any, receive: Any, send: Callable[..., Any]) -> None:
            async def probe_send(message: Any) -> None:
                if message["type"] == "http.response.start":
                    seen.append(route_template(scope))
                await send(message)

            await self.app(scope, receive, probe_send)

    app.add_middleware(Probe)
    request(app, "/users/me")
    assert seen == ["/users/me"]


def test_blocked_request_keeps_its_included_router_route(blocking_sdk: SDK) -> None:
    SecAuditInstrumentor().instrument(tracer_provider=blocking_sdk.tracer_provider)
    app = _router_app()
    for _ in range(2):
        assert request(app, "/users/me").status_code == 401
    detector = runtime.current().detector
    assert detector is not None and detector.flush(5.0)
    assert request(app, "/v2/people/me").status_code == 429
    (blocked,) = blocking_sdk.security_logs("request.blocked")
    assert blocked.attributes["http.route"] == "/v2/people/me"


@pytest.mark.parametrize("record_user_name", [False, True])
def test_email_addresses_leave_no_url_attribute(make_sdk: Any, record_user_name: bool) -> None:
    """E-mail addresses in URL paths and query values are personal data: they become
    [REDACTED] in the plugin's url.path and in contrib's URL attributes (http.route untouched),
    unless OTEL_SECAUDIT_RECORD_USER_NAME=true; the other query values are kept as contrib
    wrote them."""
    sdk = make_sdk(record_user_name=record_user_name)
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = starlette.applications.Starlette(routes=[Route("/password-recovery/{email}", denied)])
    app = OpenTelemetryMiddleware(app, tracer_provider=sdk.tracer_provider)
    path = "/password-recovery/alice@example.com?notify=bob%40example.org&q=juniper%20lumen"
    assert request(app, path).status_code == 403
    (span,) = sdk.server_spans()
    (record,) = sdk.security_logs("authz.permission_denied")
    assert record.attributes["http.route"] == "/password-recovery/{email}"
    exported = repr(dict(span.attributes)) + repr(dict(record.attributes))
    if record_user_name:
        assert "alice@example.com" in exported and "bob@example.org" in exported
        return
    assert "alice" not in exported and "bob" not in exported, exported
    assert record.attributes["url.path"] == "/password-recovery/[REDACTED]"
    url = span.attributes.get("http.url") or span.attributes.get("url.full")
    assert url.endswith("/password-recovery/[REDACTED]?notify=[REDACTED]&q=juniper lumen"), url


def _security_middleware(app: Any) -> Any:
    from otel_secaudit.web.asgi import SecAuditMiddleware

    stack = app.build_middleware_stack()
    while stack is not None and not isinstance(stack, SecAuditMiddleware):
        stack = getattr(stack, "app", None)
    return stack


def test_patching_again_takes_the_new_options_and_unpatch_restores_the_originals() -> None:
    from otel_secaudit.web import starlette as adapter

    starlette_class = starlette.applications.Starlette
    originals = {
        (klass, name): klass.__dict__[name]
        for klass, name in (
            (starlette_class, "build_middleware_stack"),
            (starlette_class, "__call__"),
            (fastapi.applications.FastAPI, "build_middleware_stack"),
        )
    }

    def first(scope: Any) -> None:
        return None

    def second(scope: Any) -> None:
        return None

    adapter.patch(user_id_resolver=first)
    adapter.patch(user_id_resolver=second)
    try:
        for (klass, name), original in originals.items():
            assert klass.__dict__[name].__wrapped__ is original  # one wrapper, not two
        middleware = _security_middleware(fastapi.FastAPI())
        assert middleware is not None and middleware._user_id_resolver is second
    finally:
        adapter.unpatch()
    for (klass, name), original in originals.items():
        assert klass.__dict__[name] is original
    assert _security_middleware(fastapi.FastAPI()) is None


@pytest.mark.parametrize("captured", [True, False])
def test_captured_headers_are_learned_from_the_span_middleware(sdk: SDK, captured: bool) -> None:
    """The middleware scans the server span for captured headers only when the span
    middleware around it captures some (instrument_app arguments or the environment); a
    secret header it captures is still [REDACTED]."""
    SecAuditInstrumentor().instrument(tracer_provider=sdk.tracer_provider)
    app = fastapi.FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {}

    capture = ["authorization", "x-trace"] if captured else None
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=sdk.tracer_provider, http_capture_headers_server_request=capture
    )
    headers = {"authorization": "Bearer abc.def.ghi", "x-trace": "harmless-value"}

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get("/ok", headers=headers)

    assert asyncio.run(run()).status_code == 200
    serving = app.middleware_stack  # the stack that served the request
    while not isinstance(serving, SecAuditMiddleware):
        serving = serving.app
    assert serving.captured_headers is captured
    (span,) = sdk.server_spans()
    attributes = dict(span.attributes)
    assert "abc.def.ghi" not in repr(attributes)
    if captured:
        assert attributes["http.request.header.authorization"] == ("[REDACTED]",)
        assert attributes["http.request.header.x_trace"] == ("harmless-value",)
    else:
        assert not [key for key in attributes if key.startswith("http.request.header.")]
