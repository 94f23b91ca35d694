"""The live alert path, for real: the app under ``opentelemetry-instrument uvicorn`` exports its
metrics with the official Prometheus exporter (``OTEL_METRICS_EXPORTER=prometheus``), Debian's
``prometheus`` scrapes it every second and evaluates the project's alert rules
(deploy/prometheus/alerts.yml), a brute force fires ``SecurityBruteForceInProgress``, and
Debian's ``prometheus-alertmanager`` routes it by severity (deploy/alertmanager/alertmanager.yml)
to a webhook receiver this test runs, which reads the alert with its labels and links.

What differs from the compose stack, and why: the rules' ``for:`` durations are cut to seconds
(the expressions are untouched), and the receivers' URLs point at this test's webhook. The
compose stack itself cannot run here; this is the part of it that can.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness import Served, free_port, require_binary, serve_uvicorn, telemetry_env, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
#: The compose stack's webhook receiver host, replaced by this test's.
COMPOSE_WEBHOOK = "http://alert-webhook:8080"


class WebhookReceiver:
    """Alertmanager's webhook notifications, kept by path (``/on-call``, ``/security-team``)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("content-length") or 0)
                payload = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.received.append((self.path, payload))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, path: str, name: str) -> list[dict[str, Any]]:
        with self.lock:
            payloads = [payload for where, payload in self.received if where == path]
        return [
            alert
            for payload in payloads
            for alert in payload["alerts"]
            if alert["labels"].get("alertname") == name and alert["status"] == "firing"
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _process(args: list[str], ready_url: str, name: str) -> subprocess.Popen[bytes]:
    log = tempfile.NamedTemporaryFile(prefix=f"secaudit-{name}-", suffix=".log", delete=False)
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited: {Path(log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(ready_url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(ready, timeout=30, interval=0.1)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def rules_for_a_test(folder: Path) -> Path:
    """The project's rules with every ``for:`` cut to 2 s (expressions untouched)."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path = folder / "alerts.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def alertmanager_for_a_test(folder: Path, webhook: str) -> Path:
    """The project's routes and receivers, the receivers' URLs pointing at ``webhook``."""
    text = ALERTMANAGER.read_text()
    assert COMPOSE_WEBHOOK in text
    path = folder / "alertmanager.yml"
    path.write_text(text.replace(COMPOSE_WEBHOOK, webhook))
    return path


@pytest.fixture
def alert_path(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """App (metrics on a Prometheus endpoint), Prometheus, Alertmanager and the webhook."""
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("prometheus-alertmanager")
    webhook = WebhookReceiver()
    started: list[subprocess.Popen[bytes]] = []
    app: Served | None = None
    try:
        am_port = free_port()
        started.append(
            _process(
                [
                    alertmanager,
                    f"--config.file={alertmanager_for_a_test(tmp_path, webhook.url)}",
                    f"--storage.path={tmp_path / 'alertmanager'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                f"http://127.0.0.1:{am_port}/-/ready",
                "alertmanager",
            )
        )
        metrics_port = free_port()
        env = telemetry_env(None, trusted_proxies="127.0.0.1", hash_key="alert-path-key-0123")
        env.update(
            OTEL_SERVICE_NAME="shop",
            OTEL_METRICS_EXPORTER="prometheus",
            OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
            OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics_port),
        )
        app = serve_uvicorn(env, "harness.apps.secapp:app")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules_for_a_test(tmp_path))],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
            },
            "scrape_configs": [
                {
                    "job_name": "shop",
                    "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_port = free_port()
        started.append(
            _process(
                [
                    prometheus,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    f"--web.external-url=http://127.0.0.1:{prom_port}",
                ],
                f"http://127.0.0.1:{prom_port}/-/ready",
                "prometheus",
            )
        )
        yield {"app": app, "webhook": webhook, "prometheus": f"http://127.0.0.1:{prom_port}"}
    finally:
        if app is not None:
            app.stop()
        for process in reversed(started):
            _stop(process)
        webhook.close()


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?query={urllib.request.quote(expr)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return list(json.load(response)["data"]["result"])


def test_a_brute_force_pages_on_call_through_prometheus_and_alertmanager(
    alert_path: dict[str, Any],
) -> None:
    app: Served = alert_path["app"]
    webhook: WebhookReceiver = alert_path["webhook"]
    prometheus: str = alert_path["prometheus"]
    # Prometheus scrapes the app before the attack (the counters appear with it).
    wait_for(lambda: _query(prometheus, 'up{job="shop"} == 1'), timeout=20, interval=0.2)
    # A brute force from one address on one account, in waves over several scrapes:
    # abuse.user after 5 failures, abuse.host after 10, more than 30 failures in all.
    attacker = {"x-forwarded-for": "203.0.113.99", "user-agent": "python-requests/2.32"}
    with httpx.Client(base_url=app.base_url, headers=attacker) as http:
        for wave in range(4):
            for _ in range(10):
                body = {"username": "alice", "password": f"guess-{wave}"}
                assert http.post("/login", json=body).status_code == 401
            time.sleep(1.5)
    [alert] = wait_for(
        lambda: webhook.alerts("/on-call", "SecurityBruteForceInProgress"),
        timeout=60,
        interval=0.2,
    )
    assert alert["labels"] == {
        "alertname": "SecurityBruteForceInProgress",
        "job": "shop",
        "severity": "critical",
    }
    annotations = alert["annotations"]
    assert annotations["summary"] == "Brute force in progress on shop"
    assert annotations["runbook_url"] == "README.md#on-call"
    assert annotations["jaeger_url"] == (
        "http://localhost:16686/search?service=shop&tags=%7B%22event%22%3A%22auth.login.failed"
        "%22%7D&lookback=1h&limit=50"
    )
    assert alert["generatorURL"].startswith(prometheus)
    # routed by severity: nothing critical went to the security team's receiver
    assert webhook.alerts("/security-team", "SecurityBruteForceInProgress") == []
    # the metrics behind it, as Prometheus scraped them from the app
    failed = _query(
        prometheus, 'security_violations_total{security_event_name="auth.login.failed"}'
    )
    assert float(failed[0]["value"][1]) == 40
    scopes = {
        r["metric"]["security_abuse_scope"]
        for r in _query(prometheus, "security_abuse_signals_total")
    }
    assert scopes == {"host", "user"}
    assert re.fullmatch(r"[0-9a-f]+", alert["fingerprint"])
