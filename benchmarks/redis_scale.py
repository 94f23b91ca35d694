"""The Redis store at scale: throughput with the per-scope key cap, and the memory of a million
distinct attackers, against a ``redis-server`` this script starts.

    python -m benchmarks.redis_scale [--quick] [--masters]

(``--masters``: only the 1 vs 3 masters comparison.)

Prints:

* **detector throughput per topology**, with ``OTEL_SECAUDIT_MAX_KEYS=20000`` and every
  violation from a new address and a new user (past the first 20,000 the cap evicts on every
  hit: its worst case): violations/s from the first ``submit`` until ``flush()`` returns
  (every violation applied by the worker's batched Lua round trips), on a standalone
  ``redis-server``, a 3-master Redis Cluster and a Sentinel-managed master (the servers of
  ``harness/redis_servers.py``). Target >= 20,000/s on each. Cluster and Sentinel run interleaved
  with the standalone server (A B B A ...), median of per-pair ratios, with an A/A row
  (standalone vs standalone) beside. Each row also gives the Redis servers' CPU time per
  violation (``INFO cpu``, all data nodes), which a busy machine disturbs far less than wall
  time;
* **throughput grows with masters**: the same load (the detector's worker, new attackers,
  ``MAX_KEYS=20000``) on a 1-master and on a 3-master ``redis+cluster://``, interleaved
  (A B B A ...), median of per-pair ratios (3 masters / 1 master; > 1 = faster), A/A row
  (1 master / 1 master) beside, and the busiest master's CPU per violation (the store shards
  its state over 16 hash tags in evenly spaced slots, so each of 3 masters takes about a third
  of every batch, in parallel). One detector (one Python client) cannot load even one master
  fully, and a machine with fewer free cores than masters cannot run them in parallel, so the
  wall-time ratio understates the gain; the capacity figure is the busiest master's CPU per
  violation (a master saturates at 1e6 / that many violations per second, so the cluster
  absorbs that many from all instances together), with the total Redis CPU beside (what the
  per-shard scripts cost in all);
* **the cap's own cost at the store**: ``RedisStore.apply`` of the same stream in batches of
  500 violations (what the detector's worker sends), capped at 20,000 keys per scope and
  evicting on every hit vs. never binding (``max_keys`` 10**9: the recency sorted set is kept
  in both arms, only eviction differs), each arm on a redis-server of its own, interleaved
  A B B A, median of per-pair ratios, A/A (capped vs capped) beside, Redis CPU per violation.
  ``python -m benchmarks.detection`` measures the same comparison through the detector, on
  a stream that revisits 90,000 keys;
* **memory of 1,000,000 distinct attackers** (new address, new user, a trace ID each):
  ``INFO memory`` ``used_memory`` before and after, on a fresh server, without the cap (bytes
  per attacker and per Redis key) and with ``max_keys=20000`` (sampled along the way: it
  stays flat once the cap is reached).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import redis

from harness import RedisClusterServers, RedisSentinelServers, RedisServer
from otel_secaudit import SecurityRecorder, Settings, Violation
from otel_secaudit.detection import AbuseDetector
from otel_secaudit.detection.stores import build_store
from otel_secaudit.detection.window import Hit, Policy

from .detection import interleaved

BATCH = 500  # violations per EVALSHA, as the detector's worker sends them
CAP = 20_000
NO_CAP = 10**9
POLICY = Policy()  # thresholds 10 / 5, window 3600 s


class Attackers:
    """An endless stream of distinct attackers: each violation a new IPv4 address, a new
    user key (64 hex, like user.hash) and a new trace ID."""

    def __init__(self, start: int = 0) -> None:
        self.next = start

    def hits(self, n: int, at: float) -> list[Hit]:
        first, self.next = self.next, self.next + n
        return [
            Hit(_address(i), f"{i:064x}", "auth.login.failed", f"{i + 1:032x}", at)
            for i in range(first, first + n)
        ]

    def violations(self, n: int) -> list[Violation]:
        first, self.next = self.next, self.next + n
        return [
            Violation("auth.login.failed", _address(i), f"{i:064x}", f"{i + 1:032x}", 0.0)
            for i in range(first, first + n)
        ]


def _address(i: int) -> str:
    return f"{10 + (i >> 24) % 200}.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def batches(attackers: Attackers, n: int) -> Iterator[list[Hit]]:
    at = time.time()
    for _ in range(0, n, BATCH):
        yield attackers.hits(BATCH, at)


# -- detector throughput per topology ----------------------------------------------------------


def server_cpu(ports: list[int]) -> float:
    """CPU seconds (user + system) the redis-servers on ``ports`` have used so far."""
    total = 0.0
    for port in ports:
        client = redis.Redis(port=port)
        info = client.info("cpu")
        client.close()
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


class DetectorArm:
    """One arm: violations/s through a detector on ``url`` (MAX_KEYS=20,000) for ``n`` new
    attackers per run (they continue across runs, so the cap stays saturated). Also keeps
    the servers' CPU microseconds per violation of each run (:attr:`cpu_us`): what Redis
    itself spends, which other processes on the machine disturb far less than wall time."""

    def __init__(self, url: str, n: int, ports: list[int]) -> None:
        self.url, self.n, self.ports = url, n, ports
        self.attackers = Attackers()
        self.cpu_us: list[float] = []
        self.last: dict[str, Any] = {}

    def __call__(self) -> float:
        recorder = SecurityRecorder(Settings.load(environ={}, store=self.url, max_keys=CAP))
        detector = AbuseDetector(recorder, queue_size=self.n + 1)
        try:
            assert detector.flush(10)  # connect and load the scripts before timing
            stream = self.attackers.violations(self.n)
            submit = detector.submit
            cpu = server_cpu(self.ports)
            started = time.perf_counter()
            for violation in stream:
                submit(violation)
            assert detector.flush(300), "the detector did not drain in time"
            elapsed = time.perf_counter() - started
            self.cpu_us.append((server_cpu(self.ports) - cpu) / self.n * 1e6)
            self.last = detector.stats
            assert self.last["redis_errors"] == 0 and self.last["dropped"] == 0, self.last
            return self.n / elapsed
        finally:
            detector.shutdown()


def topology_rows(n: int, pairs: int) -> list[tuple[str, str, str, str]]:
    standalone = RedisServer().start()
    cluster = RedisClusterServers().start()
    # a master starved of CPU by this very benchmark must not be failed over mid-run
    sentinel = RedisSentinelServers(down_after_ms=10_000).start()
    try:
        single = DetectorArm(standalone.url, n, [standalone.port])
        clustered = DetectorArm(cluster.url, n, [node.port for node in cluster.nodes])
        watched = DetectorArm(sentinel.url, n, [sentinel.master.port, sentinel.replica.port])
        # ratios of rates: B/A < 1 means B is slower
        cluster_ratio, single_rate, cluster_rate = interleaved(single, clustered, pairs)
        sentinel_ratio, _, sentinel_rate = interleaved(single, watched, pairs)
        aa_ratio, _, _ = interleaved(single, DetectorArm(standalone.url, n, []), pairs)
    finally:
        standalone.close()
        cluster.close()
        sentinel.close()

    def row(name: str, arm: DetectorArm, rate: float) -> tuple[str, str, str, str]:
        cpu = statistics.median(arm.cpu_us)
        return (
            name,
            f"{rate:,.0f}  (Redis CPU {cpu:,.1f} us/violation)",
            ">= 20,000",
            "ok" if rate >= 20_000 else "MISSED",
        )

    return [
        row(f"detector, MAX_KEYS={CAP:,}, new attackers, redis://: violations/s", single,
            single_rate),
        row("  redis+cluster:// (3 masters): violations/s", clustered, cluster_rate),
        row("  redis+sentinel:// (master + replica): violations/s", watched, sentinel_rate),
        ("  rate ratio cluster / standalone", f"{cluster_ratio:.2f}x", "", ""),
        ("  rate ratio sentinel / standalone", f"{sentinel_ratio:.2f}x", "", ""),
        ("  A/A noise floor (standalone / standalone)", f"{aa_ratio:.2f}x", "", ""),
    ]  # fmt: skip


# -- throughput with 1 vs 3 masters (interleaved A/B) -----------------------------------------


def busiest_cpu(ports: list[int]) -> list[float]:
    """CPU seconds used so far by each redis-server on ``ports``."""
    return [server_cpu([port]) for port in ports]


class MastersArm(DetectorArm):
    """A :class:`DetectorArm` that also keeps, per run, the busiest master's CPU microseconds
    per violation (:attr:`busiest_us`)."""

    def __init__(self, url: str, n: int, ports: list[int]) -> None:
        super().__init__(url, n, ports)
        self.busiest_us: list[float] = []

    def __call__(self) -> float:
        before = busiest_cpu(self.ports)
        rate = super().__call__()
        after = busiest_cpu(self.ports)
        self.busiest_us.append(
            max((b - a for a, b in zip(before, after, strict=True)), default=0.0) / self.n * 1e6
        )
        return rate


def masters_rows(n: int, pairs: int) -> list[tuple[str, str, str, str]]:
    one = RedisClusterServers(masters=1).start()
    three = RedisClusterServers(masters=3).start()
    try:
        single = MastersArm(one.url, n, [node.port for node in one.nodes])
        triple = MastersArm(three.url, n, [node.port for node in three.nodes])
        ratio, one_rate, three_rate = interleaved(single, triple, pairs)
        aa_ratio, _, _ = interleaved(single, MastersArm(one.url, n, []), pairs)
    finally:
        one.close()
        three.close()
    one_busiest = statistics.median(single.busiest_us)
    three_busiest = statistics.median(triple.busiest_us)
    one_total, three_total = statistics.median(single.cpu_us), statistics.median(triple.cpu_us)
    return [
        (f"redis+cluster://, 1 master, MAX_KEYS={CAP:,}: violations/s",
         f"{one_rate:,.0f}  (busiest master {one_busiest:,.1f} us/violation)", "", ""),
        ("  3 masters, same load: violations/s",
         f"{three_rate:,.0f}  (busiest master {three_busiest:,.1f} us/violation)", "", ""),
        ("  rate ratio 3 masters / 1 master (one client: bounded by it)", f"{ratio:.2f}x", "", ""),
        ("  A/A noise floor (1 master / 1 master)", f"{aa_ratio:.2f}x", "", ""),
        ("  capacity, 1e6 / busiest master's us: 1 master -> 3 masters",
         f"{1e6 / one_busiest:,.0f} -> {1e6 / three_busiest:,.0f}/s", "", ""),
        ("  capacity ratio 3 masters / 1 master", f"{one_busiest / three_busiest:.2f}x", "> 2",
         "ok" if one_busiest > 2 * three_busiest else "MISSED"),
        ("  Redis CPU of all masters per violation: 1 -> 3 masters",
         f"{one_total:,.1f} -> {three_total:,.1f} us", "", ""),
    ]  # fmt: skip


# -- the cap's own cost, at the store (interleaved A/B) ------------------------------------------


class StoreArm:
    """One arm: ``RedisStore.apply`` of ``block`` new attackers per run, in batches of 500
    violations (what the detector's worker sends), with ``max_keys``, on a redis-server of its
    own (so that one arm's growing keyspace cannot slow the other), pre-filled past the cap so
    that a capped arm evicts from its first run on. Returns violations/s; keeps the server's
    CPU microseconds per violation of each run (:attr:`cpu_us`)."""

    def __init__(self, max_keys: int, block: int, servers: list[RedisServer]) -> None:
        server = RedisServer().start()
        servers.append(server)
        self.port, self.block = server.port, block
        self.store = build_store(server.url, max_keys=max_keys)
        self.attackers = Attackers()
        self.cpu_us: list[float] = []
        for hits in batches(self.attackers, CAP + BATCH):
            self.store.apply(hits, POLICY)

    def __call__(self) -> float:
        work = list(batches(self.attackers, self.block))
        cpu = server_cpu([self.port])
        gc.disable()
        started = time.perf_counter()
        for hits in work:
            self.store.apply(hits, POLICY)
        elapsed = time.perf_counter() - started
        gc.enable()
        self.cpu_us.append((server_cpu([self.port]) - cpu) / self.block * 1e6)
        return self.block / elapsed


def cap_rows(block: int, pairs: int) -> list[tuple[str, str, str, str]]:
    servers: list[RedisServer] = []
    try:
        never = StoreArm(NO_CAP, block, servers)
        capped = StoreArm(CAP, block, servers)
        ratio, never_rate, capped_rate = interleaved(never, capped, pairs)
        ratio_aa, _, _ = interleaved(capped, StoreArm(CAP, block, servers), pairs)
    finally:
        for server in servers:
            server.close()
    cpu_never, cpu_capped = statistics.median(never.cpu_us), statistics.median(capped.cpu_us)
    return [
        (
            f"store.apply, cap {CAP:,} evicting on every hit: violations/s",
            f"{capped_rate:,.0f}  (Redis CPU {cpu_capped:,.1f} us/violation)",
            ">= 20,000",
            "ok" if capped_rate >= 20_000 else "MISSED",
        ),
        (
            "  cap never binding: violations/s",
            f"{never_rate:,.0f}  (Redis CPU {cpu_never:,.1f} us/violation)",
            "",
            "",
        ),
        ("  rate ratio capped / never binding", f"{ratio:.2f}x", "", ""),
        ("  A/A noise floor (capped / capped)", f"{ratio_aa:.2f}x", "", ""),
    ]


# -- memory -----------------------------------------------------------------------------------


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def memory_of_attackers(
    max_keys: int, n: int, checkpoints: list[int]
) -> tuple[int, int, list[tuple[int, int]]]:
    """Apply ``n`` distinct attackers to a fresh server; return (used_memory delta, DBSIZE,
    [(attackers so far, used_memory delta)] at ``checkpoints``)."""
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        store = build_store(server.url, max_keys=max_keys)
        store.apply(Attackers(start=10**9).hits(1, time.time()), POLICY)  # load the script
        client.delete(*client.keys("*"))
        before = used_memory(client)
        samples = []
        attackers = Attackers()
        done = 0
        for hits in batches(attackers, n):
            store.apply(hits, POLICY)
            done += len(hits)
            if done in checkpoints:
                samples.append((done, used_memory(client) - before))
        delta, keys = used_memory(client) - before, int(client.dbsize())
        store.close()
        client.close()
        return delta, keys, samples
    finally:
        server.close()


def memory_rows(n: int) -> list[tuple[str, str, str, str]]:
    checkpoints = [n // 10, n // 4, n // 2, n]
    delta, keys, _ = memory_of_attackers(NO_CAP, n, checkpoints)
    delta_cap, keys_cap, samples = memory_of_attackers(CAP, n, checkpoints)
    flat = samples[-1][1] <= 1.1 * samples[0][1]
    return [
        (
            f"memory, {n:,} distinct attackers, no cap",
            f"{delta / 2**20:,.1f} MiB, {keys:,} keys",
            "",
            "",
        ),
        (
            "  bytes per attacker / per Redis key",
            f"{delta / n:,.0f} / {delta / max(keys, 1):,.0f}",
            "",
            "",
        ),
        (
            f"memory, {n:,} distinct attackers, MAX_KEYS={CAP:,}",
            f"{delta_cap / 2**20:,.1f} MiB, {keys_cap:,} keys",
            "flat",
            "ok" if flat else "GROWS",
        ),
        (
            "  used_memory delta after N attackers (MiB)",
            ", ".join(f"{k // 1000:,}k: {d / 2**20:,.1f}" for k, d in samples),
            "",
            "",
        ),
    ]


def main() -> None:
    quick = "--quick" in sys.argv
    only_masters = "--masters" in sys.argv
    rows = masters_rows(n=10_000 if quick else 50_000, pairs=2 if quick else 6)
    if only_masters:
        _print(rows)
        return
    rows += topology_rows(n=10_000 if quick else 50_000, pairs=2 if quick else 4)
    rows += cap_rows(block=5_000, pairs=6 if quick else 20)
    rows += memory_rows(200_000 if quick else 1_000_000)
    _print(rows)


def _print(rows: list[tuple[str, str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':>42}  {'target':>10}  status")
    for name, value, target, status in rows:
        print(f"{name:<{width}}  {value:>42}  {target:>10}  {status}")


if __name__ == "__main__":
    main()
