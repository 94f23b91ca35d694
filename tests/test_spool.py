"""Durable delivery (otel_secaudit.delivery) with in-memory exporters and real files: framing,
replay, torn writes and disk-full recovery, directory safety, size cap, retries, the recorder
wiring, flush, drop counting through public API, the OTLP exporter factory, and secrets in
configuration messages."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
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
from otel_secaudit.config import ConfigError, redact_uri_password
from otel_secaudit.delivery import (
    LOG_RECORD_UID,
    METRIC_LOGS_DROPPED,
    DropCountingLogExporter,
    Spool,
    SpoolDirectoryError,
    SpoolingLogRecordProcessor,
    SpoolWriteError,
    create_spool_logger_provider,
    new_record_uid,
    otlp_exporters,
    otlp_log_exporter,
    otlp_protocol,
)
from otel_secaudit.delivery.codec import encode_frame
from otel_secaudit.delivery.spool import SegmentFile

PACKAGE = Path(__file__).resolve().parent.parent / "otel_secaudit" / "delivery"


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


def metric_value(reader: InMemoryMetricReader, name: str, **attributes: Any) -> float:
    data = reader.get_metrics_data()
    total = 0.0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    total += sum(
                        p.value
                        for p in metric.data.data_points
                        if all(p.attributes.get(k) == v for k, v in attributes.items())
                    )
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


def drain(spool: Spool, batch: int = 1000) -> list[bytes]:
    """Read and acknowledge everything the spool holds."""
    got: list[bytes] = []
    while True:
        payloads, position = spool.read(batch)
        if not payloads and position == spool.cursor:
            return got
        got.extend(payloads)
        spool.commit(position, len(payloads))


# -- the spool itself -----------------------------------------------------------------------


def test_append_read_commit_roundtrip(spool_dir: Path, spools: list[Any]) -> None:
    spool = Spool(spool_dir, segment_bytes=4096)
    spools.append(spool)
    payloads = [f"record-{i}".encode() * 20 for i in range(200)]
    for payload in payloads:
        assert spool.append(payload)
    assert spool.depth == 200
    assert len(list(spool.path.glob("*.seg"))) > 3  # rolled

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
    # A write cut short by SIGKILL / power loss: the segment ends mid-frame.
    data = segment.read_bytes()
    segment.write_bytes(data + encode_frame(b"the record being written")[:17])

    reopened = Spool(spool_dir)
    spools.append(reopened)
    assert reopened.depth == 10
    reopened.append(b"next")
    assert drain(reopened) == [b"whole-%d" % i for i in range(10)] + [b"next"]
    assert reopened.stats.torn_regions == 1


def test_segment_truncated_mid_frame_keeps_every_whole_frame(
    spool_dir: Path, spools: list[Any]
) -> None:
    spool = Spool(spool_dir)
    frames = [b"rec-%02d" % i * 7 for i in range(20)]
    for payload in frames:
        spool.append(payload)
    segment = max(spool.path.glob("*.seg"))
    spool.close()
    size = segment.stat().st_size
    cut = size - len(encode_frame(frames[-1])) // 2  # inside the last frame
    os.truncate(segment, cut)

    reopened = Spool(spool_dir)
    spools.append(reopened)
    assert reopened.depth == 19
    assert drain(reopened) == frames[:19]
    assert reopened.stats.torn_regions == 1


def test_corrupt_frame_is_skipped_and_the_rest_of_the_segment_delivered(
    spool_dir: Path, spools: list[Any]
) -> None:
    spool = Spool(spool_dir)
    for i in range(5):
        spool.append(b"payload-%d" % i)
    segment = max(spool.path.glob("*.seg"))
    spool.close()
    data = bytearray(segment.read_bytes())
    data[12 + 3] ^= 0xFF  # flip a bit in the first payload
    segment.write_bytes(bytes(data))

    reopened = Spool(spool_dir)
    spools.append(reopened)
    assert drain(reopened) == [b"payload-%d" % i for i in range(1, 5)]
    assert reopened.stats.torn_regions == 1


def test_torn_frame_between_records_of_one_segment_is_resynchronised(
    spool_dir: Path, spools: list[Any]
) -> None:
    """The issue-11 layout: a torn frame (a short write on a full disk) followed by records
    accepted later, in the same segment. Every whole record is delivered."""
    spool = Spool(spool_dir)
    spool.append(b"before")
    segment = max(spool.path.glob("*.seg"))
    spool.close()
    torn = encode_frame(b"x" * 300)[:150]
    with open(segment, "ab") as handle:
        handle.write(torn + encode_frame(b"after-1") + encode_frame(b"after-2"))

    reopened = Spool(spool_dir)
    spools.append(reopened)
    assert reopened.depth == 3
    assert drain(reopened) == [b"before", b"after-1", b"after-2"]
    assert reopened.stats.torn_regions == 1
    assert reopened.stats.torn_bytes == 150


class DiskFullOnce(SegmentFile):
    """A segment file whose ``fail_at``-th write puts half the frame on disk and then fails
    with ENOSPC, as a write on a full disk does. ``truncate_fails``: ftruncate fails too."""

    def __init__(self, fd: int, fail_at: int, truncate_fails: bool = False) -> None:
        super().__init__(fd)
        self.fail_at = fail_at
        self.truncate_fails = truncate_fails
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == self.fail_at:
            os.write(self.fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)

    def truncate(self, size: int) -> None:
        if self.truncate_fails:
            raise OSError(errno.EIO, "Input/output error")
        super().truncate(size)


@pytest.mark.parametrize("truncate_fails", [False, True], ids=["torn-tail-cut", "segment-sealed"])
def test_disk_full_write_loses_nothing_accepted(
    spool_dir: Path, spools: list[Any], truncate_fails: bool
) -> None:
    files: list[DiskFullOnce] = []

    def opener(fd: int) -> SegmentFile:
        file = DiskFullOnce(fd, fail_at=6 if not files else 0, truncate_fails=truncate_fails)
        files.append(file)
        return file

    spool = Spool(spool_dir, segment_file=opener)
    spools.append(spool)
    accepted = []
    for i in range(12):
        payload = b"record-%02d" % i
        try:
            assert spool.append(payload)
            accepted.append(payload)
        except SpoolWriteError as exc:
            assert exc.errno == errno.ENOSPC
    assert len(accepted) == 11  # the 6th write failed: refused, counted
    assert spool.stats.refused == spool.stats.write_errors == 1
    assert spool.depth == 11
    assert drain(spool) == accepted
    # A torn frame that could not be cut off is skipped (and counted), never delivered.
    assert spool.stats.torn_regions == (1 if truncate_fails else 0)


def test_disk_full_then_restart_replays_every_accepted_record(
    spool_dir: Path, spools: list[Any]
) -> None:
    spool = Spool(spool_dir, segment_file=lambda fd: DiskFullOnce(fd, fail_at=3))
    accepted = []
    for i in range(8):
        try:
            spool.append(b"r%d" % i)
            accepted.append(b"r%d" % i)
        except SpoolWriteError:
            pass
    spool.close()
    reopened = Spool(spool_dir)
    spools.append(reopened)
    assert reopened.depth == len(accepted) == 7
    assert drain(reopened) == accepted
    assert reopened.stats.torn_regions == 0  # the torn bytes were cut off at once


ROOT = Path(__file__).resolve().parent.parent


def run_on_full_disk(
    tmp_path: Path, mode: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``tests.spool_disk_full MODE`` on a real 256 KiB tmpfs that exists only in a private
    mount namespace (needs root: skipped elsewhere), so no mount outlives the test, even when
    the run is killed."""
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here (needs root)")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    script = (
        'mount -t tmpfs -o size=256k,mode=0700 tmpfs "$1" && '
        'exec "$2" -m tests.spool_disk_full "$1" "$3"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        + [str(mount_point), sys.executable, mode],
        cwd=ROOT,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    outcome: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return outcome


def test_real_full_disk_then_space_freed(tmp_path: Path) -> None:
    outcome = run_on_full_disk(tmp_path, "spool")
    assert outcome["failures"] > 0 and outcome["accepted"] > 0
    assert outcome["refused"] == outcome["write_errors"] == outcome["failures"]
    assert outcome["late_accepted"] == 20  # space came back: everything later is accepted...
    assert outcome["read_back_exactly"]  # ...and read back with every earlier accepted record
    assert outcome["torn_regions"] == 0


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


# -- directory safety -----------------------------------------------------------------------


def test_spool_directories_are_created_0700(tmp_path: Path, spools: list[Any]) -> None:
    root = tmp_path / "deep" / "spool"
    spool = Spool(root)
    spools.append(spool)
    assert root.stat().st_mode & 0o777 == 0o700
    assert spool.path.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in spool.path.iterdir())


def test_symlinked_spool_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "spool"
    link.symlink_to(target)
    with pytest.raises(SpoolDirectoryError, match="symlink"):
        Spool(link)
    assert list(target.iterdir()) == []


def test_symlinked_worker_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.mkdir()
    (root / "worker-0").symlink_to(victim)
    with pytest.raises(SpoolDirectoryError, match="symlink"):
        Spool(root)
    assert list(victim.iterdir()) == []


def foreign_directory(tmp_path: Path) -> Path:
    """A directory owned by another user (chown as root; else one root owns)."""
    if os.geteuid() == 0:
        path = tmp_path / "foreign"
        path.mkdir(mode=0o777)
        os.chown(path, 65534, 65534)
        return path
    return Path("/")


def test_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpoolDirectoryError, match="owned by uid"):
        Spool(foreign_directory(tmp_path))


def test_symlinked_cursor_tmp_never_overwrites_its_target(
    tmp_path: Path, spools: list[Any]
) -> None:
    """Issue 11: another local user pre-creates the worker directory's cursor.tmp as a link
    to a file of the application's user; committing must not write through it."""
    root = tmp_path / "spool"
    worker = root / "worker-0"
    worker.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    (worker / "cursor.tmp").symlink_to(victim)
    (worker / "cursor").symlink_to(victim)

    spool = Spool(root)
    spools.append(spool)
    spool.append(b"one")
    assert drain(spool) == [b"one"]
    assert victim.read_text() == "precious\n"
    assert not (worker / "cursor").is_symlink()


def test_unsafe_spool_dir_is_counted_and_the_app_keeps_running(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "spool"
    link.symlink_to(target)
    recorder = SecurityRecorder(Settings.load(environ={}, spool_dir=str(link)))
    assert recorder.delivery.spool is None
    assert recorder.stats.snapshot()["internal_errors"].get("spool.start:SpoolDirectoryError")
    recorder.record("auth.logout", user_id="1")  # still works, through the global provider


# -- processor and sender ---------------------------------------------------------------------


def make_recorder(
    spool_dir: Path, exporter: LogRecordExporter, spools: list[Any], **spool_options: Any
) -> tuple[SecurityRecorder, SpoolingLogRecordProcessor, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    spool_options.setdefault("backoff_initial_s", 0.02)  # fast retries in tests
    spool_options.setdefault("backoff_max_s", 0.02)
    provider, processor = create_spool_logger_provider(
        spool_dir, exporter=exporter, meter_provider=meter_provider, **spool_options
    )
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


def test_disk_full_through_record_never_raises_and_is_counted(
    spool_dir: Path, spools: list[Any]
) -> None:
    exporter = FlakyExporter()
    recorder, processor, reader = make_recorder(
        spool_dir, exporter, spools, segment_file=lambda fd: DiskFullOnce(fd, fail_at=2)
    )
    for i in range(5):
        recorder.record("auth.login.failed", user_name=f"u{i}", attributes={"seq": i})
    assert processor.force_flush(5000)
    assert sorted(r.log_record.attributes["seq"] for r in exporter.records) == [0, 2, 3, 4]
    assert metric_value(reader, "otel_secaudit.spool.refused") == 1
    assert processor.spool.stats.write_errors == 1
    assert metric_value(reader, "security.events") == 5  # the counters saw every event


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


def test_sender_exports_with_instrumentation_suppressed(spool_dir: Path, spools: list[Any]) -> None:
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    seen: list[bool] = []

    class Probe(FlakyExporter):
        def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
            seen.append(is_instrumentation_enabled())
            return super().export(batch)

    recorder, processor, _ = make_recorder(spool_dir, Probe(), spools)
    recorder.record("auth.logout", user_id="1")
    assert processor.force_flush(5000)
    assert seen and not any(seen)


def test_recorder_uses_the_spool_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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


def test_spool_max_bytes_setting_reaches_the_spool(tmp_path: Path) -> None:
    settings = Settings.load(
        environ={"OTEL_SECAUDIT_SPOOL_MAX_BYTES": "65536"}, spool_dir=str(tmp_path / "s")
    )
    recorder = SecurityRecorder(settings)
    try:
        assert recorder.delivery.spool is not None
        assert recorder.delivery.spool.spool.max_bytes == 65536
    finally:
        recorder.close(0)


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


# -- flush ------------------------------------------------------------------------------------


def spooled_recorder(
    tmp_path: Path, exporter: LogRecordExporter, reader: InMemoryMetricReader
) -> SecurityRecorder:
    """A recorder wired as in production (settings.spool_dir), with ``exporter``."""
    from otel_secaudit import delivery

    recorder = SecurityRecorder(
        Settings.load(environ={}, strict=True),
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    provider, processor = create_spool_logger_provider(
        tmp_path / "s", exporter=exporter, backoff_initial_s=0.02, backoff_max_s=0.02
    )
    recorder.delivery = delivery.Delivery(provider, recorder.delivery._meter_provider, processor)
    recorder._logger = provider.get_logger("otel_secaudit")
    return recorder


def test_flush_delivers_the_spool_and_reports_success(tmp_path: Path) -> None:
    exporter = FlakyExporter(failures=2)
    reader = InMemoryMetricReader()
    recorder = spooled_recorder(tmp_path, exporter, reader)
    try:
        for i in range(50):
            recorder.record("auth.login.failed", user_name=f"u{i}")
        assert recorder.delivery.flush(5000) is True
        assert len(exporter.records) == 50
    finally:
        recorder.close(0)


def test_flush_reports_a_miss_when_the_collector_stays_down(tmp_path: Path) -> None:
    exporter = FlakyExporter(failures=10**9)
    recorder = spooled_recorder(tmp_path, exporter, InMemoryMetricReader())
    try:
        recorder.record("auth.logout", user_id="1")
        started = time.monotonic()
        assert recorder.delivery.flush(300) is False
        assert time.monotonic() - started < 2
    finally:
        recorder.close(0)


def test_flush_flushes_the_app_pipelines_and_never_raises() -> None:
    exported = FlakyExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exported, schedule_delay_millis=60_000)
    )
    reader = InMemoryMetricReader()
    recorder = SecurityRecorder(
        Settings.load(environ={}, strict=True),
        logger_provider=provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    recorder.record("auth.logout", user_id="1")
    assert recorder.delivery.flush(5000) is True
    assert len(exported.records) == 1

    class Broken:
        def force_flush(self, timeout_millis: int) -> bool:
            raise RuntimeError("boom")

    from otel_secaudit.delivery import Delivery

    broken = Delivery(Broken(), Broken())
    assert broken.flush(100) is False  # no exception


# -- the OTLP exporter factory ---------------------------------------------------------------


@pytest.fixture
def clean_otlp_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("OTEL_EXPORTER_OTLP"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_protocol_is_chosen_as_the_sdk_chooses_it(clean_otlp_env: pytest.MonkeyPatch) -> None:
    assert otlp_protocol("logs", {}) == "grpc"
    # No guessing from the port: the SDK's default is gRPC whatever the endpoint.
    assert otlp_protocol("logs", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "grpc"
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf",
    }
    assert otlp_protocol("logs", env) == "http/protobuf"
    assert otlp_protocol("traces", env) == "grpc"
    with pytest.raises(ValueError, match=r"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json'"):
        otlp_protocol("traces", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"})


def test_exporters_follow_the_per_signal_protocols(clean_otlp_env: pytest.MonkeyPatch) -> None:
    grpc_log = otlp_log_exporter()
    clean_otlp_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    clean_otlp_env.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf")
    span, log, metric = otlp_exporters(meter_provider=MeterProvider())
    assert "grpc" in type(grpc_log).__module__
    assert "grpc" in type(span).__module__ and "grpc" in type(metric).__module__
    assert isinstance(log, DropCountingLogExporter)
    assert "http" in type(log.inner).__module__
    for exporter in (grpc_log, span, log, metric):
        exporter.shutdown()
    clean_otlp_env.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "carrier")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_METRICS_PROTOCOL='carrier'"):
        otlp_exporters()


def test_bad_protocol_disables_the_spool_with_a_counted_error(
    tmp_path: Path, clean_otlp_env: pytest.MonkeyPatch
) -> None:
    clean_otlp_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier")
    recorder = SecurityRecorder(Settings.load(environ={}, spool_dir=str(tmp_path / "s")))
    assert recorder.delivery.spool is None
    assert recorder.stats.snapshot()["internal_errors"].get("spool.start:ValueError")


# -- without the spool: drops counted through public API only ---------------------------------


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


def recorder_on(
    provider: LoggerProvider, meter_provider: MeterProvider | None = None
) -> SecurityRecorder:
    return SecurityRecorder(
        Settings.load(environ={}, strict=True),
        logger_provider=provider,
        meter_provider=meter_provider or MeterProvider(),
    )


def test_batch_queue_full_drops_are_counted_by_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's own self-metric (public, enabled by an env variable) accounts for every
    record: exported or counted as dropped with error.type=queue_full."""
    import inspect

    if "meter_provider" not in inspect.signature(BatchLogRecordProcessor).parameters:
        pytest.skip("this SDK has no processor self-metrics")
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    provider = LoggerProvider()
    exporter = SlowExporter(LogRecordExportResult.SUCCESS, delay=0.3)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            exporter, max_queue_size=20, max_export_batch_size=10, meter_provider=meter_provider
        )
    )
    recorder = recorder_on(provider, meter_provider)
    for i in range(200):
        recorder.record("auth.login.failed", user_name=f"u{i}")
    provider.shutdown()
    dropped = metric_value(
        reader, "otel.sdk.processor.log.processed", **{"error.type": "queue_full"}
    )
    assert dropped > 0
    # The SDK decides "queue full" without a lock: one count too many is possible, never too few.
    assert 200 <= exporter.exported + dropped <= 205


def test_failed_exports_are_counted_by_the_wrapping_exporter() -> None:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    counting = DropCountingLogExporter(
        SlowExporter(LogRecordExportResult.FAILURE), meter_provider=meter_provider
    )
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(counting))
    recorder = recorder_on(provider, meter_provider)
    for _ in range(7):
        recorder.record("auth.logout", user_id="1")
    assert counting.drops.by_reason == {"export_failed": 7}
    assert metric_value(reader, METRIC_LOGS_DROPPED) == 7
    # Other instrumentation scopes are not ours to count.
    provider.get_logger("someone.else").emit(body="x")
    assert counting.drops.total == 7


def test_delivery_uses_no_private_sdk_api() -> None:
    """Issue 15: no rewiring of the SDK's processors or exporters, no private context key."""
    private = re.compile(
        r"_multi_log_record_processor|_log_record_processors|_batch_processor|\._exporter\b"
        r"|\._metrics\b|_SUPPRESS_INSTRUMENTATION_KEY|\._queue\b"
    )
    for source in PACKAGE.glob("*.py"):
        assert not private.search(source.read_text()), source.name


def test_the_app_provider_is_left_untouched() -> None:
    exporter = SlowExporter(LogRecordExportResult.FAILURE)
    processor = SimpleLogRecordProcessor(exporter)
    provider = LoggerProvider()
    provider.add_log_record_processor(processor)
    before = dict(vars(processor))
    recorder_on(provider)
    assert vars(processor) == before


def test_uids_are_unique_and_time_ordered() -> None:
    uids = [new_record_uid() for _ in range(10_000)]
    assert len(set(uids)) == len(uids)
    assert all(len(u) == 32 and int(u, 16) >= 0 for u in uids)
    # The first 12 hex digits are milliseconds: later uids sort after earlier ones.
    assert uids[0][:12] <= uids[-1][:12]
    assert abs(int(uids[-1][:12], 16) - time.time() * 1000) < 60_000


# -- secrets in configuration messages (config.py: repr and error path) -----------------------

REDIS_PASSWORD = "hunter2-s3cr3t"


@pytest.mark.parametrize(
    "uri",
    [
        f"redis://:{REDIS_PASSWORD}@cache:6379/0",
        f"redis://app:{REDIS_PASSWORD}@cache:6379/0",
        f"rediss://app:{REDIS_PASSWORD}@cache/0?password={REDIS_PASSWORD}",
    ],
)
def test_settings_repr_never_shows_a_store_password(uri: str) -> None:
    settings = Settings.load(environ={}, store=uri)
    assert REDIS_PASSWORD not in repr(settings)
    assert "cache" in repr(settings) and "[REDACTED]" in repr(settings)


@pytest.mark.parametrize(
    "uri",
    [
        f"redis://:{REDIS_PASSWORD}@cache:99x/0",
        f"redis://app:{REDIS_PASSWORD}@cache:70000",
        "redis://:pa/ss#w@cache:6379",  # an unencoded / makes urlsplit see a bad port
    ],
)
def test_store_uri_errors_never_echo_the_password(uri: str) -> None:
    secret = uri.split("@")[0].rsplit(":", 1)[1]
    with pytest.raises(ConfigError) as from_env:
        Settings.load(environ={"OTEL_SECAUDIT_STORE": uri})
    with pytest.raises(ConfigError) as from_argument:
        Settings.load(environ={}, store=uri)
    for error in (from_env.value, from_argument.value):
        assert secret not in str(error)
        assert "cache" in str(error)


def test_hash_key_errors_never_echo_the_key() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={"OTEL_SECAUDIT_HASH_KEY": "weak-key-x"})
    assert "weak-key-x" not in str(error.value)
    assert "OTEL_SECAUDIT_HASH_KEY" in str(error.value)


def test_redact_uri_password_keeps_everything_else() -> None:
    assert redact_uri_password("redis://u:p@h:1/0") == "redis://u:[REDACTED]@h:1/0"
    assert redact_uri_password("redis://h:1/0") == "redis://h:1/0"
    assert redact_uri_password("memory://") == "memory://"
    assert (
        redact_uri_password("redis+sentinel://:pw@a:1,b:2/svc?sentinel_password=zz")
        == "redis+sentinel://:[REDACTED]@a:1,b:2/svc?sentinel_password=[REDACTED]"
    )


def test_forked_child_gets_its_own_worker_dir_and_sender(
    spool_dir: Path, spools: list[Any]
) -> None:
    exporter = FlakyExporter()
    recorder, processor, _ = make_recorder(spool_dir, exporter, spools)
    recorder.record("auth.logout", user_id="parent-before")
    parent_dir = processor.spool.path
    pid = os.fork()
    if pid == 0:  # the child: exit status tells the parent what happened
        code = 1
        try:
            processor.after_fork_in_child()
            recorder.record("auth.logout", user_id="child")
            ok = processor.spool.path != parent_dir and processor.force_flush(5000)
            users = [r.log_record.attributes.get("user.id") for r in exporter.records]
            code = 0 if ok and "child" in users else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    recorder.record("auth.logout", user_id="parent-after")
    assert processor.force_flush(5000)
    users = [r.log_record.attributes.get("user.id") for r in exporter.records]
    assert users == ["parent-before", "parent-after"]
    assert processor.spool.path == parent_dir
