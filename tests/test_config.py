"""Settings: arguments first, then OTEL_SECAUDIT_*; clear errors or lenient defaults."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest

import otel_secaudit
from otel_secaudit import ConfigError, Settings, runtime


def test_defaults_match_the_contract() -> None:
    settings = Settings.load(environ={})
    assert settings.host_threshold == 10
    assert settings.user_threshold == 5
    assert settings.window_seconds == 3600
    assert settings.store == "memory://"
    assert settings.block_seconds == 0
    assert settings.trusted_proxies == ()
    assert settings.hash_key is None and len(settings.effective_hash_key) == 32
    assert settings.record_user_name is False
    assert settings.span_events is True
    assert dict(settings.status_events) == {
        401: "auth.unauthenticated",
        403: "authz.permission_denied",
        429: "request.rate_limited",
    }
    assert settings.redact_keys == ()
    assert settings.spool_dir is None
    assert settings.scan_threshold == 50
    assert settings.new_device_days == 90
    assert settings.attack_tools == ()


def test_detection_rows_are_read_and_bounded() -> None:
    settings = Settings.load(
        environ={
            "OTEL_SECAUDIT_SCAN_THRESHOLD": "0",
            "OTEL_SECAUDIT_NEW_DEVICE_DAYS": "30",
            "OTEL_SECAUDIT_ATTACK_TOOLS": "evilscan, Acme-Prober ,",
        }
    )
    assert settings.scan_threshold == 0  # off
    assert settings.new_device_days == 30
    assert settings.attack_tools == ("evilscan", "Acme-Prober")
    assert Settings.load(scan_threshold=7, new_device_days=0).scan_threshold == 7
    for variable, value in (
        ("OTEL_SECAUDIT_SCAN_THRESHOLD", "-1"),
        ("OTEL_SECAUDIT_SCAN_THRESHOLD", "1000001"),
        ("OTEL_SECAUDIT_NEW_DEVICE_DAYS", "3651"),
        ("OTEL_SECAUDIT_NEW_DEVICE_DAYS", "ninety"),
    ):
        with pytest.raises(ConfigError, match=variable):
            Settings.load(environ={variable: value})
    with pytest.raises(ConfigError, match="new_device_days"):
        Settings.load(new_device_days=True)


def test_environment_is_read() -> None:
    env = {
        "OTEL_SECAUDIT_HOST_THRESHOLD": "20",
        "OTEL_SECAUDIT_USER_THRESHOLD": "3",
        "OTEL_SECAUDIT_WINDOW_SECONDS": "60",
        "OTEL_SECAUDIT_STORE": "redis://cache:6379/2",
        "OTEL_SECAUDIT_BLOCK_SECONDS": "300",
        "OTEL_SECAUDIT_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1",
        "OTEL_SECAUDIT_HASH_KEY": "0123456789abcdef0123",
        "OTEL_SECAUDIT_RECORD_USER_NAME": "true",
        "OTEL_SECAUDIT_SPAN_EVENTS": "false",
        "OTEL_SECAUDIT_STATUS_EVENTS": "401:auth.unauthenticated,419:request.csrf_mismatch",
        "OTEL_SECAUDIT_REDACT_KEYS": "ssn, x-internal",
        "OTEL_SECAUDIT_SPOOL_DIR": "/var/spool/secaudit",
    }
    settings = Settings.load(environ=env)
    assert settings.host_threshold == 20 and settings.user_threshold == 3
    assert settings.window_seconds == 60 and settings.block_seconds == 300
    assert settings.store == "redis://cache:6379/2"
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.1/32"),
    )
    assert settings.hash_key == b"0123456789abcdef0123"
    assert settings.record_user_name is True and settings.span_events is False
    assert dict(settings.status_events) == {
        401: "auth.unauthenticated",
        419: "request.csrf_mismatch",
    }
    assert settings.redact_keys == ("ssn", "x-internal")
    assert settings.spool_dir == Path("/var/spool/secaudit")
    assert "0123456789abcdef" not in repr(settings)  # the hash key is never printed


def test_arguments_win_over_environment() -> None:
    settings = Settings.load(environ={"OTEL_SECAUDIT_HOST_THRESHOLD": "20"}, host_threshold=7)
    assert settings.host_threshold == 7


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("OTEL_SECAUDIT_HOST_THRESHOLD", "-1", "must be between 1 and"),
        ("OTEL_SECAUDIT_USER_THRESHOLD", "five", "expected an integer"),
        ("OTEL_SECAUDIT_WINDOW_SECONDS", "0", "must be between 1 and"),
        ("OTEL_SECAUDIT_BLOCK_SECONDS", "-5", "must be between 0 and"),
        ("OTEL_SECAUDIT_STORE", "mongodb://x", "expected memory://"),
        ("OTEL_SECAUDIT_STORE", "redis://:6379/0", "needs a host"),
        ("OTEL_SECAUDIT_STORE", "redis://h:port/0", "bad port"),
        ("OTEL_SECAUDIT_STORE", "redis://h:6379/zero", "database must be a number"),
        ("OTEL_SECAUDIT_TRUSTED_PROXIES", "10.0.0.0/33", "not an IP address or CIDR"),
        ("OTEL_SECAUDIT_TRUSTED_PROXIES", "proxy.local", "not an IP address or CIDR"),
        ("OTEL_SECAUDIT_HASH_KEY", "short", "at least 16"),
        ("OTEL_SECAUDIT_RECORD_USER_NAME", "maybe", "true or false"),
        ("OTEL_SECAUDIT_STATUS_EVENTS", "401", "STATUS:event.name"),
        ("OTEL_SECAUDIT_STATUS_EVENTS", "999:auth.unauthenticated", "not an HTTP status"),
        ("OTEL_SECAUDIT_STATUS_EVENTS", "401:not a name", "unknown event name"),
    ],
)
def test_bad_environment_value(
    variable: str, value: str, fragment: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.load(environ={variable: value})
    assert variable in str(excinfo.value) and fragment in str(excinfo.value)
    with caplog.at_level(logging.WARNING, logger="otel_secaudit.config"):
        lenient = Settings.load(environ={variable: value}, lenient=True)
    assert (
        lenient
        == Settings(
            effective_hash_key=lenient.effective_hash_key,
        )
        or lenient.hash_key is None
    )
    assert any(variable in message for message in caplog.messages)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("host_threshold", -1),
        ("host_threshold", True),
        ("store", "ftp://x"),
        ("trusted_proxies", ["nope"]),
        ("span_events", "perhaps"),
        ("hash_key", b"short"),
        ("status_events", {401: "Not An Event"}),  # custom names take the status outcome
    ],
)
def test_bad_argument_names_the_argument(argument: str, value: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.load(environ={}, lenient=True, **{argument: value})
    assert argument in str(excinfo.value)


def test_unknown_setting() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'host_treshold'"):
        Settings.load(environ={}, host_treshold=3)


def test_configure_is_strict() -> None:
    previous = runtime.swap(None)
    try:
        with pytest.raises(ConfigError):
            otel_secaudit.configure(window_seconds=0)
        recorder = otel_secaudit.configure(host_threshold=3)
        assert recorder.settings.host_threshold == 3
        assert otel_secaudit.get_recorder() is recorder
    finally:
        runtime.swap(previous)
