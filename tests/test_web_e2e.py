"""End to end: the test app served by uvicorn under ``opentelemetry-instrument`` in a subprocess,
real HTTP requests, a real OTLP/gRPC receiver and (for blocks) a real Redis shared by two app
processes. Nothing in the app mentions the middleware: the entry point does it all."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import OTLPReceiver, RedisServer, Served, serve_uvicorn, telemetry_env, wait_for
from harness.apps.secapp import GOOD_PASSWORD, VALID_TOKEN

pytestmark = pytest.mark.slow


def start_app(
    receiver: OTLPReceiver,
    extra_env: dict[str, str] | None = None,
    app: str = "harness.apps.secapp:app",
    **settings: str,
) -> Served:
    env = {
        **telemetry_env(receiver.grpc_endpoint, protocol="grpc", **settings),
        "OTEL_SERVICE_NAME": "secaudit-e2e",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "",
        **(extra_env or {}),
    }
    return serve_uvicorn(env, app)


@pytest.fixture
def served(otlp_receiver: OTLPReceiver) -> Iterator[Served]:
    app = start_app(otlp_receiver, host_threshold="10")
    yield app
    app.stop()


def server_spans(receiver: OTLPReceiver) -> dict[str, Any]:
    """Server spans by trace ID (contrib's per-message "http send" spans left out)."""
    return {
        span.trace_id: span
        for span in receiver.spans()
        if "http.route" in span.attributes and "asgi.event.type" not in span.attributes
    }


def test_status_events_logs_spans_and_metrics_correlate(
    served: Served, otlp_receiver: OTLPReceiver
) -> None:
    with httpx.Client(base_url=served.base_url) as http:
        assert http.get("/private").status_code == 401
        assert http.get("/forbidden").status_code == 403
        assert http.get("/limited").status_code == 429
        assert http.get("/tenants/t9/invoices").status_code == 403
        assert http.get("/ok").status_code == 200

    expected = {
        "auth.unauthenticated": ("/private", 401),
        "authz.permission_denied": ("/forbidden", 403),
        "request.rate_limited": ("/limited", 429),
        # recorded by the app before it answered: the status is not known yet
        "authz.cross_tenant": ("/tenants/{tenant_id}/invoices", None),
    }
    logs = wait_for(
        lambda: (found := otlp_receiver.security_logs()) and len(found) >= 4 and found, timeout=20
    )
    assert sorted(log.event_name for log in logs) == sorted(expected)
    wait_for(lambda: len(server_spans(otlp_receiver)) >= 5, timeout=20)
    spans = server_spans(otlp_receiver)
    for log in logs:
        route, status = expected[log.event_name]
        assert log.attributes["http.route"] == route
        assert log.attributes.get("http.response.status_code") == status
        assert log.attributes["client.address"] == "127.0.0.1"
        span = spans[log.trace_id]  # the log's trace ID is the server span's
        assert log.span_id == span.span_id
        assert [name for name, _ in span.events] == [log.event_name]

    def violations() -> dict[tuple[str, Any], float]:
        totals: dict[tuple[str, Any], float] = {}
        for point in otlp_receiver.metric_points("security.violations"):
            key = (point.attributes["security.event.name"], point.attributes.get("http.route"))
            totals[key] = max(totals.get(key, 0), point.value)  # cumulative
        return totals

    wait_for(lambda: len(violations()) >= 4, timeout=20)
    assert violations() == {
        ("auth.unauthenticated", "/private"): 1,
        ("authz.permission_denied", "/forbidden"): 1,
        ("request.rate_limited", "/limited"): 1,
        ("authz.cross_tenant", "/tenants/{tenant_id}/invoices"): 1,
    }


SECRETS = {
    "authorization": "Bearer sk_live_AUTHSECRET123456789",
    "cookie": "sessionid=COOKIESECRET987654321",
    "query": "QUERYSECRET555444333",
    "body": "BODYSECRET-hunter2-xyz",
    "valid_token": VALID_TOKEN,
    "good_password": GOOD_PASSWORD,
}


def test_secrets_never_reach_the_collector(otlp_receiver: OTLPReceiver) -> None:
    # The operator also asked contrib to capture request headers, secrets included.
    capture = {
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "authorization,cookie,x-trace"
    }
    served = start_app(otlp_receiver, extra_env=capture)
    try:
        send_secrets(served)
        wait_for(lambda: len(otlp_receiver.security_logs()) >= 5, timeout=20)
        wait_for(lambda: len(server_spans(otlp_receiver)) >= 7, timeout=20)
        wait_for(lambda: otlp_receiver.metric_points("security.events"), timeout=20)
    finally:
        served.stop()
    raw = otlp_receiver.raw_bytes()
    assert b"page=2" in raw  # the query string itself was exported, scrubbed
    assert b"harmless-trace-value" in raw  # captured headers are exported, secrets are not
    for name, secret in SECRETS.items():
        assert secret.encode() not in raw, f"{name} secret leaked to the collector"
    assert b"mallory" not in raw  # failed-login user name is hashed


def send_secrets(served: Served) -> None:
    harmless = {"x-trace": "harmless-trace-value"}
    with httpx.Client(base_url=served.base_url, headers=harmless) as http:
        headers = {"authorization": SECRETS["authorization"], "cookie": SECRETS["cookie"]}
        assert http.get("/private", headers=headers).status_code == 401
        assert http.get(f"/forbidden?token={SECRETS['query']}&page=2").status_code == 403
        assert http.get(f"/forbidden?api_key={SECRETS['query']}").status_code == 403
        assert http.get(f"/ok?password={SECRETS['query']}").status_code == 200
        body = {"username": "mallory", "password": SECRETS["body"]}
        assert http.post("/login", json=body).status_code == 401
        good = {"username": "alice", "password": SECRETS["good_password"]}
        assert http.post("/login", json=good).status_code == 200
        authorized = {"authorization": f"Bearer {SECRETS['valid_token']}"}
        assert http.get("/private", headers=authorized).status_code == 200


def test_eleven_unauthenticated_requests_raise_one_abuse_host(
    served: Served, otlp_receiver: OTLPReceiver
) -> None:
    with httpx.Client(base_url=served.base_url) as http:
        for _ in range(11):
            assert http.get("/private").status_code == 401
    wait_for(lambda: len(otlp_receiver.security_logs("auth.unauthenticated")) == 11, timeout=20)
    abuse = wait_for(lambda: otlp_receiver.security_logs("abuse.host"), timeout=20)
    # give a late duplicate the chance to show up before asserting there is exactly one
    wait_for(lambda: otlp_receiver.metric_points("security.abuse.signals"), timeout=20)
    abuse = otlp_receiver.security_logs("abuse.host")
    assert len(abuse) == 1
    assert abuse[0].attributes["security.abuse.key"] == "127.0.0.1"
    assert len(abuse[0].attributes["security.abuse.trace_ids"]) >= 10


def test_blocks_are_enforced_across_two_processes_sharing_redis(
    otlp_receiver: OTLPReceiver, redis_server: RedisServer
) -> None:
    settings = {
        "store": redis_server.url,
        "host_threshold": "3",
        "block_seconds": "30",
        "window_seconds": "60",
        # loopback is "the proxy": the attacker's address comes from X-Forwarded-For, so an
        # unblocked observer (no header, client 127.0.0.1) can read the app's call counts
        "trusted_proxies": "127.0.0.1/32",
    }
    first = start_app(otlp_receiver, **settings)
    second = start_app(otlp_receiver, **settings)
    attacker = {"x-forwarded-for": "203.0.113.5"}
    try:
        with httpx.Client(base_url=first.base_url, headers=attacker) as http:
            for _ in range(3):
                assert http.get("/private").status_code == 401
        started = wait_for(lambda: otlp_receiver.security_logs("abuse.block.started"), 20)
        assert started[0].attributes["security.abuse.key"] == "203.0.113.5"

        def blocked_on_second() -> httpx.Response | None:
            response = httpx.get(second.base_url + "/private", headers=attacker)
            return response if response.status_code == 429 else None

        # The second process learns of the block within its refresh interval (0.3 s); requests
        # before that reach the app, so count the app's calls only once the block is seen.
        response = wait_for(blocked_on_second, timeout=10, interval=0.1)
        assert 1 <= int(response.headers["retry-after"]) <= 30
        calls_before = httpx.get(second.base_url + "/calls").json()
        for _ in range(3):
            assert httpx.get(second.base_url + "/private", headers=attacker).status_code == 429
        assert httpx.get(first.base_url + "/private", headers=attacker).status_code == 429
        # the observer is not blocked, and the second app never ran /private for the attacker
        assert httpx.get(second.base_url + "/calls").json() == calls_before
        assert httpx.get(first.base_url + "/ok").status_code == 200

        blocked = wait_for(lambda: otlp_receiver.security_logs("request.blocked"), 20)
        assert {log.attributes["client.address"] for log in blocked} == {"203.0.113.5"}
        assert {log.attributes["http.response.status_code"] for log in blocked} == {429}
        points = wait_for(
            lambda: [
                p
                for p in otlp_receiver.metric_points("security.requests.blocked")
                if p.attributes == {"security.abuse.scope": "host"} and p.value >= 1
            ],
            timeout=20,
        )
        assert points
        # one request, one event: no request.rate_limited status event for our own 429s
        assert otlp_receiver.security_logs("request.rate_limited") == []
    finally:
        first.stop()
        second.stop()


def test_last_records_before_sigterm_reach_the_collector(otlp_receiver: OTLPReceiver) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown, so atexit (and the SDK's own
    flush) never runs: with the default batch delays (5 s spans, 1 s logs, 60 s metrics) a 401
    answered just before SIGTERM is lost unless the lifespan shutdown flushes the runtime."""
    defaults = {
        "OTEL_BSP_SCHEDULE_DELAY": "5000",
        "OTEL_BLRP_SCHEDULE_DELAY": "5000",
        "OTEL_METRIC_EXPORT_INTERVAL": "60000",
    }
    served = start_app(otlp_receiver, extra_env=defaults)
    try:
        with httpx.Client(base_url=served.base_url) as http:
            assert http.get("/private").status_code == 401
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(15)
    finally:
        served.stop()
    logs = otlp_receiver.security_logs("auth.unauthenticated")
    assert len(logs) == 1, served.output()[-3000:]
    spans = server_spans(otlp_receiver)
    assert logs[0].trace_id in spans  # the server span left too
    assert [name for name, _ in spans[logs[0].trace_id].events] == ["auth.unauthenticated"]
    assert otlp_receiver.metric_points("security.violations")


def test_app_without_lifespan_support_still_serves(otlp_receiver: OTLPReceiver) -> None:
    served = start_app(otlp_receiver, app="harness.apps.no_lifespan:app")
    try:
        with httpx.Client(base_url=served.base_url) as http:
            assert http.get("/denied").status_code == 403
        wait_for(lambda: otlp_receiver.security_logs("authz.permission_denied"), timeout=20)
    finally:
        served.stop()
    after_fallback = served.output().split("'lifespan' protocol appears unsupported")[-1]
    assert "Traceback" not in after_fallback


def test_login_route_brute_force_with_one_variable(otlp_receiver: OTLPReceiver) -> None:
    """A fastapi-users style login (400 on bad credentials, nothing recorded by the app) is seen
    through OTEL_SECAUDIT_LOGIN_ROUTES alone: failures with user.hash, abuse.user, success."""
    served = start_app(
        otlp_receiver,
        login_routes="POST /auth/jwt/login",
        user_threshold="3",
        host_threshold="50",
    )
    wrong = "Tr0ub4dor&3-wrong"
    try:
        with httpx.Client(base_url=served.base_url) as http:
            for _ in range(3):
                form = {"username": "victim@example.com", "password": wrong}
                assert http.post("/auth/jwt/login", data=form).status_code == 400
            good = {"username": "Victim@Example.com ", "password": GOOD_PASSWORD}
            assert http.post("/auth/jwt/login", data=good).status_code == 200
            assert http.get("/calls").json()["jwt_login"] == 4  # the app got every body
        failed = wait_for(
            lambda: (f := otlp_receiver.security_logs("auth.login.failed")) and len(f) == 3 and f,
            timeout=20,
        )
        abuse = wait_for(lambda: otlp_receiver.security_logs("abuse.user"), timeout=20)
        succeeded = wait_for(
            lambda: otlp_receiver.security_logs("auth.login.succeeded"), timeout=20
        )
    finally:
        served.stop()
    hashes = {log.attributes["user.hash"] for log in failed}
    assert len(hashes) == 1
    assert {log.attributes["security.reason"] for log in failed} == {"http_400"}
    assert {log.attributes["http.route"] for log in failed} == {"/auth/jwt/login"}
    assert abuse[0].attributes["security.abuse.key"] in hashes
    assert succeeded[0].attributes["user.hash"] in hashes  # same user, normalized
    raw = otlp_receiver.raw_bytes()
    for secret in (wrong, GOOD_PASSWORD, "victim@example.com"):
        assert secret.encode() not in raw


@pytest.mark.parametrize("semconv", ["", "http", "http/dup"])
def test_query_secrets_scrubbed_from_the_raw_query(
    otlp_receiver: OTLPReceiver, semconv: str
) -> None:
    """Old, stable and duplicated semantic conventions: secrets found in the raw query (never in
    contrib's percent-decoded http.url), every other parameter exported as contrib wrote it
    (decoded in http.url, raw in url.query: nothing re-encoded)."""
    served = start_app(otlp_receiver, extra_env={"OTEL_SEMCONV_STABILITY_OPT_IN": semconv})
    query = (
        "next=%2Fhome%23top&token=TOKSECRET1234&password=a%26b%3DPWSECRET"
        "&sig=SIGSECRET5678&code=CODESECRET9&state=STATESECRET7&page=2"
    )
    try:
        assert httpx.get(f"{served.base_url}/forbidden?{query}").status_code == 403
        wait_for(lambda: server_spans(otlp_receiver), timeout=20)
    finally:
        served.stop()
    raw = otlp_receiver.raw_bytes()
    for secret in ("TOKSECRET1234", "PWSECRET", "SIGSECRET5678", "CODESECRET9", "STATESECRET7"):
        assert secret.encode() not in raw, secret
    (span,) = server_spans(otlp_receiver).values()
    urls = [v for k, v in span.attributes.items() if k in ("http.url", "url.query", "url.full")]
    assert urls
    for value in urls:
        assert "password=[REDACTED]&sig=[REDACTED]" in value and value.endswith("&page=2"), value
    if "http.url" in span.attributes:  # contrib decodes it: %2F and %23 stay decoded
        assert "?next=/home#top&token=[REDACTED]&" in span.attributes["http.url"]
    if "url.query" in span.attributes:  # raw there
        assert span.attributes["url.query"].startswith("next=%2Fhome%23top&token=[REDACTED]&")


def test_a_blocked_clients_websocket_is_refused_by_uvicorn(otlp_receiver: OTLPReceiver) -> None:
    """uvicorn (its websockets implementation offers websocket.http.response) answers a blocked
    client's WebSocket handshake with our 429; the observer's socket still echoes."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    served = start_app(
        otlp_receiver, host_threshold="3", block_seconds="30", trusted_proxies="127.0.0.1/32"
    )
    attacker = {"x-forwarded-for": "203.0.113.44"}
    ws_url = served.base_url.replace("http://", "ws://") + "/ws"
    try:
        for _ in range(3):
            assert httpx.get(served.base_url + "/private", headers=attacker).status_code == 401
        wait_for(lambda: otlp_receiver.security_logs("abuse.block.started"), 20)

        def refused() -> Any:
            try:
                with connect(ws_url, additional_headers=attacker, open_timeout=5):
                    return None
            except InvalidStatus as exc:
                return exc.response

        response = wait_for(refused, timeout=10, interval=0.1)
        assert response.status_code == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 30
        with connect(ws_url, open_timeout=5) as socket:  # the observer (127.0.0.1)
            socket.send("hello")
            assert socket.recv(timeout=5) == "hello"
        assert httpx.get(served.base_url + "/calls").json().get("ws") == 1
        (record,) = wait_for(lambda: otlp_receiver.security_logs("request.blocked"), 20)
        assert record.attributes["client.address"] == "203.0.113.44"
        assert record.attributes["http.response.status_code"] == 429
        ours = wait_for(
            lambda: [
                s
                for s in otlp_receiver.spans()
                if s.scope == "otel_secaudit" and s.trace_id == record.trace_id
            ],
            20,
        )
        assert ours[0].attributes["url.scheme"] == "ws"
    finally:
        served.stop()
