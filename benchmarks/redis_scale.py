"""The Redis store at scale: throughput with the per-scope key cap, and the memory of a million
distinct attackers, against a ``redis-server`` this script starts.

    python -m benchmarks.redis_scale [--quick]

Prints:

* **detector throughput**: violations/s through :class:`AbuseDetector` on a Redis store with
  ``OTEL_SECAUDIT_MAX_KEYS=20000``, every violation from a new address and a new user (past
  the first 20,000 the cap evicts on every hit: its worst case), from ``submit`` until
  ``flush()`` returns (every violation applied by the worker's batched Lua round trips).
  Target >= 20,000/s;
* **cost of the cap**: ``RedisStore.apply`` of the same stream in batches of 500 violations
  (what the detector's worker sends), capped at 20,000 keys per scope (evicting) vs. never
  evicting (``max_keys`` 10**9; the recency sorted set is kept in both arms, only the eviction
  differs). The two arms run interleaved in blocks (A B B A ...), each on its own
  redis-server; the median of per-pair time ratios is reported, with an A/A row
  (capped vs. capped) as the noise floor of the same procedure;
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
from collections.abc import Callable, Iterator
from typing import Any

import redis

from otel_secaudit import SecurityRecorder, Settings, Violation
from otel_secaudit.detection import AbuseDetector
from otel_secaudit.detection.stores import build_store
from otel_secaudit.detection.window import Hit, Policy
from tests.servers import RedisServer

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


# -- detector throughput ----------------------------------------------------------------------


def detector_rate(url: str, n: int, repeats: int) -> tuple[float, dict[str, Any]]:
    """Violations/s through the detector with the cap at 20,000 (median of ``repeats``)."""
    rates = []
    stats: dict[str, Any] = {}
    attackers = Attackers()
    for _ in range(repeats):
        recorder = SecurityRecorder(Settings.load(environ={}, store=url, max_keys=CAP))
        detector = AbuseDetector(recorder, queue_size=n + 1)
        detector.flush()  # connect and load the script before timing
        stream = attackers.violations(n)
        submit = detector.submit
        started = time.perf_counter()
        for violation in stream:
            submit(violation)
        assert detector.flush(300), "the detector did not drain in time"
        elapsed = time.perf_counter() - started
        stats = detector.stats
        assert stats["redis_errors"] == 0 and stats["dropped"] == 0, stats
        detector.shutdown()
        rates.append(n / elapsed)
    return statistics.median(rates), stats


# -- cost of the cap (interleaved A/B) --------------------------------------------------------


def interleaved(
    run_a: Callable[[], float], run_b: Callable[[], float], pairs: int
) -> tuple[float, float, float]:
    """Median per-pair ratio B/A with the arms run A B B A ...; also the median seconds of
    each arm's block."""
    for _ in range(2):  # warm up both arms
        run_a()
        run_b()
    ratios, a_times, b_times = [], [], []
    for i in range(pairs):
        if i % 2 == 0:
            a, b = run_a(), run_b()
        else:
            b, a = run_b(), run_a()
        ratios.append(b / a)
        a_times.append(a)
        b_times.append(b)
    return statistics.median(ratios), statistics.median(a_times), statistics.median(b_times)


def store_arm(max_keys: int, block: int, servers: list[RedisServer]) -> Callable[[], float]:
    """A timed block of ``block`` new attackers applied through a RedisStore with
    ``max_keys``, on a redis-server of its own (appended to ``servers``: one arm's keyspace
    growth must not slow the other), pre-filled past the cap so that a capped arm evicts from
    the first timed block on."""
    server = RedisServer().start()
    servers.append(server)
    store = build_store(server.url, max_keys=max_keys)
    attackers = Attackers()
    for hits in batches(attackers, CAP + BATCH):
        store.apply(hits, POLICY)

    def run() -> float:
        work = list(batches(attackers, block))
        gc.disable()
        started = time.perf_counter()
        for hits in work:
            store.apply(hits, POLICY)
        elapsed = time.perf_counter() - started
        gc.enable()
        return elapsed

    return run


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


def main() -> None:
    quick = "--quick" in sys.argv
    n_detector = 50_000 if quick else 200_000
    pairs = 10 if quick else 30
    block = 5_000
    n_memory = 200_000 if quick else 1_000_000
    checkpoints = [n_memory // 10, n_memory // 4, n_memory // 2, n_memory]

    rows: list[tuple[str, str, str, str]] = []
    servers = [RedisServer().start()]
    try:
        rate, stats = detector_rate(servers[0].url, n_detector, 3)
        rows.append(
            (
                f"detector, Redis store, MAX_KEYS={CAP:,}, all-new attackers: violations/s",
                f"{rate:,.0f}",
                ">= 20,000",
                "ok" if rate >= 20_000 else "MISSED",
            )
        )
        uncapped = store_arm(NO_CAP, block, servers)
        capped = store_arm(CAP, block, servers)
        capped_again = store_arm(CAP, block, servers)
        ratio_ab, a_s, b_s = interleaved(uncapped, capped, pairs)
        ratio_aa, _, _ = interleaved(capped, capped_again, pairs)
    finally:
        for server in servers:
            server.close()
    rows.append(
        (
            f"store.apply, cap {CAP:,} (evicting) vs never evicting: time ratio",
            f"{ratio_ab:.3f}  ({block / a_s:,.0f} -> {block / b_s:,.0f}/s)",
            "",
            "",
        )
    )
    rows.append(("store.apply, A/A (capped vs capped) noise floor", f"{ratio_aa:.3f}", "", ""))

    delta, keys, _ = memory_of_attackers(NO_CAP, n_memory, checkpoints)
    rows.append(
        (
            f"memory, {n_memory:,} distinct attackers, no cap",
            f"{delta / 2**20:,.1f} MiB, {keys:,} keys",
            "",
            "",
        )
    )
    rows.append(("  bytes per attacker / per Redis key", f"{delta / n_memory:,.0f} / "
                 f"{delta / max(keys, 1):,.0f}", "", ""))  # fmt: skip
    delta_cap, keys_cap, samples = memory_of_attackers(CAP, n_memory, checkpoints)
    rows.append(
        (
            f"memory, {n_memory:,} distinct attackers, MAX_KEYS={CAP:,}",
            f"{delta_cap / 2**20:,.1f} MiB, {keys_cap:,} keys",
            "flat",
            "ok" if samples and samples[-1][1] <= 1.2 * samples[1][1] else "GROWS",
        )
    )
    rows.append(
        (
            "  used_memory delta after N attackers (MiB)",
            ", ".join(f"{n // 1000:,}k: {d / 2**20:,.1f}" for n, d in samples),
            "",
            "",
        )
    )

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':>40}  {'target':>10}  status")
    for name, value, target, status in rows:
        print(f"{name:<{width}}  {value:>40}  {target:>10}  {status}")
    print(f"\n(detector: {n_detector:,} violations per repeat, stats of the last: {stats})")


if __name__ == "__main__":
    main()
