"""No batch can stall delivery (README "Durable delivery"; issue 19): real OTLP receivers on
loopback with a collector's size limits (gRPC ``max_receive_message_length`` 4 MiB, HTTP 413),
the SDK's own OTLP exporters configured from the standard variables, records with large
attributes spooled during an outage.

Before: a 512-record batch of such records was 5.4 MB, the collector answered
RESOURCE_EXHAUSTED and the spool retried the same batch forever (0 of 700 delivered). Now
batches are sized in bytes, a batch refused for its size is split, a record refused alone goes
to a counted dead letter on disk (reported by ``otel-secaudit report``) and the queue goes on;
a collector's partial success is counted, warned about and not retried.

This is also the test that fails when the SDK exporters' private connection attributes that
``otel_secaudit.delivery.wire`` uses move (see that module).
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from harness import OTLPReceiver, wait_for
from otel_secaudit import SecurityRecorder, Settings
from otel_secaudit.delivery import LOG_RECORD_UID, SpoolingLogRecordProcessor
from otel_secaudit.delivery.deadletter import dead_letter_lines, dead_letter_summary
from otel_secaudit.delivery.wire import (
    ExporterSender,
    FallbackSender,
    GrpcSender,
    HttpSender,
    log_sender,
)

from .test_faults import exporter_env
from .test_spool import metric_value

MIB = 1024 * 1024
# Words, not one repeated letter: nothing here may look like a secret to the redaction.
WORDS = "audit trail of the quarterly ledger export for the northern region "


def big_attributes(size: int) -> dict[str, str]:
    """Attributes of about ``size`` bytes, each value within the 1 KiB cap."""
    count = max(1, size // 1000)
    return {f"detail_{i}": (WORDS * 16)[:990] for i in range(count)}


@pytest.fixture
def receivers() -> Iterator[list[OTLPReceiver]]:
    made: list[OTLPReceiver] = []
    yield made
    for receiver in made:
        receiver.stop()


@pytest.fixture
def spooled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Factory: a recorder wired as in production (OTEL_SECAUDIT_SPOOL_DIR, the exporter from
    OTEL_EXPORTER_OTLP_*), fast backoff, its spool metrics in an in-memory reader."""
    made: list[SecurityRecorder] = []

    def factory(receiver: OTLPReceiver, protocol: str) -> tuple[SecurityRecorder, Any]:
        for key, value in exporter_env(receiver, protocol).items():
            monkeypatch.setenv(key, value)
        reader = InMemoryMetricReader()
        recorder = SecurityRecorder(
            Settings.load(environ={}, strict=True, spool_dir=str(tmp_path / "spool")),
            meter_provider=MeterProvider(metric_readers=[reader]),
        )
        processor = recorder.delivery.spool
        assert isinstance(processor, SpoolingLogRecordProcessor)
        processor.backoff_initial_s = 0.05
        processor.backoff_max_s = 0.3
        made.append(recorder)
        return recorder, reader

    yield factory
    for recorder in made:
        recorder.close(0)


def processor_of(recorder: SecurityRecorder) -> SpoolingLogRecordProcessor:
    processor = recorder.delivery.spool
    assert processor is not None
    return processor


def received_uids(receiver: OTLPReceiver) -> set[str]:
    return {str(log.attributes[LOG_RECORD_UID]) for log in receiver.security_logs()}


def record_during_outage(recorder: SecurityRecorder, sizes: list[int]) -> None:
    for seq, size in enumerate(sizes):
        recorder.record(
            "authz.permission_denied",
            user_id=f"u{seq % 7}",
            attributes={"seq": seq, **big_attributes(size)},
        )


def seqs(receiver: OTLPReceiver) -> list[int]:
    return sorted(int(log.attributes["seq"]) for log in receiver.security_logs())


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_700_large_records_spooled_during_an_outage_are_all_delivered(
    receivers: list[OTLPReceiver], spooled: Any, protocol: str
) -> None:
    receiver = OTLPReceiver(max_receive_bytes=4 * MIB, max_http_body=4 * MIB)
    receivers.append(receiver)  # not started: the collector is down while the app records
    recorder, _ = spooled(receiver, protocol)
    processor = processor_of(recorder)
    record_during_outage(recorder, [10_500] * 700)
    assert processor.spool.depth == 700
    receiver.start()
    assert wait_for(lambda: processor.spool.depth == 0, timeout=60), processor.spool.stats
    assert seqs(receiver) == list(range(700))
    assert len(received_uids(receiver)) == 700
    stats = processor.spool.stats
    assert stats.exported == 700 and stats.dead_lettered == 0 and stats.rejected == 0
    # Every request the collector took fits its limit.
    assert max(len(raw) for raw in receiver.raw) < 4 * MIB
    if protocol == "http/protobuf":
        assert set(receiver.content_types) == {"application/x-protobuf"}
    assert len(receiver.log_requests) >= 2


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_batch_refused_for_its_size_is_split_and_a_lone_record_dead_lettered(
    receivers: list[OTLPReceiver], spooled: Any, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector with a small limit (48 KiB): batches are split until they fit; the records
    bigger than the limit on their own (every 100th, ~60 KB + framing) are dead-lettered,
    counted and kept on disk, and every other record is delivered, in order."""
    limit = 48 * 1024
    receiver = OTLPReceiver(max_receive_bytes=limit, max_http_body=limit)
    receivers.append(receiver)
    recorder, reader = spooled(receiver, protocol)
    processor = processor_of(recorder)
    sizes = [62_000 if seq % 100 == 50 else 2_000 for seq in range(700)]
    big = {seq for seq, size in enumerate(sizes) if size > 10_000}
    record_during_outage(recorder, sizes)
    with caplog.at_level(logging.WARNING, logger="otel_secaudit"):
        receiver.start()
        assert wait_for(lambda: processor.spool.depth == 0, timeout=90), processor.spool.stats
    assert seqs(receiver) == [seq for seq in range(700) if seq not in big]
    stats = processor.spool.stats
    assert stats.dead_lettered == len(big) == 7
    assert stats.exported == 700 - len(big)
    assert stats.splits > 0
    if protocol == "http/protobuf":
        assert receiver.too_large > 0  # the collector answered 413 and the batch was split
    assert metric_value(reader, "otel_secaudit.logs.dropped", **{"error.type": "dead_letter"}) == 7
    dead = [m for m in caplog.messages if "cannot be delivered" in m]
    assert len(dead) == 7 and all("dead-letter" in m for m in dead)
    # Kept on disk, private, and reported.
    spool_root = processor.spool.path.parent
    summary = dead_letter_summary(spool_root)
    assert summary.records == 7 and summary.events == {"authz.permission_denied": 7}
    [path] = summary.files
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = dead_letter_lines(spool_root)
    assert "7 security log records in the dead letter" in lines[0]


def test_partial_success_is_counted_warned_and_not_retried(
    receivers: list[OTLPReceiver], spooled: Any, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = OTLPReceiver().start()
    receivers.append(receiver)
    recorder, reader = spooled(receiver, "grpc")
    processor = processor_of(recorder)
    receiver.reject_log_records = 3
    with caplog.at_level(logging.WARNING, logger="otel_secaudit"):
        for seq in range(10):
            recorder.record("auth.login.failed", user_name=f"u{seq}", attributes={"seq": seq})
        assert recorder.delivery.flush(10_000)
    stats = processor.spool.stats
    assert stats.rejected == 3
    assert stats.exported == 7  # not counted as delivered
    rejected = {"error.type": "rejected_by_collector"}
    assert metric_value(reader, "otel_secaudit.logs.dropped", **rejected) == 3
    assert metric_value(reader, "otel_secaudit.spool.exported") == 7
    warnings = [m for m in caplog.messages if "partial success" in m]
    assert len(warnings) == 1 and "rejected 3 of 10" in warnings[0]
    assert "injected: 3 records rejected" in warnings[0]
    # No retry: the collector saw each record once, the spool is empty.
    assert len(receiver.log_requests) == 1 and processor.spool.depth == 0


def test_partial_success_over_http(receivers: list[OTLPReceiver], spooled: Any) -> None:
    receiver = OTLPReceiver().start()
    receivers.append(receiver)
    recorder, _ = spooled(receiver, "http/protobuf")
    receiver.reject_log_records = 2
    for seq in range(5):
        recorder.record("auth.login.failed", user_name=f"u{seq}", attributes={"seq": seq})
    assert recorder.delivery.flush(10_000)
    stats = processor_of(recorder).spool.stats
    assert (stats.rejected, stats.exported) == (2, 3)


def test_the_sdk_exporters_get_the_wire_senders(
    receivers: list[OTLPReceiver], spooled: Any
) -> None:
    """The private attributes wire.py uses are where it expects them (else the fallback)."""
    receiver = OTLPReceiver().start()
    receivers.append(receiver)
    for protocol, kind in (("grpc", GrpcSender), ("http/protobuf", HttpSender)):
        recorder, _ = spooled(receiver, protocol)
        sender = processor_of(recorder)._sender_of_batches
        assert isinstance(sender, FallbackSender) and isinstance(sender.primary, kind)
        recorder.close(0)


def test_any_other_exporter_goes_through_its_public_export() -> None:
    from .test_spool import FlakyExporter

    assert isinstance(log_sender(FlakyExporter()), ExporterSender)


def test_report_prints_the_dead_letter(
    receivers: list[OTLPReceiver], spooled: Any, tmp_path: Path
) -> None:
    receiver = OTLPReceiver(max_receive_bytes=16 * 1024)
    receivers.append(receiver)
    recorder, _ = spooled(receiver, "grpc")
    processor = processor_of(recorder)
    record_during_outage(recorder, [30_000, 1_000])
    receiver.start()
    assert wait_for(lambda: processor.spool.depth == 0, timeout=30)
    assert processor.spool.stats.dead_lettered == 1
    out = tmp_path / "out"
    out.mkdir()
    (out / "logs.jsonl").write_text("")
    env = {**os.environ, "OTEL_SECAUDIT_SPOOL_DIR": str(tmp_path / "spool")}
    done = subprocess.run(
        [sys.executable, "-m", "otel_secaudit.cli", "report", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    shown = done.stdout + done.stderr
    assert "1 security log records in the dead letter" in shown, shown
    assert "authz.permission_denied" in shown


def test_private_sdk_exporter_attributes_are_used_in_wire_only() -> None:
    """The one place that reaches into the SDK's exporters is delivery/wire.py."""
    import re

    package = Path(__file__).resolve().parent.parent / "otel_secaudit"
    private = re.compile(r"\bexporter\._\w+|\bclient\._\w+")
    users = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if private.search(path.read_text())
    )
    assert users == ["delivery/wire.py"]


def test_dead_letter_never_follows_a_planted_link_or_fifo(tmp_path: Path) -> None:
    from otel_secaudit.delivery import Spool
    from otel_secaudit.delivery.deadletter import DeadLetter

    spool = Spool(tmp_path / "spool")
    try:
        victim = tmp_path / "victim"
        victim.write_text("keep me")
        os.symlink(victim, spool.path / "dead-letter")
        with pytest.raises(OSError):
            DeadLetter(spool.dir_fd).add(b'{"e":"x"}', "test")
        assert victim.read_text() == "keep me"
        os.unlink(spool.path / "dead-letter")
        os.mkfifo(spool.path / "dead-letter")
        with pytest.raises(OSError):  # no reader: refused at once, never blocks
            DeadLetter(spool.dir_fd).add(b'{"e":"x"}', "test")
        assert dead_letter_summary(tmp_path / "spool").records == 0  # the report never hangs
        os.unlink(spool.path / "dead-letter")
        dead = DeadLetter(spool.dir_fd, max_bytes=300)
        assert dead.add(b'{"e":"auth.login.failed"}', "gRPC RESOURCE_EXHAUSTED", "too big")
        assert not dead.add(b'{"e":"auth.login.failed"}' + b" " * 300, "HTTP 413")  # full
        summary = dead_letter_summary(tmp_path / "spool")
        assert summary.records == 1 and summary.reasons == {"gRPC RESOURCE_EXHAUSTED": 1}
        assert stat.S_IMODE((spool.path / "dead-letter").stat().st_mode) == 0o600
    finally:
        spool.close()


def test_throttling_is_retried_never_split_or_dead_lettered(
    receivers: list[OTLPReceiver], spooled: Any
) -> None:
    """RESOURCE_EXHAUSTED that is not about the message size (a backend throttling its
    clients) is retried with backoff: no split, nothing in the dead letter."""
    import grpc

    receiver = OTLPReceiver().start()
    receivers.append(receiver)
    receiver.fail_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    receiver.fail_next = 4
    recorder, _ = spooled(receiver, "grpc")
    for seq in range(5):
        recorder.record("auth.login.failed", user_name=f"u{seq}", attributes={"seq": seq})
    assert recorder.delivery.flush(15_000)
    stats = processor_of(recorder).spool.stats
    assert receiver.refused == 4 and stats.export_failures >= 4
    assert (stats.exported, stats.splits, stats.dead_lettered) == (5, 0, 0)
    assert seqs(receiver) == list(range(5))


def test_a_spooled_record_that_cannot_be_encoded_is_dead_lettered_not_retried_forever(
    receivers: list[OTLPReceiver], spooled: Any
) -> None:
    """A record spooled by an older version with a lone surrogate in its body: the OTLP
    encoder raises on it, so before, the batch failed forever and everything behind it
    waited."""
    import json

    receiver = OTLPReceiver().start()
    receivers.append(receiver)
    recorder, _ = spooled(receiver, "grpc")
    processor = processor_of(recorder)
    bad = {
        "t": 1, "o": 1, "ti": 0, "si": 0, "tf": 0, "sn": 13, "st": "WARN",
        "b": "from an older version \ud800", "a": {"seq": -1, LOG_RECORD_UID: "old-1"},
        "e": "auth.login.failed", "sc": ["otel_secaudit", "0.1"],
    }  # fmt: skip
    assert processor.spool.append(json.dumps(bad).encode())
    for seq in range(5):
        recorder.record("auth.login.failed", user_name=f"u{seq}", attributes={"seq": seq})
    assert recorder.delivery.flush(15_000)
    stats = processor.spool.stats
    assert (stats.dead_lettered, stats.exported) == (1, 5)
    assert seqs(receiver) == list(range(5))
    summary = dead_letter_summary(processor.spool.path.parent)
    assert summary.reasons == {"cannot be encoded": 1}
