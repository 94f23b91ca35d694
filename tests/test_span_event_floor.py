"""The span event on the request's server span leaves out the request attributes that span
carries itself; inside a child span, and on the log record, everything is there."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.trace import SpanKind

import otel_secaudit
from otel_secaudit.context import request_scope
from otel_secaudit.web.exchange import Exchange

REQUEST_KEYS = {
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "url.path",
    "client.address",
    "network.peer.address",
    "user_agent.original",
}


def _open(sdk: Any) -> Exchange:
    return Exchange.open(
        method="GET",
        path="/tenants/t9/invoices",
        peer="203.0.113.7",
        header=lambda name: (),
        user_agent="curl/8",
        route_of=lambda: "/tenants/{tenant_id}/invoices",
        runtime=sdk.runtime,
    )


def test_server_span_event_carries_only_the_events_own_attributes(sdk: Any) -> None:
    with sdk.tracer.start_as_current_span("GET /tenants", kind=SpanKind.SERVER):
        exchange = _open(sdk)
        exchange.request.status_code = 403
        with request_scope(exchange.request):
            otel_secaudit.record(
                "authz.cross_tenant", user_id="u1", tenant_id="t1", requested_tenant_id="t9"
            )
            with sdk.tracer.start_as_current_span("load invoices"):
                otel_secaudit.record("authz.permission_denied", user_id="u1")
    spans = {span.name: span for span in sdk.spans()}
    [server_event] = spans["GET /tenants"].events
    [child_event] = spans["load invoices"].events
    assert REQUEST_KEYS.isdisjoint(server_event.attributes)
    assert server_event.attributes["user.id"] == "u1"
    assert server_event.attributes["security.tenant.requested_id"] == "t9"
    assert server_event.attributes["security.event.name"] == "authz.cross_tenant"
    # inside a child span the event stands alone: the request attributes are there
    assert REQUEST_KEYS <= set(child_event.attributes)
    assert child_event.attributes["client.address"] == "203.0.113.7"
    # the log records always carry everything
    for log in sdk.logs():
        attributes = log.log_record.attributes
        assert REQUEST_KEYS <= set(attributes)
        assert attributes["url.path"] == "/tenants/t9/invoices"
        assert attributes["http.route"] == "/tenants/{tenant_id}/invoices"
        assert attributes["user.id"] == "u1"


def test_a_field_overrides_the_request_and_an_extra_attribute_does_not(sdk: Any) -> None:
    with sdk.tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER):
        exchange = _open(sdk)
        with request_scope(exchange.request):
            otel_secaudit.record(
                "authz.permission_denied",
                client_address="198.51.100.1",
                attributes={"url.path": "/forged", "app.detail": "kept"},
            )
    [log] = sdk.logs()
    assert log.log_record.attributes["client.address"] == "198.51.100.1"
    assert log.log_record.attributes["url.path"] == "/tenants/t9/invoices"
    [span] = sdk.spans()
    [event] = span.events
    assert event.attributes["app.detail"] == "kept"
    assert "url.path" not in event.attributes


def test_not_a_server_span_gets_everything(sdk: Any) -> None:
    with sdk.tracer.start_as_current_span("job"):  # an internal span: carries no request data
        exchange = _open(sdk)
        with request_scope(exchange.request):
            otel_secaudit.record("authz.permission_denied")
    [span] = sdk.spans()
    [event] = span.events
    assert REQUEST_KEYS - {"http.response.status_code"} <= set(event.attributes)


@pytest.mark.slow
def test_through_uvicorn_the_server_span_event_is_lean_and_the_log_complete(
    otlp_receiver: Any,
) -> None:
    """Under ``opentelemetry-instrument uvicorn``: contrib's server span carries the request
    attributes, the plugin's span event on it only the event's own; the log record has both.
    The instrumentor's SecAuditSpanProcessor counts the violations when their spans end and
    abuse.host names their traces."""
    import httpx

    from harness import wait_for

    from .test_web_e2e import server_spans, start_app

    app = start_app(otlp_receiver, host_threshold="3")
    try:
        with httpx.Client(base_url=app.base_url) as http:
            for _ in range(3):
                assert (
                    http.get("/forbidden", headers={"user-agent": "floor-test"}).status_code == 403
                )
        [abuse] = wait_for(lambda: otlp_receiver.security_logs("abuse.host"), timeout=20)
        logs = otlp_receiver.security_logs("authz.permission_denied")
        assert len(logs) == 3
        spans = wait_for(
            lambda: len(server_spans(otlp_receiver)) >= 3 and server_spans(otlp_receiver), 20
        )
    finally:
        app.stop()
    for log in logs:
        assert REQUEST_KEYS <= set(log.attributes)
        span = spans[log.trace_id]
        # the server span has the request (contrib's default semconv names it net.peer.ip,
        # http.target...; OTEL_SEMCONV_STABILITY_OPT_IN=http gives client.address, url.path...)
        attributes = span.attributes
        assert attributes.get("client.address", attributes.get("net.peer.ip")) == "127.0.0.1"
        assert attributes.get("user_agent.original", attributes.get("http.user_agent")) == (
            "floor-test"
        )
        [(name, event_attributes)] = span.events
        assert name == "authz.permission_denied"
        assert REQUEST_KEYS.isdisjoint(event_attributes)
        assert event_attributes["security.event.outcome"] == "failure"
    assert set(abuse.attributes["security.abuse.trace_ids"]) == {log.trace_id for log in logs}
    assert abuse.attributes["security.abuse.count"] == 3
