"""SecAuditSpanProcessor: a span's violations reach abuse detection when the span ends; every
violation without such a span (none, unsampled, another provider, a long-lived span) reaches
it directly; each exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import otel_secaudit
from otel_secaudit import SecAuditSpanProcessor
from otel_secaudit.detection import disable_detection, enable_detection
from otel_secaudit.detection.processor import processor_for

ADDRESS = "203.0.113.7"


def abuse_hosts(sdk: Any) -> list[Any]:
    return [r.log_record for r in sdk.logs() if r.log_record.event_name == "abuse.host"]


@contextmanager
def _detecting(sdk: Any, processor: SecAuditSpanProcessor | None = None) -> Iterator[Any]:
    """Detection on for the block (``processor`` added to the SDK's tracer provider first)."""
    if processor is not None:
        sdk.tracer_provider.add_span_processor(processor)
    detector = enable_detection(sdk.recorder)
    try:
        yield detector
    finally:
        disable_detection(sdk.recorder, detector)


@pytest.fixture
def wired(make_sdk: Any) -> Any:
    """An SDK whose tracer provider a user wired by hand, processor included, and detection."""
    sdk = make_sdk(host_threshold=3, user_threshold=100)
    processor = SecAuditSpanProcessor()
    sdk.tracer_provider.add_span_processor(processor)
    sdk.processor = processor
    sdk.detector = enable_detection(sdk.recorder)
    yield sdk
    disable_detection(sdk.recorder, sdk.detector)


def test_violations_are_counted_when_their_span_ends(wired: Any) -> None:
    sdk = wired
    trace_ids = []
    for i in range(3):
        with sdk.tracer.start_as_current_span(f"POST /login {i}") as span:
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS, user_id="u1")
            # marked on the open span, not counted yet
            assert sdk.detector.stats["processed"] == i
            assert sdk.processor.pending == 1
            trace_ids.append(format(span.get_span_context().trace_id, "032x"))
        assert sdk.detector.stats["processed"] == i + 1
    assert sdk.processor.pending == 0
    [record] = abuse_hosts(sdk)
    assert record.attributes["security.abuse.count"] == 3
    # the evidence is the trace of each violation's span
    assert list(record.attributes["security.abuse.trace_ids"]) == trace_ids
    assert format(record.trace_id, "032x") == trace_ids[-1]


def test_several_violations_on_one_span_and_a_child_span(wired: Any) -> None:
    sdk = wired
    with sdk.tracer.start_as_current_span("request"):
        otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
        with sdk.tracer.start_as_current_span("child"):
            otel_secaudit.record("authz.permission_denied", client_address=ADDRESS)
        assert sdk.detector.stats["processed"] == 1  # the child ended: its violation counted
        otel_secaudit.record("auth.mfa.failed", client_address=ADDRESS)
        assert sdk.detector.stats["processed"] == 1
    assert sdk.detector.stats["processed"] == 3
    [record] = abuse_hosts(sdk)
    assert record.body == {
        "auth.login.failed": 1,
        "authz.permission_denied": 1,
        "auth.mfa.failed": 1,
    }


def test_no_span_unsampled_and_foreign_provider_go_to_the_detector_at_once(
    make_sdk: Any,
) -> None:
    sdk = make_sdk(host_threshold=100)
    processor = SecAuditSpanProcessor()
    sdk.tracer_provider.add_span_processor(processor)
    detector = enable_detection(sdk.recorder)
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    unsampled.add_span_processor(SecAuditSpanProcessor())
    foreign = TracerProvider()  # no SecAuditSpanProcessor: its spans never end at ours
    try:
        otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
        assert detector.stats["processed"] == 1
        with unsampled.get_tracer("t").start_as_current_span("unsampled") as span:
            assert not span.is_recording()
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            assert detector.stats["processed"] == 2
        with foreign.get_tracer("t").start_as_current_span("foreign") as span:
            assert span.is_recording()
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            assert detector.stats["processed"] == 3
        assert processor.pending == 0
        # and after all those spans ended, still three: nothing counted twice
        with sdk.tracer.start_as_current_span("own"):
            pass
        assert detector.stats["processed"] == 3
        logged = [r for r in sdk.logs() if r.log_record.event_name == "auth.login.failed"]
        assert len(logged) == 3
    finally:
        disable_detection(sdk.recorder, detector)
        unsampled.shutdown()
        foreign.shutdown()


def test_two_providers_each_with_a_processor_count_each_violation_once(make_sdk: Any) -> None:
    sdk = make_sdk(host_threshold=4)
    sdk.tracer_provider.add_span_processor(SecAuditSpanProcessor())
    second = TracerProvider()
    second_exporter = InMemorySpanExporter()
    second.add_span_processor(SimpleSpanProcessor(second_exporter))
    second.add_span_processor(SecAuditSpanProcessor())
    with _detecting(sdk) as detector:
        for tracer in (sdk.tracer, second.get_tracer("t"), sdk.tracer, second.get_tracer("t")):
            with tracer.start_as_current_span("request"):
                otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            otel_secaudit.record("authz.permission_denied", client_address="192.0.2.1")
        assert detector.stats["processed"] == 8
        [record] = [r for r in abuse_hosts(sdk) if r.attributes["security.abuse.key"] == ADDRESS]
        assert record.attributes["security.abuse.count"] == 4
        evidence = {format(s.context.trace_id, "032x") for s in sdk.spans()}
        second_spans = second_exporter.get_finished_spans()
        evidence |= {format(s.context.trace_id, "032x") for s in second_spans}
        assert set(record.attributes["security.abuse.trace_ids"]) == evidence
        second.shutdown()


def test_span_events_off_still_held_and_counted_once(make_sdk: Any) -> None:
    sdk = make_sdk(span_events=False, host_threshold=2)
    processor = SecAuditSpanProcessor()
    with _detecting(sdk, processor) as detector:
        with sdk.tracer.start_as_current_span("request"):
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            assert detector.stats["processed"] == 0
        assert detector.stats["processed"] == 2
        assert len(abuse_hosts(sdk)) == 1
        [span] = sdk.spans()
        assert list(span.events) == []  # the mark is not a span event


def test_long_lived_spans_hand_off_without_waiting_for_the_end(make_sdk: Any) -> None:
    """A WebSocket's server span lives as long as the connection: detection must not wait."""
    sdk = make_sdk(host_threshold=100)
    processor = SecAuditSpanProcessor(long_span_seconds=0.2)
    with _detecting(sdk, processor) as detector:
        with sdk.tracer.start_as_current_span("websocket"):
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            assert detector.stats["processed"] == 0  # young span: held
            time.sleep(0.3)
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            # old span: this one at once, and the sweep it triggered released the first
            assert detector.stats["processed"] == 2
            assert processor.pending == 0
        assert detector.stats["processed"] == 2


def test_force_flush_and_shutdown_release_marks_once(make_sdk: Any) -> None:
    sdk = make_sdk(host_threshold=100)
    processor = SecAuditSpanProcessor()
    with _detecting(sdk, processor) as detector:
        with sdk.tracer.start_as_current_span("request"):
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            sdk.tracer_provider.force_flush()
            assert detector.stats["processed"] == 1
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            processor.shutdown()
            assert detector.stats["processed"] == 2
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)  # not held now
            assert detector.stats["processed"] == 3
        assert detector.stats["processed"] == 3
        assert processor_for(sdk.tracer_provider) is None


def test_bounded_marks_overflow_to_the_detector(make_sdk: Any) -> None:
    sdk = make_sdk(host_threshold=1000)
    processor = SecAuditSpanProcessor(max_pending=3)
    with _detecting(sdk, processor) as detector:
        spans = [sdk.tracer.start_span(f"s{i}") for i in range(5)]
        from opentelemetry import trace

        for span in spans:
            with trace.use_span(span, end_on_exit=False):
                otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
        assert processor.pending == 3
        assert detector.stats["processed"] == 2
        for span in spans:
            span.end()
        assert detector.stats["processed"] == 5


def test_concurrent_spans_count_every_violation_exactly_once(make_sdk: Any) -> None:
    sdk = make_sdk(host_threshold=10_000, user_threshold=10_000)
    sdk.tracer_provider.add_span_processor(SecAuditSpanProcessor())
    detector = enable_detection(sdk.recorder)
    threads, per_thread = 8, 200

    def work(n: int) -> None:
        for i in range(per_thread):
            with sdk.tracer.start_as_current_span(f"t{n}-{i}"):
                otel_secaudit.record("auth.login.failed", client_address=f"198.51.100.{n}")

    try:
        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert detector.stats["processed"] == threads * per_thread
    finally:
        disable_detection(sdk.recorder, detector)


def test_a_broken_sink_never_breaks_span_end(make_sdk: Any) -> None:
    sdk = make_sdk()
    sdk.tracer_provider.add_span_processor(SecAuditSpanProcessor())
    calls = []

    def broken(violation: Any) -> None:
        calls.append(violation)
        raise RuntimeError("sink bug")

    sdk.recorder.violation_sink = broken
    with sdk.tracer.start_as_current_span("request"):
        otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
    assert len(calls) == 1
    assert len(sdk.spans()) == 1


def test_instrumentor_adds_the_processor_to_the_provider_it_is_given(make_sdk: Any) -> None:
    from otel_secaudit import SecAuditInstrumentor, runtime

    sdk = make_sdk()
    instrumentor = SecAuditInstrumentor()
    instrumentor.instrument(
        tracer_provider=sdk.tracer_provider,
        logger_provider=sdk.logger_provider,
        meter_provider=sdk.meter_provider,
        host_threshold=2,
    )
    try:
        processor = processor_for(sdk.tracer_provider)
        assert isinstance(processor, SecAuditSpanProcessor)
        detector = runtime.current().detector
        assert detector is not None
        with sdk.tracer.start_as_current_span("request"):
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            otel_secaudit.record("auth.login.failed", client_address=ADDRESS)
            assert detector.stats["processed"] == 0
        assert detector.stats["processed"] == 2
        assert len(abuse_hosts(sdk)) == 1
        # instrumenting again does not add a second processor (each violation once)
        instrumentor.uninstrument()
        instrumentor.instrument(tracer_provider=sdk.tracer_provider, host_threshold=2)
        assert processor_for(sdk.tracer_provider) is processor
    finally:
        instrumentor.uninstrument()
