"""IPv4 clients written as IPv6 addresses, and the IPv4 address inside them.

A client is keyed, blocked, allowlisted and exported by the address that identifies it. Three
IPv6 forms carry an IPv4 client in their last 32 bits and are that IPv4 client:

* IPv4-mapped ``::ffff:a.b.c.d`` (a dual-stack socket accepting an IPv4 connection);
* the NAT64 well-known prefix ``64:ff9b::a.b.c.d`` (RFC 6052; an IPv4 client reaching an
  IPv6-only service through a stateless translator, SIIT-DC). Keyed by IPv6 network, every
  IPv4 client of the translator would share one ``64:ff9b::/64`` key, and one abuser would get
  them all blocked;
* IPv4-compatible ``::a.b.c.d`` (RFC 4291, deprecated; no transition mechanism still emits
  it): taken as the IPv4 address it embeds, so it can never be a shared key. ``::`` and
  ``::1`` (unspecified and loopback, also in ``::/96``) and everything else in ``::/104``
  (which would embed ``0.0.0.0/8``, not a host address) stay IPv6.

The local-use NAT64 prefix ``64:ff9b:1::/48`` (RFC 8215) embeds the IPv4 address at a position
its operator chooses, so it cannot be unwrapped; such an address is keyed on its own (never a
shared network key), see :func:`is_local_use_nat64`.
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = [
    "CLIENT_ADDRESS_HEADERS",
    "NAT64_LOCAL_USE",
    "NAT64_WELL_KNOWN",
    "embedded_ipv4",
    "is_local_use_nat64",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The forwarding headers a trusted proxy may set (OTEL_SECAUDIT_CLIENT_ADDRESS_HEADER).
CLIENT_ADDRESS_HEADERS: Final = ("x-forwarded-for", "forwarded", "x-real-ip")

#: RFC 6052 well-known prefix; the IPv4 address is the last 32 bits.
NAT64_WELL_KNOWN: Final = ipaddress.IPv6Network("64:ff9b::/96")
#: RFC 8215 local-use prefix; the embedding depends on the operator's prefix length.
NAT64_LOCAL_USE: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_NOT_COMPATIBLE: Final = ipaddress.IPv6Network("::/104")  # ::, ::1 and 0.0.0.0/8 inside


def embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped, NAT64 (well-known prefix) or IPv4-compatible IPv6
    address stands for; any other address unchanged."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return mapped
    if ip in NAT64_WELL_KNOWN or (ip in _IPV4_COMPATIBLE and ip not in _NOT_COMPATIBLE):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_local_use_nat64(ip: IPAddress) -> bool:
    """True for an address under the local-use NAT64 prefix ``64:ff9b:1::/48``."""
    return isinstance(ip, ipaddress.IPv6Address) and ip in NAT64_LOCAL_USE
