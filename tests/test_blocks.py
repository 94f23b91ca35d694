"""Operators and blocks: ``otel-secaudit blocks list | release`` against real Redis (standalone,
sentinel, cluster), ``otel_secaudit.release_block`` in-process, the ``admin.action`` audit
record, and a release seen by a running application within a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otel_secaudit
from harness import (
    OTLPReceiver,
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    free_port,
    wait_for,
)
from otel_secaudit.cli import main
from otel_secaudit.detection.keys import operator_key
from otel_secaudit.detection.stores import MemoryStore, RedisStore
from otel_secaudit.detection.window import Hit, Policy

from .test_web_e2e import start_app

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0
POLICY = Policy(host_threshold=3, user_threshold=100, window_seconds=60, block_seconds=10)


def _hits(store: Any, key: str, at: float, times: int = 3) -> list[Any]:
    hits = [
        Hit(key, None, "auth.login.failed", f"{i:032x}", at + i * 0.01, True) for i in range(times)
    ]
    return store.apply(hits, POLICY)


# -- operator input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7\n", "203.0.113.7"),  # pasted with its line end
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2::99", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::99]", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::/64", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2:0::/64", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa::/64", "2001:db8:1:2::/64"),
        ("203.0.113.7/32", "203.0.113.7"),
    ],
)
def test_operator_key_is_the_key_the_instances_use(text: str, key: str) -> None:
    assert operator_key(text) == key


@pytest.mark.parametrize(
    "text",
    ["", "   ", "not-an-ip", "203.0.113.300", "10.0.0.0/8", "2001:db8::/48", "1" * 5000,
     "2001:db8::1%eth0/64", "\u0661\u0662\u0663.1.1.1", "::/0"],
)  # fmt: skip
def test_operator_key_refuses_what_is_no_host_key(text: str) -> None:
    with pytest.raises(ValueError):
        operator_key(text)


# -- store semantics (memory and real Redis) --------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def store(request: Any, redis_server: RedisServer) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    made = RedisStore(redis_server.url, prefix=f"{{t{time.monotonic_ns()}}}:")
    yield made
    made.close()


def test_release_ends_the_block_restarts_the_count_and_keeps_history(store: Any) -> None:
    (crossing,) = _hits(store, "203.0.113.7", T0)
    assert crossing.block_seconds == 10
    (listed,) = store.list_blocks(T0 + 1)
    assert (listed.key, listed.until, listed.offences) == ("203.0.113.7", T0 + 0.02 + 10, 1)

    released = store.release("203.0.113.7", T0 + 2, 60)
    assert released.until == pytest.approx(T0 + 10.02) and released.offences == 1
    assert store.list_blocks(T0 + 2) == []
    assert store.housekeeping(T0 + 20).expired == []  # the release was its end: no second one
    # the count restarted: two more violations do not block, the third does, twice as long
    assert _hits(store, "203.0.113.7", T0 + 3, times=2) == []
    (again,) = _hits(store, "203.0.113.7", T0 + 4, times=1)
    assert again.block_seconds == 20


def test_release_with_forget_drops_the_history(store: Any) -> None:
    _hits(store, "2001:db8:1:2::/64", T0)
    released = store.release("2001:db8:1:2::/64", T0 + 1, 60, forget=True)
    assert released.until > T0 + 1
    (again,) = _hits(store, "2001:db8:1:2::/64", T0 + 2)
    assert again.block_seconds == 10  # a first block again


def test_releasing_what_is_not_blocked_changes_nothing_else(store: Any) -> None:
    _hits(store, "198.51.100.1", T0)
    released = store.release("198.51.100.9", T0 + 1, 60)
    assert released.until == 0 and released.offences == 0
    assert [info.key for info in store.list_blocks(T0 + 1)] == ["198.51.100.1"]


def test_list_is_longest_first_and_bounded(store: Any) -> None:
    for i in range(5):
        _hits(store, f"192.0.2.{i}", T0 + i)
    listed = store.list_blocks(T0 + 5, limit=3)
    assert [info.key for info in listed] == ["192.0.2.4", "192.0.2.3", "192.0.2.2"]


# -- in-process release (memory store) ---------------------------------------------------------


def _admin_actions(sdk: Any) -> list[dict[str, Any]]:
    return [
        dict(log.log_record.attributes)
        for log in sdk.logs()
        if log.log_record.event_name == "admin.action"
    ]


def test_release_block_in_process(app_runtime: Any) -> None:
    sdk, rt = app_runtime(host_threshold=3, block_seconds=30)
    for _ in range(3):
        otel_secaudit.record("auth.login.failed", client_address="2001:db8:1:2::5")
    assert rt.detector.refusal("2001:db8:1:2::77") is not None  # the /64 is blocked

    released = otel_secaudit.release_block("2001:db8:1:2::/64")
    assert released.was_blocked and released.key == "2001:db8:1:2::/64"
    assert 29 < released.seconds_left <= 30 and released.offences == 1
    assert rt.detector.refusal("2001:db8:1:2::77") is None
    (action,) = _admin_actions(sdk)
    assert action["security.action"] == "release_block"
    assert action["security.abuse.key"] == "2001:db8:1:2::/64"
    assert action["security.event.outcome"] == "success"

    for _ in range(3):  # count restarted, history kept: the next block is twice as long
        otel_secaudit.record("auth.login.failed", client_address="2001:db8:1:2::5")
    (_, second) = [
        log.log_record.attributes["security.block.seconds"]
        for log in sdk.logs()
        if log.log_record.event_name == "abuse.block.started"
    ]
    assert second == 60


def test_release_block_in_process_with_a_shared_store(
    app_runtime: Any, redis_server: RedisServer
) -> None:
    """With Redis, the in-process call releases for every instance: here at once, in the
    store for the others (a second detector on the same store drops it at its next refresh)."""
    uri = redis_server.database_url(11)
    _block_through(uri, "198.51.100.77")
    sdk, rt = app_runtime(host_threshold=3, block_seconds=30, store=uri)
    assert rt.detector.flush(5)
    assert rt.detector.refusal("198.51.100.77") is not None  # learnt from the store
    released = otel_secaudit.release_block("198.51.100.77")
    assert released.was_blocked and released.offences == 1
    assert rt.detector.refusal("198.51.100.77") is None
    store = RedisStore(uri)
    try:
        assert "198.51.100.77" not in {info.key for info in store.list_blocks(time.time())}
    finally:
        store.close()
    (action,) = _admin_actions(sdk)
    assert action["security.abuse.key"] == "198.51.100.77"


def test_release_block_refuses_a_malformed_address_and_a_process_without_detection(
    app_runtime: Any, make_sdk: Any
) -> None:
    app_runtime(block_seconds=30)
    with pytest.raises(ValueError, match="not an IP address"):
        otel_secaudit.release_block("evil\x1b[2J")
    make_sdk()  # detection off
    with pytest.raises(RuntimeError, match="not running"):
        otel_secaudit.release_block("203.0.113.7")


# -- the CLI against real Redis topologies -----------------------------------------------------


def _cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _block_through(uri: str, address: str, *, prefix: str | None = None) -> None:
    """Three violations applied to the shared store as an instance's worker would."""
    store = RedisStore(uri) if prefix is None else RedisStore(uri, prefix=prefix)
    try:
        key = operator_key(address)
        hits = [Hit(key, None, "auth.login.failed", "0" * 32, time.time(), True)] * 3
        assert store.apply(hits, POLICY)
    finally:
        store.close()


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")


def _list_release_cycle(capsys: Any, uri: str, address: str, key: str) -> None:
    _block_through(uri, address)
    code, out, _ = _cli(capsys, "blocks", "list", "--store", uri, "--json")
    assert code == 0
    rows = {row["key"]: row for row in json.loads(out)}
    assert 0 < rows[key]["seconds_left"] <= 10 and rows[key]["blocks"] >= 1
    code, out, _ = _cli(capsys, "blocks", "list", "--store", uri)
    assert code == 0 and key in out and "seconds left" in out
    code, out, _ = _cli(capsys, "blocks", "release", address, "--store", uri)
    assert code == 0 and f"released {key}" in out
    code, out, _ = _cli(capsys, "blocks", "list", "--store", uri, "--json")
    assert key not in {row["key"] for row in json.loads(out)}


@pytest.mark.usefixtures("no_export")
def test_cli_on_a_standalone_redis(capsys: Any, redis_server: RedisServer) -> None:
    uri = redis_server.database_url(7)
    _list_release_cycle(capsys, uri, "2001:db8:7:7::1", "2001:db8:7:7::/64")
    code, out, _ = _cli(capsys, "blocks", "release", "203.0.113.250", "--store", uri, "--json")
    assert code == 0 and json.loads(out)["was_blocked"] is False


@pytest.mark.usefixtures("no_export")
def test_cli_through_a_sentinel(capsys: Any, redis_sentinel: RedisSentinelServers) -> None:
    _list_release_cycle(capsys, redis_sentinel.url, "198.51.100.20", "198.51.100.20")


@pytest.mark.usefixtures("no_export")
def test_cli_on_a_cluster(capsys: Any, redis_cluster: RedisClusterServers) -> None:
    # several keys, so they land on several shards once the state is sharded
    addresses = [f"192.0.2.{i}" for i in range(40, 52)]
    for address in addresses:
        _block_through(redis_cluster.url, address)
    code, out, _ = _cli(capsys, "blocks", "list", "--store", redis_cluster.url, "--json")
    assert code == 0 and set(addresses) <= {row["key"] for row in json.loads(out)}
    for address in addresses:
        code, out, _ = _cli(capsys, "blocks", "release", address, "--store", redis_cluster.url)
        assert code == 0 and f"released {address}" in out
    code, out, _ = _cli(capsys, "blocks", "list", "--store", redis_cluster.url, "--json")
    assert not set(addresses) & {row["key"] for row in json.loads(out)}


def test_cli_release_is_exported_as_admin_action(
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    otlp_receiver: OTLPReceiver,
) -> None:
    uri = redis_server.database_url(8)
    _block_through(uri, "203.0.113.77")
    for name, value in {
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": "on-call",
    }.items():
        monkeypatch.setenv(name, value)
    code, out, err = _cli(
        capsys, "blocks", "release", "203.0.113.77", "--store", uri, "--forget", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert (
        result["was_blocked"]
        and result["forgotten"]
        and result["audit_exported"] == "exported via otlp"
    )
    (action,) = wait_for(lambda: otlp_receiver.security_logs("admin.action"), 10)
    assert action.attributes["security.action"] == "release_block"
    assert action.attributes["security.abuse.key"] == "203.0.113.77"
    assert action.attributes["security.reason"] == "history_forgotten"


def test_cli_says_when_the_audit_record_cannot_be_exported(
    capsys: Any, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    code, out, err = _cli(capsys, "blocks", "release", "203.0.113.78", "--store", redis_server.url)
    assert code == 0 and "was not blocked" in out
    assert "warning: the admin.action record was not exported (otlp: failed)" in err


@pytest.mark.usefixtures("no_export")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["release", "not-an-address"], "is not an IP address"),
        (["release", "10.0.0.0/8"], "blocks are per IPv4 address"),
        (["release", "x" * 10_000], "is not an IP address"),
        (["list", "--store", "memcached://x"], "--store: expected memory://"),
        (["list", "--store", "memory://"], "otel_secaudit.release_block('ADDRESS')"),
        (["release", "203.0.113.7", "--store", "memory://"], "release_block('203.0.113.7')"),
    ],
)
def test_cli_errors(capsys: Any, argv: list[str], message: str) -> None:
    code, out, err = _cli(capsys, "blocks", *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith("otel-secaudit: error: ") and len(err.splitlines()) == 1


@pytest.mark.usefixtures("no_export")
def test_cli_unreachable_store_is_one_line_without_the_password(capsys: Any) -> None:
    uri = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    code, _, err = _cli(capsys, "blocks", "list", "--store", uri)
    assert code == 2 and "cannot reach the store redis://" in err and "s3cret-pw" not in err
    assert len(err.splitlines()) == 1 and time.monotonic() - started < 10
    code, _, err = _cli(capsys, "blocks", "release", "203.0.113.7", "--store", uri)
    assert code == 2 and "cannot reach the store" in err


def test_default_store_comes_from_the_environment(
    capsys: Any, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    monkeypatch.setenv("OTEL_SECAUDIT_STORE", redis_server.database_url(9))
    code, out, _ = _cli(capsys, "blocks", "list")
    assert code == 0 and "no active blocks in redis://" in out
    monkeypatch.delenv("OTEL_SECAUDIT_STORE")
    code, _, err = _cli(capsys, "blocks", "list")
    assert code == 2 and "blocks live in each application process" in err


# -- two processes: a running application sees the CLI's release within a second --------------


@pytest.mark.slow
def test_a_running_app_lets_the_client_through_within_a_second_of_the_release(
    otlp_receiver: OTLPReceiver, redis_server: RedisServer
) -> None:
    uri = redis_server.database_url(10)
    app = start_app(
        otlp_receiver,
        store=uri,
        host_threshold="3",
        block_seconds="300",
        window_seconds="600",
        trusted_proxies="127.0.0.1/32",
    )
    attacker = {"x-forwarded-for": "203.0.113.5"}
    try:
        with httpx.Client(base_url=app.base_url, headers=attacker) as http:
            for _ in range(3):
                assert http.get("/private").status_code == 401
            wait_for(lambda: http.get("/private").status_code == 429, timeout=10, interval=0.1)
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "OTEL_LOGS_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.grpc_endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
            }
            done = subprocess.run(
                [sys.executable, "-m", "otel_secaudit.cli", "blocks", "release", "203.0.113.5",
                 "--store", uri],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            released_at = time.monotonic()
            assert done.returncode == 0, done.stderr
            assert "released 203.0.113.5" in done.stdout
            wait_for(lambda: http.get("/private").status_code == 401, timeout=1.0, interval=0.05)
            assert time.monotonic() - released_at < 1.0
        (action,) = wait_for(lambda: otlp_receiver.security_logs("admin.action"), 10)
        assert action.attributes["security.abuse.key"] == "203.0.113.5"
    finally:
        app.stop()


def test_readme_on_call_commands_are_valid() -> None:
    """Every ``otel-secaudit`` command of the README's "On call" section parses as written."""
    import shlex

    from otel_secaudit.cli import _parser

    from .conftest import markdown_code_lines

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## On call")
    section = text[start : text.index("\n## ", start + 1)]
    commands = []
    for line in markdown_code_lines(section, "sh"):
        words = shlex.split(line, comments=True)
        while words and "=" in words[0]:  # VARIABLE=value prefixes
            words.pop(0)
        if words and words[0] == "otel-secaudit":
            commands.append(words[1:])
    assert len(commands) >= 14
    parser = _parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert args.command in ("blocks", "report")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.from_regex(r"[0-9a-fA-F:.\[\]/%]{1,60}", fullmatch=True))
def test_fuzz_operator_key_returns_a_key_or_a_value_error(text: str) -> None:
    """Whatever an operator pastes: a normalized key that parses back to itself, or a
    ValueError (the CLI's one-line message), never another exception."""
    try:
        key = operator_key(text)
    except ValueError:
        return
    assert key == operator_key(key)
    assert "\n" not in key and "%" not in key and len(key) <= 50
