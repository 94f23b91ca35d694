"""The one process-wide runtime: built, replaced, flushed and closed as a unit (issue 15)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, InMemoryLogRecordExporter

import otel_secaudit
from otel_secaudit import SecurityRecorder, Settings, runtime

from .conftest import SDK


def abuse_hosts(sdk: SDK) -> list[Any]:
    return [log for log in sdk.logs() if log.log_record.event_name == "abuse.host"]


@pytest.fixture
def detecting(sdk: SDK) -> Iterator[SDK]:
    """``sdk`` as the process-wide runtime, with abuse detection on (as instrument() does)."""
    previous = runtime.swap(
        runtime.build(
            recorder=sdk.recorder,
            tracer_provider=sdk.tracer_provider,
            meter_provider=sdk.meter_provider,
            logger_provider=sdk.logger_provider,
        )
    )
    yield sdk
    current = runtime.swap(previous)
    if current is not None:
        current.close()


def test_configure_rebuilds_the_detector_from_the_new_settings(detecting: SDK) -> None:
    old = runtime.current()
    assert old.detector is not None and old.settings.host_threshold == 10
    recorder = otel_secaudit.configure(host_threshold=2)
    new = runtime.current()
    assert new.recorder is recorder and new.detector is not None
    assert new.detector is not old.detector
    assert old.detector is None  # closed: the old detector was shut down with its runtime
    # The new threshold is the one that counts, and abuse.host goes out through the new
    # recorder, on the same (application's) providers.
    for _ in range(2):
        otel_secaudit.record("auth.unauthenticated", client_address="192.0.2.44")
    assert new.detector.flush(5)
    (event,) = abuse_hosts(detecting)
    assert event.log_record.attributes["security.abuse.threshold"] == 2
    assert recorder.stats.snapshot()["recorded"] == 3  # 2 violations + abuse.host


def test_configure_with_a_bad_value_keeps_the_running_runtime(detecting: SDK) -> None:
    before = runtime.current()
    with pytest.raises(otel_secaudit.ConfigError):
        otel_secaudit.configure(host_threshold=0)
    assert runtime.current() is before and before.detector is not None


def test_install_closes_the_previous_runtime(tmp_path: Any, sdk: SDK) -> None:
    # A spooling runtime with detection (global providers: the spool has its own pipeline).
    before = {t for t in threading.enumerate()}
    spooled = runtime.build(
        Settings.load(environ={}, spool_dir=str(tmp_path / "spool")),
        tracer_provider=sdk.tracer_provider,
    )
    previous = runtime.swap(spooled)
    try:
        assert spooled.recorder.delivery.spool is not None and spooled.detector is not None
        started = {t for t in threading.enumerate()} - before
        assert any("spool" in t.name for t in started), started
        runtime.install(runtime.build(recorder=sdk.recorder, detection=False))
        for thread in started:
            thread.join(5)
        alive = {t.name for t in started if t.is_alive()}
        assert not alive, f"threads of the replaced runtime still run: {alive}"
        assert spooled.detector is None
    finally:
        runtime.swap(previous)


def test_flush_delivers_queued_records_and_pending_abuse(make_sdk: Any) -> None:
    # A batch processor that would wait a minute: flush() must push the records out now.
    sdk = make_sdk(host_threshold=3)
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, schedule_delay_millis=60_000)
    )
    recorder = SecurityRecorder(
        Settings.load(environ={}, host_threshold=3),
        logger_provider=provider,
        meter_provider=sdk.meter_provider,
    )
    rt = runtime.build(
        recorder=recorder,
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
        logger_provider=provider,
    )
    previous = runtime.swap(rt)
    try:
        for _ in range(3):
            otel_secaudit.record("auth.login.failed", user_name="bob", client_address="192.0.2.7")
        assert exporter.get_finished_logs() == ()
        assert rt.flush(10_000)
        names = [log.log_record.event_name for log in exporter.get_finished_logs()]
        assert names.count("auth.login.failed") == 3
        assert "abuse.host" in names
    finally:
        runtime.swap(previous)
        rt.close()
        provider.shutdown()


class _BrokenProvider:
    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        raise RuntimeError("exporter on fire")


def test_flush_and_close_never_raise(sdk: SDK) -> None:
    rt = runtime.build(recorder=sdk.recorder, tracer_provider=_BrokenProvider(), detection=False)
    assert rt.flush(1000) is False
    errors = sdk.recorder.stats.snapshot()["internal_errors"]
    assert errors.get("flush:RuntimeError") == 1
    rt.close()
    rt.close()  # idempotent


def test_current_builds_lazily_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SECAUDIT_USER_THRESHOLD", "7")
    previous = runtime.swap(None)
    try:
        built = runtime.current()
        assert built.settings.user_threshold == 7
        assert built.detector is None  # detection starts with the instrumentor or configure
        assert runtime.current() is built
    finally:
        runtime.swap(previous)
        built.close()


def test_instrument_builds_no_throwaway_runtime(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a fresh process under opentelemetry-instrument no runtime exists yet: instrument()
    # builds exactly one (with its spool worker directory), not one from the environment first.
    from otel_secaudit.web.instrumentor import SecAuditInstrumentor

    spool_dir = tmp_path / "spool"
    monkeypatch.setenv("OTEL_SECAUDIT_SPOOL_DIR", str(spool_dir))
    previous = runtime.swap(None)
    instrumentor = SecAuditInstrumentor()
    try:
        instrumentor.instrument()
        assert sorted(p.name for p in spool_dir.iterdir()) == ["worker-0"]
        assert runtime.current().detector is not None
    finally:
        instrumentor.uninstrument()
        current = runtime.swap(previous)
        if current is not None:
            current.close()
