"""Cost of ``record()`` against the bare SDK calls it makes, measured in one run.

Arms (same process, same SDK pipeline: BatchLogRecordProcessor and BatchSpanProcessor with
exporters that discard, a MeterProvider with an in-memory reader):

* ``record``: ``SecurityRecorder.record(...)`` with a typical failed-login call;
* ``bare``: the SDK calls it ends up making, with the same (pre-built) attributes: one
  ``logger.emit``, one ``span.add_event`` and the counter ``add`` calls (two for a violation:
  ``security.events`` and ``security.violations``; one for a success).

The arms run interleaved in small blocks (A B B A ...); the result is the median of per-pair
ratios, printed beside an A/A run (bare vs bare) that shows the noise floor of this machine.
Target (issue 2): ratio <= 1.2. The ``bare`` arm is the hand-written SDK path (two synchronous
counters); ``record()`` counts ``security.events`` through an in-process tally read by an
asynchronous counter, so it can cost less than that path. A breakdown for the violation case
prints each SDK call timed alone and otel_secaudit's own share (``record`` minus the SDK calls
the contract needs: log record, span event, one counter add).

Run: ``python -m benchmarks.record [--blocks 40] [--block-size 500]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from otel_secaudit import SecurityRecorder, Settings


class DiscardLogs(LogRecordExporter):
    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class DiscardSpans(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def build() -> tuple[SecurityRecorder, Any, Any]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DiscardSpans(), max_queue_size=100_000))
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(DiscardLogs(), max_queue_size=100_000)
    )
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    recorder = SecurityRecorder(
        Settings.load(environ={}),
        logger_provider=logger_provider,
        meter_provider=meter_provider,
    )
    return recorder, tracer_provider.get_tracer("bench"), (logger_provider, meter_provider)


def capture_attributes(recorder: SecurityRecorder, call: Callable[[], None]) -> dict[str, Any]:
    """The attributes ``record()`` produces for ``call``, to feed the bare arm the same ones."""
    captured: dict[str, Any] = {}

    class Capture:
        def emit(self, **kwargs: Any) -> None:
            captured.update(kwargs["attributes"])

    real, recorder._logger = recorder._logger, Capture()
    try:
        call()
    finally:
        recorder._logger = real
    return captured


def make_arms(recorder: SecurityRecorder, violation: bool) -> dict[str, Callable[[], None]]:
    if violation:
        name = "auth.login.failed"
        kwargs: dict[str, Any] = dict(
            user_name="alice@example.com",
            client_address="203.0.113.9",
            user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
            reason="invalid_credentials",
        )
    else:
        name = "data.exported"
        kwargs = dict(user_id="u-42", resource_type="report", resource_id="r-7", action="export")
    spec_attrs = capture_attributes(recorder, lambda: recorder.record(name, **kwargs))
    logger = recorder._logger  # the real SDK logger
    # The hand-written SDK path counts both contract metrics with synchronous counters.
    events_counter = recorder.meter.create_counter("bare.security.events", unit="{event}")
    violations_counter = recorder._violations
    from otel_secaudit.events import CATALOGUE

    spec = CATALOGUE[name]
    event_attrs = {"security.event.name": name, "security.event.outcome": spec.outcome}
    violation_attrs = {"security.event.name": name, "security.event.category": spec.category}
    number = spec.severity_number

    def bare() -> None:
        now = time.time_ns()
        span = trace.get_current_span()
        logger.emit(
            timestamp=now,
            observed_timestamp=now,
            severity_number=number,
            severity_text=number.name,
            attributes=spec_attrs,
            event_name=name,
        )
        span.add_event(name, spec_attrs, timestamp=now)
        events_counter.add(1, event_attrs)
        if violation:
            violations_counter.add(1, violation_attrs)

    def recorded() -> None:
        recorder.record(name, **kwargs)

    # The bare path's parts, one SDK call each (for the breakdown of where the time goes).
    def log_record() -> None:
        now = time.time_ns()
        logger.emit(
            timestamp=now,
            observed_timestamp=now,
            severity_number=number,
            severity_text=number.name,
            attributes=spec_attrs,
            event_name=name,
        )

    def span_event() -> None:
        trace.get_current_span().add_event(name, spec_attrs, timestamp=time.time_ns())

    def violations_add() -> None:
        violations_counter.add(1, violation_attrs)

    def events_add() -> None:
        events_counter.add(1, event_attrs)

    return {
        "record": recorded,
        "bare": bare,
        "SDK log record": log_record,
        "SDK span event": span_event,
        "SDK counter add (security.violations)": violations_add,
        "SDK counter add (a second one)": events_add,
    }


def breakdown(tracer: Any, arms: dict[str, Callable[[], None]], blocks: int, size: int) -> None:
    """Where the microseconds of one violation go: each SDK call the contract needs, timed
    alone (medians of interleaved blocks), and otel_secaudit's own share as what is left."""
    parts = [label for label in arms if label.startswith("SDK")]
    times: dict[str, list[float]] = {label: [] for label in ["record", *parts]}
    for index in range(blocks):
        order = list(times) if index % 2 == 0 else list(reversed(times))
        for label in order:
            times[label].append(time_block(tracer, arms[label], size))
    median = {label: statistics.median(values) * 1e6 for label, values in times.items()}
    needed = sum(v for k, v in median.items() if k.startswith("SDK") and "second" not in k)
    print("where one violation's time goes (µs, medians of interleaved blocks):")
    for label in parts:
        print(f"  {label:<40}{median[label]:>8.2f}")
    print(f"  {'record() in all':<40}{median['record']:>8.2f}")
    own = median["record"] - needed
    print(f"  {'otel_secaudit own code (record - SDK)':<40}{own:>8.2f}")


def time_block(tracer: Any, call: Callable[[], None], size: int) -> float:
    """Seconds per call for ``size`` calls, in spans of 50 events (below the SDK's limit)."""
    start = time.perf_counter()
    done = 0
    while done < size:
        with tracer.start_as_current_span("request"):
            for _ in range(50):
                call()
        done += 50
    return (time.perf_counter() - start) / done


def interleaved(
    tracer: Any, first: Callable[[], None], second: Callable[[], None], blocks: int, size: int
) -> tuple[float, float, float]:
    """Median per-call seconds of each arm and the median of per-pair ratios (first/second)."""
    a_times, b_times, ratios = [], [], []
    for index in range(blocks):
        order = (first, second) if index % 2 == 0 else (second, first)  # A B, B A, ...
        timings = {}
        for call in order:
            timings[call] = time_block(tracer, call, size)
        a_times.append(timings[first])
        b_times.append(timings[second])
        ratios.append(timings[first] / timings[second])
    return statistics.median(a_times), statistics.median(b_times), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--block-size", type=int, default=500)
    args = parser.parse_args()
    recorder, tracer, providers = build()
    print(f"{'case':<28}{'record µs':>11}{'bare µs':>10}{'ratio':>8}{'A/A ratio':>11}  target")
    cases = (("violation (auth.login.failed)", True), ("success (data.exported)", False))
    blocks, size = args.blocks, args.block_size
    for label, violation in cases:
        arms = make_arms(recorder, violation)
        for _ in range(3):  # warm-up
            time_block(tracer, arms["record"], 200)
            time_block(tracer, arms["bare"], 200)
        rec, bare, ratio = interleaved(tracer, arms["record"], arms["bare"], blocks, size)
        _, _, noise = interleaved(tracer, arms["bare"], arms["bare"], blocks, size)
        verdict = "ok" if ratio <= 1.2 else "MISSED"
        print(
            f"{label:<28}{rec * 1e6:>11.2f}{bare * 1e6:>10.2f}{ratio:>8.3f}{noise:>11.3f}"
            f"  <=1.2 {verdict}"
        )
        if violation:
            breakdown(tracer, arms, blocks // 2, size)
    for provider in providers:
        provider.shutdown()


if __name__ == "__main__":
    main()
