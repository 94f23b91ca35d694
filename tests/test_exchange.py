"""The framework-independent request core, driven the way an adapter drives it (no framework):
the protocol WSGI, Django and Flask adapters rely on."""

from __future__ import annotations

from typing import Any

from otel_secaudit import runtime
from otel_secaudit.context import request_scope
from otel_secaudit.web.exchange import Exchange

from .conftest import SDK


def open_exchange(
    headers: dict[str, list[str]] | None = None,
    *,
    method: str = "GET",
    path: str = "/items/7",
    route: str | None = "/items/{item_id}",
    calls: list[str] | None = None,
) -> Exchange:
    seen = calls if calls is not None else []

    def route_of() -> str | None:
        seen.append("route")
        return route

    def user_id_of() -> str | None:
        seen.append("user")
        return "u-9"

    return Exchange.open(
        method=method,
        path=path,
        peer="10.1.2.3",
        header=lambda name: (headers or {}).get(name, []),
        user_agent="agent/1",
        route_of=route_of,
        user_id_of=user_id_of,
    )


def test_status_event_with_the_request_context(sdk: SDK) -> None:
    exchange = open_exchange()
    with request_scope(exchange.request):
        assert exchange.refusal() is None
        exchange.respond(403)
        exchange.respond(403)  # a second call is ignored
    (record,) = sdk.security_logs()
    assert record.event_name == "authz.permission_denied"
    attrs = dict(record.attributes)
    assert attrs["http.route"] == "/items/{item_id}"
    assert attrs["url.path"] == "/items/7"
    assert attrs["client.address"] == "10.1.2.3"
    assert attrs["user.id"] == "u-9"
    assert attrs["http.response.status_code"] == 403


def test_nothing_is_resolved_for_an_unlisted_status(sdk: SDK) -> None:
    calls: list[str] = []
    exchange = open_exchange(calls=calls)
    with request_scope(exchange.request):
        exchange.respond(200)
    assert sdk.security_logs() == []
    assert calls == []  # route and user are looked up only when an event is recorded


def test_failed_application_is_a_500(make_sdk: Any) -> None:
    sdk = make_sdk(status_events="5xx:app.crashed")
    exchange = open_exchange()
    with request_scope(exchange.request):
        exchange.failed()
    (record,) = sdk.security_logs()
    assert record.event_name == "app.crashed"
    assert record.attributes["security.event.outcome"] == "failure"


def test_login_protocol(make_sdk: Any) -> None:
    sdk = make_sdk(login_routes="POST /session")
    exchange = open_exchange(method="POST", path="/session", route="/session")
    assert exchange.login is not None
    assert exchange.user_fields == ("username", "email", "login")
    assert exchange.submitted_user_names() == ()  # no reader yet
    exchange.read_user_names(lambda: ("Ann@Example.org",))
    with request_scope(exchange.request):
        exchange.respond(401)
    (record,) = sdk.security_logs()
    assert record.event_name == "auth.login.failed"
    assert record.attributes["security.reason"] == "http_401"
    assert "user.hash" in record.attributes
    assert open_exchange(method="POST", path="/other").login is None


def test_an_ambiguous_body_counts_a_failure_for_each_name_and_a_success_for_none(
    make_sdk: Any,
) -> None:
    sdk = make_sdk(login_routes="POST /session")
    for status in (401, 200):
        exchange = open_exchange(method="POST", path="/session", route="/session")
        exchange.read_user_names(lambda: ("decoy", "target@example.com"))
        with request_scope(exchange.request):
            exchange.respond(status)
    *failures, success = sdk.security_logs()
    assert [r.event_name for r in failures] == ["auth.login.failed"] * 2
    assert len({r.attributes["user.hash"] for r in failures}) == 2
    assert success.event_name == "auth.login.succeeded"
    assert "user.hash" not in success.attributes


def test_a_name_reader_that_raises_costs_the_names_only(make_sdk: Any) -> None:
    sdk = make_sdk(login_routes="POST /session", strict=False)
    exchange = open_exchange(method="POST", path="/session", route="/session")

    def broken() -> tuple[str, ...]:
        raise RuntimeError("framework quirk")

    exchange.read_user_names(broken)
    assert exchange.submitted_user_names() == ()
    with request_scope(exchange.request):
        exchange.respond(401)
    (record,) = sdk.security_logs()
    assert record.event_name == "auth.login.failed" and "user.hash" not in record.attributes


def test_trusted_proxy_header_is_asked_for_by_name(make_sdk: Any) -> None:
    make_sdk(trusted_proxies="10.0.0.0/8", client_address_header="x-real-ip")
    asked: list[str] = []

    def header(name: str) -> list[str]:
        asked.append(name)
        return {"x-real-ip": ["203.0.113.5"], "x-forwarded-for": ["6.6.6.6"]}.get(name, [])

    exchange = Exchange.open(method="GET", path="/", peer="10.0.0.1", header=header)
    assert exchange.request.client_address == "203.0.113.5"
    assert asked == ["x-real-ip"]


def test_runtime_is_looked_up_once_per_exchange(make_sdk: Any) -> None:
    first = make_sdk()
    exchange = open_exchange()
    second = make_sdk()
    assert runtime.current() is second.runtime
    with request_scope(exchange.request):
        exchange.respond(403)
    assert len(first.security_logs()) == 1 and second.security_logs() == []


def test_a_failing_route_lookup_does_not_cost_the_event(sdk: SDK) -> None:
    def route_of() -> str | None:
        raise RuntimeError("framework quirk")

    exchange = Exchange.open(
        method="GET", path="/x", peer="10.0.0.1", header=lambda name: [], route_of=route_of
    )
    with request_scope(exchange.request):
        exchange.respond(401)
    (record,) = sdk.security_logs()
    assert record.event_name == "auth.unauthenticated"
    assert "http.route" not in record.attributes
