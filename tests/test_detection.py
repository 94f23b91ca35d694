"""Abuse detection with the memory store: thresholds, the moving window, signalling once per
window, blocks, exactly-once counting through the span processor, bounded memory."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

import otel_secaudit
from otel_secaudit import Violation
from otel_secaudit.detection import (
    AbuseDetector,
    KeyWindow,
    MemoryStore,
    Policy,
    disable_detection,
    enable_detection,
)

from .conftest import FakeClock

ADDRESS = "203.0.113.7"
T0 = 1_700_000_000.0


def trace_id(i: int) -> str:
    return f"{i + 1:032x}"


def violation(
    i: int = 0,
    name: str = "auth.login.failed",
    address: str | None = ADDRESS,
    user: str | None = None,
) -> Violation:
    return Violation(
        name=name, client_address=address, user_key=user, trace_id=trace_id(i), timestamp=0.0
    )


def abuse_logs(sdk: Any, name: str | None = None) -> list[Any]:
    out = []
    for log in sdk.logs():
        event_name = log.log_record.event_name
        if event_name.startswith("abuse.") and (name is None or event_name == name):
            out.append(log.log_record)
    return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_detector(sdk: Any, clock: FakeClock, detectors: list[AbuseDetector]) -> AbuseDetector:
    detector = AbuseDetector(sdk.recorder, clock=clock)
    detectors.append(detector)
    return detector


# -- thresholds and the contract attributes --------------------------------------------------


def test_host_threshold_emits_abuse_host_with_contract_attributes(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=3, window_seconds=60)
    detector = make_detector(sdk, clock, detectors)
    detector.submit(violation(0))
    detector.submit(violation(1, name="authz.permission_denied"))
    assert abuse_logs(sdk) == []
    detector.submit(violation(2))

    [record] = abuse_logs(sdk)
    assert record.event_name == "abuse.host"
    assert record.severity_text == "WARN"
    a = dict(record.attributes)
    assert a["security.abuse.scope"] == "host"
    assert a["security.abuse.key"] == ADDRESS
    assert a["client.address"] == ADDRESS
    assert a["security.abuse.count"] == 3
    assert a["security.abuse.threshold"] == 3
    assert a["security.abuse.window_s"] == 60
    assert a["security.abuse.trace_ids"] == (trace_id(0), trace_id(1), trace_id(2))
    assert a["security.event.category"] == "abuse"
    assert "user.id" not in a
    assert dict(record.body) == {"auth.login.failed": 2, "authz.permission_denied": 1}
    # the log record links to the trace of the last triggering violation
    assert format(record.trace_id, "032x") == trace_id(2)
    assert sdk.total("security.abuse.signals", security__abuse__scope="host") == 1
    assert sdk.total("security.abuse.signals", security__abuse__scope="user") == 0


def test_user_threshold_uses_user_id_or_hash(make_sdk, clock, detectors):
    sdk = make_sdk(user_threshold=2, host_threshold=100)
    detector = make_detector(sdk, clock, detectors)
    hashed = "ab" * 32
    for i in range(2):
        detector.submit(violation(i, address=f"198.51.100.{i}", user="42"))
        detector.submit(violation(10 + i, address=None, user=hashed))
    records = abuse_logs(sdk, "abuse.user")
    assert len(records) == 2
    by_key = {r.attributes["security.abuse.key"]: dict(r.attributes) for r in records}
    assert by_key["42"]["user.id"] == "42"
    assert "user.hash" not in by_key["42"]
    assert by_key[hashed]["user.hash"] == hashed
    assert by_key[hashed]["security.abuse.trace_ids"] == (trace_id(10), trace_id(11))
    assert all(a["security.abuse.threshold"] == 2 for a in by_key.values())
    assert abuse_logs(sdk, "abuse.host") == []
    assert sdk.total("security.abuse.signals", security__abuse__scope="user") == 2


def test_below_threshold_from_many_keys_never_escalates(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=3, user_threshold=3)
    detector = make_detector(sdk, clock, detectors)
    for i in range(100):
        detector.submit(violation(i, address=f"10.0.0.{i % 50}", user=f"u{i % 50}"))
    assert abuse_logs(sdk) == []
    assert detector.stats["processed"] == 100


# -- the window --------------------------------------------------------------------------------


def test_window_slides_exactly(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=3, window_seconds=60)
    detector = make_detector(sdk, clock, detectors)
    detector.submit(violation(0))  # t=0
    clock.advance(50)
    detector.submit(violation(1))  # t=50
    clock.advance(20)
    detector.submit(violation(2))  # t=70: the t=0 violation has left the window
    assert abuse_logs(sdk) == []
    clock.advance(10)
    detector.submit(violation(3))  # t=80: 50, 70, 80 are within 60 s
    [record] = abuse_logs(sdk)
    assert record.attributes["security.abuse.trace_ids"] == (trace_id(1), trace_id(2), trace_id(3))


def test_exactly_window_seconds_old_is_outside(clock):
    window = KeyWindow()
    assert not window.hit(0.0, "a", "", threshold=2, window=10)
    assert not window.hit(10.0, "a", "", threshold=2, window=10)  # 10 s old: out
    assert window.hit(19.9, "a", "", threshold=2, window=10)
    assert len(window.entries) == 2  # never more than the threshold


def test_signals_once_per_key_per_window(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=3, window_seconds=60)
    detector = make_detector(sdk, clock, detectors)
    for i in range(20):
        detector.submit(violation(i))
        clock.advance(1)
    assert len(abuse_logs(sdk, "abuse.host")) == 1  # t=2 crossed; t=3..19 are the same window
    clock.advance(45)  # t=64 >= 2 + 60: a new window may signal again
    detector.submit(violation(100))
    [_, second] = abuse_logs(sdk, "abuse.host")
    assert second.attributes["security.abuse.trace_ids"][-1] == trace_id(100)
    assert sdk.total("security.abuse.signals") == 2
    # a quiet key that crossed long ago needs `threshold` fresh violations to signal again
    clock.advance(1000)
    detector.submit(violation(200))
    assert len(abuse_logs(sdk, "abuse.host")) == 2


def test_abuse_events_are_not_fed_back(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=2, block_seconds=5)
    detector = make_detector(sdk, clock, detectors)
    sdk.recorder.violation_sink = detector.submit
    otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
    otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
    assert [r.event_name for r in abuse_logs(sdk)] == ["abuse.host", "abuse.block.started"]
    # abuse.host is a failure event, but the detector only counted the two login failures
    assert detector.stats["processed"] == 2


# -- blocks ------------------------------------------------------------------------------------


def test_block_starts_and_ends_lazily_on_is_blocked(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=2, user_threshold=2, block_seconds=30)
    detector = make_detector(sdk, clock, detectors)
    assert detector.is_blocked(ADDRESS) == 0.0
    detector.submit(violation(0, user="7"))
    detector.submit(violation(1, user="7"))
    names = [r.event_name for r in abuse_logs(sdk)]
    assert names == ["abuse.host", "abuse.block.started", "abuse.user"]
    started = dict(abuse_logs(sdk, "abuse.block.started")[0].attributes)
    assert started["security.abuse.scope"] == "host"
    assert started["security.abuse.key"] == ADDRESS
    assert started["client.address"] == ADDRESS
    assert started["security.block.seconds"] == 30  # CONTRACT section 3 (was block_s)
    assert detector.is_blocked(ADDRESS) == pytest.approx(30)
    assert detector.is_blocked("192.0.2.1") == 0.0
    clock.advance(29)
    assert detector.is_blocked(ADDRESS) == pytest.approx(1)
    clock.advance(1.5)
    assert detector.is_blocked(ADDRESS) == 0.0
    assert detector.is_blocked(ADDRESS) == 0.0
    detector.flush()
    [ended] = abuse_logs(sdk, "abuse.block.ended")
    assert ended.attributes["client.address"] == ADDRESS


def test_block_end_is_not_lost_without_requests(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=1, block_seconds=10)
    detector = make_detector(sdk, clock, detectors)
    detector.submit(violation(0))
    assert detector.is_blocked(ADDRESS) > 0
    clock.advance(11)
    # no is_blocked call: the housekeeping of the worker (or flush) reports the end
    assert detector.flush()
    [ended] = abuse_logs(sdk, "abuse.block.ended")
    assert ended.attributes["security.abuse.key"] == ADDRESS
    assert detector.is_blocked(ADDRESS) == 0.0
    assert len(abuse_logs(sdk, "abuse.block.ended")) == 1


def test_user_scope_alone_never_blocks(make_sdk, clock, detectors):
    sdk = make_sdk(user_threshold=2, host_threshold=100, block_seconds=60)
    detector = make_detector(sdk, clock, detectors)
    for i in range(5):
        detector.submit(violation(i, address=f"198.51.100.{i}", user="victim"))
    assert len(abuse_logs(sdk, "abuse.user")) == 1
    assert abuse_logs(sdk, "abuse.block.started") == []
    assert all(detector.is_blocked(f"198.51.100.{i}") == 0.0 for i in range(5))


def test_observe_only_by_default(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=1)
    detector = make_detector(sdk, clock, detectors)
    detector.submit(violation(0))
    assert [r.event_name for r in abuse_logs(sdk)] == ["abuse.host"]
    assert detector.is_blocked(ADDRESS) == 0.0


# -- exactly once through the processor and the recorder's sink --------------------------------


@pytest.mark.parametrize("sampler", [ALWAYS_ON, ALWAYS_OFF], ids=["sampled", "sampled-out"])
def test_each_violation_counted_exactly_once(make_sdk, sampler):
    sdk = make_sdk(sampler=sampler, host_threshold=3, user_threshold=100)
    detector = enable_detection(sdk.recorder, sdk.tracer_provider)
    try:
        for i in range(2):
            with sdk.tracer.start_as_current_span(f"request {i}") as span:
                otel_secaudit.record("auth.login.failed", client_address=ADDRESS, user_id="u1")
                otel_secaudit.record("auth.login.succeeded", client_address=ADDRESS)
                assert span.is_recording() is (sampler is ALWAYS_ON)
        assert detector.stats["processed"] == 2
        assert abuse_logs(sdk) == []
        with sdk.tracer.start_as_current_span("request 3"):
            otel_secaudit.record("authz.cross_tenant", client_address=ADDRESS, user_id="u1")
        assert detector.stats["processed"] == 3
        [record] = abuse_logs(sdk)
        assert record.attributes["security.abuse.count"] == 3
        assert record.body == {"auth.login.failed": 2, "authz.cross_tenant": 1}
        # a violation outside any span reaches the detector through the recorder's sink
        otel_secaudit.record("auth.mfa.failed", client_address="192.0.2.9")
        assert detector.stats["processed"] == 4
        if sampler is ALWAYS_ON:
            spans = sdk.spans()
            trace_ids = {format(s.context.trace_id, "032x") for s in spans}
            assert set(record.attributes["security.abuse.trace_ids"]) <= trace_ids
            assert len(record.attributes["security.abuse.trace_ids"]) == 3
    finally:
        disable_detection(sdk.recorder, detector)


def test_span_events_off_still_counted_once(make_sdk):
    sdk = make_sdk(span_events=False, host_threshold=2)
    detector = enable_detection(sdk.recorder, sdk.tracer_provider)
    try:
        with sdk.tracer.start_as_current_span("request"):
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
        assert detector.stats["processed"] == 2
        assert len(abuse_logs(sdk, "abuse.host")) == 1
    finally:
        disable_detection(sdk.recorder, detector)


def test_disable_detection_stops_counting(make_sdk):
    sdk = make_sdk(host_threshold=1)
    detector = enable_detection(sdk.recorder, sdk.tracer_provider)
    disable_detection(sdk.recorder, detector)
    assert sdk.recorder.violation_sink is None
    with sdk.tracer.start_as_current_span("request"):
        otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
    otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
    assert detector.stats["processed"] == 0
    assert abuse_logs(sdk) == []


class _BrokenStore(MemoryStore):
    def apply(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("store bug")


def test_callbacks_never_raise(make_sdk, clock, detectors):
    sdk = make_sdk()
    detector = AbuseDetector(sdk.recorder, store=_BrokenStore(), clock=clock)
    detectors.append(detector)
    detector.submit(violation(0))
    assert detector.is_blocked(None) == 0.0  # type: ignore[arg-type]
    assert detector.refusal(None) is None
    errors = sdk.recorder.stats.snapshot()["internal_errors"]
    assert errors["detection.submit:RuntimeError"] == 1


# -- bounded memory ----------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_one_million_distinct_addresses_keep_memory_bounded():
    store = MemoryStore()  # the default cap: 20,000 keys per scope
    policy = Policy(host_threshold=10, user_threshold=5, window_seconds=3600)
    gc.collect()
    before = _rss_bytes()
    started = time.perf_counter()
    count = store.count
    for i in range(1_000_000):
        # random-looking distinct addresses and user hashes, as a flood would send them
        address = f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1"
        count(address, f"u{i * 7919}", "auth.login.failed", "", T0 + i * 1e-3, policy)
    elapsed = time.perf_counter() - started
    gc.collect()
    grown = _rss_bytes() - before
    print(
        f"\n1,000,000 distinct addresses+users in {elapsed:.1f}s: tracked keys "
        f"{store.tracked_keys():,}, evictions {store.evictions:,}, "
        f"RSS growth {grown / 2**20:.1f} MiB"
    )
    assert store.tracked_keys() == 2 * store.max_keys == 40_000
    assert store.evictions == 2 * (1_000_000 - 20_000)
    assert store.violations == 1_000_000
    assert grown < 64 * 2**20


def test_worst_case_memory_with_every_window_full():
    """Every tracked key holds a full window of distinct trace IDs: the cap still holds."""
    store = MemoryStore()
    policy = Policy(host_threshold=10, user_threshold=5, window_seconds=3600)
    gc.collect()
    before = _rss_bytes()
    for round_ in range(11):
        for i in range(store.max_keys):
            store.count(
                f"2001:db8::{i:x}",
                f"user-{i}",
                "auth.login.failed",
                f"{round_ * 10**6 + i + 1:032x}",
                T0 + round_,
                policy,
            )
    gc.collect()
    grown = _rss_bytes() - before
    print(f"\nworst case, {store.tracked_keys():,} full windows: RSS +{grown / 2**20:.1f} MiB")
    assert store.tracked_keys() == 2 * store.max_keys
    assert store.evictions == 0
    assert grown < 80 * 2**20
