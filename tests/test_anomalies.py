"""Detection beyond brute force (issue 22): attack tools named in the User-Agent, scans (404/405
per client address in 60 s) and new devices or networks at login, with the memory store and
the SDK's in-memory exporters (real servers: tests/test_anomalies_e2e.py)."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otel_secaudit
from otel_secaudit import Violation
from otel_secaudit.attack_tools import ATTACK_TOOLS, AttackToolMatcher
from otel_secaudit.context import request_scope
from otel_secaudit.detection import AbuseDetector, enable_detection
from otel_secaudit.detection.devices import (
    MAX_REMEMBERED,
    DeviceHistory,
    SeenLogin,
    device_family,
    network_of,
)
from otel_secaudit.detection.scans import MAX_PATH_LENGTH, MAX_PATHS, Probe, ScanCounter
from otel_secaudit.web.exchange import Exchange

from .conftest import FakeClock

ADDRESS = "203.0.113.7"
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
CHROME_WINDOWS_NEWER = CHROME_WINDOWS.replace("131.0.0.0", "133.0.6943.98")
FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)


def security_logs(sdk: Any, name: str | None = None) -> list[Any]:
    return [
        log.log_record
        for log in sdk.logs()
        if log.instrumentation_scope.name == "otel_secaudit"
        and (name is None or log.log_record.event_name == name)
    ]


def _cpu(call: Any) -> float:
    start = time.thread_time()
    call()
    return time.thread_time() - start


# -- attack tools ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "tool"),
    [
        ("sqlmap/1.8.11#stable (https://sqlmap.org)", "sqlmap"),
        ("Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:map_codes)", "nikto"),
        ("Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)", "nmap"),
        ("Nuclei - Open-source project (github.com/projectdiscovery/nuclei)", "nuclei"),
        ("masscan/1.3 (https://github.com/robertdavidgraham/masscan)", "masscan"),
        ("Mozilla/5.0 zgrab/0.x", "zgrab"),
        ("gobuster/3.6", "gobuster"),
        ("DirBuster-1.0-RC1 (http://www.owasp.org/index.php/Category:OWASP_DirBuster_Project)",
         "dirbuster"),
        ("WPScan v3.8.25 (https://wpscan.com/wordpress-security-scanner)", "wpscan"),
        ("Mozilla/4.0 (Hydra)", "hydra"),
        ("Fuzz Faster U Fool v2.1.0", "ffuf"),
        ("SQLMAP/1.0", "sqlmap"),  # case-insensitive
    ],
)  # fmt: skip
def test_known_attack_tools_are_named(user_agent: str, tool: str) -> None:
    assert AttackToolMatcher().tool(user_agent) == tool


@pytest.mark.parametrize(
    "user_agent",
    [
        CHROME_WINDOWS,
        FIREFOX_LINUX,
        "python-requests/2.32.3",
        "python-httpx/0.28.1",
        "curl/8.5.0",
        "Go-http-client/1.1",
        "mysqlmapper/1.0",  # a token inside a word is no match
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "",
    ],
)
def test_ordinary_clients_are_not_attack_tools(user_agent: str) -> None:
    assert AttackToolMatcher().tool(user_agent) is None


def test_every_listed_token_matches_itself() -> None:
    matcher = AttackToolMatcher()
    for tool, tokens in ATTACK_TOOLS.items():
        for token in tokens:
            assert matcher.tool(f"x {token}/1.0 y") == tool, token


def test_configured_tokens_extend_the_list() -> None:
    matcher = AttackToolMatcher(["Acme-Prober", "evil scan"])
    assert matcher.tool("acme-prober/2.0") == "acme-prober"
    assert matcher.tool("Mozilla/5.0 (Evil Scan)") == "evil scan"
    assert matcher.tool("sqlmap/1") == "sqlmap"  # the built-in list stays
    for bad in ("", " ", "x" * 101, "a\nb"):
        with pytest.raises(ValueError):
            AttackToolMatcher([bad])
    with pytest.raises(otel_secaudit.ConfigError, match="OTEL_SECAUDIT_ATTACK_TOOLS"):
        otel_secaudit.Settings.load(environ={"OTEL_SECAUDIT_ATTACK_TOOLS": "ok,a\x00b"})


@pytest.mark.parametrize("unit", ["sqlmap", "a" * 7, "nmap scripting ", "-/ ", "\u202e", "😀"])
def test_a_64_kib_user_agent_costs_linear_time(unit: str) -> None:
    """Matched by one RE2 pattern: 64 KiB (far beyond the 512 characters the web core keeps)
    of anything costs milliseconds."""
    hostile = (unit * (65536 // len(unit) + 1))[:65536]
    matcher = AttackToolMatcher()
    assert _cpu(lambda: matcher.tool(hostile)) < 0.05


def open_exchange(
    user_agent: str, path: str = "/items/7", route: str | None = "/items/{id}"
) -> Exchange:
    return Exchange.open(
        method="GET",
        path=path,
        peer=ADDRESS,
        header=lambda name: [],
        user_agent=user_agent,
        route_of=lambda: route,
    )


def test_an_attack_tool_is_the_requests_one_violation(make_sdk: Any) -> None:
    sdk = make_sdk()
    for status in (403, 200):
        exchange = open_exchange("sqlmap/1.8 (https://sqlmap.org)")
        with request_scope(exchange.request):
            exchange.respond(status)
    records = security_logs(sdk)
    assert [r.event_name for r in records] == ["request.attack_tool"] * 2  # no 403 event on top
    attrs = dict(records[0].attributes)
    assert attrs["security.reason"] == "sqlmap"
    assert attrs["security.event.outcome"] == "failure"
    assert attrs["user_agent.original"].startswith("sqlmap/1.8")
    assert attrs["http.response.status_code"] == 403
    assert sdk.total("security.violations", security__event__name="request.attack_tool") == 2


def test_an_application_failure_stays_the_requests_violation(make_sdk: Any) -> None:
    sdk = make_sdk()
    exchange = open_exchange("Mozilla/4.0 (Hydra)")
    with request_scope(exchange.request):
        otel_secaudit.record("authz.cross_tenant", tenant_id="t1", requested_tenant_id="t2")
        exchange.respond(403)
    assert [r.event_name for r in security_logs(sdk)] == ["authz.cross_tenant"]


def test_an_attack_tool_feeds_abuse_detection(make_sdk: Any, detectors: list[Any]) -> None:
    sdk = make_sdk(host_threshold=3)
    detector = enable_detection(sdk.recorder)
    detectors.append(detector)
    sdk.runtime.detector = detector
    for _ in range(3):
        exchange = open_exchange("Mozilla/5.00 (Nikto/2.5.0)")
        with request_scope(exchange.request):
            exchange.respond(200)
    assert detector.flush()
    [host] = security_logs(sdk, "abuse.host")
    assert host.body == {"request.attack_tool": 3}


def test_a_configured_tool_is_recorded(make_sdk: Any) -> None:
    sdk = make_sdk(attack_tools=("acme-prober",))
    exchange = open_exchange("Acme-Prober/0.1")
    with request_scope(exchange.request):
        exchange.respond(404)
    [record] = security_logs(sdk)
    assert dict(record.attributes)["security.reason"] == "acme-prober"


# -- scans: the counter ------------------------------------------------------------------------


def probe(i: int, at: float, key: str = ADDRESS, blockable: bool = False) -> Probe:
    return Probe(key, f"/probe/{i}", f"{i + 1:032x}", at, blockable)


def test_threshold_within_60_s_crosses_once_with_paths_and_evidence() -> None:
    counter = ScanCounter(max_keys=100)
    crossings = counter.apply([probe(i, 1000.0 + i) for i in range(12)], 5, False)
    [crossing] = crossings
    assert crossing.key == ADDRESS and crossing.count == 5 and crossing.threshold == 5
    assert crossing.paths == tuple(f"/probe/{i}" for i in range(5))
    assert crossing.trace_ids == tuple(f"{i + 1:032x}" for i in range(5))
    assert not crossing.blockable
    # observe only: no second signal within 60 s of the first (at 1004 s), then one
    assert counter.apply([probe(100 + i, 1060.0 + i * 0.1) for i in range(5)], 5, False) == []
    later = counter.apply([probe(200, 1064.0)], 5, False)
    assert len(later) == 1 and later[0].count >= 5


def test_probes_older_than_60_s_do_not_count() -> None:
    counter = ScanCounter(max_keys=100)
    assert counter.apply([probe(i, 1000.0 + i * 20) for i in range(20)], 5, False) == []


def test_blocking_keys_cross_every_threshold() -> None:
    counter = ScanCounter(max_keys=100)
    crossings = counter.apply(
        [probe(i, 1000.0 + i * 0.1, blockable=True) for i in range(10)], 5, True
    )
    assert len(crossings) == 2 and all(c.blockable for c in crossings)


def test_paths_are_distinct_capped_and_few() -> None:
    counter = ScanCounter(max_keys=10)
    long = "/" + "a" * 5000
    probes = [Probe(ADDRESS, long, "", 1000.0)] * 3 + [
        Probe(ADDRESS, f"/p{i}", "", 1000.0) for i in range(30)
    ]
    [crossing] = counter.apply(probes, len(probes), False)
    assert len(crossing.paths) == MAX_PATHS
    assert crossing.paths[0] == long[:MAX_PATH_LENGTH]
    assert len(set(crossing.paths)) == MAX_PATHS


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=50))
def test_hostile_paths_never_raise(paths: list[str]) -> None:
    counter = ScanCounter(max_keys=5)
    counter.apply([Probe(p[:40] or "x", p, "", 1000.0) for p in paths], 3, True)
    assert counter.tracked_keys() <= 5


def test_memory_is_bounded_by_max_keys_whatever_attackers_send() -> None:
    """100,000 distinct addresses, each probing long random paths: the counter keeps
    ``max_keys`` keys of at most 10 paths of 128 characters each."""
    counter = ScanCounter(max_keys=2000)
    tracemalloc.start()
    try:
        for i in range(100_000):
            key = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            counter.apply(
                [Probe(key, f"/{i}/" + "x" * 4000, "", 1000.0 + j) for j in range(3)], 50, False
            )
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counter.tracked_keys() == 2000
    assert counter.evictions == 98_000
    assert current < 2000 * 3 * 1024, current  # ~1.3 KiB per key (3 paths of 128 chars)


# -- scans: through the detector ---------------------------------------------------------------


def scan_detector(sdk: Any, clock: FakeClock, detectors: list[Any]) -> AbuseDetector:
    detector = AbuseDetector(sdk.recorder, clock=clock)
    detectors.append(detector)
    sdk.runtime.detector = detector
    return detector


def test_abuse_scan_carries_the_contract_attributes(make_sdk: Any, detectors: list[Any]) -> None:
    sdk = make_sdk(scan_threshold=4)
    clock = FakeClock()
    detector = scan_detector(sdk, clock, detectors)
    tracer = sdk.tracer
    for i in range(4):
        exchange = open_exchange("curl/8", path=f"/.env{i}", route=None)
        with tracer.start_as_current_span("GET"), request_scope(exchange.request):
            exchange.respond(404)
        clock.advance(1)
    assert detector.flush()
    [scan] = security_logs(sdk, "abuse.scan")
    attrs = dict(scan.attributes)
    assert attrs["security.abuse.scope"] == "scan"
    assert attrs["security.abuse.key"] == ADDRESS
    assert attrs["client.address"] == ADDRESS
    assert attrs["security.abuse.count"] == 4
    assert attrs["security.abuse.threshold"] == 4
    assert attrs["security.abuse.window_s"] == 60
    assert attrs["security.scan.paths"] == ("/.env0", "/.env1", "/.env2", "/.env3")
    assert len(attrs["security.abuse.trace_ids"]) == 4
    assert format(scan.trace_id, "032x") == attrs["security.abuse.trace_ids"][-1]
    assert scan.severity_text == "WARN"
    # the 404s themselves are not recorded, and no block without blocks
    assert [r.event_name for r in security_logs(sdk)] == ["abuse.scan"]
    assert detector.is_blocked(ADDRESS) == 0.0
    assert sdk.total("security.abuse.signals", security__abuse__scope="scan") == 1


def test_a_secret_in_a_probed_path_is_redacted(make_sdk: Any, detectors: list[Any]) -> None:
    jwt = (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    )
    sdk = make_sdk(scan_threshold=3)
    detector = scan_detector(sdk, FakeClock(), detectors)
    for path in ("/api/" + jwt, "/x\x1b[31m", "/password-recovery/alice@example.com"):
        exchange = open_exchange("curl/8", path=path, route=None)
        with request_scope(exchange.request):
            exchange.respond(405)
    assert detector.flush()
    [scan] = security_logs(sdk, "abuse.scan")
    paths = dict(scan.attributes)["security.scan.paths"]
    assert jwt not in repr(paths) and "\x1b" not in repr(paths)
    assert "alice" not in repr(paths) and "/password-recovery/[REDACTED]" in paths
    # redacted before it is kept, not only when exported
    detector.anomalies.probe(ADDRESS, "/api/" + jwt)
    assert detector.flush()
    kept = [state.paths for state in detector.anomalies.scans._keys.values()]
    assert kept == [["[REDACTED]"]]


def test_scan_threshold_zero_turns_scans_off(make_sdk: Any, detectors: list[Any]) -> None:
    sdk = make_sdk(scan_threshold=0, new_device_days=0)
    detector = scan_detector(sdk, FakeClock(), detectors)
    assert not detector.anomalies.enabled
    for _ in range(100):
        exchange = open_exchange("curl/8", route=None)
        with request_scope(exchange.request):
            exchange.respond(404)
    assert detector.flush()
    assert security_logs(sdk) == []


def test_a_scan_blocks_like_abuse_host_and_shares_its_doubling(
    make_sdk: Any, detectors: list[Any]
) -> None:
    sdk = make_sdk(scan_threshold=3, host_threshold=2, block_seconds=10)
    clock = FakeClock()
    detector = scan_detector(sdk, clock, detectors)
    # First offence: a brute force (abuse.host) blocks for 10 s.
    for i in range(2):
        detector.submit(Violation("auth.login.failed", ADDRESS, None, f"{i + 1:032x}", 0.0))
    assert detector.flush()
    assert security_logs(sdk, "abuse.block.started")[0].attributes["security.block.seconds"] == 10
    clock.advance(11)
    assert detector.flush()  # the block ends
    assert len(security_logs(sdk, "abuse.block.ended")) == 1
    # Second offence: a scan; a repeat offender's block doubles.
    for i in range(3):
        exchange = open_exchange("curl/8", path=f"/wp-admin/{i}", route=None)
        with request_scope(exchange.request):
            exchange.respond(404)
    assert detector.flush()
    [scan] = security_logs(sdk, "abuse.scan")
    started = security_logs(sdk, "abuse.block.started")
    assert [s.attributes["security.block.seconds"] for s in started] == [10, 20]
    assert started[1].attributes["security.abuse.key"] == ADDRESS
    assert 19 < detector.is_blocked(ADDRESS) <= 20
    refused = open_exchange("curl/8")
    with request_scope(refused.request):
        assert refused.refusal() is not None


def test_an_allowlisted_scanner_is_signalled_not_blocked(
    make_sdk: Any, detectors: list[Any]
) -> None:
    sdk = make_sdk(scan_threshold=2, block_seconds=10, allowlist=("203.0.113.0/24",))
    detector = scan_detector(sdk, FakeClock(), detectors)
    for i in range(2):
        exchange = open_exchange("curl/8", path=f"/{i}", route=None)
        with request_scope(exchange.request):
            exchange.respond(404)
    assert detector.flush()
    assert len(security_logs(sdk, "abuse.scan")) == 1
    assert security_logs(sdk, "abuse.block.started") == []
    assert detector.is_blocked(ADDRESS) == 0.0


def test_ipv6_scanners_are_counted_per_network(make_sdk: Any, detectors: list[Any]) -> None:
    sdk = make_sdk(scan_threshold=3)
    detector = scan_detector(sdk, FakeClock(), detectors)
    for i in range(3):
        detector.anomalies.probe(f"2001:db8:1:2::{i + 1:x}", f"/{i}")
    assert detector.flush()
    [scan] = security_logs(sdk, "abuse.scan")
    assert scan.attributes["security.abuse.key"] == "2001:db8:1:2::/64"
    assert "client.address" not in scan.attributes


def test_a_full_queue_drops_and_counts(make_sdk: Any, detectors: list[Any]) -> None:
    sdk = make_sdk(scan_threshold=5)
    detector = AbuseDetector(sdk.recorder, queue_size=1)
    detectors.append(detector)
    detector.anomalies._handoff.close(1.0)  # a stopped worker refuses, as a full queue does
    detector.anomalies.probe(ADDRESS, "/x")
    assert detector.anomalies.stats()["dropped"] == 1


# -- new devices -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:aa:bb::1", "2001:db8:aa::/48"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),
        ("64:ff9b::c000:221", "192.0.2.0/24"),
        ("[2001:db8::1]", "2001:db8::/48"),
        ("testclient", None),
        ("", None),
        (None, None),
        ("1.2.3.4\x00", None),
    ],
)
def test_network_of(address: str | None, network: str | None) -> None:
    assert network_of(address) == network


def test_device_family_is_ua_parsers_browser_and_os() -> None:
    assert device_family(CHROME_WINDOWS) == "Chrome / Windows"
    assert device_family(CHROME_WINDOWS_NEWER) == "Chrome / Windows"  # an update is no new device
    assert device_family(FIREFOX_LINUX) == "Firefox / Ubuntu"
    assert device_family(SAFARI_IPHONE) == "Mobile Safari / iOS"
    assert device_family("python-requests/2.32") == "Python Requests / Other"
    assert device_family("totally unknown") == "Other / Other"
    assert device_family(None) is None and device_family("") is None


def seen(device: str | None, network: str | None, at: float, user: str = "u1") -> SeenLogin:
    return SeenLogin(user, device, network, at)


DAY = 86400.0


def test_first_login_is_not_new_then_each_dimension_is_judged() -> None:
    history = DeviceHistory(max_keys=100)
    period = 90 * DAY
    assert history.apply(
        [
            seen("Chrome / Windows", "192.0.2.0/24", 0),  # first login
            seen("Chrome / Windows", "192.0.2.0/24", 10),
            seen("Firefox / Ubuntu", "192.0.2.0/24", 20),
            seen("Chrome / Windows", "198.51.100.0/24", 30),
            seen("Mobile Safari / iOS", "2001:db8::/48", 40),
            seen("Mobile Safari / iOS", "2001:db8::/48", 50),
            seen(None, None, 60),  # nothing to judge
        ],
        period,
    ) == [None, None, "new_device", "new_network", "new_device_and_network", None, None]


def test_what_was_seen_is_forgotten_after_the_period() -> None:
    history = DeviceHistory(max_keys=100)
    period = 30 * DAY
    assert history.apply([seen("A", "n1", 0), seen("B", "n1", 29 * DAY)], period) == [
        None,
        "new_device",
    ]
    # A was last seen 31 days ago: forgotten, so it is new again; B is still known.
    assert history.apply([seen("A", "n1", 31 * DAY), seen("B", "n1", 31 * DAY)], period) == [
        "new_device",
        None,
    ]
    # Nothing within the period: as good as a first login.
    assert history.apply([seen("C", "n2", 200 * DAY)], period) == [None]


def test_history_is_bounded_per_user_and_by_max_keys() -> None:
    history = DeviceHistory(max_keys=50)
    logins = [seen(f"family {i}", f"10.0.{i}.0/24", float(i)) for i in range(100)]
    history.apply(logins, 90 * DAY)
    known = history._keys["u1"]
    assert len(known.devices) == MAX_REMEMBERED and len(known.networks) == MAX_REMEMBERED
    # the most recently seen are kept
    assert "family 99" in known.devices and "family 0" not in known.devices
    history.apply([seen("A", "n", 0.0, user=f"user {i}") for i in range(500)], 90 * DAY)
    assert history.tracked_keys() == 50 and history.evictions == 451


def login_detector(sdk: Any, detectors: list[Any]) -> AbuseDetector:
    detector = enable_detection(sdk.recorder)
    detectors.append(detector)
    sdk.runtime.detector = detector
    return detector


def login(sdk: Any, user_agent: str, address: str, **fields: Any) -> str:
    """A login recorded inside a request span; returns its trace ID."""
    exchange = Exchange.open(
        method="POST", path="/login", peer=address, header=lambda n: [], user_agent=user_agent
    )
    with sdk.tracer.start_as_current_span("POST /login") as span, request_scope(exchange.request):
        otel_secaudit.record("auth.login.succeeded", **fields)
    return format(span.get_span_context().trace_id, "032x")


def test_new_device_event_carries_reason_user_and_the_logins_trace(
    make_sdk: Any, detectors: list[Any]
) -> None:
    sdk = make_sdk()
    detector = login_detector(sdk, detectors)
    login(sdk, CHROME_WINDOWS, "192.0.2.10", user_id="u-42")
    login(sdk, CHROME_WINDOWS_NEWER, "192.0.2.99", user_id="u-42")  # same device and /24
    trace_id = login(sdk, SAFARI_IPHONE, "198.51.100.4", user_id="u-42")
    login(sdk, SAFARI_IPHONE, "198.51.100.5", user_id="someone-else")  # a first login
    assert detector.flush()
    [record] = security_logs(sdk, "auth.login.new_device")
    attrs = dict(record.attributes)
    assert attrs["security.reason"] == "new_device_and_network"
    assert attrs["user.id"] == "u-42"
    assert attrs["client.address"] == "198.51.100.4"
    assert attrs["user_agent.original"] == SAFARI_IPHONE
    assert attrs["security.event.outcome"] == "success"
    assert attrs["security.abuse.trace_ids"] == (trace_id,)
    assert format(record.trace_id, "032x") == trace_id
    assert record.severity_text == "INFO"
    assert "http.route" not in attrs  # emitted off the request: no other request leaks in


def test_new_device_by_user_hash_for_a_login_known_only_by_name(
    make_sdk: Any, detectors: list[Any]
) -> None:
    sdk = make_sdk(hash_key="k" * 32)
    detector = login_detector(sdk, detectors)
    login(sdk, FIREFOX_LINUX, "192.0.2.10", user_name="Alice")
    login(sdk, FIREFOX_LINUX, "203.0.113.1", user_name="alice ")
    assert detector.flush()
    [record] = security_logs(sdk, "auth.login.new_device")
    assert record.attributes["security.reason"] == "new_network"
    assert len(record.attributes["user.hash"]) == 64
    assert "user.id" not in record.attributes


def test_new_device_days_zero_turns_it_off(make_sdk: Any, detectors: list[Any]) -> None:
    sdk = make_sdk(new_device_days=0)
    detector = login_detector(sdk, detectors)
    login(sdk, CHROME_WINDOWS, "192.0.2.10", user_id="u1")
    login(sdk, SAFARI_IPHONE, "198.51.100.4", user_id="u1")
    assert detector.flush()
    assert security_logs(sdk, "auth.login.new_device") == []


def test_a_64_kib_user_agent_at_login_is_capped_and_parsed(
    make_sdk: Any, detectors: list[Any]
) -> None:
    sdk = make_sdk()
    detector = login_detector(sdk, detectors)
    login(sdk, CHROME_WINDOWS, "192.0.2.10", user_id="u1")
    hostile = "Mozilla/5.0 (" + "(" * 65536
    login(sdk, hostile, "192.0.2.10", user_id="u1")
    assert detector.flush(timeout=10)
    [record] = security_logs(sdk, "auth.login.new_device")
    assert len(record.attributes["user_agent.original"]) <= 1024


def test_the_report_shows_a_scan_as_a_signal_and_finds_it_by_network(
    make_sdk: Any, detectors: list[Any], tmp_path: Any, capsys: Any
) -> None:
    """``otel-secaudit report`` on an otlp_json_dir recording: abuse.scan is the detector's
    signal (with its paths), not an offence of its own; ``--address`` finds an IPv6 scanner
    by its network key."""
    import json

    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    from otel_secaudit.cli import main
    from otel_secaudit.demo.report import load, summarize
    from otel_secaudit.exporters import OTLPJsonDirLogExporter

    sdk = make_sdk(scan_threshold=2)
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPJsonDirLogExporter(tmp_path))
    )
    recorder = otel_secaudit.SecurityRecorder(sdk.settings, logger_provider=logger_provider)
    detector = AbuseDetector(recorder)
    detectors.append(detector)
    for path in ("/.env", "/.git/config"):
        detector.anomalies.probe("2001:db8:1:2::99", path)
    assert detector.flush()
    logger_provider.shutdown()
    summary = summarize(load(tmp_path))
    assert summary.events == {"abuse.scan": 1} and summary.violations == 0
    [signal] = summary.abuse_signals
    assert (signal.scope, signal.key, signal.count) == ("scan", "2001:db8:1:2::/64", 2)
    assert list(signal.breakdown) == ["/.env", "/.git/config"]
    assert main(["report", str(tmp_path), "--json", "--address", "2001:db8:1::/48"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == {"abuse.scan": 1}


def test_a_failing_detection_never_costs_the_status_event(
    make_sdk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import otel_secaudit.web.exchange as exchange_module

    def broken(extra: tuple[str, ...]) -> Any:
        raise RuntimeError("matcher broke")

    sdk = make_sdk(strict=False)
    monkeypatch.setattr(exchange_module, "attack_tool_matcher", broken)
    exchange = open_exchange("sqlmap/1.8")
    with request_scope(exchange.request):
        exchange.respond(403)
    assert [r.event_name for r in security_logs(sdk)] == ["authz.permission_denied"]
    assert sdk.recorder.stats.snapshot()["internal_errors"] == {"web.detections:RuntimeError": 1}
