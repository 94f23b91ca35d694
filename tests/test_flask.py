"""End to end: a Flask + Flask-Login + Flask-WTF app (harness/apps/flask_app.py) under
``opentelemetry-instrument`` with contrib's Flask instrumentation, served by gunicorn with two
forked workers sharing a real Redis, real HTTP and the real OTLP receiver. Nothing in the app
mentions otel_secaudit; the login route comes from OTEL_SECAUDIT_LOGIN_ROUTES."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import OTLPReceiver, RedisServer, Served, serve_flask, telemetry_env, wait_for

pytest.importorskip("flask_login")
pytest.importorskip("flask_wtf")
pytest.importorskip("opentelemetry.instrumentation.flask")
pytest.importorskip("gunicorn")

pytestmark = pytest.mark.slow

USERS = {"alice": "correct horse battery staple", "bob": "tr0ub4dor&3-bob-password"}
WRONG_PASSWORD = "Wr0ng-flask-passw0rd-SECRET-0815"
ATTACKER = "198.51.100.23"


def server_spans(receiver: OTLPReceiver) -> dict[str, Any]:
    return {
        span.trace_id: span
        for span in receiver.spans()
        if span.scope.startswith("opentelemetry.instrumentation.flask")
    }


def gate_spans(receiver: OTLPReceiver) -> dict[str, Any]:
    """The server spans of requests the WSGI gate refused (otel_secaudit's scope), by trace ID."""
    return {span.trace_id: span for span in receiver.spans() if span.scope == "otel_secaudit"}


class Browser:
    """A client that posts Flask-WTF's CSRF token like the login form would."""

    def __init__(self, served: Served, headers: dict[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=served.base_url, headers=headers or {})

    def csrf_token(self) -> str:
        page = self.http.get("/login")
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found is not None
        return found.group(1)

    def login(self, user: str, password: str) -> httpx.Response:
        data = {"username": user, "password": password, "csrf_token": self.csrf_token()}
        return self.http.post("/login", data=data)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def flask_app(otlp_receiver: OTLPReceiver, redis_server: RedisServer) -> Iterator[Served]:
    env = telemetry_env(
        otlp_receiver.http_endpoint,
        store=redis_server.database_url(7),
        host_threshold="5",
        user_threshold="3",
        login_routes="POST /login",
    )
    served = serve_flask(env, workers=2)
    yield served
    served.stop()


def test_gunicorn_workers_record_login_routes_signals_csrf_and_403(
    flask_app: Served, otlp_receiver: OTLPReceiver
) -> None:
    browser = Browser(flask_app)
    try:
        for _ in range(3):
            assert browser.login("mallory", WRONG_PASSWORD).status_code == 401
        assert browser.http.post("/login", data={"username": "x"}).status_code == 400  # no CSRF
        assert browser.http.get("/admin/reports/2024").status_code == 401  # login_required
        assert browser.login("bob", USERS["bob"]).status_code == 200
        session_cookie = browser.http.cookies["session"]
        assert browser.http.get("/admin/reports/2024?api_key=QUERYSECRET-7").status_code == 403
        assert browser.http.get("/ok").status_code == 200
    finally:
        browser.close()

    failed = wait_for(
        lambda: (
            (found := otlp_receiver.security_logs("auth.login.failed"))
            and len(found) >= 3
            and found
        ),
        timeout=20,
    )
    hashes = {log.attributes.get("user.hash") for log in failed}
    assert len(hashes) == 1 and None not in hashes
    assert {log.attributes["security.reason"] for log in failed} == {"http_401"}
    assert {log.attributes["http.route"] for log in failed} == {"/login"}
    abuse = wait_for(lambda: otlp_receiver.security_logs("abuse.user"), timeout=20)
    assert abuse[0].attributes["security.abuse.key"] == hashes.pop()
    evidence = set(abuse[0].attributes["security.abuse.trace_ids"])
    assert evidence and evidence <= {log.trace_id for log in failed}

    csrf = wait_for(lambda: otlp_receiver.security_logs("request.csrf_mismatch"), 20)
    assert [log.attributes["security.reason"] for log in csrf] == ["csrf_token_missing"]
    unauthenticated = wait_for(lambda: otlp_receiver.security_logs("auth.unauthenticated"), 20)
    assert len(unauthenticated) == 1  # Flask-Login's signal; the 401 adds no second event
    assert unauthenticated[0].attributes["http.route"] == "/admin/reports/<int:year>"
    # Flask-Login's user_logged_in, not repeated by the login route's rule
    succeeded = wait_for(lambda: otlp_receiver.security_logs("auth.login.succeeded"), 20)
    assert [log.attributes.get("user.id") for log in succeeded] == ["bob"]
    denied = wait_for(lambda: otlp_receiver.security_logs("authz.permission_denied"), 20)
    assert [log.attributes.get("user.id") for log in denied] == ["bob"]
    assert denied[0].attributes["http.route"] == "/admin/reports/<int:year>"

    # the log record, the span event and the counter's exemplar share the trace ID
    wait_for(lambda: denied[0].trace_id in server_spans(otlp_receiver), timeout=20)
    span = server_spans(otlp_receiver)[denied[0].trace_id]
    assert denied[0].span_id == span.span_id
    assert [name for name, _ in span.events] == ["authz.permission_denied"]

    def exemplar_traces() -> set[str]:
        return {
            exemplar["trace_id"]
            for point in otlp_receiver.metric_points("security.violations")
            if point.attributes.get("security.event.name") == "authz.permission_denied"
            for exemplar in point.exemplars
        }

    wait_for(lambda: denied[0].trace_id in exemplar_traces(), timeout=20)

    flask_app.stop()
    raw = otlp_receiver.raw_bytes()
    for name, secret in {
        "wrong password": WRONG_PASSWORD,
        "good password": USERS["bob"],
        "session cookie": session_cookie,
        "query key": "QUERYSECRET-7",
    }.items():
        assert secret.encode() not in raw, f"{name} reached the collector"
    assert b"mallory" not in raw
    assert b"api_key=[REDACTED]" in raw


def test_block_is_shared_by_two_gunicorn_workers_through_redis(
    otlp_receiver: OTLPReceiver, redis_server: RedisServer
) -> None:
    env = telemetry_env(
        otlp_receiver.http_endpoint,
        store=redis_server.database_url(8),
        host_threshold="3",
        block_seconds="30",
        trusted_proxies="127.0.0.1/32",
    )
    served = serve_flask(env, workers=2)
    attacker = {"x-forwarded-for": ATTACKER}
    try:
        for _ in range(3):
            assert httpx.get(served.base_url + "/forbidden", headers=attacker).status_code == 403
        started = wait_for(lambda: otlp_receiver.security_logs("abuse.block.started"), 20)
        assert started[0].attributes["security.abuse.key"] == ATTACKER

        def refusing_workers() -> set[str]:
            response = httpx.get(served.base_url + "/forbidden", headers=attacker)
            if response.status_code == 429:
                assert 1 <= int(response.headers["retry-after"]) <= 30
            return set(re.findall(r"access pid=<?(\d+)>? 429 ", served.output()))

        wait_for(lambda: len(refusing_workers()) >= 2, timeout=15, interval=0.05)
        assert httpx.get(served.base_url + "/ok").status_code == 200
        # with a shared store the workers trade the record right in the background (no I/O on
        # a refusal): the attacker's next refusal after that writes request.blocked
        blocked = wait_for(
            lambda: refusing_workers() and otlp_receiver.security_logs("request.blocked"), 20
        )
        assert {log.attributes["client.address"] for log in blocked} == {ATTACKER}
        # refused at Flask.__call__, before contrib's server span, under otel_secaudit's own
        # (web/wsgi_gate.py)
        wait_for(lambda: blocked[0].trace_id in gate_spans(otlp_receiver), timeout=20)
        span = gate_spans(otlp_receiver)[blocked[0].trace_id]
        assert span.attributes["http.response.status_code"] == 429
        assert blocked[0].trace_id not in server_spans(otlp_receiver)  # contrib opened none
        assert [name for name, _ in span.events] == ["request.blocked"]
    finally:
        served.stop()
