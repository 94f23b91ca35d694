"""From outside: a Flask-AppBuilder site (harness/apps/fab_site, our own app on that
third-party framework, installed from the package index into a virtual environment at test
time, never committed) under ``opentelemetry-instrument gunicorn``, with the real OTLP
receiver.

Flask-AppBuilder's login view answers right and wrong passwords alike with a redirect, checks
the password with werkzeug and signs in through Flask-Login: the plugin must tell success from
failure from what happened, brute force must be detected per address and per user, and a
blocked client must be refused at ``Flask.__call__`` before contrib's span. No password ever
reaches the collector.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import OTLPReceiver, Served, serve_subprocess, telemetry_env, wait_for
from harness.launchers import free_port, instrument_command

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "harness" / "apps" / "fab_site"
#: The Flask-AppBuilder release the site is written against.
FAB_REQUIREMENT = "flask-appbuilder==5.3.0"
ADMIN_PASSWORD = "Correct-Horse-Appbuilder-42"
ATTACKER = "203.0.113.90"
WRONG = [f"Wrong-Guess-{i}-appbuilder" for i in range(3)]


@pytest.fixture(scope="module")
def fab_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A virtual environment that sees this one's packages and adds Flask-AppBuilder."""
    venv = tmp_path_factory.mktemp("fab-venv")
    python = str(venv / "bin" / "python")
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True
        )
        subprocess.run(
            [python, "-m", "pip", "install", "-q", FAB_REQUIREMENT],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"could not install {FAB_REQUIREMENT}: {exc}")
        pytest.skip(f"could not install {FAB_REQUIREMENT} (no package index?): {exc}")
    return python


@pytest.fixture
def site(fab_python: str, otlp_receiver: OTLPReceiver, tmp_path: Path) -> Iterator[Served]:
    env = telemetry_env(
        otlp_receiver.http_endpoint,
        host_threshold="4",
        user_threshold="3",
        block_seconds="30",
        trusted_proxies="127.0.0.1/32",
    )
    env.update(FAB_SITE_DIR=str(tmp_path), PYTHONPATH=os.pathsep.join([str(SITE), str(ROOT)]))
    port = free_port()
    args = [instrument_command(), fab_python, "-m", "gunicorn", "-w", "1"]
    args += ["-b", f"127.0.0.1:{port}", "fab_app:app"]
    served = serve_subprocess(args, port, env, cwd=str(SITE), timeout=60)
    yield served
    served.stop()


def _login(site: Served, username: str, password: str, address: str | None) -> httpx.Response:
    """Flask-AppBuilder's login form as a browser submits it (its CSRF token included)."""
    headers = {"x-forwarded-for": address} if address else {}
    with httpx.Client(base_url=site.base_url, headers=headers, timeout=20) as browser:
        page = browser.get("/login/")
        if page.status_code != 200:
            return page
        token = re.search(r'id="csrf_token"[^>]*value="([^"]+)"', page.text)
        assert token is not None, page.text[:2000]
        form = {"username": username, "password": password, "csrf_token": token.group(1)}
        return browser.post("/login/", data=form)


def _events(receiver: OTLPReceiver) -> list[tuple[Any, ...]]:
    return [
        (
            log.event_name,
            log.attributes.get("security.reason"),
            log.attributes.get("user.id"),
            log.attributes.get("user.hash"),
            log.attributes.get("client.address"),
        )
        for log in receiver.security_logs()
    ]


def test_appbuilder_logins_brute_force_and_block(site: Served, otlp_receiver: OTLPReceiver) -> None:
    ok = _login(site, "admin", ADMIN_PASSWORD, None)
    assert ok.status_code == 302 and ok.headers["location"] == "/"
    for password in WRONG:  # answered with a redirect as well: the status says nothing
        wrong = _login(site, "admin", password, ATTACKER)
        assert wrong.status_code == 302 and wrong.headers["location"].startswith("/login/")
    assert _login(site, "ghost", "No-Such-User-Pass", ATTACKER).status_code == 302

    started = wait_for(lambda: otlp_receiver.security_logs("abuse.block.started"), 20)
    assert started[0].attributes["security.abuse.key"] == ATTACKER
    refused = wait_for(
        lambda: (r := _login(site, "admin", ADMIN_PASSWORD, ATTACKER)).status_code == 429 and r,
        timeout=10,
        interval=0.2,
    )
    assert 1 <= int(refused.headers["retry-after"]) <= 30

    wait_for(lambda: otlp_receiver.security_logs("request.blocked"), 20)
    time.sleep(1)  # the last batch
    events = _events(otlp_receiver)
    succeeded = [e for e in events if e[0] == "auth.login.succeeded"]
    assert succeeded == [("auth.login.succeeded", None, "1", None, "127.0.0.1")]
    failed = [e for e in events if e[0] == "auth.login.failed"]
    assert [(e[1], e[4]) for e in failed] == [("invalid_credentials", ATTACKER)] * 4
    admin_hash = failed[0][3]
    assert admin_hash and {e[3] for e in failed[:3]} == {admin_hash}
    assert failed[3][3] not in (None, admin_hash)  # the unknown user's own key
    (abuse_user,) = [e for e in events if e[0] == "abuse.user"]
    assert abuse_user[3] == admin_hash
    assert [e[0] for e in events].count("abuse.host") == 1
    # the refusal happened at Flask.__call__, under otel_secaudit's own span
    (blocked,) = otlp_receiver.security_logs("request.blocked")
    ours = wait_for(
        lambda: [
            s for s in otlp_receiver.spans()
            if s.scope == "otel_secaudit" and s.trace_id == blocked.trace_id
        ],
        20,
    )  # fmt: skip
    assert ours[0].attributes["http.response.status_code"] == 429

    exported = repr([log.attributes for log in otlp_receiver.logs()])
    exported += repr([(s.attributes, s.events) for s in otlp_receiver.spans()])
    for secret in (ADMIN_PASSWORD, *WRONG, "No-Such-User-Pass", "fab-site-session-signing"):
        assert secret not in exported
