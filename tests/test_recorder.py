"""Core: one security event becomes a log record, a span event and counters."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

import otel_secaudit
from otel_secaudit import CATALOGUE, RequestContext, SecAuditInputError, request_scope, runtime
from otel_secaudit import attributes as attr

CONTRACT_SEVERITY = {
    "DEBUG": SeverityNumber.DEBUG,
    "INFO": SeverityNumber.INFO,
    "WARN": SeverityNumber.WARN,
    "ERROR": SeverityNumber.ERROR,
}

# docs/reference.md's "Event catalogue", transcribed independently of events.py so a typo
# there fails here.
CONTRACT_TABLE = """
auth.login.succeeded authentication success INFO
auth.login.failed authentication failure WARN
auth.login.succeeded_after_failures authentication success WARN
auth.login.new_device authentication success INFO
auth.account.locked authentication failure WARN
auth.logout authentication success INFO
auth.sessions.revoked authentication success INFO
auth.unauthenticated authentication failure WARN
auth.token.invalid authentication failure DEBUG
auth.token.expired authentication failure DEBUG
auth.token.claims_invalid authentication failure DEBUG
auth.token.revoked authentication failure INFO
auth.mfa.failed authentication failure WARN
auth.mfa.enrolled authentication success INFO
auth.mfa.revoked authentication success INFO
auth.backup_code.used authentication success INFO
auth.password.changed authentication success INFO
auth.password.reset_requested authentication success INFO
auth.password.reset_completed authentication success INFO
auth.password.reset_failed authentication failure WARN
auth.password.change_failed authentication failure WARN
auth.email.verified authentication success INFO
auth.email.verification_failed authentication failure INFO
auth.api_key.created authentication success INFO
auth.api_key.revoked authentication success INFO
authz.permission_denied authorization failure WARN
authz.cross_tenant authorization failure WARN
authz.tenant_context_missing authorization failure WARN
authz.privilege_escalation authorization failure ERROR
authz.role.changed authorization success INFO
request.csrf_mismatch request failure WARN
request.rate_limited request failure WARN
request.blocked request failure WARN
request.attack_tool request failure WARN
admin.action admin success INFO
admin.user.created admin success INFO
admin.user.activated admin success INFO
admin.user.deactivated admin success INFO
admin.user.deleted admin success INFO
admin.quota.changed admin success INFO
admin.config.changed admin success INFO
data.sensitive.accessed data success INFO
data.exported data success INFO
data.deleted data success INFO
data.uploaded data success INFO
data.upload.failed data failure WARN
abuse.host abuse failure WARN
abuse.user abuse failure WARN
abuse.scan abuse failure WARN
abuse.block.started abuse success WARN
abuse.block.ended abuse success INFO
"""
CONTRACT_ROWS = [tuple(line.split()) for line in CONTRACT_TABLE.strip().splitlines()]


def test_catalogue_matches_contract() -> None:
    assert {row[0] for row in CONTRACT_ROWS} == set(CATALOGUE)


@pytest.mark.parametrize(("name", "category", "outcome", "severity"), CONTRACT_ROWS)
def test_each_catalogue_entry(
    sdk: Any, name: str, category: str, outcome: str, severity: str
) -> None:
    with sdk.tracer.start_as_current_span("request") as span:
        otel_secaudit.record(name, user_id="42")
    (log,) = sdk.logs()
    record = log.log_record
    assert record.event_name == name
    assert record.severity_number == CONTRACT_SEVERITY[severity]
    assert record.severity_text == CONTRACT_SEVERITY[severity].name
    assert record.attributes[attr.EVENT_NAME] == name
    assert record.attributes[attr.EVENT_CATEGORY] == category
    assert record.attributes[attr.EVENT_OUTCOME] == outcome
    assert record.timestamp and record.observed_timestamp
    assert log.instrumentation_scope.name == "otel_secaudit"
    context = span.get_span_context()
    assert record.trace_id == context.trace_id and record.span_id == context.span_id
    (finished,) = sdk.spans()
    assert [event.name for event in finished.events] == [name]
    assert dict(finished.events[0].attributes) == dict(record.attributes)
    assert sdk.total("security.events", security__event__name=name) == 1
    assert sdk.total("security.violations", security__event__name=name) == (
        1 if outcome == "failure" else 0
    )


def test_counters_carry_only_contract_attributes(sdk: Any) -> None:
    request = RequestContext(
        method="POST",
        route="/login",
        path="/login",
        status_code=401,
        client_address="203.0.113.9",
        user_agent="curl/8",
        user_id="u-1",
    )
    with sdk.tracer.start_as_current_span("request"), request_scope(request):
        otel_secaudit.record(
            "auth.login.failed",
            user_name="alice@example.com",
            client_address="203.0.113.9",
            reason="invalid_credentials",
            attributes={"note": "free text"},
        )
    violations = sdk.points("security.violations")
    events = sdk.points("security.events")
    assert [p.attributes for p in violations] == [
        {
            "security.event.name": "auth.login.failed",
            "security.event.category": "authentication",
            "http.route": "/login",
            "http.response.status_code": 401,
        }
    ]
    assert [p.attributes for p in events] == [
        {"security.event.name": "auth.login.failed", "security.event.outcome": "failure"}
    ]
    for point in violations + events:
        for exemplar in point.exemplars:
            assert not exemplar.filtered_attributes  # exemplars carry trace ids, nothing else
    (log,) = sdk.logs()
    assert log.log_record.attributes["client.address"] == "203.0.113.9"
    assert log.log_record.attributes["http.request.method"] == "POST"
    assert log.log_record.attributes["user.id"] == "u-1"
    assert request.failure_recorded is True


def test_sampled_out_span_still_logs_counts_and_feeds_detection(make_sdk: Any) -> None:
    sdk = make_sdk(sampler=ParentBased(ALWAYS_OFF))
    seen: list[Any] = []
    sdk.recorder.violation_sink = seen.append
    with sdk.tracer.start_as_current_span("request") as span:
        assert not span.is_recording()
        otel_secaudit.record("auth.unauthenticated", client_address="198.51.100.7")
    assert sdk.spans() == []
    (log,) = sdk.logs()
    assert log.log_record.event_name == "auth.unauthenticated"
    assert log.log_record.trace_id == span.get_span_context().trace_id
    assert sdk.total("security.violations") == 1
    assert len(seen) == 1
    assert seen[0].client_address == "198.51.100.7"
    assert seen[0].trace_id == format(span.get_span_context().trace_id, "032x")


def test_detection_sees_each_violation_exactly_once(make_sdk: Any, detectors: list[Any]) -> None:
    # A real detector on the SDK's provider: one violation on a recording span counts once
    # (threshold 2 not reached), the second crosses it: exactly one abuse.host, count 2.
    from otel_secaudit.detection import enable_detection

    sdk = make_sdk(host_threshold=2)
    detector = enable_detection(sdk.recorder)
    detectors.append(detector)
    with sdk.tracer.start_as_current_span("request"):
        otel_secaudit.record("authz.permission_denied", user_id="7", client_address="10.9.9.9")
    assert detector.flush(5)
    assert [log for log in sdk.logs() if log.log_record.event_name == "abuse.host"] == []
    with sdk.tracer.start_as_current_span("request"):
        otel_secaudit.record("authz.permission_denied", user_id="7", client_address="10.9.9.9")
    assert detector.flush(5)
    (abuse,) = [log for log in sdk.logs() if log.log_record.event_name == "abuse.host"]
    assert abuse.log_record.attributes["security.abuse.count"] == 2


def test_detection_is_fed_successes_and_abuse_events_never(make_sdk: Any) -> None:
    sdk = make_sdk()
    seen: list[Any] = []
    sdk.recorder.violation_sink = seen.append
    with sdk.tracer.start_as_current_span("request"):
        otel_secaudit.record("authz.permission_denied", user_id="7")
    assert [v.user_key for v in seen] == ["7"]
    # Successes and the detector's own abuse.* events never feed detection.
    with sdk.tracer.start_as_current_span("request"):
        otel_secaudit.record("auth.login.succeeded", user_id="7")
        sdk.recorder.emit("abuse.host", {"client_address": "10.0.0.1"})
    assert len(seen) == 1


def test_redacted_identifiers_never_become_detection_keys(make_sdk: Any) -> None:
    sdk = make_sdk(strict=False)
    seen: list[Any] = []
    sdk.recorder.violation_sink = seen.append
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    otel_secaudit.record("auth.login.failed", user_id=jwt, user_name="mallory")
    (violation,) = seen
    assert violation.user_key is not None and "REDACTED" not in violation.user_key
    assert violation.user_key == sdk.logs()[-1].log_record.attributes["user.hash"]


def test_metric_attributes_never_come_from_caller_attributes(sdk: Any) -> None:
    otel_secaudit.record(
        "authz.permission_denied", attributes={"http.route": "/free/text/alice@example.com"}
    )
    (point,) = sdk.points("security.violations")
    assert "http.route" not in point.attributes
    assert all("alice" not in str(v) for v in point.attributes.values())


def test_span_events_can_be_turned_off(make_sdk: Any) -> None:
    sdk = make_sdk(span_events=False)
    seen: list[Any] = []
    sdk.recorder.violation_sink = seen.append
    with sdk.tracer.start_as_current_span("request"):
        otel_secaudit.record("request.csrf_mismatch")
    assert sdk.spans()[0].events == ()
    assert len(sdk.logs()) == 1
    assert len(seen) == 1  # no span event, so the recorder feeds detection


def test_no_span_at_all(sdk: Any) -> None:
    otel_secaudit.record("admin.config.changed", user_id="root", attributes={"setting": "mfa"})
    (log,) = sdk.logs()
    assert log.log_record.trace_id in (0, None)
    assert log.log_record.attributes["setting"] == "mfa"


def test_severity_override_and_custom_event(sdk: Any) -> None:
    otel_secaudit.record("auth.login.failed", severity="error")
    otel_secaudit.record("billing.card.declined", outcome="failure", reason="insufficient_funds")
    first, second = sdk.logs()
    assert first.log_record.severity_number == SeverityNumber.ERROR
    assert second.log_record.event_name == "billing.card.declined"
    assert second.log_record.attributes["security.event.category"] == "billing"
    assert second.log_record.severity_number == SeverityNumber.WARN
    assert sdk.total("security.violations", security__event__name="billing.card.declined") == 1


BAD_CALLS = [
    ("unknown catalogue-shaped name without outcome", ("auth.login.exploded",), {}),
    ("invalid name", ("Auth Login!",), {"outcome": "failure"}),
    ("non-str name", (42,), {}),
    ("outcome contradicts catalogue", ("auth.login.failed",), {"outcome": "success"}),
    ("bad outcome", ("custom.thing",), {"outcome": "maybe"}),
    ("reserved namespace", ("abuse.custom",), {"outcome": "failure"}),
    ("wrong type", ("auth.login.failed",), {"user_id": object()}),
    ("unknown field", ("auth.login.failed",), {"username": "bob"}),
    ("non-UTF-8 bytes", ("auth.login.failed",), {"reason": b"\xff\xfe bad"}),
    ("attributes not a mapping", ("auth.login.failed",), {"attributes": ["a", "b"]}),
    ("reserved attribute", ("auth.login.failed",), {"attributes": {"security.event.name": "x"}}),
    ("empty attribute key", ("auth.login.failed",), {"attributes": {"": "x"}}),
    ("unsupported value type", ("auth.login.failed",), {"attributes": {"obj": object()}}),
    ("bad severity", ("auth.login.failed",), {"severity": "loud"}),
]


@pytest.mark.parametrize(("why", "args", "kwargs"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_a_clear_error_in_strict_mode(
    sdk: Any, why: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(SecAuditInputError) as excinfo:
        otel_secaudit.record(*args, **kwargs)
    assert str(excinfo.value)
    assert sdk.logs() == []


@pytest.mark.parametrize(("why", "args", "kwargs"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_counted_never_raised_in_production(
    make_sdk: Any, why: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    sdk = make_sdk(strict=False)
    otel_secaudit.record(*args, **kwargs)  # must not raise
    stats = sdk.recorder.stats.snapshot()
    assert stats["input_problems"] == 1
    assert sdk.total("otel_secaudit.internal.errors") == 1
    logs = sdk.logs()
    if stats["dropped"]:
        assert logs == []  # the name itself was unusable
    else:
        # A violation is never hidden: the event is kept without the bad field.
        (log,) = logs
        assert log.log_record.event_name == "auth.login.failed"


def test_huge_values_are_capped(sdk: Any) -> None:
    otel_secaudit.record(
        "authz.permission_denied",
        permission="p" * 100_000,
        user_agent="Mozilla/" + "x" * 10_000,
        attributes={"k" * 10_000: "v", "list": ["a"] * 10_000},
    )
    (log,) = sdk.logs()
    attributes = log.log_record.attributes
    assert len(attributes["security.permission"]) <= 1024
    assert len(attributes["user_agent.original"]) <= 256
    assert all(len(key) <= 128 for key in attributes)
    assert len(attributes[next(k for k in attributes if k.startswith("kkk"))]) == 1
    assert len(attributes["list"]) <= 32


def test_record_never_raises_when_the_pipeline_breaks(make_sdk: Any) -> None:
    sdk = make_sdk(strict=False)

    class Exploding:
        def emit(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("exporter on fire")

    sdk.recorder._logger = Exploding()
    seen: list[Any] = []
    sdk.recorder.violation_sink = seen.append
    otel_secaudit.record("auth.login.failed")
    otel_secaudit.record("auth.login.failed")
    assert sdk.recorder.stats.snapshot()["internal_errors"] == {"record.log:RuntimeError": 2}
    assert sdk.total("otel_secaudit.internal.errors", error__type="RuntimeError") == 2
    # The other signals and detection still see both violations.
    assert sdk.total("security.violations", security__event__name="auth.login.failed") == 2
    assert len(seen) == 2


def test_violation_sink_failure_is_contained(make_sdk: Any) -> None:
    sdk = make_sdk(strict=True)

    def broken(_: Any) -> None:
        raise ValueError("detector bug")

    sdk.recorder.violation_sink = broken
    otel_secaudit.record("auth.login.failed")  # strict mode is about input, not our bugs
    assert len(sdk.logs()) == 1
    assert sdk.recorder.stats.snapshot()["internal_errors"] == {"record:ValueError": 1}


def test_request_context_user_resolver_is_lazy_and_safe(sdk: Any) -> None:
    calls: list[int] = []

    def resolver() -> str:
        calls.append(1)
        return "user-9"

    request = RequestContext(route="/x", user_id_resolver=resolver)
    with request_scope(request):
        otel_secaudit.record("data.exported")
        otel_secaudit.record("data.exported")
    assert calls == [1]
    assert all(log.log_record.attributes["user.id"] == "user-9" for log in sdk.logs())

    def failing() -> str:
        raise KeyError("no user")

    with request_scope(RequestContext(route="/y", user_id_resolver=failing)):
        otel_secaudit.record("data.exported")
    assert "user.id" not in sdk.logs()[-1].log_record.attributes


def test_default_recorder_uses_global_providers_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SECAUDIT_HOST_THRESHOLD", "-3")  # bad: warned, default used
    previous = runtime.swap(None)
    try:
        recorder = otel_secaudit.get_recorder()
        assert recorder.settings.host_threshold == 10
        otel_secaudit.record("auth.logout")  # the global no-op/proxy providers: no exception
    finally:
        runtime.swap(previous)
