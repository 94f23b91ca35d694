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

__all__ = ["HostKeys", "operator_key"]

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


def operator_key(text: str, ipv6_prefix: int = 64) -> str:
    """The host key an operator means by ``text`` (``otel-secaudit blocks release``,
    :func:`otel_secaudit.release_block`): an address is keyed as a client's would be (an IPv6
    address is its ``ipv6_prefix`` network); a network is taken as written, normalized
    (``2001:DB8:1:2:0::/64`` is ``2001:db8:1:2::/64``).

    Raises:
        ValueError: not an IP address or network, or a network that is no host key (an IPv4
            network wider than one address, an IPv6 network of another prefix than
            ``ipv6_prefix``).
    """
    raw = text.strip() if isinstance(text, str) else ""
    bare = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    if not bare or len(bare) > 100 or "%" in bare:  # an IPv6 zone is no part of a key
        raise ValueError(f"{text!r:.120} is not an IP address or network")
    if "/" not in bare:
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise ValueError(
                f"{bare!r:.120} is not an IP address (expected e.g. 203.0.113.7, 2001:db8::1 or "
                "a network such as 2001:db8:1:2::/64)"
            ) from None
        return HostKeys(ipv6_prefix).key(bare)
    try:
        network = ipaddress.ip_network(bare, strict=False)
    except ValueError:
        raise ValueError(
            f"{bare!r:.120} is not an IP network (expected e.g. 2001:db8:1:2::/64)"
        ) from None
    if network.num_addresses == 1:
        return HostKeys(ipv6_prefix).key(str(network.network_address))
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == ipv6_prefix:
        return str(network)
    raise ValueError(
        f"{bare!r:.120}: blocks are per IPv4 address and per IPv6 /{ipv6_prefix} network "
        "(OTEL_SECAUDIT_IPV6_PREFIX); give one of those"
    )
