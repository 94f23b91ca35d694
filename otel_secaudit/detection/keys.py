"""Host keys: the client address an abuse counter and a block apply to.

An IPv4 client is its address. An IPv6 client is its ``OTEL_SECAUDIT_IPV6_PREFIX`` network
(default /64: one subscriber's LAN, where an attacker gets addresses for free), written
``2001:db8:1:2::/64``; with prefix 128 it is the address itself. An IPv4-mapped IPv6 address
(``::ffff:192.0.2.1``), a NAT64 address of the well-known prefix (``64:ff9b::192.0.2.1``) and
an IPv4-compatible one (``::192.0.2.1``) are their IPv4 address, for the key and the allowlist
alike; an address of the local-use NAT64 prefix ``64:ff9b:1::/48`` is its own key
(:mod:`otel_secaudit.addresses`). Anything that is not an IP address (a test client's name, a
Unix socket) is its own key.

Whether a key may be blocked: never when it lies in (or, for a network, overlaps) one of the
``OTEL_SECAUDIT_ALLOWLIST`` networks, and never when blocks are off.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ..addresses import embedded_ipv4, is_local_use_nat64

__all__ = ["HostKeys"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Addresses resolved at once are remembered up to this many (then the memo starts over).
_MEMO_SIZE = 4096


class HostKeys:
    """Maps a client address to its host key and whether that key may be blocked.

    Called for every violation and every request: an IPv4 address with no allowlist costs a
    substring test; anything else is parsed once and remembered (bounded memo).
    """

    __slots__ = ("_allowlist", "_blocking", "_memo", "ipv6_prefix")

    def __init__(
        self, ipv6_prefix: int = 64, allowlist: Iterable[IPNetwork] = (), blocking: bool = True
    ) -> None:
        if not 1 <= ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix must be between 1 and 128, got {ipv6_prefix}")
        self.ipv6_prefix = ipv6_prefix
        self._allowlist = tuple(allowlist)
        self._blocking = blocking
        self._memo: dict[str, tuple[str, bool]] = {}

    def key(self, address: str) -> str:
        """The host key of ``address``."""
        if ":" not in address:
            return address
        return self.resolve(address)[0]

    def resolve(self, address: str) -> tuple[str, bool]:
        """``(key, blockable)`` for ``address``."""
        if ":" not in address and not self._allowlist:
            return address, self._blocking
        found = self._memo.get(address)
        if found is None:
            found = self._compute(address)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo = {}
            self._memo[address] = found
        return found

    def _compute(self, address: str) -> tuple[str, bool]:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return address, self._blocking
        network: IPNetwork
        ip = embedded_ipv4(ip)
        if isinstance(ip, ipaddress.IPv4Address):
            key = str(ip)
            network = ipaddress.IPv4Network(key)
        elif self.ipv6_prefix == 128 or is_local_use_nat64(ip):
            key = str(ip)
            network = ipaddress.IPv6Network(key)
        else:
            network = ipaddress.IPv6Network((ip, self.ipv6_prefix), strict=False)
            key = str(network)
        blockable = self._blocking and not any(
            network.version == allowed.version and network.overlaps(allowed)  # type: ignore[arg-type]
            for allowed in self._allowlist
        )
        return key, blockable
