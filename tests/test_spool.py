"""The spool (otel_secaudit.spool) and drop counting (otel_secaudit.delivery), with in-memory
exporters: framing, replay, torn writes, size cap, retries, the recorder wiring."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_secaudit import SecurityRecorder, Settings
from otel_secaudit.delivery import METRIC_LOGS_DROPPED
from otel_secaudit.spool import (
    LOG_RECORD_UID,
    Spool,
    SpoolingLogRecordProcessor,
    build_otlp_log_exporter,
    create_spool_logger_provider,
)


class FlakyExporter(LogRecordExporter):
    """Fails the first ``failures`` calls, then keeps every batch (in memory)."""

    def __init__(self, failures: int = 0, raises: bool = False) -> None:
        self.failures = failures
        self.raises = raises
        self.calls = 0
        self.records: list[ReadableLogRecord] = []
        self.lock = threading.Lock()

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        with self.lock:
            self.calls += 1
            if self.failures > 0:
                self.failures -= 1
                if self.raises:
                    raise ConnectionError("collector down")
                return LogRecordExportResult.FAILURE
            self.records.extend(batch)
            return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def uids(self) -> list[str]:
        with self.lock:
            return [str(r.log_record.attributes[LOG_RECORD_UID]) for r in self.records]


def metric_value(reader: InMemoryMetricReader, name: str) -> float:
    data = reader.get_metrics_data()
    total = 0.0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    total += sum(p.value for p in metric.data.data_points)
    return total


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def spools() -> Iterator[list[Any]]:
    """Closes every Spool / processor a test opened."""
    opened: list[Any] = []
    yield opened
    for item in opened:
        if isinstance(item, SpoolingLogRecordProcessor):
            item.shutdown(0)
        else:
            item.close()


# -- the spool itself -----------------------------------------------------------------------


def test_append_read_commit_roundtrip(spool_dir: Path, spools: list[Any]) -> None:
    spool = Spool(spool_dir, segment_bytes=4096)
    spools.append(spool)
    payloads = [f"record-{i}".encode() * 20 for i in range(200)]
    for payload in payloads:
        assert spool.append(payload)
    assert spool.depth == 200
    segments_before = len(list(spool.path.glob("*.seg")))
    assert segments_before > 3  # rolled

    got: list[bytes] = []
    while True:
        batch, position = spool.read(37)
        if not batch:
            break
        got.extend(batch)
        spool.commit(position, len(batch))
    assert got == payloads
    assert spool.depth == 0
    # Acknowledged segments are deleted; the active one stays.
    assert len(list(spool.path.glob("*.seg"))) == 1


def test_replay_after_restart_from_committed_cursor(spool_dir: Path, spools: list[Any]) -> None:
    spool = Spool(spool_dir, segment_bytes=4096)
    for i in range(100):
        spool.append(b"r%03d" % i)
    batch, position = spool.read(40)
    spool.commit(position, len(batch))
    spool.close()

    reopened = Spool(spool_dir, segment_bytes=4096)
    spools.append(reopened)
    assert reopened.path == spool.path  # the worker directory is reclaimed
    assert reopened.depth == 60
    reopened.append(b"after-restart")
    rest, _ = reopened.read(1000)
    assert rest == [b"r%03d" % i for i in range(40, 100)] + [b"after-restart"]


def test_torn_tail_is_skipped_and_counted(spool_dir: Path, spools: list[Any]) -> None:
    spool = Spool(spool_dir)
    for i in range(10):
        spool.append(b"whole-%d" % i)
    segment = max(spool.path.glob("*.seg"))
    spool.close()
    # A write cut short by SIGKILL / power loss: a header promising more bytes than exist.
    with open(segment, "ab") as handle:
        handle.write(b"\x40\x00\x00\x00\x01\x02\x03\x04half")

    reopened = Spool(spool_dir)
    spools.append(reopened)
    assert reopened.depth == 10
    reopened.append(b"next")
    got, _ = reopened.read(100)
    assert got == [b"whole-%d" % i for i in range(10)] + [b"next"]
    assert reopened.stats.torn_segments == 1


def test_corrupt_frame_fails_crc(spool_dir: Path, spools: list[Any]) -> None:
    spool = Spool(spool_dir)
    for i in range(5):
        spool.append(b"payload-%d" % i)
    segment = max(spool.path.glob("*.seg"))
    spool.close()
    data = bytearray(segment.read_bytes())
    data[8 + 3] ^= 0xFF  # flip a bit in the first payload
    segment.write_bytes(bytes(data))

    reopened = Spool(spool_dir)
    spools.append(reopened)
    got, _ = reopened.read(100)
    assert got == []  # nothing after a corrupt frame of that segment is trusted
    assert reopened.stats.torn_segments == 1


def test_size_cap_refuses_and_counts(spool_dir: Path, spools: list[Any]) -> None:
    spool = Spool(spool_dir, max_bytes=8192, segment_bytes=4096)
    spools.append(spool)
    accepted = sum(spool.append(b"x" * 100) for _ in range(200))
    assert 0 < accepted < 200
    assert spool.stats.refused == 200 - accepted
    assert spool.size_bytes <= 8192
    # Acknowledging frees room again.
    batch, position = spool.read(1000)
    spool.commit(position, len(batch))
    assert spool.append(b"x" * 100)


def test_fsync_every_record_mode(spool_dir: Path, spools: list[Any]) -> None:
    spool = Spool(spool_dir, fsync_every=1)
    spools.append(spool)
    assert spool.append(b"synced")
    assert spool.read(10)[0] == [b"synced"]


def test_two_processes_sharing_a_dir_get_their_own_worker_dirs(
    spool_dir: Path, spools: list[Any]
) -> None:
    first, second = Spool(spool_dir), Spool(spool_dir)
    spools.extend([first, second])
    assert first.path != second.path
    first.append(b"a")
    second.append(b"b")
    assert first.read(10)[0] == [b"a"] and second.read(10)[0] == [b"b"]


# -- processor and sender ---------------------------------------------------------------------


def make_recorder(
    spool_dir: Path, exporter: LogRecordExporter, spools: list[Any], **spool_options: Any
) -> tuple[SecurityRecorder, SpoolingLogRecordProcessor, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    provider, processor = create_spool_logger_provider(
        spool_dir, exporter=exporter, meter_provider=meter_provider, **spool_options
    )
    processor._backoff_initial = processor._backoff_max = 0.02  # fast retries in tests
    spools.append(processor)
    recorder = SecurityRecorder(
        Settings.load(environ={}, strict=True),
        logger_provider=provider,
        meter_provider=meter_provider,
    )
    return recorder, processor, reader


def test_export_failures_are_retried_until_acknowledged(spool_dir: Path, spools: list[Any]) -> None:
    exporter = FlakyExporter(failures=4)
    recorder, processor, reader = make_recorder(spool_dir, exporter, spools)
    for i in range(300):
        recorder.record("auth.login.failed", user_name=f"u{i}", attributes={"seq": i})
    assert processor.force_flush(10_000)
    uids = exporter.uids()
    assert len(uids) == 300 and len(set(uids)) == 300
    assert sorted(r.log_record.attributes["seq"] for r in exporter.records) == list(range(300))
    assert processor.spool.stats.export_failures == 4
    assert metric_value(reader, "otel_secaudit.spool.export_failures") == 4
    assert metric_value(reader, "otel_secaudit.spool.exported") == 300
    assert metric_value(reader, "otel_secaudit.spool.depth") == 0


def test_exporter_exception_does_not_kill_the_sender(spool_dir: Path, spools: list[Any]) -> None:
    exporter = FlakyExporter(failures=3, raises=True)
    recorder, processor, _ = make_recorder(spool_dir, exporter, spools)
    recorder.record("auth.logout", user_id="1")
    assert processor.force_flush(10_000)
    assert len(exporter.records) == 1


def test_replayed_record_is_the_same_record(spool_dir: Path, spools: list[Any]) -> None:
    """What the sender exports after a restart equals what was recorded (trace context,
    severity, event_name, body, attributes, scope)."""
    down = FlakyExporter(failures=10**9)
    recorder, processor, _ = make_recorder(spool_dir, down, spools)
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("request") as span:
        recorder.emit("authz.cross_tenant", {"user_id": "7", "tenant_id": "a"}, body={"n": 3})
        span_context = span.get_span_context()
    processor.shutdown(0)
    assert processor.spool.depth == 1

    up = FlakyExporter()
    recorder2, processor2, _ = make_recorder(spool_dir, up, spools)
    assert processor2.force_flush(5000)
    (record,) = up.records
    log = record.log_record
    assert log.event_name == "authz.cross_tenant"
    assert log.trace_id == span_context.trace_id and log.span_id == span_context.span_id
    assert log.severity_text == "WARN" and log.body == {"n": 3}
    assert log.attributes["security.tenant.id"] == "a"
    assert len(str(log.attributes[LOG_RECORD_UID])) == 32
    assert record.instrumentation_scope is not None
    assert record.instrumentation_scope.name == "otel_secaudit"


def test_full_spool_refusal_is_a_metric_and_never_raises(
    spool_dir: Path, spools: list[Any]
) -> None:
    down = FlakyExporter(failures=10**9)
    recorder, processor, reader = make_recorder(
        spool_dir, down, spools, max_bytes=16384, segment_bytes=4096
    )
    for i in range(200):
        recorder.record("auth.login.failed", user_name=f"user{i}")
    refused = processor.spool.stats.refused
    assert refused > 0
    assert metric_value(reader, "otel_secaudit.spool.refused") == refused
    assert metric_value(reader, "otel_secaudit.spool.depth") == 200 - refused
    # The counters still saw every event: nothing hidden.
    assert metric_value(reader, "security.events") == 200


def test_recorder_uses_the_spool_when_configured(
    tmp_path: Path, spools: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    recorder = SecurityRecorder(Settings.load(environ={}, spool_dir=str(tmp_path / "s")))
    try:
        assert recorder.delivery.spool is not None
        recorder.record("auth.logout", user_id="1")
        assert recorder.delivery.spool.spool.depth == 1
        assert recorder.delivery.spool.spool.stats.appended == 1
    finally:
        recorder.close(0)
    # Closed with the collector unreachable: the record stays for the next start.
    again = SecurityRecorder(Settings.load(environ={}, spool_dir=str(tmp_path / "s")))
    try:
        assert again.delivery.spool is not None and again.delivery.spool.spool.depth == 1
    finally:
        again.close(0)


def test_no_uid_and_no_spool_without_the_setting(sdk: Any) -> None:
    sdk.recorder.record("auth.logout", user_id="1")
    (log,) = sdk.logs()
    assert LOG_RECORD_UID not in log.log_record.attributes
    assert sdk.recorder.delivery.spool is None


def test_spool_that_cannot_open_falls_back_and_counts(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    recorder = SecurityRecorder(Settings.load(environ={}, spool_dir=str(blocker)))
    assert recorder.delivery.spool is None
    assert any(k.startswith("spool.start") for k in recorder.stats.snapshot()["internal_errors"])
    recorder.record("auth.logout", user_id="1")  # still works, through the global provider


def test_protocol_selects_the_exporter() -> None:
    grpc_exporter = build_otlp_log_exporter({})
    http_exporter = build_otlp_log_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    logs_wins = build_otlp_log_exporter(
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf"}
    )
    assert "grpc" in type(grpc_exporter).__module__
    assert "http" in type(http_exporter).__module__
    assert "http" in type(logs_wins).__module__
    for exporter in (grpc_exporter, http_exporter, logs_wins):
        exporter.shutdown()


# -- without the spool: drops are counted -----------------------------------------------------


class SlowExporter(LogRecordExporter):
    def __init__(self, result: LogRecordExportResult, delay: float = 0.0) -> None:
        self.result = result
        self.delay = delay
        self.exported = 0

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        time.sleep(self.delay)
        self.exported += len(batch)
        return self.result

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def recorder_on(provider: LoggerProvider) -> tuple[SecurityRecorder, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    recorder = SecurityRecorder(
        Settings.load(environ={}, strict=True),
        logger_provider=provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    return recorder, reader


def test_batch_queue_full_drops_are_counted() -> None:
    provider = LoggerProvider()
    exporter = SlowExporter(LogRecordExportResult.SUCCESS, delay=0.3)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, max_queue_size=20, max_export_batch_size=10)
    )
    recorder, reader = recorder_on(provider)
    for i in range(200):
        recorder.record("auth.login.failed", user_name=f"u{i}")
    provider.shutdown()
    dropped = recorder.delivery.drops.by_reason.get("queue_full", 0)
    assert dropped > 0
    # Every record is accounted for: exported or counted as dropped. The SDK decides "queue
    # full" without a lock, so a worker pop racing with emit can make one count too many (the
    # SDK's own otel.sdk.processor.log.processed has the same race): never too few.
    assert 200 <= exporter.exported + dropped <= 205
    assert metric_value(reader, METRIC_LOGS_DROPPED) == dropped


def test_failed_exports_are_counted() -> None:
    provider = LoggerProvider()
    provider.add_log_record_processor(
        SimpleLogRecordProcessor(SlowExporter(LogRecordExportResult.FAILURE))
    )
    recorder, reader = recorder_on(provider)
    for _ in range(7):
        recorder.record("auth.logout", user_id="1")
    assert recorder.delivery.drops.by_reason == {"export_failed": 7}
    assert metric_value(reader, METRIC_LOGS_DROPPED) == 7
    # Other instrumentation scopes are not ours to count.
    provider.get_logger("someone.else").emit(body="x")
    assert recorder.delivery.drops.total == 7
    # Installing twice does not double count.
    recorder_on(provider)
    recorder.record("auth.logout", user_id="1")
    assert recorder.delivery.drops.total == 8


def test_uids_are_unique_and_time_ordered() -> None:
    from otel_secaudit.spool import new_record_uid

    uids = [new_record_uid() for _ in range(10_000)]
    assert len(set(uids)) == len(uids)
    assert all(len(u) == 32 and int(u, 16) >= 0 for u in uids)
    # The first 12 hex digits are milliseconds: later uids sort after earlier ones.
    assert uids[0][:12] <= uids[-1][:12]
    assert abs(int(uids[-1][:12], 16) - time.time() * 1000) < 60_000
