"""Route-scoped status rules and login routes (README: "Configuration", issue 12 items 1-2):
parsing, matching, configuration errors, and the behaviour through a real FastAPI app and real
HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qsl

import fastapi
import httpx
import pytest
from fastapi import Request
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_secaudit import ConfigError, Settings, helpers
from otel_secaudit.route_rules import (
    RuleProblems,
    StatusRule,
    parse_login_routes,
    parse_status_rules,
)
from otel_secaudit.web.asgi import SecAuditMiddleware

from .conftest import SDK, detecting_runtime

# -- parsing and matching ---------------------------------------------------------------------

RULES = ",".join(
    [
        "401:auth.unauthenticated",
        "4xx:request.rejected",
        "/auth/reset-password 400:auth.password.reset_failed",
        "POST /auth/* 400:auth.login.failed",
        "POST /auth/jwt/* 400:auth.token.invalid",
        "accounts/login/ 403:request.csrf_mismatch",
        "GET 404:request.probe",
        "2xx:data.read",
    ]
)


@pytest.mark.parametrize(
    ("method", "status", "route", "path", "event"),
    [
        ("GET", 401, "/anything", "/anything", "auth.unauthenticated"),
        ("GET", 418, "/teapot", "/teapot", "request.rejected"),  # class
        ("GET", 400, "/auth/reset-password", "/auth/reset-password", "auth.password.reset_failed"),
        # method+route (a prefix) is more specific than a route alone (README: "Configuration")
        ("POST", 400, "/auth/reset-password", "/auth/reset-password", "auth.login.failed"),
        ("POST", 400, "/auth/register", "/auth/register", "auth.login.failed"),  # prefix
        ("POST", 400, "/auth/jwt/login", "/auth/jwt/login", "auth.token.invalid"),  # longer prefix
        ("GET", 400, "/auth/register", "/auth/register", "request.rejected"),  # method differs
        ("POST", 403, "/accounts/login/", "/accounts/login/", "request.csrf_mismatch"),
        ("POST", 403, "accounts/login/", "accounts/login/", "request.csrf_mismatch"),  # Django
        ("GET", 404, None, "/wp-admin", "request.probe"),  # method beats class
        ("POST", 404, None, "/wp-admin", "request.rejected"),
        ("GET", 200, "/x", "/x", "data.read"),
        ("GET", 500, "/x", "/x", None),
    ],
)
def test_most_specific_rule_wins(
    method: str, status: int, route: str | None, path: str, event: str | None
) -> None:
    rules = parse_status_rules(RULES)
    rule = rules.match(method, status, route, path)
    assert (rule.event if rule else None) == event


def test_custom_names_take_their_outcome_from_the_status() -> None:
    rules = parse_status_rules(RULES)
    outcomes = {rule.event: rule.outcome for rule in rules.rules}
    assert outcomes["request.rejected"] == "failure"
    assert outcomes["request.probe"] == "failure"
    assert outcomes["data.read"] == "success"
    assert outcomes["auth.password.reset_failed"] == "failure"  # the catalogue's


def test_route_without_match_falls_back_to_the_path() -> None:
    rules = parse_status_rules("/admin/* 404:request.probe,/users/{id}/keys 403:authz.role.changed")
    assert rules.match("GET", 404, None, "/admin/config.php").event == "request.probe"  # type: ignore[union-attr]
    assert rules.match("GET", 404, None, "/static/x") is None
    assert rules.match("GET", 403, None, "/users/42/keys").event == "authz.role.changed"  # type: ignore[union-attr]


def test_status_rules_are_also_a_mapping_of_the_app_wide_rules() -> None:
    rules = parse_status_rules(RULES)
    assert dict(rules) == {401: "auth.unauthenticated"}
    assert parse_status_rules({403: "authz.permission_denied"})[403] == "authz.permission_denied"


@pytest.mark.parametrize(
    "bad",
    [
        "40:auth.unauthenticated",
        "4x:auth.unauthenticated",
        "401",
        "401:Not An Event",
        "FETCH /x 401:auth.unauthenticated",
        "GET /x y 401:auth.unauthenticated",
        "/a*b 401:auth.unauthenticated",
    ],
)
def test_bad_rule_is_a_clear_error_naming_it_in_strict_mode(bad: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={}, status_events=f"403:authz.permission_denied,{bad}")
    assert bad.split()[0] in str(error.value) or bad in str(error.value)
    with pytest.raises(ConfigError, match="OTEL_SECAUDIT_STATUS_EVENTS"):
        Settings.load(environ={"OTEL_SECAUDIT_STATUS_EVENTS": bad})


def test_bad_rule_keeps_the_other_rules_in_lenient_mode(caplog: pytest.LogCaptureFixture) -> None:
    env = {"OTEL_SECAUDIT_STATUS_EVENTS": "400:auth.login.failed,40:oops,POST /x 4xx:a.b"}
    with caplog.at_level(logging.WARNING):
        settings = Settings.load(environ=env, lenient=True)
    assert [rule.text for rule in settings.status_events.rules] == [
        "POST /x 4xx:a.b",
        "400:auth.login.failed",
    ]
    assert "'40:oops'" in caplog.text
    # nothing usable at all: the default rules
    env = {"OTEL_SECAUDIT_STATUS_EVENTS": "nope"}
    assert dict(Settings.load(environ=env, lenient=True).status_events)[401] == (
        "auth.unauthenticated"
    )


def test_login_routes_and_client_address_header_config() -> None:
    env = {
        "OTEL_SECAUDIT_LOGIN_ROUTES": "POST /auth/jwt/login, post accounts/login/",
        "OTEL_SECAUDIT_LOGIN_USER_FIELDS": "user, mail",
        "OTEL_SECAUDIT_CLIENT_ADDRESS_HEADER": "X-Real-IP",
    }
    settings = Settings.load(environ=env)
    assert [route.text for route in settings.login_routes] == [
        "POST /auth/jwt/login",
        "post accounts/login/",
    ]
    assert settings.login_routes.for_request("POST", "/accounts/login/") is not None
    assert settings.login_routes.for_request("GET", "/accounts/login/") is None
    assert settings.login_user_fields == ("user", "mail")
    assert settings.client_address_header == "x-real-ip"
    defaults = Settings.load(environ={})
    assert defaults.login_routes == ()
    assert defaults.login_user_fields == ("username", "email", "login")
    assert defaults.client_address_header == "x-forwarded-for"
    with pytest.raises(ConfigError, match="OTEL_SECAUDIT_CLIENT_ADDRESS_HEADER"):
        Settings.load(environ={"OTEL_SECAUDIT_CLIENT_ADDRESS_HEADER": "x-client-ip"})
    with pytest.raises(ConfigError, match="'/login'"):
        Settings.load(environ={"OTEL_SECAUDIT_LOGIN_ROUTES": "/login"})
    lenient = Settings.load(environ={"OTEL_SECAUDIT_LOGIN_ROUTES": "/login,POST /ok"}, lenient=True)
    assert [route.text for route in lenient.login_routes] == ["POST /ok"]


def test_rules_compare_by_value() -> None:
    assert StatusRule.parse("401:auth.unauthenticated").event == "auth.unauthenticated"
    assert parse_status_rules("401:auth.unauthenticated") == parse_status_rules(
        [" 401:auth.unauthenticated "]
    )
    assert parse_login_routes(["post /a"])[0].method == "POST"


# -- through a real app -----------------------------------------------------------------------

BAD_PASSWORD = "hunter2-WRONG-pw"
GOOD_PASSWORD = "correct-horse-battery"


def login_app() -> Any:
    """A fastapi-users style login: bad credentials answer 400, the body is read by the app."""
    app = fastapi.FastAPI()
    app.state.bodies = []

    @app.post("/auth/jwt/login")
    async def login(request: Request) -> Any:
        raw = await request.body()
        app.state.bodies.append(raw)
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                data = json.loads(raw)
            except ValueError:
                raise fastapi.HTTPException(422) from None
        else:
            data = dict(parse_qsl(raw.decode()))
        if data.get("password") == GOOD_PASSWORD:
            return {"access_token": "t"}
        if data.get("password") == "app-records":
            helpers.login_failed(str(data.get("username")))
            raise fastapi.HTTPException(401)
        if data.get("password") == "slow-down":
            raise fastapi.HTTPException(429)
        raise fastapi.HTTPException(400, "LOGIN_BAD_CREDENTIALS")

    @app.post("/auth/reset-password")
    async def reset() -> None:
        raise fastapi.HTTPException(400, "RESET_PASSWORD_BAD_TOKEN")

    @app.post("/other")
    async def other() -> None:
        raise fastapi.HTTPException(400)

    app.add_middleware(SecAuditMiddleware)
    return app


def post(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post(path, **kwargs)

    return asyncio.run(run())


def records(sdk: SDK) -> list[Any]:
    return [
        log.log_record for log in sdk.logs() if log.instrumentation_scope.name == "otel_secaudit"
    ]


@pytest.fixture
def login_sdk(make_sdk: Any) -> SDK:
    sdk: SDK = make_sdk(
        login_routes="POST /auth/jwt/login",
        status_events="401:auth.unauthenticated,429:request.rate_limited,"
        "/auth/reset-password 400:auth.password.reset_failed",
    )
    return sdk


def test_login_route_failure_and_success_with_user_hash(login_sdk: SDK) -> None:
    app = login_app()
    form = {"username": "alice", "password": BAD_PASSWORD}
    assert post(app, "/auth/jwt/login", data=form).status_code == 400
    good = {"username": "alice", "password": GOOD_PASSWORD}
    assert post(app, "/auth/jwt/login", json=good).status_code == 200
    failed, succeeded = records(login_sdk)
    assert failed.event_name == "auth.login.failed"
    assert failed.attributes["security.reason"] == "http_400"
    assert succeeded.event_name == "auth.login.succeeded"
    assert failed.attributes["user.hash"] == succeeded.attributes["user.hash"]
    exported = repr([dict(r.attributes) for r in records(login_sdk)])
    assert BAD_PASSWORD not in exported and GOOD_PASSWORD not in exported
    assert "alice" not in exported
    # the app got the bodies untouched
    assert app.state.bodies[0] == f"username=alice&password={BAD_PASSWORD}".encode()
    assert json.loads(app.state.bodies[1]) == good


def test_malformed_bodies_are_attempts_without_user_hash_and_large_ones_are_read(
    login_sdk: SDK,
) -> None:
    app = login_app()
    headers = {"content-type": "application/json"}
    assert post(app, "/auth/jwt/login", content=b"{oops", headers=headers).status_code == 422
    big = {"pad": "x" * 300_000, "username": "mallory", "password": BAD_PASSWORD}
    assert post(app, "/auth/jwt/login", json=big).status_code == 400
    small = {"username": "mallory", "password": BAD_PASSWORD}
    assert post(app, "/auth/jwt/login", json=small).status_code == 400
    malformed, large, plain = records(login_sdk)
    assert {r.event_name for r in (malformed, large, plain)} == {"auth.login.failed"}
    assert malformed.attributes["security.reason"] == "http_422"
    assert "user.hash" not in malformed.attributes
    # no size cut-off: the 300 KB body names its user as the small one does
    assert large.attributes["user.hash"] == plain.attributes["user.hash"]
    assert json.loads(app.state.bodies[1]) == big  # the app got the body untouched


def test_one_request_one_violation_on_login_routes(login_sdk: SDK) -> None:
    app = login_app()
    form = {"username": "bob", "password": "app-records"}
    assert post(app, "/auth/jwt/login", data=form).status_code == 401
    (record,) = records(login_sdk)  # the app's own event; no second failure from the rule
    assert record.event_name == "auth.login.failed"
    assert record.attributes["security.reason"] == "invalid_credentials"


def test_429_on_a_login_route_follows_the_status_rules(login_sdk: SDK) -> None:
    app = login_app()
    assert post(app, "/auth/jwt/login", data={"password": "slow-down"}).status_code == 429
    assert [r.event_name for r in records(login_sdk)] == ["request.rate_limited"]


def test_route_scoped_rule_does_not_label_other_400s(login_sdk: SDK) -> None:
    app = login_app()
    assert post(app, "/auth/reset-password").status_code == 400
    assert post(app, "/other").status_code == 400
    (record,) = records(login_sdk)
    assert record.event_name == "auth.password.reset_failed"
    assert record.attributes["http.route"] == "/auth/reset-password"


def test_non_login_routes_are_not_read(login_sdk: SDK) -> None:
    app = login_app()
    assert post(app, "/other", json={"username": "x"}).status_code == 400
    assert records(login_sdk) == []


def test_succeeded_after_failures(make_sdk: Any, detectors: list[Any]) -> None:
    sdk = make_sdk(login_routes="POST /auth/jwt/login", user_threshold=50, host_threshold=50)
    rt = detecting_runtime(sdk)
    detectors.append(rt.detector)
    app = login_app()
    for _ in range(3):
        post(app, "/auth/jwt/login", data={"username": "dave", "password": BAD_PASSWORD})
    assert rt.detector.flush(5.0)
    post(app, "/auth/jwt/login", data={"username": "Dave ", "password": GOOD_PASSWORD})
    names = [r.event_name for r in records(sdk)]
    assert names[-2:] == ["auth.login.succeeded", "auth.login.succeeded_after_failures"]
    after = records(sdk)[-1]
    assert after.attributes["security.abuse.count"] == 3
    assert after.attributes["user.hash"] == records(sdk)[0].attributes["user.hash"]
    # a user without failures: no succeeded_after_failures
    post(app, "/auth/jwt/login", data={"username": "erin", "password": GOOD_PASSWORD})
    assert [r.event_name for r in records(sdk)][-1] == "auth.login.succeeded"
    assert len([r for r in records(sdk) if r.event_name.endswith("after_failures")]) == 1


# -- hostile input ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=300), status=st.integers(100, 599), path=st.text(max_size=100))
def test_rule_parsing_and_matching_never_raise_anything_else(
    raw: str, status: int, path: str
) -> None:
    try:
        rules = parse_status_rules(raw)
    except RuleProblems as problems:
        assert problems.problems
        rules = problems.usable or parse_status_rules("")
    rules.match("GET", status, None, path)
    rules.match("POST", status, path, path)
    try:
        routes = parse_login_routes(raw)
    except RuleProblems as problems:
        routes = problems.usable or parse_login_routes("")
    routes.for_request("POST", path)


def test_no_event_name_twice_when_the_app_records_its_own_success(make_sdk: Any) -> None:
    sdk = make_sdk(login_routes="POST /session")
    app = fastapi.FastAPI()

    @app.post("/session")
    async def session(request: Request) -> dict[str, bool]:
        helpers.login_succeeded("frank")
        return {"ok": True}

    app.add_middleware(SecAuditMiddleware)
    assert post(app, "/session", data={"username": "frank"}).status_code == 200
    assert [r.event_name for r in records(sdk)] == ["auth.login.succeeded"]


def test_login_route_2xx_after_a_recorded_failure_is_not_a_success(make_sdk: Any) -> None:
    # Django's LoginView answers 200 to a wrong password after user_login_failed was recorded.
    sdk = make_sdk(login_routes="POST /form-login")
    app = fastapi.FastAPI()

    @app.post("/form-login")
    async def form_login(request: Request) -> dict[str, bool]:
        helpers.login_failed("grace")
        return {"ok": False}

    app.add_middleware(SecAuditMiddleware)
    assert post(app, "/form-login", data={"username": "grace"}).status_code == 200
    assert [r.event_name for r in records(sdk)] == ["auth.login.failed"]
