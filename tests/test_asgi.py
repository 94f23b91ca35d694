"""The ASGI middleware through real Starlette/FastAPI apps (httpx ASGITransport, in-memory SDK)."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import string
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from harness.apps.secapp import VALID_TOKEN, create_app
from otel_secaudit import runtime
from otel_secaudit.web.asgi import SecAuditMiddleware
from otel_secaudit.web.client import resolve_client_address

from .conftest import SDK, detecting_runtime, http_scope


def fastapi_app(sdk: SDK, **middleware: Any) -> Any:
    """The test app with contrib's server span outside and our middleware inside."""
    app = create_app()
    app.add_middleware(SecAuditMiddleware, **middleware)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
    )
    return app


def with_detection(sdk: SDK, detectors: list[Any]) -> Any:
    """Make the SDK's recorder the process-wide runtime with abuse detection on."""
    rt = detecting_runtime(sdk)
    detectors.append(rt.detector)
    return rt.detector


def get(
    app: Any,
    path: str,
    headers: Any = None,
    client: tuple[str, int] = ("127.0.0.1", 5000),
    method: str = "GET",
    **kwargs: Any,
) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.request(method, path, headers=headers, **kwargs)

    return asyncio.run(run())


def events(sdk: SDK, name: str | None = None) -> list[Any]:
    return [
        log.log_record
        for log in sdk.logs()
        if log.instrumentation_scope.name == "otel_secaudit"
        and (name is None or log.log_record.event_name == name)
    ]


def server_span(sdk: SDK) -> Any:
    spans = [s for s in sdk.spans() if s.kind.name == "SERVER"]
    assert len(spans) == 1, spans
    return spans[0]


# -- status events and request context -------------------------------------------------------


def test_status_event_has_method_route_status_on_log_span_and_metric(sdk: SDK) -> None:
    app = fastapi_app(sdk)
    assert get(app, "/forbidden", headers={"user-agent": "probe/1.0"}).status_code == 403

    (record,) = events(sdk)
    assert record.event_name == "authz.permission_denied"
    attrs = dict(record.attributes)
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == "/forbidden"
    assert attrs["http.response.status_code"] == 403
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["user_agent.original"] == "probe/1.0"
    span = server_span(sdk)
    assert record.trace_id == span.context.trace_id
    assert record.span_id == span.context.span_id
    assert [e.name for e in span.events] == ["authz.permission_denied"]
    assert (
        sdk.total(
            "security.violations",
            security__event__name="authz.permission_denied",
            http__route="/forbidden",
            http__response__status_code=403,
        )
        == 1
    )


@pytest.mark.parametrize(
    ("path", "event"),
    [("/private", "auth.unauthenticated"), ("/limited", "request.rate_limited")],
)
def test_default_status_mapping(sdk: SDK, path: str, event: str) -> None:
    app = fastapi_app(sdk)
    get(app, path)
    assert [r.event_name for r in events(sdk)] == [event]


def test_success_and_unlisted_status_record_nothing(sdk: SDK) -> None:
    app = fastapi_app(sdk)
    assert get(app, "/ok").status_code == 200
    assert get(app, "/nope").status_code == 404
    authorized = {"authorization": f"Bearer {VALID_TOKEN}"}
    assert get(app, "/private", headers=authorized).status_code == 200
    assert events(sdk) == []


def test_one_request_one_violation(sdk: SDK) -> None:
    app = fastapi_app(sdk)
    assert get(app, "/tenants/t2/invoices").status_code == 403
    (record,) = events(sdk)  # the app's cross_tenant, no extra permission_denied
    assert record.event_name == "authz.cross_tenant"
    attrs = dict(record.attributes)
    # request context added to the application's own record
    assert attrs["http.route"] == "/tenants/{tenant_id}/invoices"
    assert attrs["url.path"] == "/tenants/t2/invoices"
    assert attrs["http.request.method"] == "GET"
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["network.peer.address"] == "127.0.0.1"
    assert attrs["security.tenant.requested_id"] == "t2"
    assert sdk.total("security.violations") == 1
    # the next request has a fresh context: its 403 is recorded again
    get(app, "/forbidden")
    assert sdk.total("security.violations") == 2


def test_unhandled_exception_is_not_swallowed_and_500_can_be_mapped(make_sdk: Any) -> None:
    sdk = make_sdk(status_events={500: "request.blocked"})
    app = fastapi_app(sdk)
    with pytest.raises(RuntimeError):
        get(app, "/boom")
    (record,) = events(sdk)
    assert dict(record.attributes)["http.response.status_code"] == 500


def test_login_failure_counts_once_and_body_never_exported(sdk: SDK) -> None:
    app = fastapi_app(sdk)
    response = get(
        app, "/login", method="POST", json={"username": "alice", "password": "hunter2-secret"}
    )
    assert response.status_code == 401
    (record,) = events(sdk)
    assert record.event_name == "auth.login.failed"
    assert "hunter2-secret" not in repr(record.attributes)
    assert "alice" not in repr(record.attributes)  # user.hash, not the name
    assert "user.hash" in record.attributes


# -- user id -----------------------------------------------------------------------------------


def test_user_id_from_request_state(sdk: SDK) -> None:
    app = fastapi_app(sdk)
    get(app, "/whoami", headers={"x-user": "u-42"})
    (record,) = events(sdk, "data.sensitive.accessed")
    assert record.attributes["user.id"] == "u-42"


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> Any:
        name = conn.headers.get("x-login")
        if not name:
            return None
        user = SimpleUser(name)
        if name == "with-id":
            user.id = "id-7"  # type: ignore[attr-defined]
        return AuthCredentials(["authenticated"]), user


def starlette_app(**middleware: Any) -> Starlette:
    async def denied(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=403)

    return Starlette(
        routes=[Route("/denied/{thing}", denied)],
        middleware=[
            Middleware(SecAuditMiddleware, **middleware),
            Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
        ],
    )


def test_user_id_from_authentication_middleware(sdk: SDK) -> None:
    app = starlette_app()
    get(app, "/denied/x", headers={"x-login": "bob"})
    get(app, "/denied/x", headers={"x-login": "with-id"})
    get(app, "/denied/x")
    users = [r.attributes.get("user.id") for r in events(sdk)]
    assert users == ["bob", "id-7", None]
    assert {r.attributes["http.route"] for r in events(sdk)} == {"/denied/{thing}"}


def test_configured_resolver_wins_and_its_errors_are_contained(sdk: SDK) -> None:
    def resolver(scope: dict[str, Any]) -> str | None:
        if scope["path"].endswith("raise"):
            raise RuntimeError("resolver bug")
        return "from-resolver"

    app = starlette_app(user_id_resolver=resolver)
    get(app, "/denied/x", headers={"x-login": "bob"})
    assert get(app, "/denied/raise", headers={"x-login": "bob"}).status_code == 403
    assert [r.attributes.get("user.id") for r in events(sdk)] == ["from-resolver", None]


# -- client address through trusted proxies ----------------------------------------------------


def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(make_sdk: Any) -> None:
    sdk = make_sdk(trusted_proxies="10.0.0.0/8")
    app = fastapi_app(sdk)
    get(app, "/forbidden", headers={"x-forwarded-for": "1.2.3.4"}, client=("198.51.100.7", 1))
    get(app, "/forbidden", headers={"forwarded": "for=1.2.3.4"}, client=("198.51.100.7", 1))
    assert [r.attributes["client.address"] for r in events(sdk)] == ["198.51.100.7"] * 2


def test_trusted_proxy_chain_rightmost_untrusted_hop(make_sdk: Any) -> None:
    sdk = make_sdk(trusted_proxies="10.0.0.0/8,192.168.0.0/16")
    app = fastapi_app(sdk)
    chain = "6.6.6.6, 203.0.113.9, 192.168.1.1"  # client lied "6.6.6.6" on the left
    get(app, "/forbidden", headers={"x-forwarded-for": chain}, client=("10.0.0.2", 1))
    get(
        app,
        "/forbidden",
        headers=[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.10:4444")],
        client=("10.0.0.2", 1),
    )
    records = events(sdk)
    assert [r.attributes["client.address"] for r in records] == ["203.0.113.9", "203.0.113.10"]
    assert {r.attributes["network.peer.address"] for r in records} == {"10.0.0.2"}


def test_forwarded_header_when_configured(make_sdk: Any) -> None:
    sdk = make_sdk(trusted_proxies="10.0.0.0/8", client_address_header="forwarded")
    app = fastapi_app(sdk)
    forwarded = 'for=6.6.6.6, for="[2001:db8::1]:4711";proto=https'
    get(app, "/forbidden", headers={"forwarded": forwarded}, client=("10.0.0.2", 1))
    (record,) = events(sdk)
    assert record.attributes["client.address"] == "2001:db8::1"


@pytest.mark.parametrize(
    ("header", "proxy_sets"),
    [
        ("forwarded", {"forwarded": "for=203.0.113.77"}),
        ("x-real-ip", {"x-real-ip": "203.0.113.77"}),
        ("x-forwarded-for", {"x-forwarded-for": "203.0.113.77", "forwarded": "for=9.9.9.9"}),
    ],
)
def test_only_the_configured_header_is_read(
    make_sdk: Any, header: str, proxy_sets: dict[str, str]
) -> None:
    """A trusted proxy that sets its own header but passes the client's X-Forwarded-For (or
    Forwarded) through must not let the client choose its address."""
    sdk = make_sdk(trusted_proxies="10.0.0.0/8", client_address_header=header)
    app = fastapi_app(sdk)
    client_claims = {"x-forwarded-for": "198.51.100.66"} if header != "x-forwarded-for" else {}
    get(app, "/forbidden", headers={**client_claims, **proxy_sets}, client=("10.0.0.2", 1))
    (record,) = events(sdk)
    assert record.attributes["client.address"] == "203.0.113.77"


NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize(
    ("peer", "header", "values", "expected"),
    [
        ("10.0.0.1", "x-forwarded-for", ["unknown"], None),
        ("10.0.0.1", "x-forwarded-for", ["1.2.3.4, garbage"], None),
        ("10.0.0.1", "x-forwarded-for", ["\xff\xfe\x00, 1.2.3.4"], "1.2.3.4"),
        ("10.0.0.1", "x-forwarded-for", ["10.0.0.9, 10.0.0.8"], "10.0.0.9"),
        ("10.0.0.1", "x-forwarded-for", [""], "10.0.0.1"),
        ("10.0.0.1", "forwarded", ["for=_hidden"], None),
        ("10.0.0.1", "x-forwarded-for", ["::ffff:1.2.3.4"], "1.2.3.4"),
        ("::1", "x-forwarded-for", ["[2001:db8::5]"], "2001:db8::5"),
        ("10.0.0.1", "x-forwarded-for", ["9.9.9.9," * 20000 + "5.6.7.8"], "5.6.7.8"),
        ("testclient", "x-forwarded-for", ["1.2.3.4"], "testclient"),
        (None, "x-forwarded-for", [], None),
        ("10.0.0.1", "x-real-ip", ["6.6.6.6", "203.0.113.4"], "203.0.113.4"),
        ("10.0.0.1", "x-real-ip", ["10.0.0.3"], "10.0.0.3"),
        ("198.51.100.1", "x-real-ip", ["203.0.113.4"], "198.51.100.1"),
    ],
)
def test_resolve_client_address_edge_cases(
    peer: str | None, header: str, values: list[str], expected: str | None
) -> None:
    assert resolve_client_address(peer, values, NETS, header) == expected


@settings(max_examples=300, deadline=None)
@given(
    peer=st.one_of(st.none(), st.ip_addresses().map(str), st.text(max_size=80)),
    values=st.lists(st.binary(max_size=300), max_size=6),
    names=st.lists(st.sampled_from([b"x-forwarded-for", b"forwarded", b"X-Forwarded-For"])),
)
def test_resolve_client_address_never_raises_and_is_bounded(
    peer: str | None, values: list[bytes], names: list[bytes]
) -> None:
    texts = [value.decode("latin-1") for value in values]
    header = (names or [b"x-forwarded-for"])[0].decode().lower()
    result = resolve_client_address(peer, texts, NETS, header)
    if result is not None:
        assert len(result) <= 64
        if result != (peer or "")[:64]:
            ipaddress.ip_address(result)  # anything taken from a header is a valid IP


def test_bad_headers_do_not_break_requests(make_sdk: Any) -> None:
    sdk = make_sdk(trusted_proxies="127.0.0.0/8")
    app = fastapi_app(sdk)
    bad = [
        [(b"x-forwarded-for", b"\xc3\x28\xff\xfe"), (b"user-agent", b"\xff\x00\x1b[31mevil")],
        [(b"x-forwarded-for", b"1.1.1.1")] * 50 + [(b"forwarded", b"for=;;;===,,,")],
        [(b"x-forwarded-for", b"a" * 8000), (b"user-agent", b"U" * 8000)],
        [(b"forwarded", b'for="[::1'), (b"x-forwarded-for", b" , , ")],
    ]
    for headers in bad:
        assert get(app, "/forbidden", headers=headers).status_code == 403
    records = events(sdk)
    assert len(records) == len(bad)
    for record in records:
        for value in record.attributes.values():
            if isinstance(value, str):
                assert len(value) <= 1100
                assert "\x1b" not in value and "\x00" not in value
    assert sdk.recorder.stats.snapshot()["internal_errors"] == {}


async def _call(app: Any, path: str) -> int:
    """Drive the ASGI app directly (10,000 requests need to be cheap)."""
    status = 0
    scope = http_scope(path)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def test_ten_thousand_random_paths_keep_metric_series_bounded(make_sdk: Any) -> None:
    sdk = make_sdk(status_events={404: "authz.permission_denied", 403: "authz.permission_denied"})
    app = create_app()
    app.add_middleware(SecAuditMiddleware)
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "-_.~%"

    async def run() -> list[int]:
        statuses = []
        for i in range(10_000):
            segment = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            path = f"/items/{segment}" if i % 3 == 0 else f"/{segment}/{i}"
            statuses.append(await _call(app, path))
        return statuses

    statuses = asyncio.run(run())
    assert statuses.count(404) > 6000
    # no route matched: http.route is absent (never a placeholder), one bounded series
    routes = {p.attributes.get("http.route") for p in sdk.points("security.violations")}
    assert routes == {None}
    assert len(sdk.points("security.violations")) == 1
    assert len(sdk.points("security.events")) == 1
    assert sdk.total("security.violations") == statuses.count(404)


# -- blocks ------------------------------------------------------------------------------------


def test_block_answers_429_once_recorded_and_app_not_called(
    make_sdk: Any, detectors: list[Any]
) -> None:
    sdk = make_sdk(host_threshold=3, block_seconds=120)
    detector = with_detection(sdk, detectors)
    if True:
        app = fastapi_app(sdk)
        for _ in range(3):
            assert get(app, "/private").status_code == 401
        assert detector.flush(5.0)
        calls_before = dict(app.state.calls)
        response = get(app, "/private")
        assert response.status_code == 429
        assert 110 <= int(response.headers["retry-after"]) <= 120
        assert dict(app.state.calls) == calls_before  # the app was not called
        blocked = events(sdk, "request.blocked")
        assert len(blocked) == 1
        assert blocked[0].attributes["client.address"] == "127.0.0.1"
        assert blocked[0].attributes["http.response.status_code"] == 429
        assert not events(sdk, "request.rate_limited")  # one request, one violation
        assert sdk.total("security.requests.blocked", security__abuse__scope="host") == 1
        # the blocked request keeps the route it asked for
        assert blocked[0].attributes["http.route"] == "/private"
        assert blocked[0].attributes["security.block.count"] == 1
        # every refusal is counted; request.blocked is written at most once per key per 60 s
        for _ in range(3):
            assert get(app, "/private").status_code == 429
        assert len(events(sdk, "request.blocked")) == 1
        assert sdk.total("security.requests.blocked", security__abuse__scope="host") == 4
        # another client is not blocked
        assert get(app, "/private", client=("127.0.0.2", 1)).status_code == 401


def test_detector_errors_let_the_request_through(sdk: SDK, make_sdk: Any) -> None:
    sdk = make_sdk(block_seconds=60, strict=False)

    class Broken:
        def refusal(self, address: str) -> Any:
            raise RuntimeError("store exploded")

    runtime.swap(runtime.Runtime(sdk.recorder, Broken(), tracer_provider=sdk.tracer_provider))  # type: ignore[arg-type]
    app = fastapi_app(sdk)
    assert get(app, "/ok").status_code == 200
    assert get(app, "/forbidden").status_code == 403
    assert sdk.recorder.stats.snapshot()["internal_errors"] == {"web.block:RuntimeError": 2}


def test_websocket_and_lifespan_pass_through(sdk: SDK) -> None:
    seen: list[str] = []

    async def inner(scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        seen.append(scope["type"])

    middleware = SecAuditMiddleware(inner)
    asyncio.run(middleware({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    asyncio.run(middleware({"type": "websocket", "path": "/ws"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


# -- query redaction on spans ------------------------------------------------------------------


def test_query_secrets_scrubbed_from_contrib_server_span(sdk: SDK) -> None:
    app = fastapi_app(sdk)
    get(app, "/ok?api_key=SUPERSECRET99&page=2&password=hunter2")
    span = server_span(sdk)
    exported = repr(dict(span.attributes))
    assert "SUPERSECRET99" not in exported and "hunter2" not in exported
    assert "page=2" in exported


def test_module_recorder_is_followed(make_sdk: Any) -> None:
    first = make_sdk()
    app = fastapi_app(first)
    get(app, "/forbidden")
    second = make_sdk()
    assert runtime.current().recorder is second.recorder
    get(app, "/forbidden")
    assert len(events(first)) == 1 and len(events(second)) == 1


_HEADER_NAMES = [b"x-forwarded-for", b"forwarded", b"user-agent", b"X-Forwarded-For", b"cookie"]


@settings(max_examples=150, deadline=None)
@given(
    headers=st.lists(
        st.tuples(st.sampled_from(_HEADER_NAMES), st.binary(max_size=2000)), max_size=8
    ),
    path=st.text(min_size=1, max_size=300).map(lambda p: "/" + p),
    peer=st.sampled_from(["10.0.0.1", "203.0.113.1", "::1", "not-an-ip"]),
)
def test_middleware_survives_arbitrary_headers_and_paths(
    headers: list[tuple[bytes, bytes]], path: str, peer: str
) -> None:
    sdk = SDK(trusted_proxies="10.0.0.0/8,::1/128")
    previous = runtime.swap(sdk.runtime)
    try:
        statuses: list[int] = []

        async def deny(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 403, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        async def run() -> None:
            scope = {
                "type": "http",
                "method": "GET",
                "path": path,
                "query_string": b"",
                "headers": headers,
                "client": (peer, 1),
            }

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await SecAuditMiddleware(deny)(scope, None, send)  # type: ignore[arg-type]

        asyncio.run(run())
        assert statuses == [403]
        (record,) = events(sdk)
        attrs = dict(record.attributes)
        assert "http.route" not in attrs  # no route matched
        assert len(attrs.get("url.path", "")) <= 1100
        assert len(attrs.get("user_agent.original", "")) <= 300
        client = attrs.get("client.address")
        if client is not None and client != "not-an-ip":
            ipaddress.ip_address(client)
        assert sdk.recorder.stats.snapshot()["internal_errors"] == {}
    finally:
        runtime.swap(previous)
        sdk.shutdown()


# -- helpers, used inside a request ------------------------------------------------------------


def _jwt_errors() -> dict[str, BaseException]:
    """Real PyJWT exceptions, from decoding real bad tokens."""
    import time

    import jwt

    key = "k" * 32
    now = int(time.time())

    def error(token: str, **options: Any) -> BaseException:
        try:
            jwt.decode(token, key, algorithms=["HS256"], **options)
        except jwt.PyJWTError as exc:
            return exc
        raise AssertionError("token unexpectedly valid")

    good = {"sub": "u1", "jti": "abcdef0123456789", "exp": now + 60}
    return {
        "expired": error(jwt.encode({**good, "exp": now - 60}, key)),
        "bad_signature": error(jwt.encode(good, "x" * 32)),
        "malformed": error("not.a.jwt"),
        "missing_jti": error(
            jwt.encode({"sub": "u1", "exp": now + 60}, key), options={"require": ["jti"]}
        ),
        "bad_audience": error(jwt.encode({**good, "aud": "other"}, key), audience="api"),
        "not_yet_valid": error(jwt.encode({**good, "nbf": now + 3600}, key)),
    }


def test_helpers_inside_a_request(sdk: SDK) -> None:
    from otel_secaudit import helpers

    errors = _jwt_errors()

    async def endpoint(request: Request) -> PlainTextResponse:
        helpers.csrf_mismatch()
        helpers.cross_tenant("u1", "t1", "t2", resource_type="invoice")
        helpers.tenant_context_missing(resource_type="report")
        helpers.permission_denied("invoices:delete", resource_id=42)
        helpers.login_succeeded("u1")
        helpers.login_failed("mallory")
        for exc in errors.values():
            helpers.token_failure(exc, jti="abcdef0123456789")
        helpers.token_revoked("fedcba9876543210", user_id="u1")
        return PlainTextResponse("no", status_code=403)

    app = Starlette(routes=[Route("/h", endpoint)], middleware=[Middleware(SecAuditMiddleware)])
    assert get(app, "/h").status_code == 403
    records = events(sdk)
    summary = [
        (r.event_name, r.attributes.get("security.reason"), r.attributes.get("error.type"))
        for r in records
    ]
    assert summary == [
        ("request.csrf_mismatch", "token_mismatch", None),
        ("authz.cross_tenant", "tenant_mismatch", None),
        ("authz.tenant_context_missing", "no_tenant", None),
        ("authz.permission_denied", None, None),
        ("auth.login.succeeded", None, None),
        ("auth.login.failed", "invalid_credentials", None),
        ("auth.token.expired", "expired", "ExpiredSignatureError"),
        ("auth.token.invalid", "bad_signature", "InvalidSignatureError"),
        ("auth.token.invalid", "malformed", "DecodeError"),
        ("auth.token.claims_invalid", "missing_jti", "MissingRequiredClaimError"),
        ("auth.token.claims_invalid", "bad_audience", "InvalidAudienceError"),
        ("auth.token.claims_invalid", "not_yet_valid", "ImmatureSignatureError"),
        ("auth.token.revoked", "revoked", None),
    ]
    by_name = {r.event_name: dict(r.attributes) for r in records}
    assert by_name["authz.permission_denied"]["security.permission"] == "invoices:delete"
    assert by_name["authz.cross_tenant"]["security.tenant.requested_id"] == "t2"
    for record in records:
        attrs = dict(record.attributes)
        assert attrs["http.route"] == "/h"  # request context on every helper event
        if record.event_name.startswith("auth.token."):
            expected = "fedcba98" if record.event_name == "auth.token.revoked" else "abcdef01"
            assert attrs["security.token.jti_prefix"] == expected
            assert "abcdef0123456789" not in repr(attrs)
    # the app recorded failures: the middleware adds no status event for the 403
    assert "authz.permission_denied" in by_name
    assert len([r for r in records if r.event_name == "authz.permission_denied"]) == 1


def test_token_failure_without_pyjwt_classes() -> None:
    from otel_secaudit.helpers import classify_token_error

    class ExpiredSignatureError(Exception):
        pass

    class MyExpired(ExpiredSignatureError):
        pass

    assert classify_token_error(MyExpired()) == ("auth.token.expired", "expired")
    assert classify_token_error(ValueError("x")) == ("auth.token.invalid", "invalid")


def test_captured_secret_headers_scrubbed_without_the_environment(sdk: SDK) -> None:
    """Headers captured through instrument_app(http_capture_headers_server_request=...) are
    scrubbed too (not only when the environment variable asks contrib for them)."""
    app = create_app()
    app.add_middleware(SecAuditMiddleware)
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=sdk.tracer_provider,
        http_capture_headers_server_request=[
            "ocp-apim-subscription-key",
            "authorization",
            "x-trace",
        ],
    )
    headers = {
        "ocp-apim-subscription-key": "APIMKEY0123456789abcdef",
        "authorization": "Bearer abc.def.ghi",
        "x-trace": "harmless-value",
    }
    assert get(app, "/ok", headers=headers).status_code == 200
    attributes = dict(server_span(sdk).attributes)
    assert "APIMKEY0123456789abcdef" not in repr(attributes)
    assert "abc.def.ghi" not in repr(attributes)
    assert attributes["http.request.header.ocp_apim_subscription_key"] == ("[REDACTED]",)
    assert attributes["http.request.header.x_trace"] == ("harmless-value",)
