"""Fault injection with the real OTLP receiver on loopback and the real OTLP exporters.

Delivery with the spool is **at-least-once with the dedup key** ``log.record.uid``: every record
emitted is received at least once, and after deduplication on ``log.record.uid`` exactly once
(one uid per emitted event, one event per uid). Counted end to end: events carry
``run``/``seq`` attributes and the app process writes how many ``record()`` calls returned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import OTLPReceiver, ReceivedLog, wait_for
from otel_secaudit import SecurityRecorder, Settings
from otel_secaudit.delivery import LOG_RECORD_UID, SpoolingLogRecordProcessor

from .test_spool import run_on_full_disk

ROOT = Path(__file__).resolve().parent.parent


def exporter_env(receiver: OTLPReceiver, protocol: str) -> dict[str, str]:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    return {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "OTEL_SERVICE_NAME": "spool-fault-test",
    }


@pytest.fixture
def spooled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Factory: a recorder wired exactly as in production (OTEL_SECAUDIT_SPOOL_DIR, exporter
    from OTEL_EXPORTER_OTLP_*), with fast retry backoff for short outages."""
    made: list[SecurityRecorder] = []

    def factory(receiver: OTLPReceiver, protocol: str = "grpc") -> SecurityRecorder:
        for key, value in exporter_env(receiver, protocol).items():
            monkeypatch.setenv(key, value)
        recorder = SecurityRecorder(
            Settings.load(environ={}, strict=True, spool_dir=str(tmp_path / "spool"))
        )
        processor = recorder.delivery.spool
        assert isinstance(processor, SpoolingLogRecordProcessor)
        processor.backoff_max_s = 0.3
        made.append(recorder)
        return recorder

    yield factory
    for recorder in made:
        recorder.close(0)


def by_uid(logs: list[ReceivedLog]) -> dict[str, list[ReceivedLog]]:
    grouped: dict[str, list[ReceivedLog]] = {}
    for log in logs:
        grouped.setdefault(str(log.attributes[LOG_RECORD_UID]), []).append(log)
    return grouped


def assert_exactly_once_after_dedup(
    logs: list[ReceivedLog], expected: set[tuple[str, int]]
) -> Counter[int]:
    """Every expected (run, seq) received under exactly one uid; returns copies per uid."""
    grouped = by_uid(logs)
    keys: dict[tuple[str, int], str] = {}
    for uid, copies in grouped.items():
        identities = {(str(c.attributes["run"]), int(c.attributes["seq"])) for c in copies}
        assert len(identities) == 1, f"uid {uid} names different events: {identities}"
        (identity,) = identities
        assert identity not in keys, f"{identity} was emitted twice under two uids"
        keys[identity] = uid
    missing = expected - set(keys)
    assert not missing, f"{len(missing)} records lost, e.g. {sorted(missing)[:5]}"
    return Counter(len(copies) for copies in grouped.values())


def record_steadily(recorder: SecurityRecorder, run: str, count: int, rate: float) -> None:
    started = time.monotonic()
    for seq in range(count):
        recorder.record(
            "auth.login.failed", user_name=f"u{seq}", attributes={"run": run, "seq": seq}
        )
        delay = started + (seq + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def test_receiver_down_under_steady_load(otlp_receiver: OTLPReceiver, spooled: Any) -> None:
    # gRPC: OTLPReceiver.stop() really closes its gRPC connections. (Its HTTP server keeps
    # serving already-open keep-alive connections after stop(), so HTTP outages are injected
    # with 503s below.)
    recorder = spooled(otlp_receiver, "grpc")
    processor = recorder.delivery.spool
    writer = threading.Thread(target=record_steadily, args=(recorder, "down", 600, 400))
    writer.start()
    time.sleep(0.3)
    otlp_receiver.stop()
    time.sleep(1.0)  # ~400 records arrive while the collector is down
    depth_during_outage = processor.spool.depth
    otlp_receiver.start()
    writer.join(10)
    assert not writer.is_alive()
    assert processor.force_flush(15_000), processor.spool.stats
    assert depth_during_outage > 50  # the outage really held records back
    assert processor.spool.stats.export_failures > 0
    assert_exactly_once_after_dedup(otlp_receiver.logs(), {("down", s) for s in range(600)})


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_receiver_returning_errors(
    otlp_receiver: OTLPReceiver, spooled: Any, protocol: str
) -> None:
    """UNAVAILABLE (gRPC) / 503 (HTTP) for the next 5 export calls."""
    recorder = spooled(otlp_receiver, protocol)
    processor = recorder.delivery.spool
    otlp_receiver.fail_next = 5
    record_steadily(recorder, "errors", 300, 2000)
    assert processor.force_flush(15_000)
    assert otlp_receiver.refused == 5
    copies = assert_exactly_once_after_dedup(
        otlp_receiver.logs(), {("errors", s) for s in range(300)}
    )
    assert set(copies) == {1}  # a refused batch was not stored: no duplicates


def test_slow_receiver_causes_duplicates_that_dedup_removes(
    otlp_receiver: OTLPReceiver, spooled: Any
) -> None:
    """The collector stores a batch but its acknowledgement arrives after the exporter's
    timeout: the spool sends it again (at-least-once); the uid deduplicates it."""
    otlp_receiver.delay = 1.5  # > OTEL_EXPORTER_OTLP_TIMEOUT=1
    recorder = spooled(otlp_receiver)
    processor = recorder.delivery.spool
    record_steadily(recorder, "slow", 100, 5000)
    wait_for(lambda: otlp_receiver.log_requests, timeout=10)  # stored after the client gave up
    otlp_receiver.delay = 0.0
    assert processor.force_flush(15_000)
    copies = assert_exactly_once_after_dedup(
        otlp_receiver.logs(), {("slow", s) for s in range(100)}
    )
    assert max(copies) >= 2, "expected re-sent records (at-least-once)"
    assert processor.spool.depth == 0


def test_slow_receiver_within_timeout_delivers_everything(
    otlp_receiver: OTLPReceiver, spooled: Any
) -> None:
    otlp_receiver.delay = 0.2
    recorder = spooled(otlp_receiver)
    started = time.perf_counter()
    record_steadily(recorder, "slowish", 200, 5000)
    recording = time.perf_counter() - started
    assert recording < 2.0  # record() never waits for the collector
    assert recorder.delivery.spool.force_flush(15_000)
    copies = assert_exactly_once_after_dedup(
        otlp_receiver.logs(), {("slowish", s) for s in range(200)}
    )
    assert set(copies) == {1}


def start_worker(
    receiver: OTLPReceiver, spool_dir: Path, count_file: Path, run: str, total: int | None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **exporter_env(receiver, "grpc"),
        "OTEL_SECAUDIT_SPOOL_DIR": str(spool_dir),
        "PYTHONPATH": str(ROOT),
    }
    args = [sys.executable, "-m", "tests.spool_worker", str(count_file), run]
    args.append(str(total) if total is not None else "-")
    return subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def read_count(path: Path) -> int:
    data = path.read_bytes()
    return int(data) if data.strip() else 0


def test_sigkill_mid_load_then_restart_loses_nothing(
    otlp_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    first_count, second_count = tmp_path / "run1.count", tmp_path / "run2.count"
    worker = start_worker(otlp_receiver, spool_dir, first_count, "run1", None)
    try:
        wait_for(lambda: first_count.exists() and read_count(first_count) >= 200, timeout=20)
        otlp_receiver.stop()  # a backlog builds up in the spool...
        time.sleep(0.6)
        worker.send_signal(signal.SIGKILL)  # ...and the app dies mid-load
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == -signal.SIGKILL
    emitted_first = read_count(first_count)
    received_before_restart = len(otlp_receiver.logs())
    assert received_before_restart < emitted_first  # some records were only in the spool

    otlp_receiver.start()
    second = start_worker(otlp_receiver, spool_dir, second_count, "run2", 150)
    output, _ = second.communicate(timeout=60)
    assert second.returncode == 0, output.decode(errors="replace")[-3000:]
    emitted_second = read_count(second_count)
    assert emitted_second == 150

    logs = otlp_receiver.logs()
    expected = {("run1", s) for s in range(emitted_first)} | {
        ("run2", s) for s in range(emitted_second)
    }
    assert_exactly_once_after_dedup(logs, expected)
    # The record() in flight at SIGKILL may have been spooled before its count was written:
    # at most one event beyond the count, never a made-up one.
    seqs_first = {int(log.attributes["seq"]) for log in logs if log.attributes["run"] == "run1"}
    assert max(seqs_first) <= emitted_first


def test_disk_full_then_space_back_delivers_every_accepted_record(
    otlp_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """A real full disk (a small tmpfs, in an app process of its own): writes fail, those
    records are refused and counted; once space is back, every record the spool accepted
    (before and after) reaches the collector exactly once after dedup (issue 11: a torn frame
    used to strand every later record of its segment)."""
    outcome = run_on_full_disk(tmp_path, "recorder", exporter_env(otlp_receiver, "grpc"))
    assert outcome["delivered"], outcome
    assert outcome["write_errors"] > 0 and outcome["appended"] > 0
    assert outcome["refused"] == 350 - outcome["appended"]  # none silent
    assert outcome["torn_regions"] == 0
    grouped = by_uid(otlp_receiver.logs())
    received = {
        (str(c[0].attributes["run"]), int(c[0].attributes["seq"])) for c in grouped.values()
    }
    assert len(received) == len(grouped) == outcome["appended"]  # every accepted record, once
    assert {("after", s) for s in range(50)} <= received
