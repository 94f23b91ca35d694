"""Durable delivery, measured in one run: what the spool costs, and what it saves.

1. Throughput of ``record()`` with and without the spool (``OTEL_SECAUDIT_SPOOL_DIR``). Both
   arms export over real OTLP/gRPC to an in-process receiver on loopback (``harness``):
   ``plain`` = the usual SDK pipeline (BatchLogRecordProcessor + OTLPLogExporter);
   ``spool`` = the spool (framed write() per record, fsync batching, sender thread with its own
   OTLPLogExporter). Arms are interleaved in small blocks (A B B A ...); the result is the
   median of per-pair time ratios, beside an A/A run (plain vs plain) showing the noise floor.
   Target: spool / plain <= 2.

2. Receiver outage: both pipelines record the same events at 500/s for ~40 s; the receiver is
   down for 30 s in the middle. Sent vs received (after dedup on ``log.record.uid`` for the
   spool); for the plain SDK pipeline, the drops counted through public API: the SDK's own
   ``otel.sdk.processor.log.processed{error.type=queue_full}`` and otel_secaudit's
   ``otel_secaudit.logs.dropped{error.type=export_failed}`` (DropCountingLogExporter around the
   pipeline's exporter). Target: 0 records lost with the spool.

Run from the repository root: ``python -m benchmarks.durability [--blocks 30] [--block-size 400]
[--outage 30]`` (about 1-2 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from harness import OTLPReceiver
from otel_secaudit import SecurityRecorder, Settings
from otel_secaudit.delivery import LOG_RECORD_UID, METRIC_LOGS_DROPPED, DropCountingLogExporter

# The SDK's processor self-metrics (queue_full drops) are read from this variable when a
# processor is created.
os.environ.setdefault("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
_DROP_METRICS = ("otel.sdk.processor.log.processed", METRIC_LOGS_DROPPED)


@dataclass
class Plain:
    """The usual SDK pipeline and where its drops are counted."""

    recorder: SecurityRecorder
    provider: LoggerProvider
    reader: InMemoryMetricReader

    def drops(self) -> dict[str, float]:
        """Records lost by reason, from the SDK's and otel_secaudit's counters."""
        found: dict[str, float] = {}
        data = self.reader.get_metrics_data()
        metrics = [
            metric
            for rm in (data.resource_metrics if data else ())
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name in _DROP_METRICS
        ]
        for metric in metrics:
            for point in metric.data.data_points:
                reason = point.attributes.get("error.type")
                if reason:
                    found[str(reason)] = found.get(str(reason), 0) + point.value
        return found


def plain_recorder(endpoint: str, max_queue_size: int | None = None) -> Plain:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    exporter = DropCountingLogExporter(
        OTLPLogExporter(endpoint=endpoint, insecure=True), meter_provider=meter_provider
    )
    provider = LoggerProvider()
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            exporter, max_queue_size=max_queue_size, meter_provider=meter_provider
        )
    )
    recorder = SecurityRecorder(
        Settings.load(environ={}), logger_provider=provider, meter_provider=meter_provider
    )
    return Plain(recorder, provider, reader)


def spool_recorder(endpoint: str, directory: str) -> SecurityRecorder:
    # Wired exactly as in production: OTEL_SECAUDIT_SPOOL_DIR + OTEL_EXPORTER_OTLP_*.
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    return SecurityRecorder(
        Settings.load(environ={}, spool_dir=directory),
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
    )


def one_event(recorder: SecurityRecorder, i: int) -> None:
    recorder.record(
        "auth.login.failed",
        user_name=f"user{i % 100}",
        client_address="203.0.113.7",
        reason="invalid_credentials",
        attributes={"seq": i},
    )


def timed_block(recorder: SecurityRecorder, size: int, start: int) -> float:
    began = time.perf_counter()
    for i in range(start, start + size):
        one_event(recorder, i)
    return time.perf_counter() - began


def interleaved(a: SecurityRecorder, b: SecurityRecorder, blocks: int, size: int) -> list[float]:
    """Per-pair ratios b/a over blocks run in the order A B B A A B B A ..."""
    ratios = []
    counter = 0
    for pair in range(blocks):
        order = (a, b) if pair % 2 == 0 else (b, a)
        times = {}
        for recorder in order:
            times[id(recorder)] = timed_block(recorder, size, counter)
            counter += size
        ratios.append(times[id(b)] / times[id(a)])
    return ratios


def throughput(args: argparse.Namespace, receiver: OTLPReceiver, spool_dir: str) -> float:
    # A queue that never overflows: with the default (2048) the plain arm drops records at
    # full speed and so skips their export work, which would flatter it.
    first = plain_recorder(receiver.grpc_endpoint, max_queue_size=1_000_000)
    second = plain_recorder(receiver.grpc_endpoint, max_queue_size=1_000_000)
    plain, plain2 = first.recorder, second.recorder
    spooled = spool_recorder(receiver.grpc_endpoint, spool_dir)
    for recorder in (plain, plain2, spooled):  # warm-up
        timed_block(recorder, args.block_size, 0)
    spool_ratios = interleaved(plain, spooled, args.blocks, args.block_size)
    aa_ratios = interleaved(plain, plain2, args.blocks, args.block_size)
    per_record = {
        name: statistics.median(
            timed_block(recorder, args.block_size, 0) / args.block_size for _ in range(5)
        )
        for name, recorder in (("plain", plain), ("spool", spooled))
    }
    spool_ratio = statistics.median(spool_ratios)
    print("== record() throughput (median of per-pair ratios, interleaved blocks)")
    print(f"   blocks={args.blocks} x {args.block_size} records per arm")
    for name, seconds in per_record.items():
        print(f"   {name:<6} {seconds * 1e6:7.1f} us/record  {1 / seconds:9.0f} records/s")
    print(
        f"   spool / plain  ratio = {spool_ratio:.2f}  (target <= 2.0)"
        f"  [p25 {statistics.quantiles(spool_ratios, n=4)[0]:.2f},"
        f" p75 {statistics.quantiles(spool_ratios, n=4)[2]:.2f}]"
    )
    print(f"   plain / plain  ratio = {statistics.median(aa_ratios):.2f}  (A/A noise floor)")
    print(
        f"   plain arm drops counted: {sum(first.drops().values()):.0f}; "
        f"spool refused: {spooled.delivery.spool.spool.stats.refused}"
    )
    processor = spooled.delivery.spool
    assert processor is not None
    processor.force_flush(60_000)
    spooled.close(10_000)
    first.provider.shutdown()
    second.provider.shutdown()
    return spool_ratio


def outage(args: argparse.Namespace, spool_dir: str) -> tuple[int, int]:
    receiver = OTLPReceiver().start()
    plain_arm = plain_recorder(receiver.grpc_endpoint)
    plain, plain_provider = plain_arm.recorder, plain_arm.provider
    spooled = spool_recorder(receiver.grpc_endpoint, spool_dir)
    processor = spooled.delivery.spool
    assert processor is not None
    rate, lead = 500.0, 5.0
    duration = args.outage + 2 * lead
    total = int(rate * duration)
    print(
        f"\n== receiver outage: {rate:.0f} records/s for {duration:.0f} s, "
        f"receiver down from t={lead:.0f}s for {args.outage:.0f} s"
    )
    started = time.monotonic()
    down = False
    max_depth = 0
    for i in range(total):
        elapsed = time.monotonic() - started
        if not down and lead <= elapsed < lead + args.outage:
            receiver.stop()
            down = True
        elif down and elapsed >= lead + args.outage:
            receiver.start()
            down = False
        one_event(spooled, i)
        one_event(plain, i)
        max_depth = max(max_depth, processor.spool.depth)
        delay = started + (i + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    if down:
        receiver.start()
    drained_at = time.monotonic()
    processor.force_flush(120_000)
    drain = time.monotonic() - drained_at
    plain_provider.force_flush(30_000)
    plain_provider.shutdown()

    spool_uids: set[str] = set()
    spool_copies = 0
    plain_received = 0
    for log in receiver.logs():
        uid = log.attributes.get(LOG_RECORD_UID)
        if uid is None:
            plain_received += 1
        else:
            spool_copies += 1
            spool_uids.add(str(uid))
    seqs = {
        int(log.attributes["seq"]) for log in receiver.logs() if LOG_RECORD_UID in log.attributes
    }
    lost = total - len(seqs)
    dropped = plain_arm.drops()
    print(
        f"   spool : sent {total}, received {spool_copies} ({len(spool_uids)} after dedup on "
        f"{LOG_RECORD_UID}), lost {lost}; max depth {max_depth}; drained {drain:.1f} s "
        f"after the outage; refused {processor.spool.stats.refused}"
    )
    print(
        f"   plain : sent {total}, received {plain_received}, lost {total - plain_received}; "
        f"counted as dropped (SDK queue_full + otel_secaudit export_failed): {dropped} "
        f"(sum {sum(dropped.values()):.0f})"
    )
    print(f"   target: 0 lost with the spool -> {'OK' if lost == 0 else 'MISSED'}")
    spooled.close(5_000)
    receiver.stop()
    return total, lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--block-size", type=int, default=400)
    parser.add_argument("--outage", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        receiver = OTLPReceiver().start()
        try:
            ratio = throughput(args, receiver, os.path.join(tmp, "throughput"))
        finally:
            receiver.stop()
        _, lost = outage(args, os.path.join(tmp, "outage"))
    return 0 if ratio <= 2.0 and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
