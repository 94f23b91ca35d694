"""Outcome precedence of observed authentication in the exchange core (what ASGI, WSGI,
Django and Flask share): app/framework events, then the password checks, then route-scoped
rules, then the login route's SUCCESS spec; token failures whatever the status; RFC 6750."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_secaudit import Settings
from otel_secaudit.auth.state import TokenFailure
from otel_secaudit.context import request_scope
from otel_secaudit.route_rules import RuleProblems, parse_login_routes
from otel_secaudit.web.exchange import Exchange
from otel_secaudit.web.outcomes import bearer_invalid_token

from .conftest import SDK


def events(sdk: SDK) -> list[tuple[str, dict[str, Any]]]:
    return [
        (log.log_record.event_name, dict(log.log_record.attributes))
        for log in sdk.logs()
        if log.instrumentation_scope.name == "otel_secaudit"
    ]


def names(sdk: SDK) -> list[tuple[str, str | None]]:
    return [(name, attrs.get("security.reason")) for name, attrs in events(sdk)]


def serve(
    status: int,
    checks: tuple[bool, ...] = (),
    *,
    path: str = "/auth/login",
    method: str = "POST",
    user_name: str | None = "alice",
    before: Any = None,
    challenge: str | None = None,
    user_id: str | None = None,
    user_agent: str | None = None,
) -> Exchange:
    """One request through the exchange: ``checks`` are password checks in order,
    ``before(exchange)`` runs inside the request before the answer."""
    ex = Exchange.open(
        method=method,
        path=path,
        peer="10.0.0.9",
        header=lambda name: [],
        user_agent=user_agent,
        route_of=lambda: path,
        user_id_of=(lambda: user_id) if user_id else None,
    )
    ex.read_user_names(lambda: (user_name,) if user_name else ())
    with request_scope(ex.request):
        for passed in checks:
            from otel_secaudit.auth.patching import observation_of

            observation = observation_of(ex.request)
            assert observation is not None
            observation.password_checked(passed)
        if before is not None:
            before(ex)
        ex.respond(status, challenge)
    return ex


def test_a_wrong_password_re_rendered_with_200_is_a_failed_login(sdk: SDK) -> None:
    serve(200, (False,))
    ((name, attrs),) = events(sdk)
    assert (name, attrs["security.reason"]) == ("auth.login.failed", "invalid_credentials")
    assert "user.hash" in attrs


def test_a_right_password_redirected_is_a_success_with_user_hash(sdk: SDK) -> None:
    serve(302, (True,))
    ((name, attrs),) = events(sdk)
    assert name == "auth.login.succeeded" and "user.hash" in attrs


def test_order_of_checks(sdk: SDK) -> None:
    serve(200, (False, True))  # a legacy hash tried first, then the current one
    serve(200, (True, False))  # a failed check with no later passing one
    assert names(sdk) == [
        ("auth.login.succeeded", None),
        ("auth.login.failed", "invalid_credentials"),
    ]


def test_a_4xx_after_a_passing_check_refuses_the_login(sdk: SDK) -> None:
    serve(403, (True,))
    serve(429, (True,))  # the rate limiter's answer: the status rule's event
    serve(500, (True,))  # a crash: nothing about the login
    assert names(sdk) == [
        ("auth.login.failed", "login_not_allowed"),
        ("request.rate_limited", None),
    ]


def test_a_framework_that_sends_a_success_signal_sent_none(sdk: SDK) -> None:
    def expect(ex: Exchange) -> None:
        assert ex.request.auth is not None
        ex.request.auth.expects_login_signal = True

    serve(200, (True,), before=expect)
    assert names(sdk) == [("auth.login.failed", "login_not_allowed")]


def test_the_application_or_a_signal_wins(sdk: SDK) -> None:
    def signal_success(ex: Exchange) -> None:
        ex.runtime.recorder.record("auth.login.succeeded", user_id="7")

    def signal_failure(ex: Exchange) -> None:
        ex.runtime.recorder.record("auth.login.failed", reason="inactive")

    serve(200, (True,), before=signal_success)
    serve(302, (True,), before=signal_failure)
    serve(401, (False,), before=signal_failure)
    assert names(sdk) == [
        ("auth.login.succeeded", None),
        ("auth.login.failed", "inactive"),
        ("auth.login.failed", "inactive"),
    ]


def test_a_failed_check_on_a_401_is_one_violation(sdk: SDK) -> None:
    serve(401, (False,))
    assert names(sdk) == [("auth.login.failed", "invalid_credentials")]  # no unauthenticated


def test_change_password_route(make_sdk: Any) -> None:
    sdk = make_sdk(
        status_events="401:auth.unauthenticated,POST /account/password 200:auth.password.changed"
    )
    serve(400, (False,), path="/account/password")
    serve(200, (True,), path="/account/password")
    serve(400, (True,), path="/account/password")  # new password refused: not a login
    assert names(sdk) == [
        ("auth.password.change_failed", "invalid_credentials"),
        ("auth.password.changed", None),
    ]


def test_a_route_scoped_rule_wins_over_a_passing_check(make_sdk: Any) -> None:
    sdk = make_sdk(status_events="POST /auth/login 200:auth.login.failed")
    serve(200, (True,))
    serve(302, (True,))
    serve(200, (False,))
    assert names(sdk) == [
        ("auth.login.failed", None),
        ("auth.login.succeeded", None),
        ("auth.login.failed", "invalid_credentials"),
    ]


def test_ambiguous_bodies(sdk: SDK, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Exchange, "submitted_user_names", lambda self: ("decoy", "target"))
    serve(200, (False,))
    serve(302, (True,))
    failures = [a["user.hash"] for n, a in events(sdk) if n == "auth.login.failed"]
    assert len(set(failures)) == 2  # the failure counts for every candidate
    ((_, success),) = [(n, a) for n, a in events(sdk) if n == "auth.login.succeeded"]
    assert "user.hash" not in success  # never attributed to a name not authenticated


# -- tokens -----------------------------------------------------------------------------------


def _token_failed(event: str = "auth.token.expired", reason: str = "expired") -> Any:
    def fail(ex: Exchange) -> None:
        from otel_secaudit.auth.patching import observation_of

        failure = TokenFailure(event, reason, "ExpiredSignatureError", "jwt")
        observation = observation_of(ex.request)
        assert observation is not None
        observation.token_failed(failure)

    return fail


def test_a_token_failure_whatever_the_status(sdk: SDK) -> None:
    for status in (200, 401, 403):
        serve(status, path="/items", method="GET", before=_token_failed())
    got = [(n, a["security.reason"], a["error.type"]) for n, a in events(sdk)]
    assert got == [("auth.token.expired", "expired", "ExpiredSignatureError")] * 3


def test_a_route_scoped_failure_rule_names_a_token_failure(make_sdk: Any) -> None:
    sdk = make_sdk(status_events="POST /auth/reset-password 400:auth.password.reset_failed")
    serve(400, path="/auth/reset-password", before=_token_failed())
    ((name, attrs),) = events(sdk)
    assert (name, attrs["security.reason"]) == ("auth.password.reset_failed", "expired")


def test_the_application_failure_wins_over_a_token_failure(sdk: SDK) -> None:
    def both(ex: Exchange) -> None:
        _token_failed()(ex)
        ex.runtime.recorder.record("authz.cross_tenant")

    serve(403, path="/t", before=both)
    assert names(sdk) == [("authz.cross_tenant", None)]


def test_rfc6750_invalid_token(sdk: SDK) -> None:
    serve(401, path="/me", challenge='Bearer realm="api", error="invalid_token"')
    serve(401, path="/me", challenge='Bearer realm="api"')  # no token at all
    serve(403, path="/me", challenge='Bearer error="invalid_token"')
    assert names(sdk) == [
        ("auth.token.invalid", "invalid_token"),
        ("auth.unauthenticated", None),
        ("authz.permission_denied", None),
    ]


@given(st.text(max_size=300))
def test_challenge_parsing_never_raises(value: str) -> None:
    bearer_invalid_token(value)


# -- login routes ------------------------------------------------------------------------------


def test_login_route_success_spec(make_sdk: Any) -> None:
    sdk = make_sdk(login_routes="POST /auth/login 3xx")
    serve(200)  # the form re-rendered: no password check observed (a library we do not know)
    serve(302)
    assert names(sdk) == [("auth.login.failed", "http_200"), ("auth.login.succeeded", None)]


def test_a_route_scoped_rule_wins_over_the_login_route(make_sdk: Any) -> None:
    sdk = make_sdk(
        login_routes="POST /auth/login", status_events="POST /auth/login 200:auth.login.failed"
    )
    serve(200)
    serve(302)
    assert names(sdk) == [("auth.login.failed", None), ("auth.login.succeeded", None)]


def test_observed_checks_win_over_the_login_route(make_sdk: Any) -> None:
    sdk = make_sdk(login_routes="POST /auth/login")
    serve(200, (False,))
    assert names(sdk) == [("auth.login.failed", "invalid_credentials")]


def test_conflicting_rule_is_a_warning_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_secaudit"):
        Settings.load(
            environ={
                "OTEL_SECAUDIT_LOGIN_ROUTES": "POST /auth/login 302",
                "OTEL_SECAUDIT_STATUS_EVENTS": "POST /auth/login 200:auth.login.failed",
            },
            lenient=True,
        )
    assert any("'POST /auth/login 200:auth.login.failed'" in r.message for r in caplog.records)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_login_route_string_never_raises_in_lenient_mode(raw: str) -> None:
    Settings.load(environ={"OTEL_SECAUDIT_LOGIN_ROUTES": raw}, lenient=True)
    try:
        parse_login_routes(raw)
    except RuleProblems:
        pass


def test_a_failed_check_on_a_route_with_a_failure_rule_is_that_rule(make_sdk: Any) -> None:
    # fastapi-users checks a reset token's password fingerprint with pwdlib
    sdk = make_sdk(
        status_events="POST /auth/reset-password 400:auth.password.reset_failed,"
        "POST /auth/reset-password 2xx:auth.password.reset_completed"
    )
    serve(400, (False,), path="/auth/reset-password")
    serve(200, (True,), path="/auth/reset-password")
    assert names(sdk) == [
        ("auth.password.reset_failed", "invalid_credentials"),
        ("auth.password.reset_completed", None),
    ]


def test_a_route_whose_rules_name_no_login_is_no_login_route(make_sdk: Any) -> None:
    # an API key hashed with bcrypt, checked on every request
    sdk = make_sdk(status_events="/api/* 401:auth.unauthenticated")
    serve(200, (True,), path="/api/items", method="GET")
    serve(401, (False,), path="/api/items", method="GET")
    serve(400, (False,), path="/api/items", method="GET")
    assert names(sdk) == [
        ("auth.unauthenticated", "invalid_credentials"),  # the route's rule, the check's reason
        ("auth.login.failed", "invalid_credentials"),
    ]


# -- the User-Agent never steers an observed outcome ---------------------------------------------

ATTACK_TOOL_AGENTS = ("Mozilla/4.0 (Hydra)", "sqlmap/1.8 (https://sqlmap.org)", "Nikto/2.5")


@pytest.mark.parametrize("user_agent", ATTACK_TOOL_AGENTS)
@pytest.mark.parametrize("status", [200, 400, 401])
def test_an_attack_tools_failed_login_is_still_counted_for_the_user(
    sdk: SDK, user_agent: str, status: int
) -> None:
    """A brute-forcer naming itself must not move its failures off the per-user count: the
    failed check is auth.login.failed with user.hash, the request's one violation."""
    serve(status, (False,), user_agent=user_agent)
    ((name, attrs),) = events(sdk)
    assert (name, attrs["security.reason"]) == ("auth.login.failed", "invalid_credentials")
    assert "user.hash" in attrs


@pytest.mark.parametrize("user_agent", ATTACK_TOOL_AGENTS)
def test_an_attack_tools_successful_login_is_in_the_audit_trail(sdk: SDK, user_agent: str) -> None:
    """A login that worked is recorded whoever claims to be the client; the tool is the
    request's violation beside it."""
    serve(302, (True,), user_agent=user_agent)
    assert [name for name, _ in names(sdk)] == ["auth.login.succeeded", "request.attack_tool"]


def test_an_attack_tools_token_failure_stays_the_token_event(sdk: SDK) -> None:
    def decode_failed(ex: Exchange) -> None:
        from otel_secaudit.auth.patching import observation_of

        observation = observation_of(ex.request)
        assert observation is not None
        observation.token_failure = TokenFailure(
            "auth.token.expired", "expired", "ExpiredSignatureError", "pyjwt"
        )

    serve(401, path="/me", method="GET", before=decode_failed, user_agent="nuclei - open")
    assert [name for name, _ in names(sdk)] == ["auth.token.expired"]


def test_an_attack_tool_on_a_login_route_keeps_the_login_routes_outcome(sdk: SDK) -> None:
    ex = Exchange.open(
        method="POST",
        path="/auth/jwt/login",
        peer="10.0.0.9",
        header=lambda name: [],
        user_agent="hydra",
        route_of=lambda: "/auth/jwt/login",
        runtime=sdk.runtime,
    )
    ex.login = parse_login_routes("POST /auth/jwt/login")[0]
    ex.read_user_names(lambda: ("alice",))
    with request_scope(ex.request):
        ex.respond(400)
    ((name, attrs),) = events(sdk)
    assert (name, attrs["security.reason"]) == ("auth.login.failed", "http_400")
    assert "user.hash" in attrs
