"""The client address of a request, through trusted proxies only.

The socket peer is the client unless it is in OTEL_SECAUDIT_TRUSTED_PROXIES. Then the one
header named by OTEL_SECAUDIT_CLIENT_ADDRESS_HEADER is believed, and no other:

``x-forwarded-for`` (default)
    ``client, proxy1, proxy2``: walked from the right, trusted hops skipped, the rightmost
    untrusted hop is the client (a client can prepend anything on the left).
``forwarded``
    RFC 7239 ``for=`` parameters, walked the same way.
``x-real-ip``
    one address set by the proxy (the last one when repeated).

Reading only the configured header matters: a proxy that sets ``Forwarded`` but passes the
client's own ``X-Forwarded-For`` through would otherwise let the client choose its address (and
get an innocent one blocked).

Framework-independent: adapters pass the peer and the *values* of the configured header
(:func:`header_values` for ASGI header lists; a WSGI adapter reads ``environ``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Final

from ..addresses import CLIENT_ADDRESS_HEADERS, embedded_ipv4

__all__ = [
    "CLIENT_ADDRESS_HEADERS",
    "MAX_FORWARDED_HEADER_BYTES",
    "header_values",
    "normalize_ip",
    "resolve_client_address",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The headers OTEL_SECAUDIT_CLIENT_ADDRESS_HEADER may name.
MAX_FORWARDED_HEADER_BYTES: Final = 4096
MAX_FORWARDED_HOPS: Final = 32
MAX_PEER_LENGTH: Final = 64


@lru_cache(maxsize=4096)
def normalize_ip(text: str) -> str | None:
    """A canonical IP string, or None. An IPv4-mapped, NAT64 (``64:ff9b::/96``) or
    IPv4-compatible IPv6 address is its IPv4 address (:mod:`otel_secaudit.addresses`).
    Cached: peers repeat, and garbage is bounded by the callers' size caps."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(embedded_ipv4(ip))


def _parse_hop(raw: str) -> str | None:
    """One hop of a forwarding header: strip quotes, brackets and port."""
    hop = raw.strip().strip('"').strip()
    if not hop or len(hop) > MAX_PEER_LENGTH:
        return None
    if hop.startswith("["):  # [v6] or [v6]:port
        end = hop.find("]")
        if end < 0:
            return None
        return normalize_ip(hop[1:end])
    if hop.count(":") == 1:  # v4:port
        hop = hop.partition(":")[0]
    return normalize_ip(hop)


def header_values(headers: Iterable[tuple[bytes, bytes]], name: str) -> list[str]:
    """The values of header ``name`` (lower case) in an ASGI header list, decoded latin-1
    (never fails)."""
    wanted = name.encode("latin-1")
    return [value.decode("latin-1") for key, value in headers if key.lower() == wanted]


def _joined(values: Sequence[str]) -> str:
    """Repeated headers joined with commas, in order. Over :data:`MAX_FORWARDED_HEADER_BYTES`
    only the RIGHT end is kept: the hops our own proxies appended are there."""
    joined = ",".join(values)
    if len(joined) > MAX_FORWARDED_HEADER_BYTES:
        joined = joined[-MAX_FORWARDED_HEADER_BYTES:].partition(",")[2]  # drop the cut hop
    return joined


def _forwarded_for(value: str) -> list[str]:
    """``for=`` parameters of RFC 7239 ``Forwarded`` elements, left to right."""
    hops: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            key, sep, param = pair.partition("=")
            if sep and key.strip().lower() == "for":
                hops.append(param)
    return hops


def _hops(values: Sequence[str], header: str) -> list[str]:
    if header == "x-real-ip":
        return [values[-1][:MAX_FORWARDED_HEADER_BYTES]] if values else []
    joined = _joined(values)
    if header == "forwarded":
        return _forwarded_for(joined)
    return joined.split(",") if joined.strip() else []


@lru_cache(maxsize=4096)
def _is_trusted(ip: str, trusted: tuple[IPNetwork, ...]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address.version == net.version and address in net for net in trusted)


def resolve_client_address(
    peer: str | None,
    values: Sequence[str],
    trusted_proxies: tuple[IPNetwork, ...],
    header: str = "x-forwarded-for",
) -> str | None:
    """The client address of a request.

    Args:
        peer: the socket peer address (None when unknown).
        values: the values of ``header`` in the request (every occurrence, in order).
        trusted_proxies: the networks whose ``header`` is believed.
        header: ``x-forwarded-for``, ``forwarded`` or ``x-real-ip``.

    Hops that are not IP addresses where the client should be (``unknown``, ``_hidden``,
    garbage) make the client unknown (None) rather than blaming the proxy. Sizes and hop counts
    are capped; nothing here raises on bad input.

    >>> nets = (ipaddress.ip_network("10.0.0.0/8"),)
    >>> resolve_client_address("10.0.0.5", ["6.6.6.6, 203.0.113.9"], nets)
    '203.0.113.9'
    >>> resolve_client_address("198.51.100.7", ["6.6.6.6"], nets)
    '198.51.100.7'
    """
    if peer is None:
        return None
    peer_ip = normalize_ip(peer[:MAX_PEER_LENGTH])
    if peer_ip is None:
        return peer[:MAX_PEER_LENGTH]  # unix socket paths, test clients: not an IP, not trusted
    if not trusted_proxies or not _is_trusted(peer_ip, trusted_proxies):
        return peer_ip
    raw_hops = _hops(values, header)
    client = peer_ip
    for raw in reversed(raw_hops[-MAX_FORWARDED_HOPS:]):
        hop = _parse_hop(raw)
        if hop is None:
            return None
        client = hop
        if not _is_trusted(hop, trusted_proxies):
            return hop
    return client  # every hop we looked at is a trusted proxy: the leftmost one
