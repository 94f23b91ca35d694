"""``otel-secaudit demo --short``: the real demo app served by uvicorn, the scenario over real HTTP,
telemetry in OTLP/JSON files, the live report, and ``report`` on the recorded folder.

The demo installs global OpenTelemetry providers, so it runs in a subprocess, as a user runs it.
"""

from __future__ import annotations

import os
import re
import signal as signals
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import OTLPReceiver, attributes_of, promtool_check_queries
from otel_secaudit import attributes as attr
from otel_secaudit.demo.app import DEMO_PASSWORDS
from otel_secaudit.demo.report import Recording, Summary, load, security_logs, summarize
from otel_secaudit.demo.scenario import ADDRESSES

from .browser import DOM, dump_dom, screenshot
from .conftest import markdown_code_lines

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _environment(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "COLUMNS", "LINES"))
    }
    env.update(COLUMNS="120", PYTHONUNBUFFERED="1", **extra)
    return env


def _cli(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_secaudit.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_environment(**extra_env),
    )


@dataclass
class DemoRun:
    out: Path
    process: subprocess.CompletedProcess[str]
    recording: Recording
    summary: Summary


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out = tmp_path_factory.mktemp("demo") / "secaudit-demo-output"
    html = out.parent / "incident.html"
    process = _cli(
        "demo", "--short", "--out", str(out), "--html", str(html),
        "--jaeger-url", "http://localhost:16686",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    recording = load(out)
    return DemoRun(out, process, recording, summarize(recording))


def test_demo_writes_the_three_otlp_files_and_passes_its_self_check(demo: DemoRun) -> None:
    assert sorted(p.name for p in demo.out.iterdir()) == [
        "logs.jsonl",
        "metrics.jsonl",
        "traces.jsonl",
    ]
    assert demo.recording.skipped_lines == 0
    assert "no collector configured" in demo.process.stderr
    assert re.search(r"self-check: all (\d+) recorded security events", demo.process.stderr)
    assert "Traceback" not in demo.process.stderr


def test_demo_report_shows_the_attacks(demo: DemoRun) -> None:
    s = demo.summary
    # Every scenario phase left its event.
    for name in (
        "auth.login.succeeded",
        "auth.login.failed",
        "auth.mfa.failed",
        "auth.logout",
        "auth.token.expired",
        "auth.token.invalid",
        "auth.token.revoked",
        "auth.unauthenticated",
        "authz.cross_tenant",
        "authz.permission_denied",
        "request.csrf_mismatch",
        "data.sensitive.accessed",
        "admin.user.created",
        "admin.user.deleted",
        "request.blocked",
        "abuse.host",
        "abuse.user",
        "abuse.block.started",
        "abuse.block.ended",
    ):
        assert s.events.get(name, 0) >= 1, name

    hosts = {sig.key: sig for sig in s.abuse_signals if sig.scope == "host"}
    users = {sig.key: sig for sig in s.abuse_signals if sig.scope == "user"}
    # Brute force and credential stuffing: one abuse.host each; nobody else reaches 10.
    assert set(hosts) == {ADDRESSES["brute_force"], ADDRESSES["stuffing"]}
    for signal in hosts.values():
        assert (signal.count, signal.threshold) == (10, 10)
        assert signal.breakdown == {"auth.login.failed": 10}
    # bob's cross-tenant probe escalates his user id; the brute force escalates alice's hash
    # (a failed login's identity is unverified: user.hash, never the name).
    assert users["u-1002"].breakdown == {"authz.cross_tenant": 5}
    hashed = [key for key in users if HEX64.match(key)]
    assert len(hashed) == 1 and users[hashed[0]].breakdown == {"auth.login.failed": 5}
    # Stuffing tries each name once: no user signal for those.
    assert len(users) == 2

    started = {b.address for b in s.blocks if b.event == "abuse.block.started"}
    ended = {b.address for b in s.blocks if b.event == "abuse.block.ended"}
    assert started == ended == {ADDRESSES["brute_force"], ADDRESSES["stuffing"]}
    assert all(b.block_s == 2 for b in s.blocks)
    # Every refused request is counted (8 stuffing + 3 brute force); its request.blocked record
    # is written at most once per address per 60 s (the README's "Abuse detection and
    # blocks"): one each here.
    blocked = s.counters[attr.METRIC_REQUESTS_BLOCKED]
    assert sum(v for _, v in blocked) == 11
    assert s.events["request.blocked"] == 2

    assert dict(s.top_addresses)[ADDRESSES["stuffing"]] == 11  # 10 failures + 1 blocked record
    assert dict(s.top_addresses)[ADDRESSES["brute_force"]] == 11


def test_evidence_trace_ids_point_at_the_violations(demo: DemoRun) -> None:
    """Each trace ID an abuse.host signal gives as evidence is a request from that address
    whose trace holds a server span and the failed-login log record."""
    logs_by_trace: dict[str, list[Any]] = {}
    for log in security_logs(demo.recording):
        logs_by_trace.setdefault(log.trace_id, []).append(log)
    span_traces = {span.trace_id for span in demo.recording.spans}
    for signal in demo.summary.abuse_signals:
        assert signal.trace_ids and all(HEX32.match(t) for t in signal.trace_ids)
        assert len(set(signal.trace_ids)) == signal.count
        for trace_id in signal.trace_ids:
            assert trace_id in span_traces
            violations = [
                log for log in logs_by_trace[trace_id] if log.event_name in signal.breakdown
            ]
            assert len(violations) == 1
            if signal.scope == "host":
                # Resolved by otel_secaudit from X-Forwarded-For (the peer is the trusted
                # loopback proxy), not by uvicorn.
                assert violations[0].attributes[attr.CLIENT_ADDRESS] == signal.key
                assert violations[0].attributes[attr.NETWORK_PEER_ADDRESS] == "127.0.0.1"


def test_counters_agree_with_the_log_records(demo: DemoRun) -> None:
    counted = {a[attr.EVENT_NAME]: v for a, v in demo.summary.counters[attr.METRIC_EVENTS]}
    assert counted == demo.summary.events
    violations: Counter[str] = Counter()
    for attributes, value in demo.summary.counters[attr.METRIC_VIOLATIONS]:
        violations[attributes[attr.EVENT_NAME]] += value
    failures = {
        n: c for n, c in demo.summary.events.items() if demo.summary.outcomes[n] == "failure"
    }
    assert dict(violations) == failures


def test_no_secret_reaches_the_files(demo: DemoRun) -> None:
    text = "".join(p.read_text() for p in demo.out.iterdir())
    for secret in [
        *DEMO_PASSWORDS.values(),
        "Summer2024!",
        "letmein",
        "forged-by-another-site",
        "eyJ",
        "Bearer ",
    ]:
        assert secret not in text, secret
    # Failed-login identities are hashed: the claimed names never appear as user.name.
    assert '"user.name"' not in text


def test_report_on_the_recorded_folder_matches_the_live_report(demo: DemoRun) -> None:
    again = _cli("report", str(demo.out))
    assert again.returncode == 0, again.stderr
    assert again.stdout == demo.process.stdout
    assert "abuse.host" in again.stdout and ADDRESSES["brute_force"] in again.stdout


def test_demo_html_report_in_chromium(demo: DemoRun, tmp_path: Path) -> None:
    """``demo --html``: the page a browser shows agrees with the report's numbers."""
    page = demo.out.parent / "incident.html"
    dom = DOM(dump_dom(page.as_uri(), tmp_path / "profile"))
    assert dom.find("html")[0].attrs.get("data-js") == "on"

    def count(name: str) -> int:
        (card,) = dom.find("div", class_="card", data_count=name)
        return int(card.text.split()[0])

    s = demo.summary
    assert count("violations") == s.violations
    assert count("abuse-signals") == len(s.abuse_signals)
    assert count("log-records") == s.log_records
    assert len(dom.find("li", class_="signal")) == len(s.abuse_signals)
    signal = next(sig for sig in s.abuse_signals if sig.scope == "host")
    evidence = dom.find("details", class_="evidence", data_trace_id=signal.trace_ids[0])
    assert evidence and "POST /auth/login" in evidence[0].text
    links = {a.attrs["href"] for a in dom.find("a")}
    assert f"http://localhost:16686/trace/{signal.trace_ids[0]}" in links
    bars = sum(int(rect.attrs["data-count"]) for rect in dom.find("rect"))
    assert bars == s.violations
    screenshot(page.as_uri(), tmp_path / "demo-report.png", tmp_path / "profile")


def test_report_trace_timeline_of_evidence(demo: DemoRun) -> None:
    signal = next(s for s in demo.summary.abuse_signals if s.scope == "host")
    shown = _cli("report", str(demo.out), "--trace", signal.trace_ids[0])
    assert shown.returncode == 0, shown.stderr
    assert "POST /auth/login" in shown.stdout
    assert "span event" in shown.stdout and "auth.login.failed" in shown.stdout


@pytest.mark.parametrize("spool", [False, True], ids=["http-sdk", "grpc-spool"])
def test_demo_also_exports_to_a_collector(tmp_path: Path, spool: bool) -> None:
    """With --otlp-endpoint the same telemetry reaches a real OTLP gRPC receiver, and the
    files are still written (the live report reads them). With OTEL_SECAUDIT_SPOOL_DIR (as in
    docker-compose.yml) security records take the durable spool path, and the files still get
    every one of them."""
    receiver = OTLPReceiver().start()
    try:
        out = tmp_path / "out"
        if spool:  # as in docker-compose.yml: gRPC and the spool
            env = {"OTEL_SECAUDIT_SPOOL_DIR": str(tmp_path / "spool")}
            endpoint, protocol = receiver.grpc_endpoint, "grpc"
        else:
            env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
            endpoint, protocol = receiver.http_endpoint, "http/protobuf"
        process = _cli("demo", "--short", "--out", str(out), "--otlp-endpoint", endpoint, **env)
        assert process.returncode == 0, process.stderr[-3000:]
        assert f"exporting to the collector at {endpoint} ({protocol})" in process.stderr
        if not spool:
            with receiver.lock:
                assert receiver.trace_requests and receiver.metric_requests
        assert "self-check: all" in process.stderr
        with receiver.lock:
            records = [
                attributes_of(record.attributes)
                for request in receiver.log_requests
                for resource_logs in request.resource_logs
                for scope_logs in resource_logs.scope_logs
                for record in scope_logs.log_records
                if scope_logs.scope.name == attr.SCOPE_NAME
            ]
        if spool:  # at-least-once: a redelivered record carries the same log.record.uid
            assert all("log.record.uid" in a for a in records)
            records = list({a["log.record.uid"]: a for a in records}.values())
        written = summarize(load(out))
        assert Counter(a.get(attr.EVENT_NAME) for a in records) == Counter(written.events)
    finally:
        receiver.stop()


def test_demo_rejects_a_bad_protocol(tmp_path: Path) -> None:
    process = _cli(
        "demo",
        "--short",
        "--out",
        str(tmp_path / "o"),
        "--otlp-endpoint",
        "http://127.0.0.1:9",
        OTEL_EXPORTER_OTLP_PROTOCOL="carrier",
    )
    assert process.returncode == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='carrier'" in process.stderr
    assert "Traceback" not in process.stderr


def test_demo_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _cli("demo", "--short", "--out", str(tmp_path / "o"), "--port", str(port))
    assert process.returncode == 2
    assert "the demo server did not start (is the port in use?)" in process.stderr
    assert "Traceback" not in process.stderr


# -- SECURITY.md ----------------------------------------------------------------------------

SECURITY_MD = Path(__file__).resolve().parent.parent / "SECURITY.md"


def test_security_md_catalogue_matches_the_code() -> None:
    from otel_secaudit import CATALOGUE

    text = SECURITY_MD.read_text(encoding="utf-8")
    table = text.split("<!-- catalogue:start -->")[1].split("<!-- catalogue:end -->")[0]
    rows = [
        [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")][:4]
        for line in table.strip().splitlines()[2:]
    ]
    expected = [[s.name, s.category, s.outcome, s.severity] for s in CATALOGUE.values()]
    assert rows == expected


def test_security_md_queries_parse(tmp_path: Path) -> None:
    text = SECURITY_MD.read_text(encoding="utf-8")
    promql = markdown_code_lines(text, "promql")
    assert len(promql) >= 4
    result = promtool_check_queries(promql, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for query in markdown_code_lines(text, "logql"):
        # Loki's OTLP names: structured metadata with '_' for '.', never the dotted key
        assert '{service_name=~".+"}' in query and "security.event" not in query, query


def test_demo_serve_keeps_serving_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """--serve: after the scenario the app answers manual requests; SIGTERM (docker compose
    stop) ends it through the normal exit path, so the manual request's event is in the files."""
    import httpx

    from harness import free_port

    out = tmp_path / "out"
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otel_secaudit.cli",
            "demo",
            "--short",
            "--serve",
            "--port",
            str(port),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
    )
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if "curl" in line:
                break
        text = "".join(seen)
        assert f"The demo app is serving on http://127.0.0.1:{port}" in text, text[-2000:]
        assert f"(refreshed on every load): http://127.0.0.1:{port}/report" in text
        before = summarize(load(out)).events["auth.unauthenticated"]
        response = httpx.get(f"http://127.0.0.1:{port}/me", timeout=10)
        assert response.status_code == 401
        # The served report is read from the files on every load, after a flush: the manual
        # request is already in it. A real browser loads it from the server.
        dom = DOM(dump_dom(f"http://127.0.0.1:{port}/report", tmp_path / "profile"))
        assert dom.find("html")[0].attrs.get("data-js") == "on"
        (row,) = [r for r in dom.find("tr") if r.text.startswith("auth.unauthenticated")]
        assert f"failure{before + 1}" in row.text.replace(" ", "")
        process.send_signal(signals.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr[-2000:]
    assert "stopping: delivering what is left" in stderr and "Traceback" not in stderr
    assert summarize(load(out)).events["auth.unauthenticated"] == before + 1
