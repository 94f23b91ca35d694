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
    assert started["security.block.seconds"] == 30  # docs/reference.md, "Attributes" (was block_s)
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
    detector = enable_detection(sdk.recorder)
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
    detector = enable_detection(sdk.recorder)
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
    detector = enable_detection(sdk.recorder)
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


# -- a second TracerProvider (issue 11) ---------------------------------------------------------


def test_detection_sees_violations_on_spans_of_another_tracer_provider(make_sdk):
    """Detection enabled with provider A; the app's spans come from provider B. On the old
    code the span processor sat on A only and the recorder left span-borne violations to it:
    10 violations logged, 0 detected."""
    from opentelemetry.sdk.trace import TracerProvider

    sdk = make_sdk(host_threshold=10)
    detector = enable_detection(sdk.recorder)  # provider A
    other = TracerProvider()  # provider B, e.g. one the framework instrumentation built
    try:
        tracer = other.get_tracer("app")
        for i in range(10):
            with tracer.start_as_current_span(f"POST /login {i}") as span:
                assert span.is_recording()
                otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
        assert len([r for r in sdk.logs() if r.log_record.event_name == "auth.login.failed"]) == 10
        assert detector.stats["processed"] == 10
        [record] = abuse_logs(sdk, "abuse.host")
        assert record.attributes["security.abuse.count"] == 10
    finally:
        disable_detection(sdk.recorder, detector)
        other.shutdown()


# -- repeat offenders (README: "Abuse detection and blocks") ----------------------------------


def _hosts_and_blocks(sdk: Any) -> list[tuple[str, Any]]:
    out = []
    for record in abuse_logs(sdk):
        if record.event_name == "abuse.host":
            out.append(("abuse.host", record.attributes["security.abuse.key"]))
        elif record.event_name == "abuse.block.started":
            out.append(("started", record.attributes["security.block.seconds"]))
        elif record.event_name == "abuse.block.ended":
            out.append(("ended", record.attributes["security.abuse.key"]))
    return out


def test_repeat_offender_is_blocked_again_twice_as_long_up_to_the_maximum(
    make_sdk, clock, detectors
):
    sdk = make_sdk(host_threshold=3, window_seconds=3600, block_seconds=10, block_max_seconds=35)
    detector = make_detector(sdk, clock, detectors)
    lengths = []
    for offence in range(4):
        for i in range(3):
            detector.submit(violation(offence * 10 + i))
        left = detector.is_blocked(ADDRESS)
        lengths.append(left)
        # refused requests do not reach the app, but violations seen while blocked (another
        # instance, a race) do not count: the count restarts when the block ends
        for i in range(5):
            detector.submit(violation(100 + i))
        clock.advance(left + 1)
        assert detector.is_blocked(ADDRESS) == 0.0
        assert detector.flush()
    assert lengths == [10, 20, 35, 35]  # doubling, capped by OTEL_SECAUDIT_BLOCK_MAX_SECONDS
    assert _hosts_and_blocks(sdk) == [
        ("abuse.host", ADDRESS),
        ("started", 10),
        ("ended", ADDRESS),
        ("abuse.host", ADDRESS),
        ("started", 20),
        ("ended", ADDRESS),
        ("abuse.host", ADDRESS),
        ("started", 35),
        ("ended", ADDRESS),
        ("abuse.host", ADDRESS),
        ("started", 35),
        ("ended", ADDRESS),
    ]
    assert sdk.total("security.abuse.signals", security__abuse__scope="host") == 4


def test_count_restarts_when_the_block_ends(make_sdk, clock, detectors):
    """On the old code a key crossed once per window: after a 300 s block the same address
    could fail 1,000 more times in the hour and was never blocked again."""
    sdk = make_sdk(host_threshold=3, window_seconds=3600, block_seconds=300)
    detector = make_detector(sdk, clock, detectors)
    for i in range(3):
        detector.submit(violation(i))
    assert detector.is_blocked(ADDRESS) == pytest.approx(300)
    clock.advance(301)
    detector.flush()
    detector.submit(violation(10))
    detector.submit(violation(11))
    assert detector.is_blocked(ADDRESS) == 0.0  # two fresh violations: below the threshold
    detector.submit(violation(12))
    assert detector.is_blocked(ADDRESS) == pytest.approx(600)
    second = abuse_logs(sdk, "abuse.host")[-1]
    assert second.attributes["security.abuse.trace_ids"] == tuple(trace_id(i) for i in (10, 11, 12))


def test_observe_only_keeps_one_signal_per_key_per_window(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=3, window_seconds=3600)
    detector = make_detector(sdk, clock, detectors)
    for i in range(30):
        detector.submit(violation(i))
        clock.advance(10)
    assert len(abuse_logs(sdk, "abuse.host")) == 1
    assert abuse_logs(sdk, "abuse.block.started") == []


def test_allowlisted_addresses_are_never_blocked_but_still_signal(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=2, block_seconds=60, allowlist="192.0.2.0/24,2001:db8:ffff::/48")
    detector = make_detector(sdk, clock, detectors)
    for address in ("192.0.2.10", "2001:db8:ffff:1::7", ADDRESS):
        for i in range(4):
            detector.submit(violation(i, address=address))
    signalled = [r.attributes["security.abuse.key"] for r in abuse_logs(sdk, "abuse.host")]
    assert signalled == ["192.0.2.10", "2001:db8:ffff:1::/64", ADDRESS]
    started = [r.attributes["security.abuse.key"] for r in abuse_logs(sdk, "abuse.block.started")]
    assert started == [ADDRESS]
    assert detector.is_blocked("192.0.2.10") == 0.0
    assert detector.refusal("2001:db8:ffff:1::7") is None
    assert detector.is_blocked(ADDRESS) > 0


# -- IPv6 networks ------------------------------------------------------------------------------


def test_ipv6_rotation_inside_one_64_is_one_host_and_one_block(make_sdk, clock, detectors):
    """30 addresses in one /64, threshold 5: the old code keyed each address apart and raised
    nothing."""
    sdk = make_sdk(host_threshold=5, block_seconds=60)
    detector = make_detector(sdk, clock, detectors)
    for i in range(30):
        detector.submit(violation(i, address=f"2001:db8:1:2::{i + 1:x}"))
    [record] = abuse_logs(sdk, "abuse.host")
    a = dict(record.attributes)
    assert a["security.abuse.key"] == "2001:db8:1:2::/64"
    assert "client.address" not in a  # a network, not one client
    [started] = abuse_logs(sdk, "abuse.block.started")
    assert started.attributes["security.abuse.key"] == "2001:db8:1:2::/64"
    assert detector.is_blocked("2001:db8:1:2:ffff:ffff:ffff:ffff") == pytest.approx(60)
    assert detector.is_blocked("2001:db8:1:3::1") == 0.0
    refusal = detector.refusal("2001:db8:1:2::99")
    assert refusal is not None and refusal.key == "2001:db8:1:2::/64"


def test_ipv6_prefix_128_counts_each_address_and_mapped_ipv4_is_ipv4(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=2, ipv6_prefix=128, block_seconds=30)
    detector = make_detector(sdk, clock, detectors)
    for i in range(4):
        detector.submit(violation(i, address=f"2001:db8::{i + 1:x}"))
    assert abuse_logs(sdk, "abuse.host") == []
    detector.submit(violation(10, address="::ffff:198.51.100.4"))
    detector.submit(violation(11, address="198.51.100.4"))
    [record] = abuse_logs(sdk, "abuse.host")
    assert record.attributes["security.abuse.key"] == "198.51.100.4"
    assert record.attributes["client.address"] == "198.51.100.4"
    assert detector.is_blocked("::ffff:198.51.100.4") > 0


def test_host_keys():
    from otel_secaudit.detection import HostKeys

    keys = HostKeys(ipv6_prefix=48)
    assert keys.key("203.0.113.9") == "203.0.113.9"
    assert keys.key("2001:db8:aa:bb::1") == "2001:db8:aa::/48"
    assert keys.key("[2001:db8::1]") == "2001:db8::/48"
    assert keys.key("::ffff:203.0.113.9") == "203.0.113.9"
    assert keys.key("testclient") == "testclient"
    assert keys.resolve("2001:db8::1") == ("2001:db8::/48", True)
    assert HostKeys(blocking=False).resolve("2001:db8::1") == ("2001:db8::/64", False)
    with pytest.raises(ValueError):
        HostKeys(ipv6_prefix=0)


# -- refusals: Retry-After, request.blocked aggregation ------------------------------------------


def test_refusal_counts_every_request_and_records_once_per_key_per_minute(
    make_sdk, clock, detectors
):
    sdk = make_sdk(host_threshold=1, block_seconds=600)
    detector = make_detector(sdk, clock, detectors)
    sdk.recorder.violation_sink = detector.submit
    assert detector.refusal(ADDRESS) is None
    detector.submit(violation(0))
    clock.advance(0.5)
    first = detector.refusal(ADDRESS)
    assert first is not None
    assert (first.key, first.retry_after, first.record_count) == (ADDRESS, 600, 1)
    assert first.seconds_left == pytest.approx(599.5)
    counts = [first.record_count]
    for _ in range(99):  # a flood: 99 more within the minute
        clock.advance(0.1)
        refusal = detector.refusal(ADDRESS)
        assert refusal is not None
        counts.append(refusal.record_count)
    assert counts[1:] == [0] * 99
    clock.advance(60)
    later = detector.refusal(ADDRESS)
    assert later is not None and later.record_count == 100  # 99 since the record + this one
    assert sdk.total("security.requests.blocked", security__abuse__scope="host") == 101
    assert detector.refusal("192.0.2.200") is None
    # the web integration records request.blocked; it is never fed back into detection
    processed = detector.stats["processed"]
    otel_secaudit.record(
        "request.blocked", client_address=ADDRESS, attributes={"security.block.count": 1}
    )
    assert detector.stats["processed"] == processed


def test_refusal_is_none_when_blocks_are_off_or_the_block_ended(make_sdk, clock, detectors):
    sdk = make_sdk(host_threshold=1)
    detector = make_detector(sdk, clock, detectors)
    detector.submit(violation(0))
    assert detector.refusal(ADDRESS) is None  # observe only
    sdk = make_sdk(host_threshold=1, block_seconds=5)
    detector = make_detector(sdk, clock, detectors)
    detector.submit(violation(0))
    refusal = detector.refusal(ADDRESS)
    assert refusal is not None and refusal.retry_after == 5
    clock.advance(5)
    assert detector.refusal(ADDRESS) is None


# -- the key cap and configuration --------------------------------------------------------------


def test_max_keys_setting_caps_each_scope(make_sdk, clock, detectors):
    sdk = make_sdk(max_keys=50, host_threshold=2, user_threshold=2)
    detector = make_detector(sdk, clock, detectors)
    for i in range(500):
        detector.submit(violation(i, address=f"10.1.{i // 256}.{i % 256}", user=f"user{i}"))
    stats = detector.stats
    assert stats["tracked_keys"] == 100  # 50 hosts + 50 users
    assert stats["evictions"] == 2 * (500 - 50)


def test_detection_settings_rows():
    from otel_secaudit import ConfigError, Settings

    defaults = Settings.load(environ={})
    assert (defaults.max_keys, defaults.block_max_seconds, defaults.ipv6_prefix) == (
        20000,
        86400,
        64,
    )
    assert defaults.allowlist == ()
    env = {
        "OTEL_SECAUDIT_MAX_KEYS": "500",
        "OTEL_SECAUDIT_BLOCK_MAX_SECONDS": "3600",
        "OTEL_SECAUDIT_ALLOWLIST": "10.0.0.0/8, 2001:db8::/32",
        "OTEL_SECAUDIT_IPV6_PREFIX": "56",
    }
    settings = Settings.load(environ=env)
    assert (settings.max_keys, settings.block_max_seconds, settings.ipv6_prefix) == (500, 3600, 56)
    assert [str(n) for n in settings.allowlist] == ["10.0.0.0/8", "2001:db8::/32"]
    assert Settings.load(environ={}, allowlist=["192.0.2.0/24"]).allowlist[0].prefixlen == 24
    for variable, value in [
        ("OTEL_SECAUDIT_MAX_KEYS", "0"),
        ("OTEL_SECAUDIT_IPV6_PREFIX", "129"),
        ("OTEL_SECAUDIT_ALLOWLIST", "not-a-network"),
        ("OTEL_SECAUDIT_STORE", "memcached://localhost"),
    ]:
        with pytest.raises(ConfigError, match=variable):
            Settings.load(environ={variable: value})


def test_store_uris_are_parsed_once():
    from otel_secaudit.detection import build_store, parse_store_uri

    assert parse_store_uri(" memory:// ") == "memory://"
    assert parse_store_uri("redis://localhost:6379/0") == "redis://localhost:6379/0"
    for bad in ("memcached://x", "redis://:secret@host:notaport/0", ""):
        with pytest.raises(ValueError) as info:
            parse_store_uri(bad)
        assert "secret" not in str(info.value)
    store = build_store("memory://", max_keys=7)
    assert isinstance(store, MemoryStore) and store.max_keys == 7


def test_lua_scripts_are_package_resources():
    """The Redis scripts are read with importlib.resources, so they must ship in the wheel
    (hatch includes every file under otel_secaudit/)."""
    from importlib import resources

    folder = resources.files("otel_secaudit.detection.stores")
    for name in ("apply.lua", "housekeeping.lua"):
        assert "redis.call" in folder.joinpath(name).read_text(encoding="utf-8")


def test_user_violations_counts_the_window(make_sdk, clock, detectors):
    """For auth.login.succeeded_after_failures: the user key's violations in the window."""
    sdk = make_sdk(user_threshold=5, window_seconds=60)
    detector = make_detector(sdk, clock, detectors)
    assert detector.user_violations("alice") == 0
    for i in range(3):
        detector.submit(violation(i, user="alice"))
        clock.advance(20)
    assert detector.user_violations("alice") == 2  # the first is 60 s old now
    assert detector.user_violations("bob") == 0
    assert detector.user_violations("") == 0


def test_worker_restarts_in_a_forked_child(make_sdk, detectors):
    """Under a pre-forking server the detector is built in the master; fork() keeps only the
    calling thread, so the runtime's fork hook restarts the worker in the child."""
    sdk = make_sdk(host_threshold=2, block_seconds=1)
    detector = AbuseDetector(sdk.recorder)
    detectors.append(detector)
    assert detector.flush()
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when blocks still start and end
        code = 1
        try:
            detector.after_fork_in_child()
            detector.submit(violation(0))
            detector.submit(violation(1))
            blocked = detector.is_blocked(ADDRESS) > 0
            time.sleep(1.1)
            if blocked and detector.flush(5) and detector.is_blocked(ADDRESS) == 0.0:
                code = 0 if detector.stats["blocked_keys"] == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_block_end_not_yet_seen_is_reported_before_the_next_block(make_sdk, clock, detectors):
    """The key re-offends right after its block ended, before housekeeping ran: the first
    block's end is still reported, once, before the second block starts."""
    sdk = make_sdk(host_threshold=2, block_seconds=10)
    detector = make_detector(sdk, clock, detectors)
    detector.submit(violation(0))
    detector.submit(violation(1))
    clock.advance(10.05)  # no flush: housekeeping has not seen the end yet
    detector.submit(violation(2))
    detector.submit(violation(3))
    assert detector.flush()
    clock.advance(21)
    assert detector.flush()
    assert _hosts_and_blocks(sdk) == [
        ("abuse.host", ADDRESS),
        ("started", 10),
        ("ended", ADDRESS),
        ("abuse.host", ADDRESS),
        ("started", 20),
        ("ended", ADDRESS),
    ]
