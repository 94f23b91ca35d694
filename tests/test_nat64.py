"""IPv4 clients that arrive as IPv6 addresses (README "Abuse detection and blocks"): a NAT64
address of the well-known prefix ``64:ff9b::/96`` and an IPv4-compatible ``::a.b.c.d`` are
their IPv4 address for the host key, blocks and the allowlist (issue 19: every NAT64 client
shared the key ``64:ff9b::/64``, so one abuser got every IPv4 client blocked)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from otel_secaudit.addresses import embedded_ipv4
from otel_secaudit.detection import HostKeys
from otel_secaudit.web.client import normalize_ip, resolve_client_address

from .conftest import FakeClock
from .test_detection import abuse_logs, make_detector, violation

ALICE = "64:ff9b::198.51.100.4"
BOB = "64:ff9b::203.0.113.9"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.mark.parametrize(
    ("address", "key"),
    [
        (ALICE, "198.51.100.4"),
        ("64:ff9b::c633:6404", "198.51.100.4"),  # the same address written in hex
        ("[64:ff9b::198.51.100.4]", "198.51.100.4"),
        ("::ffff:198.51.100.4", "198.51.100.4"),
        ("::198.51.100.4", "198.51.100.4"),  # IPv4-compatible (deprecated)
        ("::1", "::/64"),  # loopback is not IPv4-compatible
        ("::", "::/64"),
        ("::0.0.0.7", "::/64"),  # 0.0.0.0/8 is no host: stays IPv6
        ("64:ff9b:0:0:1::1", "64:ff9b::/64"),  # outside the /96: an ordinary IPv6 address
        ("64:ff9b:1::c633:6404", "64:ff9b:1::c633:6404"),  # local-use NAT64: its own key
        ("64:ff9b:1:0:0:ffff:c633:6404", "64:ff9b:1::ffff:c633:6404"),
        ("2001:db8:1:2::5", "2001:db8:1:2::/64"),
    ],
)
def test_host_key_of_embedded_ipv4(address: str, key: str) -> None:
    assert HostKeys().key(address) == key


def test_two_nat64_clients_are_two_keys() -> None:
    keys = HostKeys()
    assert keys.key(ALICE) != keys.key(BOB)
    assert keys.key(ALICE) == keys.key("198.51.100.4")


def test_a_block_of_one_nat64_client_does_not_block_another(make_sdk, clock, detectors) -> None:
    sdk = make_sdk(host_threshold=3, block_seconds=60)
    detector = make_detector(sdk, clock, detectors)
    for i in range(3):
        detector.submit(violation(i, address=ALICE))
    [record] = abuse_logs(sdk, "abuse.host")
    assert record.attributes["security.abuse.key"] == "198.51.100.4"
    assert detector.is_blocked(ALICE) == pytest.approx(60)
    assert detector.is_blocked("198.51.100.4") == pytest.approx(60)
    assert detector.is_blocked(BOB) == 0.0
    assert detector.refusal(BOB) is None
    assert detector.is_blocked("64:ff9b::198.51.100.5") == 0.0


def test_nat64_clients_add_up_with_their_ipv4_address(make_sdk, clock, detectors) -> None:
    sdk = make_sdk(host_threshold=3, block_seconds=60)
    detector = make_detector(sdk, clock, detectors)
    detector.submit(violation(0, address=ALICE))
    detector.submit(violation(1, address="198.51.100.4"))
    detector.submit(violation(2, address="::ffff:198.51.100.4"))
    [record] = abuse_logs(sdk, "abuse.host")
    assert record.attributes["security.abuse.key"] == "198.51.100.4"


def test_allowlist_applies_to_the_unwrapped_address(make_sdk, clock, detectors) -> None:
    allow = (ipaddress.ip_network("198.51.100.0/24"),)
    assert HostKeys(allowlist=allow).resolve(ALICE) == ("198.51.100.4", False)
    assert HostKeys(allowlist=allow).resolve("::198.51.100.4") == ("198.51.100.4", False)
    assert HostKeys(allowlist=allow).resolve(BOB) == ("203.0.113.9", True)
    sdk = make_sdk(host_threshold=2, block_seconds=60, allowlist="198.51.100.0/24")
    detector = make_detector(sdk, clock, detectors)
    for i in range(4):
        detector.submit(violation(i, address=ALICE))
    assert [r.attributes["security.abuse.key"] for r in abuse_logs(sdk, "abuse.host")] == [
        "198.51.100.4"
    ]  # signalled ...
    assert detector.is_blocked(ALICE) == 0.0  # ... never blocked


@pytest.mark.parametrize(
    ("peer", "values", "expected"),
    [
        (ALICE, [], "198.51.100.4"),
        ("10.0.0.1", [BOB], "203.0.113.9"),
        ("10.0.0.1", ["[64:ff9b::c633:6404]:4711"], "198.51.100.4"),
        ("64:ff9b::10.0.0.1", [BOB], "203.0.113.9"),  # a NAT64'd proxy is the trusted proxy
    ],
)
def test_client_address_of_a_nat64_client_is_its_ipv4_address(
    peer: str, values: list[str], expected: str
) -> None:
    trusted: Any = (ipaddress.ip_network("10.0.0.0/8"),)
    assert resolve_client_address(peer, values, trusted, "x-forwarded-for") == expected


def test_embedded_ipv4_leaves_other_addresses_alone() -> None:
    for text in ("2001:db8::1", "fe80::1", "::1", "::", "64:ff9b:1::1", "192.0.2.1"):
        ip = ipaddress.ip_address(text)
        assert embedded_ipv4(ip) == ip
    assert normalize_ip("::1") == "::1"
    assert normalize_ip(ALICE) == "198.51.100.4"
