"""End to end: the Django test project (django.contrib.auth on SQLite, LoginView, a
permission-protected view, CSRF on) under ``opentelemetry-instrument`` with contrib's Django
instrumentation, served by gunicorn (two forked workers) and by ``runserver --noreload``, real
HTTP, the real OTLP receiver and, for detection and blocks, a real Redis shared by the workers.
Nothing in the project mentions otel_secaudit."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import (
    DJANGO_USERS,
    OTLPReceiver,
    RedisServer,
    Served,
    prepare_django_db,
    serve_django,
    telemetry_env,
    wait_for,
)

pytest.importorskip("django")
pytest.importorskip("opentelemetry.instrumentation.django")
pytest.importorskip("gunicorn")

pytestmark = pytest.mark.slow

ATTACKER = "203.0.113.7"
#: The ``MIDDLEWARE`` entry contrib's DjangoInstrumentor inserts (its class is contrib's own).
CONTRIB_ENTRY = "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"
WRONG_PASSWORD = "Wr0ng-passw0rd-SECRET-4711"


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return prepare_django_db(str(tmp_path_factory.mktemp("secsite")))


def server_spans(receiver: OTLPReceiver) -> dict[str, Any]:
    """Server spans (contrib's Django span carries http.method) by trace ID."""
    return {
        span.trace_id: span
        for span in receiver.spans()
        if span.scope.startswith("opentelemetry.instrumentation.django")
    }


def gate_spans(receiver: OTLPReceiver) -> dict[str, Any]:
    """The server spans of requests the WSGI gate refused (otel_secaudit's scope), by trace ID."""
    return {span.trace_id: span for span in receiver.spans() if span.scope == "otel_secaudit"}


class Browser:
    """An HTTP client that does what a browser does with Django's login form."""

    def __init__(self, served: Served, headers: dict[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=served.base_url, headers=headers or {})

    def csrf_token(self) -> str:
        page = self.http.get("/accounts/login/")
        assert page.status_code == 200
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert found is not None
        return found.group(1)

    def login(self, user: str, password: str) -> httpx.Response:
        token = self.csrf_token()
        return self.http.post(
            "/accounts/login/",
            data={"username": user, "password": password, "csrfmiddlewaretoken": token},
        )

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def gunicorn_app(
    otlp_receiver: OTLPReceiver, redis_server: RedisServer, django_db: str
) -> Iterator[Served]:
    env = telemetry_env(
        otlp_receiver.http_endpoint,
        store=redis_server.database_url(5),
        host_threshold="6",
        user_threshold="3",
    )
    served = serve_django(env, django_db, workers=2)
    yield served
    served.stop()


def test_gunicorn_workers_record_logins_csrf_403_and_detect_abuse(
    gunicorn_app: Served, otlp_receiver: OTLPReceiver
) -> None:
    browser = Browser(gunicorn_app)
    try:
        for _ in range(3):
            failed = browser.login("mallory", WRONG_PASSWORD)
            assert failed.status_code == 200  # LoginView shows the form again
            assert "Please enter a correct" in failed.text
        # CSRF on: a post without the token is refused by Django's CSRF check
        assert browser.http.post("/accounts/login/", data={"username": "x"}).status_code == 403
        for _ in range(2):  # bob mistypes twice, then gets in
            assert browser.login("bob", WRONG_PASSWORD).status_code == 200
        time.sleep(1.0)  # the workers' detectors take the failures to Redis
        assert browser.login("bob", DJANGO_USERS["bob"]).status_code == 302
        session_cookie = browser.http.cookies["sessionid"]
        csrf_cookie = browser.http.cookies["csrftoken"]
        # bob lacks auth.delete_user: PermissionDenied, 403, with bob's id
        assert browser.http.get("/reports/2024/?token=QUERYSECRET-0099").status_code == 403
    finally:
        browser.close()

    failed_logs = wait_for(
        lambda: (
            (found := otlp_receiver.security_logs("auth.login.failed"))
            and len(found) >= 5
            and found
        ),
        timeout=20,
    )
    hashes = Counter(log.attributes.get("user.hash") for log in failed_logs)
    assert sorted(hashes.values()) == [2, 3] and None not in hashes
    mallory = next(key for key, count in hashes.items() if count == 3)
    assert {log.attributes["http.route"] for log in failed_logs} == {"accounts/login/"}
    assert {log.attributes["security.reason"] for log in failed_logs} == {"invalid_credentials"}

    # abuse.user (user_threshold 3) from violations spread over two forked workers: each
    # worker's detector thread runs (restarted after fork) and they share the Redis store.
    abuse = wait_for(lambda: otlp_receiver.security_logs("abuse.user"), timeout=20)
    assert [log.attributes["security.abuse.key"] for log in abuse] == [mallory]
    evidence = set(abuse[0].attributes["security.abuse.trace_ids"])
    assert evidence and evidence <= {log.trace_id for log in failed_logs}

    csrf = wait_for(lambda: otlp_receiver.security_logs("request.csrf_mismatch"), timeout=20)
    assert [log.attributes["security.reason"] for log in csrf] == ["csrf_token_missing"]
    succeeded = wait_for(lambda: otlp_receiver.security_logs("auth.login.succeeded"), 20)
    assert len(succeeded) == 1
    bob_id = succeeded[0].attributes["user.id"]
    assert bob_id.isdigit()
    # a success after failures of the same user name (OWASP authn_login_successafterfail)
    after = wait_for(lambda: otlp_receiver.security_logs("auth.login.succeeded_after_failures"), 20)
    assert len(after) == 1 and after[0].trace_id == succeeded[0].trace_id
    assert after[0].attributes["user.id"] == bob_id
    assert after[0].attributes["security.abuse.count"] == 2
    assert after[0].attributes["user.hash"] != mallory
    denied = wait_for(lambda: otlp_receiver.security_logs("authz.permission_denied"), 20)
    assert len(denied) == 1
    assert denied[0].attributes["user.id"] == bob_id
    assert denied[0].attributes["http.route"] == "reports/<int:year>/"
    assert denied[0].attributes["http.response.status_code"] == 403
    # one request, one violation: the CSRF 403 is not also authz.permission_denied

    # the log record, the span event and the counter's exemplar share the trace ID
    wait_for(lambda: denied[0].trace_id in server_spans(otlp_receiver), timeout=20)
    span = server_spans(otlp_receiver)[denied[0].trace_id]
    assert denied[0].span_id == span.span_id
    assert [name for name, _ in span.events if name != "exception"] == ["authz.permission_denied"]
    assert span.attributes["http.route"] == "reports/<int:year>/"

    def exemplar_traces() -> set[str]:
        return {
            exemplar["trace_id"]
            for point in otlp_receiver.metric_points("security.violations")
            if point.attributes.get("security.event.name") == "authz.permission_denied"
            for exemplar in point.exemplars
        }

    assert denied[0].trace_id in wait_for(
        lambda: denied[0].trace_id in exemplar_traces() and exemplar_traces(), timeout=20
    )

    gunicorn_app.stop()  # workers flush at exit
    raw = otlp_receiver.raw_bytes()
    for name, secret in {
        "wrong password": WRONG_PASSWORD,
        "good password": DJANGO_USERS["bob"],
        "session cookie": session_cookie,
        "csrf cookie": csrf_cookie,
        "query token": "QUERYSECRET-0099",
    }.items():
        assert secret.encode() not in raw, f"{name} reached the collector"
    assert b"mallory" not in raw  # failed-login user name is hashed
    assert b"token=[REDACTED]" in raw  # the URL is exported, scrubbed


def test_block_is_shared_by_two_gunicorn_workers_through_redis(
    otlp_receiver: OTLPReceiver, redis_server: RedisServer, django_db: str
) -> None:
    env = telemetry_env(
        otlp_receiver.http_endpoint,
        store=redis_server.database_url(6),
        host_threshold="3",
        block_seconds="30",
        trusted_proxies="127.0.0.1/32",
    )
    served = serve_django(env, django_db, workers=2)
    attacker = {"x-forwarded-for": ATTACKER}
    try:
        for _ in range(3):
            assert httpx.get(served.base_url + "/forbidden/", headers=attacker).status_code == 403
        started = wait_for(lambda: otlp_receiver.security_logs("abuse.block.started"), 20)
        assert started[0].attributes["security.abuse.key"] == ATTACKER

        def refusing_workers() -> set[str]:
            # new connection each time: the kernel hands them to either worker
            response = httpx.get(served.base_url + "/forbidden/", headers=attacker)
            if response.status_code == 429:
                assert 1 <= int(response.headers["retry-after"]) <= 30
            return set(re.findall(r"access pid=<?(\d+)>? 429 ", served.output()))

        wait_for(lambda: len(refusing_workers()) >= 2, timeout=15, interval=0.05)
        # the observer (no forwarded address: 127.0.0.1) is not blocked
        assert httpx.get(served.base_url + "/ok/").status_code == 200
        # with a shared store the workers trade the record right in the background (no I/O on
        # a refusal): the attacker's next refusal after that writes request.blocked
        blocked = wait_for(
            lambda: refusing_workers() and otlp_receiver.security_logs("request.blocked"), 20
        )
        assert {log.attributes["client.address"] for log in blocked} == {ATTACKER}
        assert {log.attributes["http.response.status_code"] for log in blocked} == {429}
        assert otlp_receiver.security_logs("request.rate_limited") == []
        # refused at WSGIHandler.__call__, before contrib's span and before routing, under
        # otel_secaudit's own server span (web/wsgi_gate.py): no http.route anywhere
        wait_for(lambda: blocked[0].trace_id in gate_spans(otlp_receiver), timeout=20)
        span = gate_spans(otlp_receiver)[blocked[0].trace_id]
        assert span.attributes["http.response.status_code"] == 429
        assert blocked[0].trace_id not in server_spans(otlp_receiver)  # contrib opened none
        assert [name for name, _ in span.events] == ["request.blocked"]
        assert "http.route" not in span.attributes and "http.route" not in blocked[0].attributes
    finally:
        served.stop()


def test_runserver_route_rules_with_and_without_a_slash_and_a_json_login_route(
    otlp_receiver: OTLPReceiver, django_db: str
) -> None:
    env = telemetry_env(
        otlp_receiver.http_endpoint,
        status_events=(
            "403:authz.permission_denied,/forbidden/ 403:app.forbidden.hit,"
            "reports/* 403:app.reports.denied"
        ),
        login_routes="POST /api/login/",
    )
    served = serve_django(env, django_db, server="runserver")
    try:
        with httpx.Client(base_url=served.base_url) as http:
            assert http.get("/forbidden/").status_code == 403
            assert http.get("/reports/2023/").status_code == 403
            assert http.get("/ok/").status_code == 200
            # a JSON login route: the plugin reads the body first, the view still parses it
            assert http.post("/api/login/", json={"username": "eve"}).status_code == 400
            bad = {"username": "eve", "password": WRONG_PASSWORD}
            assert http.post("/api/login/", json=bad).status_code == 401
            good = {"username": "alice", "password": DJANGO_USERS["alice"]}
            assert http.post("/api/login/", json=good).status_code == 200
        logs = wait_for(
            lambda: (found := otlp_receiver.security_logs()) and len(found) >= 5 and found, 20
        )
    finally:
        served.stop()
    logins = [log for log in logs if log.event_name.startswith("auth.login")]
    assert [(log.event_name, log.attributes.get("security.reason")) for log in logins] == [
        ("auth.login.failed", "http_400"),  # the login rule, user name from the JSON body
        ("auth.login.failed", "invalid_credentials"),  # Django's signal; the rule adds none
        ("auth.login.succeeded", None),  # Django's signal; the rule adds none
    ]
    assert logins[0].attributes["user.hash"] == logins[1].attributes["user.hash"]  # one key
    assert logins[2].attributes["user.id"].isdigit()
    assert WRONG_PASSWORD.encode() not in otlp_receiver.raw_bytes()
    logs = [log for log in logs if log not in logins]
    routes = {log.event_name: log.attributes["http.route"] for log in logs}
    assert routes == {
        "app.forbidden.hit": "forbidden/",
        "app.reports.denied": "reports/<int:year>/",
    }


def test_instrument_inserts_after_contrib_and_uninstrument_restores_everything() -> None:
    from django.conf import settings
    from django.contrib.auth import signals
    from django.core.handlers.base import BaseHandler

    from otel_secaudit.web import django as adapter

    if settings.configured:
        pytest.skip("Django settings were configured elsewhere in this process")
    original = [
        "django.middleware.security.SecurityMiddleware",
        CONTRIB_ENTRY,
        "django.middleware.csrf.CsrfViewMiddleware",
    ]
    settings.configure(MIDDLEWARE=list(original), CSRF_FAILURE_VIEW="myapp.views.csrf")
    adapter.uninstrument_django()  # whatever an earlier test left instrumented
    load_middleware = BaseHandler.load_middleware
    held = settings.MIDDLEWARE  # as contrib's instrumentor holds it
    adapter.instrument_django()
    try:
        # edited in place: whoever holds the list edits the one Django reads
        assert settings.MIDDLEWARE is held
        BaseHandler.load_middleware(BaseHandler())  # the check again at chain building
        assert settings.MIDDLEWARE is held
        assert settings.MIDDLEWARE == [
            original[0],
            CONTRIB_ENTRY,
            adapter.MIDDLEWARE_PATH,
            original[2],
        ]
        assert settings.CSRF_FAILURE_VIEW == adapter.CSRF_VIEW_PATH
        assert signals.user_login_failed.has_listeners()
        assert BaseHandler.load_middleware is not load_middleware
    finally:
        adapter.uninstrument_django()
    assert settings.MIDDLEWARE == original and settings.MIDDLEWARE is held
    assert settings.CSRF_FAILURE_VIEW == "myapp.views.csrf"
    assert BaseHandler.load_middleware is load_middleware
    assert not signals.user_login_failed.has_listeners()
    assert not signals.user_logged_in.has_listeners()
    # a tuple (Django allows one) becomes a list with the middleware, and loses it again
    settings.MIDDLEWARE = tuple(original)
    adapter.instrument_django()
    try:
        assert settings.MIDDLEWARE == [original[0], original[1], adapter.MIDDLEWARE_PATH,
                                       original[2]]  # fmt: skip
    finally:
        adapter.uninstrument_django()
    assert list(settings.MIDDLEWARE) == original
    settings.MIDDLEWARE = list(original)


def test_middleware_setting_is_edited_in_place_in_a_configured_process() -> None:
    """The in-place edit, where Django was configured by an earlier test (the test above then
    skips): the list object Django reads is the one code holding it edits."""
    from django.conf import settings

    from otel_secaudit.web import django as adapter

    if not settings.configured:
        pytest.skip("covered by the test above, which configures Django itself")
    was_active = adapter.is_instrumented()
    saved = settings.MIDDLEWARE
    held = ["django.middleware.security.SecurityMiddleware", CONTRIB_ENTRY]
    adapter.uninstrument_django()
    settings.MIDDLEWARE = held
    try:
        adapter.instrument_django()
        try:
            assert settings.MIDDLEWARE is held
            assert held == [held[0], CONTRIB_ENTRY, adapter.MIDDLEWARE_PATH]
        finally:
            adapter.uninstrument_django()
        assert settings.MIDDLEWARE is held and adapter.MIDDLEWARE_PATH not in held
    finally:
        settings.MIDDLEWARE = saved
        if was_active:
            adapter.instrument_django()


def test_contrib_middleware_is_found_by_its_public_module_path() -> None:
    """Fails when contrib moves its Django middleware out of the module the adapter matches:
    the entry contrib's instrumentor inserts is the one the security middleware goes after."""
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    from otel_secaudit.web import django as adapter

    inserted = DjangoInstrumentor._opentelemetry_middleware
    assert adapter.is_contrib_middleware(inserted)
    assert inserted.rpartition(".")[0] == adapter.CONTRIB_MIDDLEWARE_MODULE
    assert adapter.is_contrib_middleware(CONTRIB_ENTRY)
    # contrib's SQL commenter lives beside it, in another module: not the span's middleware
    assert not adapter.is_contrib_middleware(DjangoInstrumentor._sql_commenter_middleware)
    assert not adapter.is_contrib_middleware("django.middleware.security.SecurityMiddleware")
    assert not adapter.is_contrib_middleware(None)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("CSRF cookie not set.", "no_csrf_cookie"),
        ("CSRF token missing.", "csrf_token_missing"),
        ("CSRF token from POST incorrect.", "csrf_token_incorrect"),
        ("CSRF token from POST has incorrect length.", "csrf_token_malformed"),
        ("Origin checking failed - https://evil.example does not match any trusted origins.",
         "bad_origin"),
        ("Referer checking failed - no Referer.", "no_referer"),
        ("something new", "csrf_failed"),
    ],
)  # fmt: skip
def test_csrf_reasons_become_codes_without_the_request_values(reason: str, code: str) -> None:
    from otel_secaudit.web.django import csrf_reason_code

    assert csrf_reason_code(reason) == code


def test_django_under_asgi_observes_and_refuses_before_contribs_span(
    otlp_receiver: OTLPReceiver, django_db: str
) -> None:
    """Django's ASGIHandler under uvicorn: the same middleware records the 403s and detects
    the abuse, and a blocked client is refused at ASGIHandler.__call__ (web/gate.py), before
    contrib's span, under otel_secaudit's own."""
    env = telemetry_env(
        otlp_receiver.http_endpoint,
        host_threshold="3",
        block_seconds="30",
        trusted_proxies="127.0.0.1/32",
    )
    served = serve_django(env, django_db, server="uvicorn")
    attacker = {"x-forwarded-for": ATTACKER}
    try:
        for _ in range(3):
            assert httpx.get(served.base_url + "/forbidden/", headers=attacker).status_code == 403
        denied = wait_for(
            lambda: (
                len(otlp_receiver.security_logs("authz.permission_denied")) == 3
                and otlp_receiver.security_logs("authz.permission_denied")
            ),
            20,
        )
        assert {log.attributes["http.route"] for log in denied} == {"forbidden/"}
        wait_for(lambda: otlp_receiver.security_logs("abuse.block.started"), 20)
        response = httpx.get(served.base_url + "/forbidden/", headers=attacker)
        assert response.status_code == 429
        assert 1 <= int(response.headers["retry-after"]) <= 30
        assert httpx.get(served.base_url + "/ok/").status_code == 200  # the observer
        (blocked,) = wait_for(lambda: otlp_receiver.security_logs("request.blocked"), 20)
        assert blocked.attributes["client.address"] == ATTACKER
        wait_for(lambda: blocked.trace_id in gate_spans(otlp_receiver), timeout=20)
        span = gate_spans(otlp_receiver)[blocked.trace_id]
        assert span.attributes["http.response.status_code"] == 429
        assert [name for name, _ in span.events] == ["request.blocked"]
        assert blocked.trace_id not in server_spans(otlp_receiver)  # contrib opened none
    finally:
        served.stop()
