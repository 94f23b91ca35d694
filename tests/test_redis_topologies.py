"""The Redis store on every topology of ``OTEL_SECAUDIT_STORE`` (the ``limits`` URI forms),
against real servers the tests start: a Unix socket, a TLS-only server (``rediss://``), a
3-master Redis Cluster (``redis-cli --cluster create``, one master killed and restarted) and a
master + replica watched by ``redis-server --sentinel``, failed over while the application
keeps recording violations. No error ever reaches the application."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

import otel_secaudit
from harness import RedisClusterServers, RedisSentinelServers, RedisServer, wait_for
from otel_secaudit import Settings, Violation
from otel_secaudit.config import ConfigError
from otel_secaudit.detection import AbuseDetector
from otel_secaudit.detection.stores import MemoryStore, RedisStore, build_store
from otel_secaudit.detection.stores.redis import CLUSTER_SHARDS, DEFAULT_PREFIX, shard_prefixes
from otel_secaudit.detection.stores.redis_clients import redis_client
from otel_secaudit.detection.window import Hit, Policy
from otel_secaudit.store_uris import (
    CLUSTER,
    SENTINEL,
    STANDALONE,
    parse_redis_uri,
)
from otel_secaudit.store_uris import redact_uri_password as redact_password

SECRET = "hunter2-s3cret"
T0 = 1_700_000_000.0


def abuse_hosts(sdk: Any) -> list[str]:
    return [
        log.log_record.attributes["security.abuse.key"]
        for log in sdk.logs()
        if log.log_record.event_name == "abuse.host"
    ]


def attack(address: str, times: int) -> None:
    for _ in range(times):
        otel_secaudit.record("auth.login.failed", client_address=address)


# -- URI forms (no server) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "kind", "locations", "service_name", "password"),
    [
        ("redis://127.0.0.1:6379/2", STANDALONE, (("127.0.0.1", 6379),), None, None),
        ("redis://:pw@redis.internal/0", STANDALONE, (("redis.internal", 6379),), None, "pw"),
        ("rediss://user:p%40ss@cache:6380/0?ssl_cert_reqs=none", STANDALONE, (("cache", 6380),),
         None, "p@ss"),
        ("unix:///run/redis.sock?db=3", STANDALONE, (), None, None),
        ("redis+sentinel://s1:26379,s2:26380/mymaster", SENTINEL,
         (("s1", 26379), ("s2", 26380)), "mymaster", None),
        ("redis+sentinel://:pw@s1:26379/mymaster", SENTINEL, (("s1", 26379),), "mymaster", "pw"),
        ("redis+cluster://n1:7000,n2:7001", CLUSTER, (("n1", 7000), ("n2", 7001)), None, None),
        ("redis+cluster://:p%2Cw@n1:7000", CLUSTER, (("n1", 7000),), None, "p,w"),
    ],
)  # fmt: skip
def test_limits_uri_forms(uri, kind, locations, service_name, password):
    target = parse_redis_uri(uri)
    assert (target.kind, target.locations, target.service_name) == (kind, locations, service_name)
    assert target.password == password
    if password:
        assert password not in repr(target)
        assert password not in target.redacted_uri


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        (f"redis+sentinel://:{SECRET}@s1:26379", "service name"),
        (f"redis+sentinel://:{SECRET}@s1/mymaster", "host and a port"),
        (f"redis+cluster://:{SECRET}@n1:7000/1", "no database"),
        (f"redis+cluster://:{SECRET}@n1:99999", "bad port"),
        (f"redis+cluster://:{SECRET}@", "at least one host:port"),
        (f"redis+cluster://:{SECRET}@n1:7000?ssl=true", "no query options"),
        (f"redis://:{SECRET}@/0", "needs a host"),
        (f"redis://:{SECRET}@h:port/0", "bad port"),
        (f"redis://:{SECRET}@h:6379/zero", "must be a number"),
        (f"redis://:{SECRET}@h1:6379,h2:6379", "one server only"),
        (f"memcached://:{SECRET}@h:11211", "expected redis://"),
        (f"rediss://u:{SECRET}@h:6380/0?password={SECRET}", None),  # valid: checks the repr
    ],
)
def test_malformed_uri_is_a_config_error_naming_the_variable_without_the_password(uri, why):
    if why is None:
        target = parse_redis_uri(uri)
        assert SECRET not in repr(target) and SECRET not in repr(redis_client(uri))
        return
    with pytest.raises(ConfigError) as raised:
        parse_redis_uri(uri)
    message = str(raised.value)
    assert message.startswith("OTEL_SECAUDIT_STORE=")
    assert why in message
    assert SECRET not in message


def test_settings_never_echo_the_store_password():
    with pytest.raises(ConfigError) as raised:
        Settings.load(environ={"OTEL_SECAUDIT_STORE": f"redis+cluster://:{SECRET}@n1:70000"})
    message = str(raised.value)
    assert message.count("OTEL_SECAUDIT_STORE") == 1 and "bad port" in message
    assert SECRET not in message
    settings = Settings.load(environ={"OTEL_SECAUDIT_STORE": f"redis://:{SECRET}@h:6379/0"})
    assert SECRET not in repr(settings)


def test_redact_password():
    assert redact_password("redis://:pw@h:1/0") == "redis://:[REDACTED]@h:1/0"
    assert redact_password("redis+sentinel://u:p@w@h:1,g:2/m") == (
        "redis+sentinel://u:[REDACTED]@h:1,g:2/m"
    )
    assert redact_password("redis://h:1/0?password=pw&db=1") == (
        "redis://h:1/0?password=[REDACTED]&db=1"
    )
    assert redact_password("redis://h:1/0") == "redis://h:1/0"


def test_building_a_cluster_or_sentinel_store_does_no_network_io():
    # nothing listens on port 1: building must not connect (it would raise); the first use
    # fails fast, without redis-py's own retries (the detector owns retrying, with backoff)
    for uri in ("redis+cluster://127.0.0.1:1", "redis+sentinel://127.0.0.1:1/mymaster"):
        store = build_store(uri)
        started = time.monotonic()
        with pytest.raises(Exception, match="(?i)connect|master"):
            store.apply([Hit("192.0.2.1", None, "auth.login.failed", "", T0)], Policy())
        assert time.monotonic() - started < 1.0
        store.close()


def test_unix_socket_forms():
    server = RedisServer()
    socket_path = os.path.join(server._dir, "redis.sock")
    server.extra_args = ["--unixsocket", socket_path]
    server.start()
    policy = Policy(host_threshold=2)
    try:
        for uri in (f"unix://{socket_path}?db=1", f"redis+unix://{socket_path}?db=2"):
            store = build_store(uri)
            crossings = [
                crossing
                for i in range(2)
                for crossing in store.apply(
                    [Hit("192.0.2.9", None, "auth.login.failed", "", T0 + i)], policy
                )
            ]
            store.close()
            assert [crossing.key for crossing in crossings] == ["192.0.2.9"], uri
    finally:
        server.close()


# -- TLS ------------------------------------------------------------------------------------


def test_detection_over_tls(app_runtime, redis_tls_server):
    sdk, rt = app_runtime(store=redis_tls_server.url, host_threshold=5)
    attack("203.0.113.40", 5)
    assert rt.flush(5000)
    assert abuse_hosts(sdk) == ["203.0.113.40"]
    assert rt.detector is not None and rt.detector.stats["redis_errors"] == 0
    plain = redis.Redis(port=redis_tls_server.port, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):  # it really is TLS only
        plain.ping()
    plain.close()


# -- Redis Cluster ----------------------------------------------------------------------------


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterServers) -> str:
    for node in redis_cluster.nodes:
        client = redis.Redis(port=node.port)
        client.flushall()
        client.close()
    return redis_cluster.url


def _cluster_keys(cluster: RedisClusterServers) -> dict[int, list[bytes]]:
    found = {}
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        found[node.port] = list(client.scan_iter(count=1000))
        client.close()
    return found


def _run(store: Any, policy: Policy) -> list[tuple[Any, ...]]:
    """A repeat offender, a second host and a user, through ``store``; the crossings."""
    times = [0, 1, 2, 3, 10, 11, 12, 13, 14, 15, 70, 71, 72]
    out = []
    for i, t in enumerate(times):
        hits = [
            Hit("203.0.113.7", "u1", "auth.login.failed", f"{i + 1:032x}", T0 + t, True),
            Hit(f"198.51.100.{i}", None, "authz.permission_denied", "", T0 + t, True),
        ]
        for c in store.apply(hits, policy):
            out.append((c.scope, c.key, c.count, c.trace_ids, c.blocked_until, c.block_seconds))
    return out


def _masters_holding(cluster: RedisClusterServers, needle: bytes) -> dict[int, int]:
    """node port -> how many of its keys contain ``needle``."""
    return {
        port: sum(1 for key in keys if needle in key)
        for port, keys in _cluster_keys(cluster).items()
    }


def test_cluster_store_counts_like_memory_and_shards_by_slot(redis_cluster, cluster_url):
    policy = Policy(
        host_threshold=3, user_threshold=4, window_seconds=60, block_seconds=5,
        block_max_seconds=20,
    )  # fmt: skip
    store = build_store(cluster_url)
    assert isinstance(store, RedisStore) and store.shards == CLUSTER_SHARDS
    try:
        # the same crossings (a batch's shards run in parallel: compare them as a set)
        assert sorted(_run(store, policy)) == sorted(_run(MemoryStore(), policy))
        expired = store.housekeeping(T0 + 1000).expired
        assert [key for key, _ in expired] == ["203.0.113.7"]
        keys = [key for keys in _cluster_keys(redis_cluster).values() for key in keys]
        assert len(keys) > 5
        for key in keys:  # each key in the slot of its own shard's hash tag, named by the key
            text = key.decode()
            owner = text.rsplit(":", 1)[-1] if ":w:" in text or ":b:" in text else None
            if owner is not None:
                assert text.startswith(store.prefix_of(owner)), text
            assert key_slot(key) in {key_slot(p.encode()) for p in store.prefixes}
    finally:
        store.close()


def test_shard_hash_tags_spread_evenly_over_the_slots():
    prefixes = shard_prefixes(CLUSTER_SHARDS)
    slots = [key_slot(prefix.encode()) for prefix in prefixes]
    step = 16384 // CLUSTER_SHARDS
    assert [slot // step for slot in slots] == list(range(CLUSTER_SHARDS))
    assert shard_prefixes(1) == (DEFAULT_PREFIX,)


def test_300_attackers_spread_over_every_master_and_are_blocked_everywhere(
    make_sdk, detectors, redis_cluster, cluster_url
):
    """The whole state no longer sits in one slot: 300 attackers put their windows, blocks and
    recency on all three masters (each at least a fifth), and detection and blocks still work
    across instances: every attacker raises abuse.host and a block once, and a second
    instance enforces all 300 blocks it learnt from the shards."""
    a_sdk = make_sdk(store=cluster_url, host_threshold=3, block_seconds=60)
    b_sdk = make_sdk(store=cluster_url, host_threshold=3, block_seconds=60)
    a, b = AbuseDetector(a_sdk.recorder), AbuseDetector(b_sdk.recorder)
    detectors += [a, b]
    attackers = [f"198.18.{i // 200}.{i % 200}" for i in range(300)]
    for _ in range(3):
        for i, address in enumerate(attackers):
            a.submit(Violation("auth.login.failed", address, None, f"{i + 1:032x}", 0.0))
    assert a.flush(30) and b.flush(30)
    hosts = [log.log_record.attributes["security.abuse.key"] for log in a_sdk.logs()
             if log.log_record.event_name == "abuse.host"]  # fmt: skip
    assert sorted(hosts) == sorted(attackers)
    started = [log for log in a_sdk.logs() if log.log_record.event_name == "abuse.block.started"]
    assert len(started) == 300
    assert all(b.is_blocked(address) > 50 for address in attackers)
    assert a.stats["redis_errors"] == 0 and b.stats["redis_errors"] == 0
    per_master = _masters_holding(redis_cluster, b"b:198.18.")
    assert sum(per_master.values()) == 300
    assert all(n >= 60 for n in per_master.values()), per_master
    seen = _masters_holding(redis_cluster, b"seen:host")
    assert all(n >= 1 for n in seen.values()), seen


def test_cluster_key_cap_is_a_per_scope_total_split_over_the_shards(redis_cluster, cluster_url):
    policy = Policy(host_threshold=3, user_threshold=3, window_seconds=3600)
    store = build_store(cluster_url, max_keys=160)
    assert isinstance(store, RedisStore) and store.shard_max_keys == 10
    try:
        for batch in range(4):
            hits = [
                Hit(f"10.0.{batch}.{i}", f"user-{batch}-{i}", "auth.login.failed", "", T0 + batch)
                for i in range(250)
            ]
            store.apply(hits, policy)
    finally:
        store.close()
    keys = [key for keys in _cluster_keys(redis_cluster).values() for key in keys]
    windows = [key for key in keys if b"w:" in key]
    # 10 per shard and scope: the most recently seen of each shard (the last batch gave
    # every shard more than 10 new keys)
    assert len([key for key in windows if b"w:host:" in key]) == 160
    assert len([key for key in windows if b"w:user:" in key]) == 160
    assert all(b"10.0.3." in key or b"user-3-" in key for key in windows)


def test_detection_over_a_cluster(app_runtime, redis_cluster, cluster_url):
    sdk, rt = app_runtime(store=cluster_url, host_threshold=5)
    attack("203.0.113.50", 5)
    assert rt.flush(5000)
    assert abuse_hosts(sdk) == ["203.0.113.50"]
    assert rt.detector is not None and rt.detector.stats["redis_errors"] == 0
    keys = [key for keys in _cluster_keys(redis_cluster).values() for key in keys]
    assert any(b"203.0.113.50" in key for key in keys)


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterServers]:
    """A cluster of the test's own (it takes a node down), quick to notice a node is back."""
    cluster = RedisClusterServers(node_timeout_ms=500).start()
    yield cluster
    cluster.close()


def test_cluster_node_down_and_back(app_runtime, own_cluster, caplog):
    """The master that serves an attacker's shard dies (no replica): the app never sees an
    error and abuse.host is still raised (counted locally), the outage is one warning line
    per kind of error, without traceback; once the node is back, detection is shared again."""
    caplog.set_level("DEBUG", logger="otel_secaudit")
    sdk, rt = app_runtime(store=own_cluster.url, host_threshold=5)
    detector = rt.detector
    assert detector is not None
    attack("203.0.113.80", 5)
    assert rt.flush(5000)
    shards = build_store(own_cluster.url)
    assert isinstance(shards, RedisStore)
    owner = own_cluster.owner_of(shards.prefix_of("203.0.113.81") + "blocks")
    owner.kill()
    attack("203.0.113.81", 5)
    wait_for(lambda: "203.0.113.81" in abuse_hosts(sdk), timeout=5)
    assert detector.stats["fallback_active"] and detector.stats["redis_errors"] >= 1
    owner.start()  # same port and nodes.conf: it rejoins with its slots, empty
    wait_for(own_cluster.ready, timeout=15, interval=0.05)
    background = iter(range(10**6))

    def shared_again() -> bool:  # the detector retries on its next batch: keep them coming
        n = next(background)
        otel_secaudit.record("auth.login.failed", client_address=f"10.9.{n // 250}.{n % 250}")
        rt.flush(1000)
        return not detector.stats["fallback_active"]

    wait_for(shared_again, timeout=15, interval=0.1)
    attack("203.0.113.82", 5)
    assert rt.flush(5000)
    assert sorted(abuse_hosts(sdk)) == ["203.0.113.80", "203.0.113.81", "203.0.113.82"]
    ours = [r for r in caplog.records if r.name.startswith("otel_secaudit")]
    assert not [r for r in ours if r.exc_info or r.exc_text], [r.getMessage() for r in ours]
    failed = [r.getMessage() for r in ours if "Redis store failed" in r.getMessage()]
    kinds = [message.split("failed (", 1)[1].split(":", 1)[0] for message in failed]
    assert kinds and len(kinds) == len(set(kinds)), failed  # one line per kind of error
    client = redis.Redis(port=own_cluster.owner_of(shards.prefix_of("203.0.113.82")).port)
    assert client.zscore(shards.prefix_of("203.0.113.82") + "seen:host", "203.0.113.82")
    client.close()


# -- Redis Sentinel ---------------------------------------------------------------------------


def _master_client(setup: RedisSentinelServers) -> redis.Redis:
    return redis.Redis(port=setup.master_port(), password=setup.password)


def test_detection_through_a_password_protected_sentinel(app_runtime, redis_sentinel):
    sdk, rt = app_runtime(store=redis_sentinel.url, host_threshold=5)
    attack("203.0.113.60", 5)
    assert rt.flush(5000)
    assert abuse_hosts(sdk) == ["203.0.113.60"]
    assert rt.detector is not None and rt.detector.stats["redis_errors"] == 0
    master = _master_client(redis_sentinel)
    assert master.zscore(DEFAULT_PREFIX + "seen:host", "203.0.113.60") is not None
    master.close()


def test_a_dead_sentinel_is_skipped(app_runtime, redis_sentinel):
    # the first sentinel listed is down: the next one names the master, without retries
    url = redis_sentinel.url.replace("@127.0.0.1:", "@127.0.0.1:1,127.0.0.1:")
    assert parse_redis_uri(url).locations[0] == ("127.0.0.1", 1)
    sdk, rt = app_runtime(store=url, host_threshold=5)
    started = time.monotonic()
    attack("203.0.113.62", 5)
    assert rt.flush(5000)
    assert time.monotonic() - started < 1.0
    assert abuse_hosts(sdk) == ["203.0.113.62"]
    assert rt.detector is not None and rt.detector.stats["redis_errors"] == 0


def test_wrong_sentinel_password_counts_locally(app_runtime, redis_sentinel):
    url = redis_sentinel.url.replace(redis_sentinel.password or "", "wrong-password")
    sdk, rt = app_runtime(store=url, host_threshold=5)
    attack("203.0.113.61", 5)
    assert rt.flush(5000)
    assert abuse_hosts(sdk) == ["203.0.113.61"]
    assert rt.detector is not None and rt.detector.stats["redis_errors"] >= 1


def test_sentinel_failover_during_load(app_runtime, redis_sentinel):
    """The master dies while the app records violations: no exception reaches the app,
    detection goes on in memory (abuse.host still raised), then resumes on the new master."""
    sdk, rt = app_runtime(store=redis_sentinel.url, host_threshold=20)
    detector = rt.detector
    assert detector is not None
    stop = threading.Event()
    errors: list[BaseException] = []
    recorded = [0]

    def app() -> None:  # one-off addresses: load that never crosses a threshold
        i = 0
        while not stop.is_set():
            i += 1
            try:
                address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
                otel_secaudit.record("auth.login.failed", client_address=address)
                detector.is_blocked("203.0.113.1")
            except BaseException as exc:  # noqa: B036 - anything reaching the app fails the test
                errors.append(exc)
            recorded[0] = i
            time.sleep(0.0005)

    loader = threading.Thread(target=app, daemon=True)
    loader.start()
    try:
        attack("203.0.113.70", 20)  # before: counted in Redis
        wait_for(lambda: "203.0.113.70" in abuse_hosts(sdk), timeout=5)
        old_master = redis_sentinel.current_master()
        started = time.monotonic()
        old_master.kill()
        wait_for(lambda: detector.stats["fallback_active"], timeout=5)
        attack("203.0.113.71", 20)  # during: counted locally
        wait_for(lambda: "203.0.113.71" in abuse_hosts(sdk), timeout=5)
        wait_for(lambda: redis_sentinel.master_port() != old_master.port, timeout=15)
        wait_for(lambda: not detector.stats["fallback_active"], timeout=15)
        recovered = time.monotonic() - started
        attack("203.0.113.72", 20)  # after: counted in Redis, on the new master
        wait_for(lambda: "203.0.113.72" in abuse_hosts(sdk), timeout=5)
    finally:
        stop.set()
        loader.join(5)
    assert errors == []
    assert recorded[0] > 100
    assert sorted(abuse_hosts(sdk)) == ["203.0.113.70", "203.0.113.71", "203.0.113.72"]
    assert detector.stats["redis_errors"] >= 1
    assert recovered < 15
    master = _master_client(redis_sentinel)
    assert master.zscore(DEFAULT_PREFIX + "seen:host", "203.0.113.72") is not None
    master.close()
