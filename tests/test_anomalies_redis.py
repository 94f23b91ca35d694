"""Scans and new devices shared through a real Redis store (standalone and cluster): the same
algorithm as in memory, one count across instances, scan blocks every instance enforces,
bounded keys, and a Redis outage that only makes detection local."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis

from harness import RedisClusterServers, RedisServer
from otel_secaudit.detection import AbuseDetector, RedisStore, build_store
from otel_secaudit.detection.devices import DeviceHistory, SeenLogin
from otel_secaudit.detection.failover import FailoverStore
from otel_secaudit.detection.scans import Probe, ScanCounter
from otel_secaudit.detection.stores import MemoryStore
from otel_secaudit.detection.stores.anomalies import SharedAnomalies
from otel_secaudit.events import Login

from .conftest import FakeClock

ADDRESS = "203.0.113.7"
T0 = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url


def shared(url: str, max_keys: int = 20000) -> SharedAnomalies:
    store = build_store(url, max_keys=max_keys)
    assert isinstance(store, RedisStore)
    return SharedAnomalies(FailoverStore(store, MemoryStore(), lambda exc: None))


def scan_scenario() -> list[tuple[float, str, str, bool]]:
    """(time, key, path, blockable) probes: a slow prober, a fast one, an idle gap."""
    rows = []
    for i in range(12):
        rows.append((T0 + i * 2.0, ADDRESS, f"/p{i % 7}", i % 3 == 0))
        rows.append((T0 + i * 7.0, "198.51.100.1", f"/q{i}", True))
    rows.append((T0 + 200, ADDRESS, "/late", True))
    return sorted(rows)


def run_scans(apply: Any) -> list[tuple[Any, ...]]:
    out = []
    for i, (at, key, path, blockable) in enumerate(scan_scenario()):
        for c in apply([Probe(key, path, f"{i + 1:032x}", at, blockable)]):
            out.append((c.key, c.count, c.at, c.paths, c.trace_ids, c.blockable))
    return out


@pytest.mark.parametrize("blocking", [False, True])
def test_redis_scans_match_the_memory_counter(redis_url: str, blocking: bool) -> None:
    remote = shared(redis_url)
    local = ScanCounter(max_keys=100)
    expected = run_scans(lambda probes: local.apply(probes, 4, blocking))
    assert expected, "the scenario must cross"
    assert run_scans(lambda probes: remote.scans(probes, 4, blocking)) == expected
    remote._redis.close()


def device_scenario() -> list[SeenLogin]:
    rng = random.Random(7)
    devices = ["Chrome / Windows", "Firefox / Ubuntu", "Mobile Safari / iOS", None]
    networks = [f"10.0.{i}.0/24" for i in range(14)] + [None]
    logins = []
    for i in range(120):
        logins.append(
            SeenLogin(
                f"user{rng.randrange(4)}",
                rng.choice(devices),
                rng.choice(networks),
                T0 + i * 3 * DAY * rng.random(),
            )
        )
    return sorted(logins, key=lambda login: login.at)


def test_redis_device_history_matches_memory(redis_url: str) -> None:
    remote = shared(redis_url)
    local = DeviceHistory(max_keys=100)
    logins = device_scenario()
    expected = [local.apply([login], 30 * DAY)[0] for login in logins]
    assert {"new_device", "new_network", "new_device_and_network", None} <= set(expected)
    # one login per call, then all at once (a batch is applied in order)
    assert [remote.devices([login], 30 * DAY)[0] for login in logins] == expected  # type: ignore[index]
    redis.Redis.from_url(redis_url).flushdb()
    assert remote.devices(logins, 30 * DAY) == expected
    remote._redis.close()


def make_pair(make_sdk: Any, url: str, detectors: list[Any], **settings: Any) -> tuple[Any, ...]:
    clock = FakeClock(T0)
    made = []
    for _ in range(2):
        sdk = make_sdk(store=url, **settings)
        detector = AbuseDetector(sdk.recorder, clock=clock, refresh_interval=0.05)
        detectors.append(detector)
        made += [sdk, detector]
    return (*made, clock)


def logs(sdk: Any, name: str) -> list[Any]:
    return [log.log_record for log in sdk.logs() if log.log_record.event_name == name]


def test_a_scan_split_over_two_instances_is_one_scan_and_blocked_on_both(
    make_sdk: Any, redis_url: str, detectors: list[Any]
) -> None:
    sdk_a, a, sdk_b, b, clock = make_pair(
        make_sdk, redis_url, detectors, scan_threshold=6, block_seconds=30
    )
    for i in range(3):
        a.anomalies.probe(ADDRESS, f"/a{i}")
        assert a.flush()
        b.anomalies.probe(ADDRESS, f"/b{i}")
        assert b.flush()
    scans = logs(sdk_a, "abuse.scan") + logs(sdk_b, "abuse.scan")
    assert len(scans) == 1
    assert scans[0].attributes["security.abuse.count"] == 6
    assert sorted(scans[0].attributes["security.scan.paths"]) == [
        "/a0", "/a1", "/a2", "/b0", "/b1", "/b2",
    ]  # fmt: skip
    assert logs(sdk_b, "abuse.block.started")[0].attributes["security.block.seconds"] == 30
    # the instance that did not cross enforces the block too (housekeeping refresh)
    assert a.flush()
    assert a.is_blocked(ADDRESS) > 29 and b.is_blocked(ADDRESS) > 29


def test_a_new_device_is_seen_across_instances(
    make_sdk: Any, redis_url: str, detectors: list[Any]
) -> None:
    sdk_a, a, sdk_b, b, clock = make_pair(make_sdk, redis_url, detectors)
    chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0.0.0 Safari/537.36"
    iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148 Safari/604.1"
    trace = "ab" * 16
    a.anomalies.login(Login("u-7", False, chrome, "192.0.2.10", "cd" * 16, "", T0))
    assert a.flush()
    b.anomalies.login(Login("u-7", False, iphone, "192.0.2.77", trace, "ef" * 8, T0 + 60))
    assert b.flush()
    [record] = logs(sdk_b, "auth.login.new_device")
    assert record.attributes["security.reason"] == "new_device"
    assert record.attributes["security.abuse.trace_ids"] == (trace,)
    assert format(record.trace_id, "032x") == trace
    assert logs(sdk_a, "auth.login.new_device") == []


def test_scan_keys_are_capped_in_redis(redis_url: str) -> None:
    remote = shared(redis_url, max_keys=50)
    for batch in range(4):
        probes = [Probe(f"10.9.{batch}.{i}", "/x" * 100, "", T0 + batch, False) for i in range(200)]
        remote.scans(probes, 50, False)
    client = redis.Redis.from_url(redis_url)
    assert client.zcard("{secaudit:abuse}:seen:scan") <= 50
    assert len(client.keys("{secaudit:abuse}:sc:*")) <= 50
    assert len(client.keys("{secaudit:abuse}:sp:*")) <= 50
    client.close()
    remote._redis.close()


def test_a_dead_redis_makes_scans_local_and_never_raises(
    make_sdk: Any, detectors: list[Any]
) -> None:
    server = RedisServer().start()
    try:
        sdk = make_sdk(store=server.url, scan_threshold=3)
        detector = AbuseDetector(sdk.recorder)
        detectors.append(detector)
        server.kill()
        for i in range(3):
            detector.anomalies.probe(ADDRESS, f"/{i}")
        assert detector.flush(timeout=15)
        assert len(logs(sdk, "abuse.scan")) == 1  # counted in this process meanwhile
        assert detector.stats["redis_errors"] >= 1
    finally:
        server.close()


def test_cluster_shards_scans_and_devices(
    redis_cluster: RedisClusterServers, make_sdk: Any, detectors: list[Any]
) -> None:
    for node in redis_cluster.nodes:
        redis.Redis(port=node.port).flushall()
    sdk = make_sdk(store=redis_cluster.url, scan_threshold=2)
    detector = AbuseDetector(sdk.recorder)
    detectors.append(detector)
    addresses = [f"198.18.{i}.1" for i in range(40)]
    for address in addresses:
        detector.anomalies.probe(address, "/wp-login.php")
        detector.anomalies.probe(address, "/.env")
    assert detector.flush(timeout=15)
    keys = {log.attributes["security.abuse.key"] for log in logs(sdk, "abuse.scan")}
    assert keys == set(addresses)
    assert detector.stats["redis_errors"] == 0
    holding = [
        node.port for node in redis_cluster.nodes if redis.Redis(port=node.port).keys("*seen:scan")
    ]
    assert len(holding) > 1  # the scan state is spread over the masters
