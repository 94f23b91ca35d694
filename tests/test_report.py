"""``otel-secaudit report``: OTLP/JSON lines written by the demo's exporters, read back and
summarized; collector archives; bad paths and corrupt input give a clear error (exit code 2)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_secaudit import SecurityRecorder, Settings
from otel_secaudit import attributes as attr
from otel_secaudit.cli import main
from otel_secaudit.demo.report import ReportError, load, printable, summarize, timeline
from otel_secaudit.exporters import (
    OTLPJsonDirLogExporter,
    OTLPJsonDirMetricExporter,
    OTLPJsonDirSpanExporter,
)

from .conftest import otlp_json_attributes

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


class Written:
    """A real SDK exporting through the ``otlp_json_dir`` exporters, and a recorder on it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(
            SimpleSpanProcessor(OTLPJsonDirSpanExporter(folder))
        )
        self.logger_provider = LoggerProvider()
        self.logger_provider.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPJsonDirLogExporter(folder))
        )
        self.reader = PeriodicExportingMetricReader(
            OTLPJsonDirMetricExporter(folder), export_interval_millis=3_600_000
        )
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.recorder = SecurityRecorder(
            Settings.load(environ={}, strict=True),
            logger_provider=self.logger_provider,
            meter_provider=self.meter_provider,
        )
        self.tracer = self.tracer_provider.get_tracer("tests")

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def written(tmp_path: Path) -> Any:
    """Writes a small known history: 3 failed logins from one address (2 of them inside one
    span), a cross-tenant attempt, a success; two metric collections."""
    w = Written(tmp_path / "out")
    r = w.recorder
    with w.tracer.start_as_current_span("POST /login") as span:
        r.record("auth.login.failed", user_name="mallory", client_address="203.0.113.9")
        r.record("auth.login.failed", user_name="mallory", client_address="203.0.113.9")
        w.trace_id = format(span.get_span_context().trace_id, "032x")
    w.meter_provider.force_flush()  # a first cumulative collection: later values must win
    r.record("auth.login.failed", user_name="trent", client_address="203.0.113.9")
    r.record(
        "authz.cross_tenant",
        user_id="u-7",
        tenant_id="acme",
        requested_tenant_id="globex",
        client_address="192.0.2.1",
    )
    r.record("auth.login.succeeded", user_id="u-7", client_address="192.0.2.1")
    w.close()
    return w


def test_exporters_write_otlp_json_that_protobuf_parses(written: Any) -> None:
    lines = (written.folder / "traces.jsonl").read_text().splitlines()
    request = json.loads(lines[0])
    span = request["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert HEX32.match(span["traceId"]) and HEX16.match(span["spanId"])  # hex, not base64
    assert span["traceId"] == written.trace_id
    assert isinstance(span["kind"], int)  # enums as integers
    assert "startTimeUnixNano" in span  # lowerCamelCase
    # The same object with the IDs re-encoded as protobuf's JSON bytes is a valid request.
    for key in ("traceId", "spanId"):
        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    ParseDict(request, ExportTraceServiceRequest())

    logs = [json.loads(line) for line in (written.folder / "logs.jsonl").read_text().splitlines()]
    records = [
        rec
        for req in logs
        for rl in req["resourceLogs"]
        for sl in rl["scopeLogs"]
        for rec in sl["logRecords"]
    ]
    assert [rec["eventName"] for rec in records] == [
        "auth.login.failed",
        "auth.login.failed",
        "auth.login.failed",
        "authz.cross_tenant",
        "auth.login.succeeded",
    ]
    assert records[0]["traceId"] == written.trace_id
    assert "traceId" not in records[2]  # recorded outside any span
    for req in logs:
        for rl in req["resourceLogs"]:
            for sl in rl["scopeLogs"]:
                for rec in sl["logRecords"]:
                    for key in ("traceId", "spanId"):
                        if key in rec:
                            rec[key] = base64.b64encode(bytes.fromhex(rec[key])).decode()
        ParseDict(req, ExportLogsServiceRequest())


def test_summary_counts_what_was_recorded(written: Any) -> None:
    summary = summarize(load(written.folder))
    assert summary.events == {
        "auth.login.failed": 3,
        "auth.login.succeeded": 1,
        "authz.cross_tenant": 1,
    }
    assert summary.violations == 4
    assert summary.top_addresses == [("203.0.113.9", 3), ("192.0.2.1", 1)]
    users = dict(summary.top_users)
    assert users["user.id=u-7"] == 1
    assert sorted(v for k, v in users.items() if k.startswith("user.hash=")) == [1, 2]
    # Last cumulative value per series, not the sum of the two collections.
    events = {a[attr.EVENT_NAME]: v for a, v in summary.counters[attr.METRIC_EVENTS]}
    assert events == {"auth.login.failed": 3, "auth.login.succeeded": 1, "authz.cross_tenant": 1}
    violations = summary.counters[attr.METRIC_VIOLATIONS]
    assert sum(v for _, v in violations) == 4
    assert summary.abuse_signals == [] and summary.blocks == []


def test_timeline_of_one_trace(written: Any) -> None:
    rows = timeline(load(written.folder), written.trace_id)
    kinds = [(row.kind, row.name) for row in rows]
    assert kinds[0] == ("span start", "POST /login")
    assert kinds[-1] == ("span end", "POST /login")
    assert kinds.count(("span event", "auth.login.failed")) == 2
    assert (
        sum(1 for kind, name in kinds if kind.startswith("log") and name == "auth.login.failed")
        == 2
    )
    assert [row.time_ns for row in rows] == sorted(row.time_ns for row in rows)
    with pytest.raises(ReportError, match="not in this recording"):
        timeline(load(written.folder), "0" * 31 + "1")
    with pytest.raises(ReportError, match="not a trace ID"):
        timeline(load(written.folder), "xyz")


def test_cli_report_prints_tables_and_trace(written: Any, capsys: Any) -> None:
    assert main(["report", str(written.folder)]) == 0
    out = capsys.readouterr().out
    assert "auth.login.failed" in out and "203.0.113.9" in out
    assert "5 security log records" in out
    assert main(["report", str(written.folder), "--trace", written.trace_id.upper()]) == 0
    assert "POST /login" in capsys.readouterr().out
    assert main(["report", str(written.folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["events"]["auth.login.failed"] == 3


def test_collector_archive_layout(written: Any, tmp_path: Path) -> None:
    """A collector file exporter writes all signals into one file (rotated copies beside it)."""
    archive = tmp_path / "archive" / "2026" / "security.json"
    archive.parent.mkdir(parents=True)
    lines = []
    for name in ("metrics.jsonl", "logs.jsonl", "traces.jsonl"):
        lines += (written.folder / name).read_text().splitlines()
    archive.write_text("\n".join(lines) + "\n")
    (archive.parent / "notes.txt").write_text("not OTLP, not read")
    from_folder = summarize(load(tmp_path / "archive"))
    from_file = summarize(load(archive))
    original = summarize(load(written.folder))
    for summary in (from_folder, from_file):
        assert summary.events == original.events
        assert summary.counters == original.counters
        assert summary.top_addresses == original.top_addresses


def _metric_line(value: int, start: int, time: int, temporality: int) -> str:
    point = {
        "asInt": str(value),
        "startTimeUnixNano": str(start),
        "timeUnixNano": str(time),
        "attributes": [{"key": "security.abuse.scope", "value": {"stringValue": "host"}}],
    }
    return json.dumps(
        {
            "resourceMetrics": [
                {
                    "scopeMetrics": [
                        {
                            "scope": {"name": "otel_secaudit"},
                            "metrics": [
                                {
                                    "name": "security.abuse.signals",
                                    "sum": {
                                        "dataPoints": [point],
                                        "aggregationTemporality": temporality,
                                        "isMonotonic": True,
                                    },
                                }
                            ],
                        }
                    ]
                }
            ]
        }
    )


def test_counters_cumulative_streams_and_delta(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text(
        "\n".join(
            [
                _metric_line(2, start=100, time=200, temporality=2),
                _metric_line(5, start=100, time=300, temporality=2),  # same stream, later: wins
                _metric_line(1, start=100, time=250, temporality=2),  # older, out of order: ignored
                _metric_line(3, start=900, time=950, temporality=2),  # another process: added
            ]
        )
        + "\n"
    )
    assert summarize(load(tmp_path)).counters["security.abuse.signals"] == [
        ({"security.abuse.scope": "host"}, 8)
    ]
    (tmp_path / "c.jsonl").write_text(
        "\n".join(
            [
                _metric_line(2, start=100, time=200, temporality=1),
                _metric_line(5, start=200, time=300, temporality=1),
            ]
        )
        + "\n"
    )
    assert summarize(load(tmp_path)).counters["security.abuse.signals"] == [
        ({"security.abuse.scope": "host"}, 7)
    ]


def test_base64_ids_from_protobuf_json_are_accepted(written: Any, tmp_path: Path) -> None:
    line = json.loads((written.folder / "traces.jsonl").read_text().splitlines()[0])
    span = line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["traceId"] = base64.b64encode(bytes.fromhex(span["traceId"])).decode()
    (tmp_path / "b64.json").write_text(json.dumps(line) + "\n")
    assert load(tmp_path / "b64.json").spans[0].trace_id == written.trace_id


# -- bad input ------------------------------------------------------------------------------


def _error(capsys: Any, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


def test_missing_path(capsys: Any, tmp_path: Path) -> None:
    err = _error(capsys, ["report", str(tmp_path / "nope")])
    assert err.startswith("otel-secaudit: error: ") and "no such file or directory" in err


def test_folder_without_otlp_files(capsys: Any, tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    err = _error(capsys, ["report", str(tmp_path)])
    assert "no OTLP/JSON files here" in err


def test_only_garbage(capsys: Any, tmp_path: Path) -> None:
    (tmp_path / "logs.jsonl").write_text('{"hello": 1}\nnot json\n')
    err = _error(capsys, ["report", str(tmp_path)])
    assert "no OTLP export requests could be read" in err
    assert f"{tmp_path / 'logs.jsonl'}:1: not an OTLP export request" in err


def test_binary_file(capsys: Any, tmp_path: Path) -> None:
    (tmp_path / "logs.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    assert "not a UTF-8 text file" in _error(capsys, ["report", str(tmp_path)])


def test_corrupt_lines_are_skipped_and_named(written: Any, capsys: Any) -> None:
    logs = written.folder / "logs.jsonl"
    good = logs.read_text().splitlines()
    logs.write_text(good[0] + "\n" + "{garbage\n" + "\n".join(good[1:]) + "\n" + good[1][:40])
    assert main(["report", str(written.folder)]) == 0
    captured = capsys.readouterr()
    assert f"skipped corrupt line {logs}:2: not valid JSON" in captured.err
    assert f"{logs}:{len(good) + 2}: not valid JSON" in captured.err
    assert "truncated last line" in captured.err
    assert "2 corrupt line(s) skipped" in captured.out
    # Nothing else is lost.
    summary = summarize(load(written.folder))
    assert summary.events["auth.login.failed"] == 3 and summary.skipped_lines == 2

    err = _error(capsys, ["report", str(written.folder), "--strict"])
    assert f"corrupt input: {logs}:2: not valid JSON" in err


def test_trace_filters_the_json_and_html_report(written: Any, capsys: Any) -> None:
    """With JSON or HTML output ``--trace`` is a filter: that trace's records and spans."""
    page = written.folder / "x.html"
    argv = [
        "report",
        str(written.folder),
        "--trace",
        written.trace_id,
        "--json",
        "--html",
        str(page),
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["events"] == {"auth.login.failed": 2} and data["spans"] == 1
    assert data["filters"] == {"trace": [written.trace_id]}
    assert written.trace_id in page.read_text()


def test_bad_trace_argument(written: Any, capsys: Any) -> None:
    assert "is not a trace ID" in _error(capsys, ["report", str(written.folder), "--trace", "abc"])
    assert "is not in this recording" in _error(
        capsys, ["report", str(written.folder), "--trace", "f" * 32]
    )


def test_demo_out_is_a_file(capsys: Any, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert "is not a directory" in _error(capsys, ["demo", "--out", str(target)])


# -- hostile telemetry (issue 11, "Report and spool") ----------------------------------------
#
# Every value in an archive is an attacker's choice. The terminal report renders each one as
# text: never rich markup (``[/]`` raised MarkupError, ``[link=...]`` became a hyperlink), never
# raw control characters (an OSC 8 sequence is a terminal hyperlink too).

MARKUP_SAMPLES = (
    "[/]",
    "[link=https://evil.example]x[/link]",
    "[bold red]x",
    "[/bold]",
    "[@click=app.quit]x[/]",
    "\\[",
    "x\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "\x1b[2J\x1b[31mred",
    "a\u202eb\u200bc",
    "<script>alert(1)</script>",
)
_SGR = re.compile(r"\x1b\[[0-9;]*m")


def _log(name: str, attributes: dict[str, Any], trace_id: str = "", body: Any = None) -> Any:
    record: dict[str, Any] = {
        "timeUnixNano": "1764043200000000000",
        "eventName": name,
        "severityText": "WARN",
        "attributes": otlp_json_attributes(attributes),
    }
    if trace_id:
        record["traceId"], record["spanId"] = trace_id, "1" * 16
    if body is not None:
        record["body"] = {"kvlistValue": {"values": otlp_json_attributes(body)}}
    return record


def _hostile_archive(folder: Path, hostile: str) -> str:
    """One archive with ``hostile`` in every field the report shows; returns a trace ID."""
    trace_id = "ab" * 16
    failure = {"security.event.outcome": "failure", "security.event.category": hostile}
    common = {
        "client.address": hostile,
        "user.id": hostile,
        "security.reason": hostile,
        "http.route": hostile,
        "security.tenant.id": hostile,
    }
    logs = [
        _log("auth.login.failed", {**failure, **common}, trace_id),
        _log(hostile, {**failure, **common}, trace_id),
        _log("auth.login.failed", {**failure, "user.hash": hostile}),
        _log(
            "abuse.host",
            {
                **failure,
                "security.abuse.scope": hostile,
                "security.abuse.key": hostile,
                "security.abuse.count": 10,
                "security.abuse.threshold": 10,
                "security.abuse.window_s": hostile,
                "security.abuse.trace_ids": [trace_id, hostile],
            },
            body={hostile: 10},
        ),
        _log(
            "abuse.block.started",
            {
                "security.event.outcome": "success",
                "client.address": hostile,
                "security.block.seconds": hostile,
            },
        ),
    ]
    span = {
        "traceId": trace_id,
        "spanId": "1" * 16,
        "name": hostile,
        "startTimeUnixNano": "1764043200000000000",
        "endTimeUnixNano": "1764043200100000000",
        "attributes": otlp_json_attributes(common),
        "events": [
            {
                "timeUnixNano": "1764043200050000000",
                "name": hostile,
                "attributes": otlp_json_attributes(common),
            }
        ],
    }
    metric_point = {
        "asInt": "3",
        "timeUnixNano": "1764043200000000000",
        "attributes": otlp_json_attributes({"security.event.name": hostile, "http.route": hostile}),
    }
    lines = [
        {
            "resourceLogs": [
                {"scopeLogs": [{"scope": {"name": "otel_secaudit"}, "logRecords": logs}]}
            ]
        },
        {"resourceSpans": [{"scopeSpans": [{"scope": {"name": hostile}, "spans": [span]}]}]},
        {
            "resourceMetrics": [
                {
                    "scopeMetrics": [
                        {
                            "scope": {"name": "otel_secaudit"},
                            "metrics": [
                                {
                                    "name": "security.violations",
                                    "sum": {
                                        "dataPoints": [metric_point],
                                        "aggregationTemporality": 2,
                                    },
                                }
                            ],
                        }
                    ]
                }
            ]
        },
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "archive.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return trace_id


def _terminal_output(folder: Path, trace_id: str) -> str:
    """The summary and the trace timeline as a colour terminal would receive them."""
    from rich.console import Console

    from otel_secaudit.demo.render import render_summary, render_timeline

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="truecolor", width=4000)
    recording = load(folder)
    render_summary(summarize(recording), console)
    render_timeline(trace_id, timeline(recording, trace_id), console)
    return buffer.getvalue()


def _assert_rendered_as_text(output: str, hostile: str) -> None:
    assert "\x1b]8;" not in output  # no terminal hyperlink
    plain = _SGR.sub("", output)  # rich's own colours are fine; nothing else may escape
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", plain)
    assert printable(hostile) in plain


@pytest.mark.parametrize("hostile", MARKUP_SAMPLES)
def test_markup_in_every_rendered_field_is_shown_as_text(tmp_path: Path, hostile: str) -> None:
    trace_id = _hostile_archive(tmp_path / "in", hostile)
    _assert_rendered_as_text(_terminal_output(tmp_path / "in", trace_id), hostile)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hostile=st.one_of(
        st.sampled_from(MARKUP_SAMPLES),
        st.text(alphabet="[]/=@:#. ablinkr\\\x1b\x07\u202e", min_size=1, max_size=40),
        st.text(min_size=1, max_size=40),
    )
)
def test_fuzz_markup_and_controls_never_break_the_report(tmp_path: Path, hostile: str) -> None:
    folder = tmp_path / f"in{abs(hash(hostile))}"
    trace_id = _hostile_archive(folder, hostile)
    _assert_rendered_as_text(_terminal_output(folder, trace_id), hostile)


def test_cli_report_with_markup_user_id_from_the_recorder(tmp_path: Path, capsys: Any) -> None:
    """The issue's reproduction: a user id ``[/]`` made ``otel-secaudit report`` exit 1."""
    w = Written(tmp_path / "out")
    w.recorder.record("authz.permission_denied", user_id="[/]", client_address="203.0.113.5")
    w.recorder.record("authz.permission_denied", user_id="[link=https://evil.example]x[/link]")
    w.close()
    assert main(["report", str(w.folder)]) == 0
    out = capsys.readouterr().out
    assert "user.id=[/]" in out
    assert "user.id=[link=https://evil.example]x[/link]" in out


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[" * 100_000, "not valid JSON"),
        ('{"intValue":"zz"}', "not an OTLP export request"),
        ('{"resourceLogs":[1]}', "malformed OTLP export request"),
        (
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":7,"events":3}]}]}]}',
            "malformed OTLP export request",
        ),
        (
            json.dumps(
                {
                    "resourceLogs": [
                        {
                            "scopeLogs": [
                                {
                                    "logRecords": [
                                        {
                                            "eventName": "auth.login.failed",
                                            "attributes": [
                                                {"key": "x", "value": {"intValue": "zz"}}
                                            ],
                                        }
                                    ]
                                }
                            ]
                        }
                    ]
                }
            ),
            "malformed OTLP export request",
        ),
        (
            json.dumps(
                {
                    "resourceMetrics": [
                        {
                            "scopeMetrics": [
                                {
                                    "metrics": [
                                        {
                                            "name": "m",
                                            "sum": {"dataPoints": [{"asDouble": {"x": 1}}]},
                                        }
                                    ]
                                }
                            ]
                        }
                    ]
                }
            ),
            "malformed OTLP export request",
        ),
    ],
    ids=[
        "deep-nesting",
        "bare-any-value",
        "resource-not-object",
        "wrong-types",
        "bad-int-attribute",
        "bad-double",
    ],
)
def test_malformed_line_is_skipped_with_file_and_line(
    written: Any, capsys: Any, line: str, reason: str
) -> None:
    logs = written.folder / "logs.jsonl"
    good = logs.read_text().splitlines()
    logs.write_text("\n".join([good[0], line, *good[1:]]) + "\n")
    assert main(["report", str(written.folder)]) == 0
    captured = capsys.readouterr()
    assert f"skipped corrupt line {logs}:2: {reason}" in captured.err
    assert "Traceback" not in captured.err
    summary = summarize(load(written.folder))
    assert summary.events["auth.login.failed"] == 3 and summary.skipped_lines == 1


def test_values_no_calendar_holds_do_not_break_the_summary(tmp_path: Path, capsys: Any) -> None:
    """A NaN block length reads as 0; a record whose time no calendar holds makes its line a
    skipped, named line (text, JSON and HTML reports alike: it crashed ``--html``)."""
    nan_block = _log(
        "abuse.block.started",
        {"security.event.outcome": "success", "security.block.seconds": "nan"},
    )
    far = _log("auth.login.failed", {"security.event.outcome": "failure"})
    far["timeUnixNano"] = "9" * 30

    def line(record: Any) -> str:
        scope_logs = [{"scope": {"name": "otel_secaudit"}, "logRecords": [record]}]
        return json.dumps({"resourceLogs": [{"scopeLogs": scope_logs}]}) + "\n"

    (tmp_path / "x.jsonl").write_text(line(nan_block) + line(far))
    recording = load(tmp_path)
    summary = summarize(recording)
    assert summary.blocks[0].block_s == 0 and summary.events == {"abuse.block.started": 1}
    assert recording.skipped_lines == 1
    assert "x.jsonl:2: hostile timestamp: timeUnixNano out of range" in str(recording.problems[0])
    for extra in ([], ["--format", "json"], ["--html", str(tmp_path / "page.html")]):
        assert main(["report", str(tmp_path), *extra]) == 0
        err = capsys.readouterr().err
        assert "x.jsonl:2: hostile timestamp" in err and "Traceback" not in err
