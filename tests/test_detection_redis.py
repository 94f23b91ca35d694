"""Abuse detection with a real Redis server: the same algorithm as memory, shared state across
processes, blocks enforced by every instance, and Redis failures that never reach the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from harness import RedisServer, wait_for
from otel_secaudit import Violation
from otel_secaudit.context import RequestContext, request_scope
from otel_secaudit.detection import (
    AbuseDetector,
    Hit,
    MemoryStore,
    Policy,
    RedisStore,
    Store,
    build_store,
)

from .conftest import FakeClock

ADDRESS = "203.0.113.7"
T0 = 1_700_000_000.0


def violation(i: int = 0, address: str | None = ADDRESS, user: str | None = None) -> Violation:
    return Violation("auth.login.failed", address, user, f"{i + 1:032x}", 0.0)


def abuse_logs(sdk: Any, name: str) -> list[Any]:
    return [log.log_record for log in sdk.logs() if log.log_record.event_name == name]


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url


# -- one algorithm, two stores ----------------------------------------------------------------


def _scenario(
    store: Store, blockable: bool = True
) -> list[tuple[str, str, int, tuple[str, ...], float]]:
    policy = Policy(host_threshold=3, user_threshold=2, window_seconds=60, block_seconds=30)
    times = [0, 50, 70, 80, 81, 82, 141, 142, 143]
    out = []
    for i, t in enumerate(times):
        hits = [Hit(ADDRESS, None, "auth.login.failed", f"{i + 1:032x}", T0 + t, blockable)]
        if i < 2:
            hits.append(Hit(None, "u1", "authz.cross_tenant", "", T0 + t))
        for c in store.apply(hits, policy):
            blocked = c.blocked_until and c.blocked_until - T0
            out.append((c.scope, c.key, c.count, c.trace_ids, blocked))
            assert c.breakdown
    return out


def test_redis_store_matches_memory_store(redis_url):
    store = build_store(redis_url)
    assert isinstance(store, RedisStore)
    try:
        expected = _scenario(MemoryStore())
        assert _scenario(store) == expected
    finally:
        store.close()
    ids = lambda *n: tuple(f"{i + 1:032x}" for i in n)  # noqa: E731
    assert expected == [
        ("user", "u1", 2, (), 0.0),  # user scope: never a block
        ("host", ADDRESS, 3, ids(1, 2, 3), 80 + 30),  # t=80: 50, 70, 80 (t=0 slid out)
        # t=81 and 82 fall in the block (not counted: the count restarts when it ends, 110);
        # t=143: 141, 142, 143 are three fresh violations: a repeat offender, whose second
        # block is twice as long as its first (README: "Abuse detection and blocks")
        ("host", ADDRESS, 3, ids(6, 7, 8), 143 + 60),
    ]


def test_redis_store_matches_memory_store_for_unblockable_keys(redis_url):
    """An allowlisted address (not blockable) keeps the observe-only rule: once per window."""
    store = build_store(redis_url)
    try:
        expected = _scenario(MemoryStore(), blockable=False)
        assert _scenario(store, blockable=False) == expected
    finally:
        store.close()
    ids = lambda *n: tuple(f"{i + 1:032x}" for i in n)  # noqa: E731
    assert expected == [
        ("user", "u1", 2, (), 0.0),
        ("host", ADDRESS, 3, ids(1, 2, 3), 0.0),
        # t=141 and 142: the oldest of the last three is exactly 60 s old (outside);
        # t=143: 141, 142, 143 within 60 s and 143 >= 80 + 60, so a new window signals
        ("host", ADDRESS, 3, ids(6, 7, 8), 0.0),
    ]


def test_redis_housekeeping_expires_each_block_once(redis_url):
    policy = Policy(host_threshold=1, block_seconds=10)
    first, second = RedisStore(redis_url), RedisStore(redis_url)
    try:
        first.apply([Hit("192.0.2.1", None, "auth.login.failed", "", T0, blockable=True)], policy)
        expired, active = second.housekeeping(T0 + 5)
        assert (expired, active) == ([], {"192.0.2.1": T0 + 10})
        results = [first.housekeeping(T0 + 11), second.housekeeping(T0 + 11)]
        assert [r[0] for r in results] == [[("192.0.2.1", T0 + 10)], []]
    finally:
        first.close()
        second.close()


# -- the detector over Redis --------------------------------------------------------------------


def test_detection_latency_under_one_second(make_sdk, redis_url, detectors):
    sdk = make_sdk(store=redis_url, host_threshold=5)
    detector = AbuseDetector(sdk.recorder)
    detectors.append(detector)
    started = time.monotonic()
    for i in range(5):
        detector.submit(violation(i))
    wait_for(lambda: abuse_logs(sdk, "abuse.host"), timeout=5, interval=0.005)
    latency = time.monotonic() - started
    assert latency < 1.0
    [record] = abuse_logs(sdk, "abuse.host")
    assert record.attributes["security.abuse.trace_ids"] == tuple(f"{i + 1:032x}" for i in range(5))
    assert detector.stats["fallback_active"] is False
    assert detector.stats["redis_errors"] == 0


def test_two_instances_share_blocks_and_end_them_once(make_sdk, redis_url, detectors):
    clock = FakeClock()
    sdk_a = make_sdk(store=redis_url, host_threshold=4, block_seconds=30)
    sdk_b = make_sdk(store=redis_url, host_threshold=4, block_seconds=30)
    a = AbuseDetector(sdk_a.recorder, clock=clock)
    b = AbuseDetector(sdk_b.recorder, clock=clock)
    detectors += [a, b]
    for i in range(2):
        a.submit(violation(i))
        b.submit(violation(10 + i))
    assert a.flush() and b.flush()
    started = abuse_logs(sdk_a, "abuse.block.started") + abuse_logs(sdk_b, "abuse.block.started")
    hosts = abuse_logs(sdk_a, "abuse.host") + abuse_logs(sdk_b, "abuse.host")
    assert len(started) == 1 and len(hosts) == 1  # one signal for the combined count
    assert a.flush() and b.flush()  # refresh the local copies of the blocked set
    assert a.is_blocked(ADDRESS) == pytest.approx(30)
    assert b.is_blocked(ADDRESS) == pytest.approx(30)
    clock.advance(31)
    assert a.flush() and b.flush()
    assert a.is_blocked(ADDRESS) == 0.0 and b.is_blocked(ADDRESS) == 0.0
    ended = abuse_logs(sdk_a, "abuse.block.ended") + abuse_logs(sdk_b, "abuse.block.ended")
    assert len(ended) == 1
    assert ended[0].attributes["client.address"] == ADDRESS


def test_request_blocked_once_per_key_across_instances(make_sdk, redis_url, detectors):
    """Two instances refuse one blocked key: the first record is written by one of them only,
    carrying every refusal both made before it, the next one 60 s later; no refusal does I/O
    (the record rights are traded by the workers, in flush here)."""
    clock = FakeClock()
    sdks = [make_sdk(store=redis_url, host_threshold=2, block_seconds=600) for _ in range(2)]
    a, b = (AbuseDetector(sdk.recorder, clock=clock) for sdk in sdks)
    detectors += [a, b]
    a.submit(violation(0))
    a.submit(violation(1))
    assert a.flush() and b.flush()

    def refuse(detector: AbuseDetector, times: int) -> list[int]:
        out = []
        for _ in range(times):
            refusal = detector.refusal(ADDRESS)
            assert refusal is not None
            out.append(refusal.record_count)
        return out

    assert refuse(a, 1) + refuse(b, 2) == [0, 0, 0]  # nobody holds the right yet
    assert a.flush() and b.flush()  # a takes it (1 refusal); b's 2 go to the shared count
    assert refuse(b, 1) == [0]
    assert refuse(a, 2) == [2, 0]  # a records: its own refusals
    assert a.flush() and b.flush()
    clock.advance(30)
    assert refuse(b, 3) + refuse(a, 1) == [0, 0, 0, 0]
    assert a.flush() and b.flush()
    assert refuse(a, 1) + refuse(b, 1) == [0, 0]  # a held it, and the 60 s are not over
    clock.advance(31)
    assert a.flush() and b.flush()  # a's right ended: a claims first again (its 2 refusals)
    counts = refuse(b, 1) + refuse(a, 1)
    # a's record carries every refusal since its last one that reached the store before its
    # claim (b's 2 + 1 + 3, a's 1 + 1 + 1) and its own: b's last two go to the next record
    assert counts == [0, 10]


def _blocked_through_redis(
    make_sdk: Any, redis_url: str, detectors: list[Any]
) -> tuple[Any, AbuseDetector, FakeClock]:
    """An SDK and a detector on a Redis store (fake clock) whose two violations from ADDRESS
    blocked it for 600 s."""
    clock = FakeClock()
    sdk = make_sdk(store=redis_url, host_threshold=2, block_seconds=600)
    detector = AbuseDetector(sdk.recorder, clock=clock)
    detectors.append(detector)
    detector.submit(violation(0))
    detector.submit(violation(1))
    assert detector.flush()
    return sdk, detector, clock


def test_a_record_right_no_request_used_is_written_by_the_worker(make_sdk, redis_url, detectors):
    sdk, detector, clock = _blocked_through_redis(make_sdk, redis_url, detectors)
    refusal = detector.refusal(ADDRESS)  # the client's only request after its block
    assert refusal is not None and refusal.record_count == 0
    assert detector.flush()  # the right is granted: a refusal would record now
    assert abuse_logs(sdk, "request.blocked") == []
    clock.advance(1.5)
    assert detector.flush()
    [record] = abuse_logs(sdk, "request.blocked")
    assert record.attributes["security.block.count"] == 1
    assert record.attributes["client.address"] == ADDRESS


def test_a_record_the_worker_writes_carries_the_refused_requests_context(
    make_sdk, redis_url, detectors
):
    """The last refused request of the key, though answered, gives the record its request
    attributes and its trace (its span has ended: a log record, no span event)."""
    sdk, detector, clock = _blocked_through_redis(make_sdk, redis_url, detectors)
    tracer = sdk.tracer_provider.get_tracer("test")
    request = RequestContext(method="GET", path="/private", client_address=ADDRESS)
    with tracer.start_as_current_span("GET /private") as span, request_scope(request):
        refusal = detector.refusal(ADDRESS)
        request.status_code = 429
    assert refusal is not None and refusal.record_count == 0
    assert detector.flush()
    clock.advance(1.5)
    assert detector.flush()
    [record] = abuse_logs(sdk, "request.blocked")
    assert record.trace_id == span.get_span_context().trace_id
    assert record.span_id == span.get_span_context().span_id
    assert record.attributes["url.path"] == "/private"
    assert record.attributes["http.response.status_code"] == 429
    assert record.attributes["security.block.count"] == 1


_INSTANCE = textwrap.dedent(
    """
    import json, sys, time
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from otel_secaudit import SecurityRecorder, Settings, Violation
    from otel_secaudit.detection import AbuseDetector

    url, address, first, count, start_at = sys.argv[1:6]
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    recorder = SecurityRecorder(
        Settings.load(environ={}, store=url, host_threshold=10), logger_provider=provider
    )
    detector = AbuseDetector(recorder)
    while time.time() < float(start_at):  # both processes start counting together
        time.sleep(0.001)
    for i in range(int(first), int(first) + int(count)):
        detector.submit(Violation("auth.login.failed", address, None, f"{i + 1:032x}", 0.0))
    assert detector.flush(10)
    signals = [
        dict(log.log_record.attributes)
        for log in exporter.get_finished_logs()
        if log.log_record.event_name == "abuse.host"
    ]
    print(json.dumps({"stats": detector.stats, "signals": signals}, default=list))
    detector.shutdown()
    """
)


def test_two_processes_escalate_on_their_combined_count(redis_url):
    start_at = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _INSTANCE, redis_url, ADDRESS, str(first), "5", str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for first in (0, 100)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    # neither process alone reached 10; together they did, and exactly one of them signalled
    assert [r["stats"]["processed"] for r in results] == [5, 5]
    assert all(r["stats"]["redis_errors"] == 0 for r in results)
    signals = [s for r in results for s in r["signals"]]
    assert len(signals) == 1
    [signal] = signals
    assert signal["security.abuse.count"] == 10
    expected = {f"{i + 1:032x}" for i in [*range(5), *range(100, 105)]}
    assert set(signal["security.abuse.trace_ids"]) == expected


# -- failures -----------------------------------------------------------------------------------


def test_redis_killed_mid_test_falls_back_and_recovers(make_sdk, detectors):
    server = RedisServer().start()
    try:
        sdk = make_sdk(store=server.url, host_threshold=3)
        detector = AbuseDetector(sdk.recorder)
        detectors.append(detector)
        detector.submit(violation(0, address="192.0.2.1"))
        assert detector.flush()
        assert detector.stats["fallback_active"] is False

        server.kill()
        for i in range(3):  # never raises, whatever Redis does
            detector.submit(violation(10 + i, address="192.0.2.2"))
        assert detector.flush()
        stats = detector.stats
        assert stats["fallback_active"] is True
        assert stats["redis_errors"] >= 1
        assert stats["processed"] == 4
        # counted locally during the outage: the escalation still happened
        [record] = abuse_logs(sdk, "abuse.host")
        assert record.attributes["security.abuse.key"] == "192.0.2.2"
        errors = sdk.recorder.stats.snapshot()["internal_errors"]
        assert sum(n for k, n in errors.items() if k.startswith("detection.redis")) >= 1

        server.start()  # same port

        def recovered() -> bool:
            detector.submit(violation(99, address="192.0.2.3"))
            detector.flush()
            return not detector.stats["fallback_active"]

        wait_for(recovered, timeout=15, interval=0.2)
        client = redis.Redis.from_url(server.url)
        assert client.exists("{secaudit:abuse}:w:host:192.0.2.3")
        client.close()
    finally:
        server.close()


def test_a_killed_redis_logs_one_line_per_kind_of_error_and_no_traceback(
    make_sdk, detectors, caplog
):
    """A store failure is one warning line per kind of failure, without a traceback,
    however many batches fail and however many times the worker retries."""
    server = RedisServer().start()
    try:
        sdk = make_sdk(store=server.url, host_threshold=3, block_seconds=5)
        detector = AbuseDetector(sdk.recorder)
        detectors.append(detector)
        detector.submit(violation(0, address="192.0.2.1"))
        assert detector.flush()
        caplog.clear()
        with caplog.at_level("DEBUG", logger="otel_secaudit"):
            server.kill()
            for i in range(20):  # many batches and housekeeping ticks fail
                detector.submit(violation(10 + i, address=f"192.0.2.{10 + i}"))
                assert detector.flush()
                time.sleep(0.02)
            assert detector.stats["redis_errors"] >= 2
        ours = [r for r in caplog.records if r.name.startswith("otel_secaudit")]
        assert ours, "the outage must be logged"
        assert [r for r in ours if r.exc_info or r.exc_text] == [], [r.getMessage() for r in ours]
        lines = [r.getMessage() for r in ours]
        assert all("\n" not in line for line in lines), lines
        kinds = [line for line in lines if "Redis store failed" in line]
        assert len(kinds) == len(set(kinds)) >= 1, lines
        assert "counting in memory" in kinds[0]
    finally:
        server.close()


def test_wrong_password_falls_back_without_raising(make_sdk, detectors):
    server = RedisServer(password="correct-horse-battery").start()
    try:
        url = f"redis://:wrong-password@127.0.0.1:{server.port}/0"
        sdk = make_sdk(store=url, host_threshold=2)
        detector = AbuseDetector(sdk.recorder)
        detectors.append(detector)
        detector.submit(violation(0))
        detector.submit(violation(1))
        assert detector.flush()
        stats = detector.stats
        assert stats["fallback_active"] is True and stats["redis_errors"] >= 1
        assert len(abuse_logs(sdk, "abuse.host")) == 1  # detected locally
        errors = sdk.recorder.stats.snapshot()["internal_errors"]
        assert any(k.startswith("detection.redis:") for k in errors), errors
    finally:
        server.close()


def test_full_queue_counts_the_drop_and_still_counts_locally(make_sdk, redis_url, detectors):
    sdk = make_sdk(store=redis_url, host_threshold=3)
    detector = AbuseDetector(sdk.recorder, queue_size=0)  # every submit finds the queue full
    detectors.append(detector)
    for i in range(3):
        # distinct /64 networks: one /64 is one host key (README: "Abuse detection and blocks")
        detector.submit(violation(i, address=f"2001:db8:{uuid.uuid4().hex[:4]}::1"))
        detector.submit(violation(i))
    assert detector.stats["dropped"] == 6
    assert detector.stats["processed"] == 6
    assert len(abuse_logs(sdk, "abuse.host")) == 1


# -- repeat offenders, IPv6 networks and the key cap, shared through Redis --------------------


def test_repeat_offences_are_shared_between_instances(make_sdk, redis_url, detectors):
    """Instance A blocks an address for 10 s; after it ends, instance B sees the address
    cross again and blocks it for 20 s: the offence count lives in Redis."""
    clock = FakeClock()
    settings = dict(store=redis_url, host_threshold=3, block_seconds=10, block_max_seconds=100)
    sdk_a, sdk_b = make_sdk(**settings), make_sdk(**settings)
    a = AbuseDetector(sdk_a.recorder, clock=clock)
    b = AbuseDetector(sdk_b.recorder, clock=clock)
    detectors += [a, b]
    for i in range(3):
        a.submit(violation(i))
    assert a.flush() and b.flush()
    assert b.is_blocked(ADDRESS) == pytest.approx(10)
    for i in range(3):  # during the block: not counted
        b.submit(violation(10 + i))
    clock.advance(11)
    assert a.flush() and b.flush()
    assert a.is_blocked(ADDRESS) == 0.0
    for i in range(3):
        b.submit(violation(20 + i))
    assert b.flush() and a.flush()
    assert a.is_blocked(ADDRESS) == pytest.approx(20)
    started = [
        r.attributes["security.block.seconds"]
        for sdk in (sdk_a, sdk_b)
        for r in abuse_logs(sdk, "abuse.block.started")
    ]
    assert started == [10, 20]
    hosts = abuse_logs(sdk_a, "abuse.host") + abuse_logs(sdk_b, "abuse.host")
    assert len(hosts) == 2
    ended = abuse_logs(sdk_a, "abuse.block.ended") + abuse_logs(sdk_b, "abuse.block.ended")
    assert len(ended) == 1


def test_ipv6_network_blocked_through_redis(make_sdk, redis_url, detectors):
    sdk = make_sdk(store=redis_url, host_threshold=5, block_seconds=60)
    detector = AbuseDetector(sdk.recorder)
    detectors.append(detector)
    for i in range(30):
        detector.submit(violation(i, address=f"2001:db8:1:2::{i + 1:x}"))
    assert detector.flush()
    [record] = abuse_logs(sdk, "abuse.host")
    assert record.attributes["security.abuse.key"] == "2001:db8:1:2::/64"
    assert detector.is_blocked("2001:db8:1:2::abcd") > 0
    assert detector.stats["redis_errors"] == 0


def _keys(client: Any, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=1000))


def test_key_cap_and_ttl_in_redis(redis_url):
    """OTEL_SECAUDIT_MAX_KEYS per scope in Redis, least recently seen dropped in the same
    round trip; every key expires one window after it stops mattering (the old store kept
    one key per address and user for two windows, without bound)."""
    store = build_store(redis_url, max_keys=100)
    client = redis.Redis.from_url(redis_url)
    policy = Policy(host_threshold=5, user_threshold=5, window_seconds=600)
    try:
        for batch in range(10):
            hits = [
                Hit(f"10.0.{batch}.{i}", f"user-{batch}-{i}", "auth.login.failed", "", T0 + batch)
                for i in range(100)
            ]
            store.apply(hits, policy)
        prefix = "{secaudit:abuse}:"
        assert client.zcard(prefix + "seen:host") == 100
        assert client.zcard(prefix + "seen:user") == 100
        assert _keys(client, prefix + "w:host:*") == 100
        assert _keys(client, prefix + "w:user:*") == 100
        # the survivors are the most recently seen (batch 9)
        assert client.exists(prefix + "w:host:10.0.9.99")
        assert not client.exists(prefix + "w:host:10.0.0.0")
        ttl = client.pttl(prefix + "w:host:10.0.9.99")
        assert 0 < ttl <= 600_000
        assert 0 < client.pttl(prefix + "seen:host") <= 600_000
        # a key that keeps failing is not dropped by a flood of one-off addresses
        for batch in range(10, 13):
            store.apply([Hit("10.9.9.9", None, "auth.login.failed", "", T0 + batch)], policy)
            store.apply(
                [
                    Hit(f"10.1.{batch}.{i}", None, "auth.login.failed", "", T0 + batch)
                    for i in range(50)
                ],
                policy,
            )
        assert client.exists(prefix + "w:host:10.9.9.9")
        assert client.llen(prefix + "w:host:10.9.9.9") == 3
    finally:
        store.close()
        client.close()


def test_block_records_expire_one_window_after_the_block(redis_url):
    store = build_store(redis_url)
    client = redis.Redis.from_url(redis_url)
    policy = Policy(host_threshold=1, window_seconds=100, block_seconds=30)
    try:
        [crossing] = store.apply([Hit("192.0.2.5", None, "x.y", "", T0, blockable=True)], policy)
        assert crossing.block_seconds == 30 and crossing.blocked_until == T0 + 30
        ttl = client.pttl("{secaudit:abuse}:b:192.0.2.5")
        assert 100_000 < ttl <= 130_000
    finally:
        store.close()
        client.close()


def test_user_violations_read_from_redis(make_sdk, redis_url, detectors):
    clock = FakeClock()
    sdk_a = make_sdk(store=redis_url, user_threshold=5, window_seconds=60)
    sdk_b = make_sdk(store=redis_url, user_threshold=5, window_seconds=60)
    a = AbuseDetector(sdk_a.recorder, clock=clock)
    b = AbuseDetector(sdk_b.recorder, clock=clock)
    detectors += [a, b]
    for i in range(3):
        a.submit(violation(i, address=None, user="carol"))
    assert a.flush()
    assert b.user_violations("carol") == 3  # another instance sees them
    clock.advance(61)
    assert b.user_violations("carol") == 0


def test_lowered_key_cap_is_reached_over_a_few_batches(redis_url):
    """Evictions per call are bounded (the batch's keys + 1,000), so lowering MAX_KEYS never
    makes one script stall the server; the cap is still reached."""
    policy = Policy(host_threshold=5, window_seconds=600)
    roomy, tight = build_store(redis_url, max_keys=10**9), build_store(redis_url, max_keys=100)
    client = redis.Redis.from_url(redis_url)
    try:
        roomy.apply(
            [Hit(f"10.2.{i // 256}.{i % 256}", None, "a.b", "", T0) for i in range(3000)], policy
        )
        sizes = []
        for step in range(4):
            tight.apply([Hit("10.3.0.1", None, "a.b", "", T0 + 1 + step)], policy)
            sizes.append(client.zcard("{secaudit:abuse}:seen:host"))
        assert sizes == [3001 - 1001, 2000 - 1001, 100, 100]  # 10.3.0.1 is seen again
        assert _keys(client, "{secaudit:abuse}:w:host:*") == 100
    finally:
        roomy.close()
        tight.close()
        client.close()


def test_blocks_started_during_an_outage_are_enforced_and_survive_recovery(make_sdk, detectors):
    server = RedisServer().start()
    try:
        sdk = make_sdk(store=server.url, host_threshold=2, block_seconds=60)
        detector = AbuseDetector(sdk.recorder)
        detectors.append(detector)
        assert detector.flush()
        server.kill()
        detector.submit(violation(0))
        detector.submit(violation(1))
        assert detector.flush()
        assert detector.stats["fallback_active"] is True
        assert detector.is_blocked(ADDRESS) > 50  # counted and blocked locally
        assert len(abuse_logs(sdk, "abuse.block.started")) == 1
        server.start()

        def recovered() -> bool:
            detector.submit(violation(99, address="192.0.2.99"))
            detector.flush()
            return not detector.stats["fallback_active"]

        wait_for(recovered, timeout=15, interval=0.2)
        assert detector.flush()  # the shared refresh merges the local block in
        assert detector.is_blocked(ADDRESS) > 40
    finally:
        server.close()


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_concurrent_submitters_count_exactly(make_sdk, redis_url, detectors, shared):
    settings: dict[str, Any] = {"host_threshold": 100, "user_threshold": 10**6}
    if shared:
        settings["store"] = redis_url
    sdk = make_sdk(**settings)
    detector = AbuseDetector(sdk.recorder, queue_size=10**6)
    detectors.append(detector)

    def hammer(worker: int) -> None:
        for i in range(1000):
            # one hot address shared by all threads, plus a per-thread user
            detector.submit(violation(worker * 1000 + i, user=f"worker-{worker}"))

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert detector.flush(30)
    assert detector.stats["processed"] == 8000
    assert detector.stats["dropped"] == 0
    [record] = abuse_logs(sdk, "abuse.host")  # once per window, whatever the interleaving
    assert record.attributes["security.abuse.count"] == 100


def test_a_block_end_not_yet_collected_is_reported_once_through_redis(redis_url):
    policy = Policy(host_threshold=1, block_seconds=10)
    first, second = RedisStore(redis_url), RedisStore(redis_url)
    try:
        hit = Hit("192.0.2.8", None, "auth.login.failed", "", T0, blockable=True)
        [one] = first.apply([hit], policy)
        assert (one.blocked_until, one.previous_block_until) == (T0 + 10, 0.0)
        # 10.5 s later, before any housekeeping: the next crossing carries the old end
        [two] = second.apply([hit._replace(at=T0 + 10.5)], policy)
        assert (two.blocked_until, two.previous_block_until) == (T0 + 10.5 + 20, T0 + 10)
        assert first.housekeeping(T0 + 11).expired == []  # not reported a second time
        assert second.housekeeping(T0 + 31).expired == [("192.0.2.8", T0 + 30.5)]
    finally:
        first.close()
        second.close()
