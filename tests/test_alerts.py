"""Alerts that reach someone: every rule in deploy/prometheus/alerts.yml has ``promtool test
rules`` cases (fires on an attack, silent on a normal day) that really fail when the rule
breaks; Alertmanager routes by severity to webhook receivers (``amtool``); Prometheus and the
compose stack are wired to it; the example webhook receiver prints what it gets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from harness import free_port, require_binary

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
WEBHOOK = ROOT / "deploy" / "alertmanager" / "webhook_receiver.py"
COMPOSE = ROOT / "docker-compose.yml"

#: Issue 14: what must page someone (the names are the rules' alert names).
REQUIRED = {
    "SecurityBruteForceInProgress",
    "SecurityCredentialStuffing",
    "SecurityLoginSucceededAfterFailures",
    "SecurityBlockStarted",
    "SecAuditDeliveryFailing",
    "CollectorDown",
}


def _rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def _promtool_test(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), "test", "rules", str(folder / RULE_TESTS.name)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_alert_rule_passes_its_promtool_unit_tests() -> None:
    result = _promtool_test(RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_fires_in_a_case_and_is_silent_on_a_normal_day() -> None:
    rules = _rules()
    assert REQUIRED <= set(rules)
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    assert fires == set(rules), set(rules) - fires
    normal_day = cases[0]
    assert normal_day["name"].startswith("a normal day")
    assert {c["alertname"] for c in normal_day["alert_rule_test"] if not c["exp_alerts"]} == set(
        rules
    )
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"], name


def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """Rules that can no longer fire make ``promtool test rules`` fail, each by name: the
    cases test the rules, they do not merely parse them. (All rules broken in one run, which
    reports every failing alert, instead of one promtool run per rule.)"""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["expr"] = "vector(1) < 0"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(document))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = _promtool_test(tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for alert in _rules():
        assert f"alertname: {alert}" in output, alert


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("amtool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_alertmanager_config_is_valid_and_routes_by_severity() -> None:
    checked = _amtool("check-config", str(ALERTMANAGER))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(ALERTMANAGER.read_text())
    webhooks = {
        receiver["name"]: [hook["url"] for hook in receiver.get("webhook_configs", [])]
        for receiver in config["receivers"]
    }
    expected = {"critical": "on-call", "warning": "security-team"}
    for name, rule in _rules().items():
        severity = rule["labels"]["severity"]
        routed = _amtool(
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            f"alertname={name}",
            f"severity={severity}",
            "job=shop",
        )
        assert routed.returncode == 0, routed.stderr
        assert routed.stdout.strip() == expected[severity], (name, routed.stdout)
        assert webhooks[expected[severity]], f"receiver {expected[severity]} has no webhook"


def test_prometheus_and_compose_are_wired_to_alertmanager() -> None:
    prometheus = yaml.safe_load(PROMETHEUS.read_text())
    targets = [
        target
        for manager in prometheus["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    assert targets == ["alertmanager:9093"]
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    alertmanager = services["alertmanager"]
    assert alertmanager["image"].startswith("prom/alertmanager:v")
    assert "9093:9093" in alertmanager["ports"]
    assert (
        "./deploy/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
        in alertmanager["volumes"]
    )
    assert "alertmanager" in services["prometheus"]["depends_on"]
    webhook_hosts = {
        url.split("/")[2].split(":")[0]
        for receiver in yaml.safe_load(ALERTMANAGER.read_text())["receivers"]
        for url in (hook["url"] for hook in receiver.get("webhook_configs", []))
    }
    assert webhook_hosts <= set(services)


def test_example_webhook_receiver_prints_each_alert() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(WEBHOOK), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "listening" in process.stdout.readline()
        payload = {
            "version": "4",
            "status": "firing",
            "receiver": "on-call",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "SecurityCredentialStuffing", "severity": "critical"},
                    "annotations": {"summary": "Credential stuffing on shop\n[forged] line"},
                }
            ],
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/on-call",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert response.status == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        line = process.stdout.readline().strip()
        assert line == (
            "on-call firing critical SecurityCredentialStuffing: "
            "Credential stuffing on shop\\n[forged] line"
        )
    finally:
        process.terminate()
        process.wait(10)


def test_scans_attack_tools_and_new_devices_have_alerts_and_panels() -> None:
    """Issue 22: the new events reach the on-call person (a rule each) and the dashboard."""
    rules = _rules()
    assert 'security_abuse_scope="scan"' in rules["SecurityScanDetected"]["expr"]
    assert "request.attack_tool" in rules["SecurityAttackToolSeen"]["expr"]
    assert "auth.login.new_device" in rules["SecurityNewDeviceLoginsSurge"]["expr"]
    dashboard = json.loads(
        (ROOT / "deploy" / "grafana" / "dashboards" / "otel-secaudit.json").read_text()
    )
    queries = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets") or []
    )
    for name in ("abuse[.]scan", "request[.]attack_tool", "auth.login.new_device"):
        assert name in queries, name
    inhibitions = yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]
    assert any(
        rule["source_matchers"] == ['alertname="SecurityScanDetected"']
        and rule["equal"] == ["job", "security_abuse_scope"]
        for rule in inhibitions
    )


def test_a_missing_tool_names_the_debian_package_that_ships_it(monkeypatch: Any) -> None:
    """amtool ships in prometheus-alertmanager and promtool in prometheus (there is no
    ``amtool`` package): the skip message says what to install."""
    import harness.processes as processes

    monkeypatch.setattr(processes.shutil, "which", lambda name: None)
    monkeypatch.setattr(processes.os.path, "exists", lambda path: False)
    for program, package in (
        ("amtool", "prometheus-alertmanager"),
        ("promtool", "prometheus"),
        ("prometheus-alertmanager", "prometheus-alertmanager"),
        ("redis-server", "redis-server"),
    ):
        try:
            processes.require_binary(program)
        except processes.MissingBinary as missing:
            assert str(missing).endswith(f"apt-get install -y {package})"), str(missing)
        else:
            raise AssertionError(f"{program} was found")
