"""The ``otlp_json_dir`` exporters (README: "The incident report"): zero-code under
``opentelemetry-instrument`` without a collector, read back by ``otel-secaudit report``."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otel_secaudit import attributes as attr
from otel_secaudit.demo.report import load, summarize, timeline
from otel_secaudit.exporters import (
    AppendOnlyLines,
    OTLPJsonDirLogExporter,
    OTLPJsonDirMetricExporter,
    OTLPJsonDirSpanExporter,
    export_dir,
)

ROOT = Path(__file__).resolve().parent.parent
APP = textwrap.dedent(
    """
    from opentelemetry import trace

    import otel_secaudit

    tracer = trace.get_tracer("zero-code-test")
    for attempt in range(3):
        with tracer.start_as_current_span("POST /auth/login") as span:
            otel_secaudit.record(
                "auth.login.failed", user_name="mallory", client_address="203.0.113.9",
                reason="invalid_credentials",
            )
            if attempt == 0:
                print(format(span.get_span_context().trace_id, "032x"), flush=True)
    otel_secaudit.record("auth.login.succeeded", user_id="u-1", client_address="192.0.2.1")
    """
)


def _clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def test_opentelemetry_instrument_writes_what_the_report_reads(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    (tmp_path / "app.py").write_text(APP)
    process = subprocess.run(
        ["opentelemetry-instrument", sys.executable, "app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_environment(
            OTEL_TRACES_EXPORTER="otlp_json_dir",
            OTEL_LOGS_EXPORTER="otlp_json_dir",
            OTEL_METRICS_EXPORTER="otlp_json_dir",
            OTEL_SECAUDIT_EXPORT_DIR=str(out),
            OTEL_SERVICE_NAME="zero-code-test",
            # Abuse detection is not what this test is about.
            OTEL_SECAUDIT_HOST_THRESHOLD="1000",
            OTEL_SECAUDIT_USER_THRESHOLD="1000",
        ),
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["logs.jsonl", "metrics.jsonl", "traces.jsonl"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "logs.jsonl").stat().st_mode) == 0o600

    recording = load(out, strict=True)
    summary = summarize(recording)
    assert summary.events == {"auth.login.failed": 3, "auth.login.succeeded": 1}
    assert summary.violations == 3 and summary.top_addresses[0] == ("203.0.113.9", 3)
    counted = {a[attr.EVENT_NAME]: v for a, v in summary.counters[attr.METRIC_EVENTS]}
    assert counted == {"auth.login.failed": 3, "auth.login.succeeded": 1}  # metrics at exit
    trace_id = process.stdout.split()[0]
    kinds = {(row.kind, row.name) for row in timeline(recording, trace_id)}
    assert ("span start", "POST /auth/login") in kinds
    assert ("span event", "auth.login.failed") in kinds
    assert any(kind.startswith("log") and name == "auth.login.failed" for kind, name in kinds)

    report = subprocess.run(
        [sys.executable, "-m", "otel_secaudit.cli", "report", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_environment(),
    )
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["events"]["auth.login.failed"] == 3


def test_entry_points_are_registered() -> None:
    from importlib.metadata import entry_points

    for group, cls in (
        ("opentelemetry_traces_exporter", OTLPJsonDirSpanExporter),
        ("opentelemetry_logs_exporter", OTLPJsonDirLogExporter),
        ("opentelemetry_metrics_exporter", OTLPJsonDirMetricExporter),
    ):
        (point,) = [e for e in entry_points(group=group) if e.name == "otlp_json_dir"]
        assert point.load() is cls


def test_export_dir_argument_then_environment_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SECAUDIT_EXPORT_DIR", raising=False)
    assert export_dir() == Path("otel-secaudit-output")
    monkeypatch.setenv("OTEL_SECAUDIT_EXPORT_DIR", str(tmp_path / "env"))
    assert export_dir() == tmp_path / "env"
    assert export_dir(tmp_path / "arg") == tmp_path / "arg"
    OTLPJsonDirSpanExporter().shutdown()
    assert (tmp_path / "env" / "traces.jsonl").exists()


def test_a_symlinked_file_is_refused(tmp_path: Path) -> None:
    """Another local user's link must not make the app append telemetry to the link's target."""
    target = tmp_path / "victim"
    target.write_text("keep\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "logs.jsonl").symlink_to(target)
    with pytest.raises(OSError):
        OTLPJsonDirLogExporter(tmp_path / "out")
    assert target.read_text() == "keep\n"


def _append_lines(path: str, worker: int, count: int) -> None:
    stream = AppendOnlyLines(Path(path))
    payload = str(worker) * 200_000  # far beyond any stdio buffer
    for number in range(count):
        stream.write(json.dumps({"worker": worker, "n": number, "payload": payload}) + "\n")
    stream.close()


def test_concurrent_processes_never_tear_a_line(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_append_lines, args=(str(path), worker, 20)) for worker in range(4)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 80
    seen = sorted((row["worker"], row["n"]) for row in map(json.loads, lines))
    assert seen == [(w, n) for w in range(4) for n in range(20)]


def test_shutdown_closes_the_file_and_later_exports_fail_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exporters = [cls(tmp_path) for cls in (OTLPJsonDirSpanExporter, OTLPJsonDirLogExporter)]
    exporters.append(OTLPJsonDirMetricExporter(tmp_path))
    for exporter in exporters:
        exporter.shutdown()
        exporter.shutdown()  # a provider and a runtime may both shut it down: no warning
        assert exporter.stream.closed
    assert "already shutdown" not in caplog.text
    from opentelemetry.sdk.trace.export import SpanExportResult

    assert exporters[0].export([]) is SpanExportResult.FAILURE


def test_zero_code_web_app_without_a_collector(tmp_path: Path) -> None:
    """``opentelemetry-instrument uvicorn`` with the otlp_json_dir exporters: the requests'
    events, server spans and counters are in the folder after a SIGTERM (uvicorn's graceful
    shutdown; the plugin flushes at lifespan shutdown), and the report reads them."""
    import httpx

    from harness import serve_uvicorn

    out = tmp_path / "audit"
    env = _clean_environment(
        OTEL_SERVICE_NAME="zero-code-web",
        OTEL_TRACES_EXPORTER="otlp_json_dir",
        OTEL_LOGS_EXPORTER="otlp_json_dir",
        OTEL_METRICS_EXPORTER="otlp_json_dir",
        OTEL_SECAUDIT_EXPORT_DIR=str(out),
        OTEL_SECAUDIT_HOST_THRESHOLD="1000",
    )
    served = serve_uvicorn(env, "harness.apps.secapp:app")
    try:
        with httpx.Client(base_url=served.base_url) as http:
            for _ in range(3):
                assert http.get("/private").status_code == 401
            assert http.get("/forbidden").status_code == 403
            assert http.get("/ok").status_code == 200
    finally:
        served.stop()
    assert served.process.returncode is not None
    recording = load(out, strict=True)
    summary = summarize(recording)
    assert summary.events == {"auth.unauthenticated": 3, "authz.permission_denied": 1}, (
        served.output()[-3000:]
    )
    counted = {a[attr.EVENT_NAME]: v for a, v in summary.counters[attr.METRIC_EVENTS]}
    assert counted == summary.events
    routes = {span.attributes.get("http.route") for span in recording.spans}
    assert {"/private", "/forbidden", "/ok"} <= routes
    with_events = [s for s in recording.spans if s.events]
    assert sorted(e.name for s in with_events for e in s.events) == sorted(
        ["auth.unauthenticated"] * 3 + ["authz.permission_denied"]
    )
