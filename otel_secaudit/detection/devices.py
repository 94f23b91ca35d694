"""New device or network at login (``auth.login.new_device``, the seeds' "access from new
location/device").

For each user key (``user.id``, else ``user.hash``) the detector remembers the devices and
networks its successful logins came from, for ``OTEL_SECAUDIT_NEW_DEVICE_DAYS``:

* the **device** is the User-Agent's family as the maintained ``ua-parser`` library parses it:
  browser family and operating-system family (``Chrome / Windows``, ``Firefox / Ubuntu``,
  ``Python Requests / Other``), so a browser update is not a new device and a phone is;
* the **network** is the client address's IPv4 /24 or IPv6 /48 (an IPv4-mapped or NAT64
  address is its IPv4 address), so a DHCP renewal is not a new network and another ISP is.

A login whose device (or network) was not seen for that user key within the period is new:
``security.reason`` ``new_device``, ``new_network`` or ``new_device_and_network``. A user key
with nothing remembered yet (its first login, or none within the period) is not new, and
neither is a dimension the key has no history of (a login without a User-Agent teaches no
device). State is bounded: :data:`MAX_REMEMBERED` devices and networks per user key (the least
recently seen go first) and ``OTEL_SECAUDIT_MAX_KEYS`` user keys (LRU).

Parsing a User-Agent costs tens to hundreds of microseconds, so it happens on the detector's
worker thread, never on the request (:mod:`.anomalies`). ``stores/devices.lua`` keeps the same
state in Redis (one hash per user key) for instances that share a store.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from typing import Final, NamedTuple

from ..events import Login

__all__ = [
    "MAX_REMEMBERED",
    "NEW_DEVICE",
    "NEW_DEVICE_AND_NETWORK",
    "NEW_NETWORK",
    "DeviceHistory",
    "Login",
    "SeenLogin",
    "device_family",
    "network_of",
    "reason_of",
]

NEW_DEVICE: Final = "new_device"
NEW_NETWORK: Final = "new_network"
NEW_DEVICE_AND_NETWORK: Final = "new_device_and_network"
#: Devices and networks remembered per user key (each).
MAX_REMEMBERED: Final = 10
#: A device family is kept up to this many characters.
MAX_FAMILY_LENGTH: Final = 64
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


class SeenLogin(NamedTuple):
    """A login reduced to what is remembered: its device family and network."""

    user_key: str
    device: str | None
    network: str | None
    at: float


def reason_of(new_device: bool, new_network: bool) -> str | None:
    """``security.reason`` of a login, or None when nothing is new."""
    if new_device and new_network:
        return NEW_DEVICE_AND_NETWORK
    if new_device:
        return NEW_DEVICE
    if new_network:
        return NEW_NETWORK
    return None


@lru_cache(maxsize=2048)
def device_family(user_agent: str | None) -> str | None:
    """``"<browser family> / <OS family>"`` of ``user_agent`` parsed by ``ua-parser``
    (``Other`` for what it does not know); None without a User-Agent. The input is the
    recorder's capped ``user_agent.original``."""
    if not user_agent:
        return None
    from ua_parser import parse  # imported on the worker, at the first login

    result = parse(user_agent)
    browser = result.user_agent.family if result.user_agent is not None else "Other"
    system = result.os.family if result.os is not None else "Other"
    return f"{browser} / {system}"[:MAX_FAMILY_LENGTH]


def network_of(address: str | None) -> str | None:
    """The IPv4 /24 or IPv6 /48 of ``address`` (``192.0.2.0/24``, ``2001:db8:1::/48``); None
    for anything that is not an IP address."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Network((ip, 24), strict=False))
    return str(ipaddress.IPv6Network((ip, 48), strict=False))


class _Known:
    """One user key's remembered devices and networks: value -> last seen."""

    __slots__ = ("devices", "networks")

    def __init__(self) -> None:
        self.devices: dict[str, float] = {}
        self.networks: dict[str, float] = {}


def _is_new(known: dict[str, float], value: str | None, at: float, oldest: float) -> bool:
    """Judge ``value`` against ``known`` (expired entries dropped first), then remember it."""
    for stale in [v for v, seen in known.items() if seen <= oldest]:
        del known[stale]
    if value is None:
        return False
    new = bool(known) and value not in known
    known[value] = max(at, known.get(value, at))
    if len(known) > MAX_REMEMBERED:
        del known[min(known, key=known.__getitem__)]
    return new


class DeviceHistory:
    """In-process device and network history per user key (see the module docstring).
    Thread-safe; no I/O.

    Args:
        max_keys: user keys remembered; the least recently seen is dropped first.
    """

    in_process = True

    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Known] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def apply(self, logins: Sequence[SeenLogin], period: float) -> list[str | None]:
        """Judge and remember ``logins`` in order; the ``security.reason`` of each (None when
        nothing is new). ``period``: seconds a device or network is remembered."""
        with self._lock:
            return [self._login(login, period) for login in logins]

    def _login(self, login: SeenLogin, period: float) -> str | None:
        known = self._keys.get(login.user_key)
        if known is None:
            if len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
                self.evictions += 1
            known = self._keys[login.user_key] = _Known()
        else:
            self._keys.move_to_end(login.user_key)
        oldest = login.at - period
        # Each dimension is judged against the history before this login; one with no history
        # (the key's first login, or none within the period) is never new.
        new_device = _is_new(known.devices, login.device, login.at, oldest)
        new_network = _is_new(known.networks, login.network, login.at, oldest)
        return reason_of(new_device, new_network)

    def tracked_keys(self) -> int:
        """User keys currently remembered."""
        return len(self._keys)

    def close(self) -> None:
        """Nothing to release."""
