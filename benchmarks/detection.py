"""Abuse detection on the request path and through Redis, measured in one run.

    python -m benchmarks.detection [--quick]

Prints a table:

* **submit cost** (``AbuseDetector.submit``, what the recorder calls for every violation on
  the request thread), in thread-CPU nanoseconds per call:

  - memory store: the violation is counted inline (window, LRU, crossing test);
  - Redis store: the hand-off only (a length test and a ``deque.append``; the worker is held
    back so the measure is the request path alone).

  The two arms run interleaved in blocks (A B B A ...); the median of per-pair ratios is
  printed beside an A/A row (memory vs. memory) that shows the noise floor of the procedure.
* **Redis throughput with the key cap**: violations/s from the first ``submit`` until
  ``flush()`` returns (every violation applied by the worker's batched Lua round trips),
  with ``OTEL_SECAUDIT_MAX_KEYS`` at its default 20,000 while the stream spans 90,000 keys
  (the cap evicts all along), against a ``redis-server`` this script starts. Interleaved
  with a run whose cap never binds (A B B A), median ratio and an A/A row beside. Target
  >= 20,000 violations/s per process.

(What ``SecAuditSpanProcessor`` costs a span without violations at ``span.end()`` is measured
by :mod:`benchmarks.span_processor`.)
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import interleaved
from harness import RedisServer
from otel_secaudit import SecurityRecorder, Settings, Violation
from otel_secaudit.detection import AbuseDetector


def violations(n: int) -> list[Violation]:
    """Violations spread over 40,000 addresses and 50,000 users: with n <= 200,000 every key
    stays below its threshold (10 per address, 5 per user), which measures counting; a
    crossing costs one log record and is rare in real traffic."""
    return [
        Violation(
            "auth.login.failed",
            f"10.{i % 40_000 // 250}.{i % 250}.1",
            f"user-{i % 50_000}",
            f"{i + 1:032x}",
            0.0,
        )
        for i in range(n)
    ]


# -- submit cost ---------------------------------------------------------------------------------


def submit_arm(detector: AbuseDetector, batch: list[Violation]) -> Callable[[], float]:
    """Thread-CPU nanoseconds per ``submit`` over ``batch``."""
    submit = detector.submit

    def run() -> float:
        gc.disable()
        started = time.thread_time_ns()
        for v in batch:
            submit(v)
        elapsed = time.thread_time_ns() - started
        gc.enable()
        return elapsed / len(batch)

    return run


class _HeldBack:
    """Holds a Redis detector's worker: the queue fills, nothing is applied meanwhile."""

    def __init__(self, detector: AbuseDetector) -> None:
        self.gate = threading.Event()
        handoff = detector._handoff  # noqa: SLF001 - a benchmark may reach in
        assert handoff is not None
        original = handoff._process

        def process(batch: list[tuple[Violation, float]]) -> None:
            self.gate.wait()
            original(batch)

        handoff._process = process

    def release(self) -> None:
        self.gate.set()


def submit_costs(url: str, block: int, pairs: int) -> list[tuple[str, str, str, str]]:
    batch = violations(block)
    # thresholds no key reaches in this run: the measure is counting, not emitting
    quiet: dict[str, Any] = {"host_threshold": 10**6, "user_threshold": 10**6}
    recorder = SecurityRecorder(Settings.load(environ={}, **quiet))
    # three detectors: each A/A arm starts with as much state as the memory arm of A/B
    memory_a, memory_b, memory_c = (AbuseDetector(recorder, max_keys=60_000) for _ in range(3))
    shared_recorder = SecurityRecorder(Settings.load(environ={}, store=url, **quiet))
    shared = AbuseDetector(shared_recorder, queue_size=10**9)
    assert shared.flush(10)  # connect and load the scripts first
    held = _HeldBack(shared)
    try:
        ratio, memory_ns, queue_ns = interleaved(
            submit_arm(memory_a, batch), submit_arm(shared, batch), pairs
        )
        ratio_aa, _, _ = interleaved(
            submit_arm(memory_b, batch), submit_arm(memory_c, batch), pairs
        )
    finally:
        held.release()
        for detector in (memory_a, memory_b, memory_c, shared):
            detector.shutdown(30)
    return [
        ("submit, memory store (counted inline)", f"{memory_ns:,.0f} ns", "", ""),
        ("submit, redis store (queue hand-off)", f"{queue_ns:,.0f} ns", "", ""),
        ("  hand-off / inline counting", f"{ratio:.2f}x", "", ""),
        ("  A/A noise floor (memory / memory)", f"{ratio_aa:.2f}x", "", ""),
    ]


# -- Redis throughput -----------------------------------------------------------------------------


def flush_db(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def redis_arm(url: str, batch: list[Violation], max_keys: int) -> Callable[[], float]:
    """Violations/s through a Redis detector: first submit until flush() returns."""

    def run() -> float:
        flush_db(url)  # each run starts from an empty store
        recorder = SecurityRecorder(Settings.load(environ={}, store=url, max_keys=max_keys))
        detector = AbuseDetector(recorder, queue_size=len(batch) + 1)
        try:
            assert detector.flush(10)  # connect and load the scripts before timing
            submit = detector.submit
            started = time.perf_counter()
            for v in batch:
                submit(v)
            assert detector.flush(300)
            elapsed = time.perf_counter() - started
            stats = detector.stats
            assert stats["redis_errors"] == 0 and stats["dropped"] == 0, stats
            return len(batch) / elapsed
        finally:
            detector.shutdown()

    return run


def redis_rows(url: str, n: int, pairs: int) -> list[tuple[str, str, str, str]]:
    batch = violations(n)
    capped = redis_arm(url, batch, 20_000)  # the default cap; 90,000 keys in the stream
    uncapped = redis_arm(url, batch, 10**8)  # the largest MAX_KEYS accepted: never binds
    ratio, rate_uncapped, rate_capped = interleaved(uncapped, capped, pairs)
    ratio_aa, _, _ = interleaved(capped, capped, pairs)
    return [
        (
            "redis, key cap 20,000 (evicting): violations/s",
            f"{rate_capped:,.0f}",
            ">= 20,000",
            "ok" if rate_capped >= 20_000 else "MISSED",
        ),
        ("redis, cap never binding: violations/s", f"{rate_uncapped:,.0f}", "", ""),
        ("  capped / uncapped rate", f"{ratio:.2f}x", "", ""),
        ("  A/A noise floor (capped / capped)", f"{ratio_aa:.2f}x", "", ""),
    ]


def main() -> None:
    quick = "--quick" in sys.argv
    server = RedisServer().start()
    try:
        rows = submit_costs(server.url, block=2_000, pairs=20 if quick else 60)
        rows += redis_rows(server.url, n=30_000 if quick else 100_000, pairs=2 if quick else 4)
    finally:
        server.close()
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':>14}  {'target':>10}  status")
    for name, value, target, status in rows:
        print(f"{name:<{width}}  {value:>14}  {target:>10}  {status}")


if __name__ == "__main__":
    main()
