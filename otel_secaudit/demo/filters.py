"""Incident queries: which security log records ``otel-secaudit report`` keeps.

A :class:`Query` is built from the command line (:meth:`Query.build`) and asked about each
record as the archive streams by (:meth:`Query.matches`): criteria of different kinds must all
hold, several values of one kind are alternatives (``--event auth.* --event authz.*``).

* events: a catalogue name, or a prefix written ``auth.*``;
* time: ``--since``/``--until`` as a duration before now (``24h``, ``90m``, ``1d12h``) or an
  ISO 8601 timestamp (``2026-12-07T03:00Z``; no zone means UTC);
* users: ``user.id`` as written; ``user.hash`` in full or as a prefix of at least 8 hex
  characters (what the report prints); a user *name* is hashed with OTEL_SECAUDIT_HASH_KEY by
  the caller and only its hash is kept (:meth:`Query.describe` never shows the name);
* addresses: an IP address or network (``203.0.113.7``, ``10.0.0.0/8``,
  ``2001:db8:1:2::/64`` as written), matched against ``client.address`` and against the host
  key of abuse records and of an operator's release (an IPv6 /64 key overlaps the network
  asked for);
* trace: a trace ID (32 hex characters).

Every parser takes attacker-sized input (a pasted line, a script's variable): lengths are
capped, the patterns are anchored and linear, and a bad value is a :class:`ReportError`
saying what was expected.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

from .. import attributes as attr
from .records import MAX_TIME_NS, LogEntry, ReportError, iso_time, printable

__all__ = [
    "Query",
    "parse_address",
    "parse_duration",
    "parse_event",
    "parse_moment",
    "parse_trace_id",
    "parse_user_hash",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAX_ARGUMENT: Final = 200
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"(?:[0-9]{1,9}[smhdw])+")
_DURATION_PART: Final = re.compile(r"([0-9]{1,9})([smhdw])")
#: A hundred years: longer is a typo, not an incident window.
_MAX_DURATION_S: Final = 100 * 365 * 86400
_EVENT: Final = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_HEX: Final = re.compile(r"[0-9a-f]+")
_TRACE: Final = re.compile(r"[0-9a-f]{32}")
_HOST_SCOPES: Final = frozenset(
    {"abuse.host", "abuse.scan", "abuse.block.started", "abuse.block.ended"}
)
_MEMO_SIZE: Final = 4096


def _checked(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_ARGUMENT:
        raise ReportError(f"{what}: too long (at most {_MAX_ARGUMENT} characters)")
    return value.strip()


def parse_duration(value: str) -> float:
    """``24h``, ``90m``, ``1d12h``, ``30s``, ``2w`` -> seconds.

    Raises:
        ReportError: anything else, zero, or more than a hundred years.
    """
    text = _checked(value, "duration").lower()
    if not _DURATION.fullmatch(text):
        raise ReportError(
            f"{printable(value, 60)!r} is not a duration (expected e.g. 30s, 90m, 24h, 7d, 1d12h)"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    if not 0 < seconds <= _MAX_DURATION_S:
        raise ReportError(f"{printable(value, 60)!r}: a duration between 1s and 100 years")
    return float(seconds)


def parse_moment(value: str, now: float | None = None) -> int:
    """A duration before ``now`` (``24h``) or an ISO 8601 timestamp -> nanoseconds since the
    epoch. A timestamp without a zone is UTC.

    Raises:
        ReportError: neither form, or a time no calendar holds.
    """
    text = _checked(value, "time")
    if text and text[-1].lower() in _UNITS and text[0].isdigit() and "-" not in text:
        current = time.time() if now is None else now
        return max(0, int((current - parse_duration(text)) * 1e9))
    try:
        # Python 3.10's fromisoformat knows no "Z"
        moment = datetime.fromisoformat(re.sub("[zZ]$", "+00:00", text))
    except ValueError:
        raise ReportError(
            f"{printable(value, 60)!r} is not a time (expected a duration such as 24h, or an "
            "ISO 8601 timestamp such as 2026-12-07T03:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        nanos = int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    except (OverflowError, ValueError, OSError):
        nanos = -1
    if not 0 <= nanos <= MAX_TIME_NS:
        raise ReportError(f"{printable(value, 60)!r}: before 1970 or past the year 9999")
    return nanos


def parse_event(value: str) -> str:
    """An event name, or a prefix ``auth.*`` (returned as ``auth.``); ``*`` alone is every
    event.

    Raises:
        ReportError: characters no event name has.
    """
    text = _checked(value, "--event")
    if text == "*":
        return ""
    stem = text[:-1] if text.endswith(".*") else text
    if not _EVENT.fullmatch(stem) or "*" in stem:
        raise ReportError(
            f"--event {printable(value, 60)!r}: expected an event name (auth.login.failed) "
            "or a prefix (auth.*)"
        )
    return stem if text.endswith(".*") else text


def parse_address(value: str) -> IPNetwork:
    """An IP address or network, as written: ``203.0.113.7``, ``[2001:db8::1]``,
    ``10.0.0.0/8``, ``2001:db8:1:2::/64`` (host bits set are accepted: the network they lie
    in). An IPv4-mapped IPv6 address is its IPv4 address.

    Raises:
        ReportError: not an address or network.
    """
    text = _checked(value, "address")
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        network = ipaddress.ip_network(bare, strict=False)
    except ValueError:
        raise ReportError(
            f"{printable(value, 60)!r} is not an IP address or network (expected e.g. "
            "203.0.113.7, 10.0.0.0/8 or 2001:db8:1:2::/64)"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 128:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(mapped)
    return network


def parse_user_hash(value: str) -> str:
    """A ``user.hash``: 64 hex characters, or a prefix of at least 8 (the report shows 16).

    Raises:
        ReportError: not hex, or shorter than 8.
    """
    text = _checked(value, "--user-hash").lower().rstrip("…")
    if not 8 <= len(text) <= 64 or not _HEX.fullmatch(text):
        raise ReportError("--user-hash: expected 8 to 64 hex characters (a user.hash or its start)")
    return text


def parse_trace_id(value: str) -> str:
    """A trace ID (32 hex characters, any case).

    Raises:
        ReportError: anything else.
    """
    text = _checked(value, "--trace").lower()
    if not _TRACE.fullmatch(text):
        raise ReportError(f"{printable(value, 60)!r} is not a trace ID (32 hex characters)")
    return text


def _network_of(value: str) -> IPNetwork | None:
    """A record's address or host key as a network; None when it is not one (a test client's
    name, a Unix socket)."""
    try:
        return parse_address(value)
    except ReportError:
        return None


@dataclass
class Query:
    """What to keep; an empty query keeps everything (:attr:`active` is False)."""

    events: tuple[str, ...] = ()
    since_ns: int | None = None
    until_ns: int | None = None
    user_ids: tuple[str, ...] = ()
    user_hashes: tuple[str, ...] = ()
    #: how many of :attr:`user_hashes` came from ``--user-name`` (shown as such, never named)
    from_names: int = 0
    networks: tuple[IPNetwork, ...] = ()
    trace_ids: tuple[str, ...] = ()
    #: address or key as written -> whether it lies in (overlaps) a wanted network
    _memo: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        *,
        events: Sequence[str] = (),
        since: str | None = None,
        until: str | None = None,
        user_ids: Sequence[str] = (),
        user_hashes: Sequence[str] = (),
        user_names: Sequence[str] = (),
        hash_name: Callable[[str], str] | None = None,
        addresses: Sequence[str] = (),
        trace_ids: Sequence[str] = (),
        now: float | None = None,
    ) -> Query:
        """A query from command-line strings; ``hash_name`` turns a user name into its
        ``user.hash`` (required when ``user_names`` is given).

        Raises:
            ReportError: a malformed value, or ``since`` after ``until``.
        """
        current = time.time() if now is None else now
        since_ns = parse_moment(since, current) if since else None
        until_ns = parse_moment(until, current) if until else None
        if since_ns is not None and until_ns is not None and since_ns > until_ns:
            raise ReportError("--since is after --until")
        hashes = [parse_user_hash(value) for value in user_hashes]
        if user_names:
            if hash_name is None:
                raise ReportError("--user-name needs the instances' OTEL_SECAUDIT_HASH_KEY")
            hashes.extend(hash_name(_checked(name, "--user-name")) for name in user_names)
        return cls(
            events=tuple(dict.fromkeys(parse_event(value) for value in events)),
            since_ns=since_ns,
            until_ns=until_ns,
            user_ids=tuple(_checked(value, "--user-id") for value in user_ids),
            user_hashes=tuple(hashes),
            from_names=len(user_names),
            networks=tuple(parse_address(value) for value in addresses),
            trace_ids=tuple(parse_trace_id(value) for value in trace_ids),
        )

    @property
    def active(self) -> bool:
        """Whether anything is filtered out."""
        return bool(
            (self.events and "" not in self.events)
            or self.since_ns is not None
            or self.until_ns is not None
            or self.user_ids
            or self.user_hashes
            or self.networks
            or self.trace_ids
        )

    def matches(self, log: LogEntry) -> bool:
        """Whether a security log record passes every criterion."""
        if self.since_ns is not None and log.time_ns < self.since_ns:
            return False
        if self.until_ns is not None and log.time_ns > self.until_ns:
            return False
        if self.trace_ids and log.trace_id not in self.trace_ids:
            return False
        if self.events and not any(_event_matches(log.event_name, e) for e in self.events):
            return False
        if (self.user_ids or self.user_hashes) and not self._user_matches(log):
            return False
        return not self.networks or self._address_matches(log)

    def _user_matches(self, log: LogEntry) -> bool:
        a = log.attributes
        abuse_key = a.get(attr.ABUSE_KEY) if a.get(attr.ABUSE_SCOPE) == "user" else None
        ids = {str(v) for v in (a.get(attr.USER_ID), abuse_key) if v is not None}
        if any(user_id in ids for user_id in self.user_ids):
            return True
        hashes = [str(v).lower() for v in (a.get(attr.USER_HASH), abuse_key) if v]
        return any(h.startswith(wanted) for h in hashes for wanted in self.user_hashes)

    def _address_matches(self, log: LogEntry) -> bool:
        a = log.attributes
        values = [a.get(attr.CLIENT_ADDRESS)]
        if (
            log.event_name in _HOST_SCOPES
            or a.get(attr.ABUSE_SCOPE) == "host"
            or a.get(attr.ACTION) == "release_block"
        ):
            values.append(a.get(attr.ABUSE_KEY))
        return any(self._in_networks(str(value)) for value in values if value)

    def _in_networks(self, value: str) -> bool:
        """Memoized (bounded): one parse per distinct address, whatever the archive holds."""
        found = self._memo.get(value)
        if found is None:
            network = _network_of(value)
            found = network is not None and any(
                network.version == wanted.version and network.overlaps(wanted)  # type: ignore[arg-type]
                for wanted in self.networks
            )
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[value] = found
        return found

    def describe(self) -> dict[str, Any]:
        """The filters applied, for the JSON and HTML reports (a user name never appears:
        its hash does, marked as coming from ``--user-name``)."""
        shown: dict[str, Any] = {}
        if self.events:
            shown["event"] = [e + "*" if e.endswith(".") or not e else e for e in self.events]
        if self.since_ns is not None:
            shown["since"] = iso_time(self.since_ns)
        if self.until_ns is not None:
            shown["until"] = iso_time(self.until_ns)
        if self.user_ids:
            shown["user.id"] = list(self.user_ids)
        typed = len(self.user_hashes) - self.from_names
        if typed:
            shown["user.hash"] = list(self.user_hashes[:typed])
        if self.from_names:
            shown["user.hash (from --user-name)"] = [h[:16] for h in self.user_hashes[typed:]]
        if self.networks:
            shown["address"] = [
                str(n) if n.num_addresses > 1 else str(n.network_address) for n in self.networks
            ]
        if self.trace_ids:
            shown["trace"] = list(self.trace_ids)
        return shown


def _event_matches(name: str, wanted: str) -> bool:
    return name.startswith(wanted) if not wanted or wanted.endswith(".") else name == wanted
