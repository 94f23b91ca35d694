"""A warning at start names each route-scoped status rule and login route whose route matches
no route of the application (Starlette/FastAPI, Flask here; Django in
tests/test_observed_login_apps.py): a typo would otherwise record nothing, silently."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_secaudit.route_rules import parse_login_routes, parse_status_rules
from otel_secaudit.web.route_check import (
    flask_routes,
    starlette_routes,
    unmatched,
    warn_unmatched,
)


def test_unmatched_names_only_the_missing_routes() -> None:
    rules = parse_status_rules(
        "401:auth.unauthenticated,POST /auth/reset 400:auth.password.reset_failed,"
        "POST /auth/rest 400:auth.password.reset_failed,/api/* 403:authz.permission_denied"
    )
    logins = parse_login_routes("POST /auth/login 3xx,POST /auth/logn")
    found = unmatched(["/auth/reset", "/auth/login", "/api/items/{id}"], rules.rules, logins)
    assert found == [
        "status rule 'POST /auth/rest 400:auth.password.reset_failed' names a route the "
        "application does not have",
        "login route 'POST /auth/logn' names a route the application does not have",
    ]


def test_starlette_routes_with_router_prefixes_and_mounts() -> None:
    from fastapi import APIRouter, FastAPI
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    router = APIRouter(prefix="/auth")
    router.add_api_route("/login", lambda: {}, methods=["POST"])
    inner = Starlette(routes=[Route("/health", lambda r: PlainTextResponse("ok"))])
    app = FastAPI()
    app.include_router(router)
    app.mount("/sub", inner)
    routes = set(starlette_routes(app))
    assert {"/auth/login", "/sub/{path}", "/sub/health"} <= routes


def test_flask_routes() -> None:
    from flask import Flask

    app = Flask("route-check")
    app.add_url_rule("/items/<item_id>", "item", lambda item_id: item_id)
    assert "/items/<item_id>" in set(flask_routes(app))


def test_warning_at_start_names_the_rule(make_sdk: Any, caplog: pytest.LogCaptureFixture) -> None:
    from fastapi import FastAPI

    make_sdk(
        status_events="POST /auth/rest 400:auth.password.reset_failed",
        login_routes="POST /auth/token",
    )
    app = FastAPI()
    app.add_api_route("/auth/token", lambda: {}, methods=["POST"])
    with caplog.at_level(logging.WARNING, logger="otel_secaudit"):
        warn_unmatched(lambda: starlette_routes(app), "Starlette")
    messages = [r.getMessage() for r in caplog.records]
    assert any("'POST /auth/rest 400:auth.password.reset_failed'" in m for m in messages)
    assert not any("POST /auth/token" in m for m in messages)


def test_a_router_that_cannot_be_listed_is_no_error(make_sdk: Any) -> None:
    make_sdk(status_events="/x 400:auth.login.failed")

    def broken() -> Any:
        raise RuntimeError("no routes for you")

    warn_unmatched(broken, "Test")  # nothing raised


@given(st.lists(st.text(max_size=40), max_size=5), st.text(max_size=120))
def test_any_rule_and_route_never_raises(templates: list[str], raw: str) -> None:
    try:
        rules = parse_status_rules(raw).rules
    except ValueError:
        rules = ()
    unmatched(templates, rules, ())
