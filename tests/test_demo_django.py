"""``otel-secaudit demo --framework django --short``: the Django demo project shipped in the
package, served in-process by Django's threaded WSGI server under contrib's DjangoInstrumentor
and SecAuditInstrumentor, the scenario over real HTTP, telemetry in OTLP/JSON files, the report.

The demo installs global OpenTelemetry providers and configures Django, so it runs in a
subprocess, as a user runs it.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otel_secaudit.cli import _parser
from otel_secaudit.demo.django_site import DJANGO_DEMO_PASSWORDS
from otel_secaudit.demo.django_site.scenario import DJANGO_ADDRESSES, GUESSES
from otel_secaudit.demo.report import Recording, Summary, load, security_logs, summarize

from .test_demo import _environment

pytest.importorskip("django")
pytest.importorskip("opentelemetry.instrumentation.django")

HEX = re.compile(r"^[0-9a-f]+$")


@dataclass
class DjangoDemoRun:
    out: Path
    process: subprocess.CompletedProcess[str]
    seconds: float
    recording: Recording
    summary: Summary


def _cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "otel_secaudit.cli", *args]
    if code is not None:
        command = [sys.executable, "-c", code, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=_environment())


@pytest.fixture(scope="module")
def django_demo(tmp_path_factory: pytest.TempPathFactory) -> DjangoDemoRun:
    out = tmp_path_factory.mktemp("django-demo") / "out"
    started = time.monotonic()
    process = _cli("demo", "--framework", "django", "--short", "--out", str(out))
    seconds = time.monotonic() - started
    assert process.returncode == 0, process.stderr[-3000:]
    recording = load(out)
    return DjangoDemoRun(out, process, seconds, recording, summarize(recording))


def test_framework_defaults_to_fastapi() -> None:
    assert _parser().parse_args(["demo"]).framework == "fastapi"
    assert _parser().parse_args(["demo", "--framework", "django"]).framework == "django"


def test_django_demo_runs_quickly_and_passes_its_self_check(django_demo: DjangoDemoRun) -> None:
    assert django_demo.seconds < 20
    assert sorted(p.name for p in django_demo.out.iterdir()) == [
        "logs.jsonl",
        "metrics.jsonl",
        "traces.jsonl",
    ]
    assert django_demo.recording.skipped_lines == 0
    assert re.search(r"self-check: all \d+ recorded security events", django_demo.process.stderr)
    assert "Traceback" not in django_demo.process.stderr
    # Django's own 403/CSRF warnings do not interleave with the progress bar.
    assert "Forbidden" not in django_demo.process.stderr
    assert "abuse.host" in django_demo.process.stdout


def test_django_demo_report_shows_the_attacks(django_demo: DjangoDemoRun) -> None:
    s = django_demo.summary
    for name in (
        "auth.login.succeeded",
        "auth.login.failed",
        "auth.logout",
        "authz.permission_denied",
        "request.csrf_mismatch",
        "request.blocked",
        "abuse.host",
        "abuse.user",
        "abuse.block.started",
        "abuse.block.ended",
    ):
        assert s.events.get(name, 0) >= 1, name
    hosts = {sig.key for sig in s.abuse_signals if sig.scope == "host"}
    assert hosts == {DJANGO_ADDRESSES["brute_force"]}

    logs = security_logs(django_demo.recording)
    failed = [log for log in logs if log.event_name == "auth.login.failed"]
    # From Django's user_login_failed signal: the claimed name hashed, from the attacker.
    assert len(failed) == 10
    assert {log.attributes["client.address"] for log in failed} == {DJANGO_ADDRESSES["brute_force"]}
    hashes = {log.attributes.get("user.hash") for log in failed}
    assert len(hashes) == 1 and HEX.match(str(hashes.pop()))
    succeeded = [log for log in logs if log.event_name == "auth.login.succeeded"]
    assert {log.attributes.get("user.id") for log in succeeded} == {"1", "2"}
    assert all(log.attributes.get("http.route") == "accounts/login/" for log in succeeded)
    (csrf,) = [log for log in logs if log.event_name == "request.csrf_mismatch"]
    assert csrf.attributes["security.reason"] == "csrf_token_incorrect"
    assert csrf.attributes["user.id"] == "1"
    (denied,) = [log for log in logs if log.event_name == "authz.permission_denied"]
    assert denied.attributes["http.response.status_code"] == 403
    assert denied.attributes["http.route"] == "admin/users/"

    # The brute-forcer's last guesses were refused (429) by the blocks, at Django's WSGI entry
    # before contrib's spans, under otel_secaudit's own server spans (web/wsgi_gate.py).
    def statuses(scope: str) -> list[Any]:
        return [
            span.attributes.get("http.response.status_code")
            or span.attributes.get("http.status_code")
            for span in django_demo.recording.spans
            if span.scope.startswith(scope)
        ]

    assert statuses("otel_secaudit") == [429] * (len(GUESSES) - 10)
    assert 429 not in statuses("opentelemetry.instrumentation.django")
    assert {403, 302} <= set(statuses("opentelemetry.instrumentation.django"))


def test_django_demo_writes_no_secret(django_demo: DjangoDemoRun) -> None:
    text = "".join(p.read_text() for p in django_demo.out.iterdir())
    for secret in [*DJANGO_DEMO_PASSWORDS.values(), *GUESSES, "forgedByAnotherSite"]:
        assert secret not in text, secret
    for name in ("sessionid", "csrftoken", "csrfmiddlewaretoken", "Set-Cookie"):
        assert name not in text, name
    assert '"user.name"' not in text
    # Session keys (32 characters a-z0-9) and CSRF tokens (32 or 64 characters a-zA-Z0-9) do
    # not appear either: every 32/64-character word in the files is a hex ID or hash.
    for word in re.findall(
        r"(?<![A-Za-z0-9])[A-Za-z0-9]{32}(?:[A-Za-z0-9]{32})?(?![A-Za-z0-9])", text
    ):
        assert HEX.match(word), word


def test_django_demo_without_django_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['django'] = None; sys.argv[0] = 'otel-secaudit'\n"
        "from otel_secaudit.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    process = _cli("demo", "--framework", "django", "--short", "--out", str(tmp_path), code=code)
    assert process.returncode == 2
    assert "pip install 'otel-secaudit[django]'" in process.stderr
    assert "Traceback" not in process.stderr


def test_django_demo_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _cli(
            "demo", "--framework", "django", "--short", "--port", str(port),
            "--out", str(tmp_path),
        )  # fmt: skip
    assert process.returncode == 2
    assert "the demo server did not start (is the port in use?)" in process.stderr
    assert "Traceback" not in process.stderr
