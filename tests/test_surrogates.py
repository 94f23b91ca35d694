"""Lone surrogates from application fields (README "What is redacted"): a str that holds a
lone surrogate (``surrogateescape`` decoding, a ``"\\ud800"`` JSON escape) has no UTF-8 form,
so an OTLP encoder dropped the whole attribute and logged a traceback per record (issue 19).
They are escaped like the other invisible characters (``\\ud800``), wherever an application
field reaches a record: event fields, attribute keys and values, the login user name with
OTEL_SECAUDIT_RECORD_USER_NAME; and ``user.hash`` of such a name is computed, never raised.

Checked on the bytes an OTLP exporter would send (the SDK's own OTLP protobuf encoders), parsed
back with protobuf's UTF-8 validation."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import otel_secaudit
from harness import any_value
from otel_secaudit import runtime
from otel_secaudit.redaction.pipeline import escape_control, hash_identity

from .conftest import SDK

SURROGATE = re.compile("[\ud800-\udfff]")
# Text with lone surrogates mixed into ordinary and hostile characters.
with_surrogates = st.lists(
    st.one_of(
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
        st.sampled_from(["\n", "\u202e", "é", "😀", "a", "="]),
    ),
    min_size=1,
    max_size=40,
).map("".join)
FIELDS = {
    "tenant_id": "security.tenant.id",
    "requested_tenant_id": "security.tenant.requested_id",
    "resource_type": "security.resource.type",
    "resource_id": "security.resource.id",
    "action": "security.action",
    "permission": "security.permission",
    "reason": "security.reason",
    "user_id": "user.id",
    "user_agent": "user_agent.original",
}
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    # caplog is cleared by hand for every example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module", params=[False, True], ids=["hashed", "record_user_name"])
def surrogate_sdk(request: pytest.FixtureRequest) -> Iterator[SDK]:
    sdk = SDK(strict=False, record_user_name=request.param)
    previous = runtime.swap(sdk.runtime)
    yield sdk
    runtime.swap(previous)
    sdk.shutdown()


def wire(sdk: SDK) -> tuple[ExportLogsServiceRequest, ExportTraceServiceRequest]:
    """Encode what was exported as an OTLP exporter does, then parse it back (protobuf checks
    that every string is valid UTF-8)."""
    logs = ExportLogsServiceRequest.FromString(encode_logs(sdk.logs()).SerializeToString())
    spans = ExportTraceServiceRequest.FromString(encode_spans(sdk.spans()).SerializeToString())
    return logs, spans


def record_attributes(request: ExportLogsServiceRequest) -> list[dict[str, Any]]:
    return [
        {kv.key: any_value(kv.value) for kv in record.attributes}
        for resource_logs in request.resource_logs
        for scope_logs in resource_logs.scope_logs
        for record in scope_logs.log_records
    ]


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)


@SETTINGS
@given(
    fields=st.dictionaries(st.sampled_from(sorted(FIELDS)), with_surrogates, min_size=1),
    user_name=with_surrogates,
    key=with_surrogates,
    value=with_surrogates,
    listed=st.lists(with_surrogates, max_size=3),
)
def test_surrogates_are_escaped_and_no_attribute_is_lost(
    surrogate_sdk: SDK,
    caplog: pytest.LogCaptureFixture,
    fields: dict[str, str],
    user_name: str,
    key: str,
    value: str,
    listed: list[str],
) -> None:
    surrogate_sdk.log_exporter.clear()
    surrogate_sdk.span_exporter.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING), surrogate_sdk.tracer.start_as_current_span("r"):
        otel_secaudit.record(
            "auth.login.failed",
            user_name=user_name,
            attributes={key: value, "listed": listed},
            **fields,  # type: ignore[arg-type]
        )
        logs, spans = wire(surrogate_sdk)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    [exported] = record_attributes(logs)
    [sdk_record] = surrogate_sdk.logs()
    # The encoder dropped nothing: every attribute of the SDK record is on the wire.
    assert set(exported) == set(dict(sdk_record.log_record.attributes or {}))
    for name in fields:
        assert FIELDS[name] in exported, name
    assert "user.hash" in exported
    if surrogate_sdk.settings.record_user_name:
        assert exported["user.name"] == escape_control(user_name)[: len(exported["user.name"])]
    assert "listed" in exported or not listed
    for text in strings(exported):
        assert not SURROGATE.search(text)
    for span in spans.resource_spans:
        for scope_spans in span.scope_spans:
            for one in scope_spans.spans:
                for event in one.events:
                    for kv in event.attributes:
                        assert not SURROGATE.search(kv.key)
                        for text in strings(any_value(kv.value)):
                            assert not SURROGATE.search(text)


@pytest.mark.parametrize(
    "text",
    ["\ud800", "al\udcffice", "\udfff\ud800", "x" * 2000 + "\ud800"],
    ids=["alone", "inside", "reversed-pair", "after-2000"],
)
def test_a_lone_surrogate_is_escaped_not_dropped(text: str) -> None:
    escaped = escape_control(text)
    assert not SURROGATE.search(escaped)
    assert "\\ud" in escaped
    escaped.encode("utf-8")  # exportable


@given(name=with_surrogates)
@settings(max_examples=200, deadline=None)
def test_user_hash_of_a_name_with_surrogates_never_raises(name: str) -> None:
    digest = hash_identity(b"k" * 32, name)
    assert re.fullmatch("[0-9a-f]{64}", digest)
    assert digest == hash_identity(b"k" * 32, name)  # stable


def test_a_request_path_with_lone_surrogates_is_exported_escaped(surrogate_sdk: SDK) -> None:
    """A server that decodes the path with ``surrogateescape`` hands the app lone surrogates:
    the plugin's own ``url.path`` (and the status event) still reach the wire."""
    import asyncio

    from .test_fuzz import fuzz_app

    surrogate_sdk.log_exporter.clear()
    surrogate_sdk.span_exporter.clear()
    raw = b"/items/caf\xe9\xff"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": raw.decode("utf-8", "surrogateescape"),
        "raw_path": raw,
        "query_string": b"status=403",
        "root_path": "",
        "headers": [(b"user-agent", b"probe")],
        "client": ("203.0.113.9", 1),
        "server": ("test", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    with surrogate_sdk.tracer.start_as_current_span("server"):
        asyncio.run(fuzz_app()(scope, receive, send))
    assert statuses == [403]
    logs, _ = wire(surrogate_sdk)
    [exported] = record_attributes(logs)
    assert exported["url.path"].startswith("/items/caf\\udce9\\udcff")
    for text in strings(exported):
        assert not SURROGATE.search(text)
