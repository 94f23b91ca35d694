"""The value parsers of the settings: an environment string, or an explicit argument, to a value.

:mod:`otel_secaudit.config` declares each setting once, naming one of these parsers (and, for
arguments that are not strings, one of the argument coercers). A parser raises
:class:`ValueError` saying what is expected; the settings loader turns it into a
:class:`~otel_secaudit.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from .addresses import CLIENT_ADDRESS_HEADERS
from .route_rules import LoginRoutes, StatusRules, parse_login_routes, parse_status_rules

__all__ = [
    "DEFAULT_INT_MAXIMUM",
    "ONE_YEAR_S",
    "IPNetwork",
    "IntParser",
    "attack_tools_argument",
    "bool_argument",
    "hash_key_argument",
    "int_argument",
    "login_routes_argument",
    "networks_argument",
    "optional_path_argument",
    "parse_attack_tools",
    "parse_bool",
    "parse_claim",
    "parse_client_address_header",
    "parse_export_dir",
    "parse_hash_key",
    "parse_list",
    "parse_login_routes",
    "parse_networks",
    "parse_path",
    "parse_status_events",
    "path_argument",
    "status_events_argument",
    "strings_argument",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The upper bound of a numeric setting that declares none: large enough for any real
#: configuration, small enough that no arithmetic on it overflows (a value of a few hundred
#: digits parses as an int and then overflows the float seconds of the detector).
DEFAULT_INT_MAXIMUM: Final = 1_000_000_000
ONE_YEAR_S: Final = 366 * 24 * 3600


class IntParser:
    """Parses an integer setting and checks it against inclusive bounds.

    Every numeric setting is declared with one of these, so every numeric setting has
    bounds: a value outside them is a :class:`ConfigError` (strict) or the default with a
    warning (lenient). Declare a new one as ``IntParser(minimum, maximum)``.
    """

    def __init__(self, minimum: int, maximum: int = DEFAULT_INT_MAXIMUM) -> None:
        if minimum > maximum:
            raise ValueError(f"empty bounds {minimum}..{maximum}")
        self.minimum = minimum
        self.maximum = maximum

    def __call__(self, raw: str) -> int:
        text = raw.strip()
        # int() accepts up to 4300 digits; refuse long strings before it does the work.
        if len(text) > 32:
            raise ValueError(f"must be between {self.minimum} and {self.maximum}")
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw[:40]!r}") from None
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be between {self.minimum} and {self.maximum}, got {value}")
        return value


def parse_bool(raw: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (or blank), any case."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def parse_networks(raw: str) -> tuple[IPNetwork, ...]:
    """Comma-separated IP addresses or CIDRs."""
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return tuple(networks)


def parse_status_events(raw: str) -> StatusRules:
    """Route-scoped rules (``[METHOD] [ROUTE] STATUS:EVENT``), parsed by the web integration;
    a bad rule raises ``RuleProblems``, whose ``usable`` keeps the others in lenient mode."""
    return parse_status_rules(raw)


def parse_client_address_header(raw: str) -> str:
    """One of the forwarding headers the web integration reads."""
    header = raw.strip().lower()
    if header not in CLIENT_ADDRESS_HEADERS:
        raise ValueError(f"expected one of {', '.join(CLIENT_ADDRESS_HEADERS)}, got {raw!r}")
    return header


def parse_list(raw: str) -> tuple[str, ...]:
    """Comma-separated items, blanks dropped."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def parse_attack_tools(raw: str) -> tuple[str, ...]:
    """Extra attack-tool tokens; the matcher is built once here to refuse a bad token at
    start (the web core reuses it)."""
    from .attack_tools import attack_tool_matcher

    tokens = parse_list(raw)
    attack_tool_matcher(tokens)
    return tokens


def parse_path(raw: str) -> Path | None:
    """A path (``~`` expanded); blank means none."""
    raw = raw.strip()
    return Path(raw).expanduser() if raw else None


def parse_export_dir(raw: str) -> Path:
    """The ``otlp_json_dir`` exporters' folder; blank means the default."""
    return Path(raw.strip() or "./otel-secaudit-output").expanduser()


def parse_claim(raw: str) -> str:
    """A token claim name such as ``sub``."""
    name = raw.strip()
    if not name or len(name) > 128 or any(ch.isspace() for ch in name):
        raise ValueError("expected a claim name such as sub")
    return name


def parse_hash_key(raw: str) -> bytes | None:
    """The user-hash key: at least 16 characters; blank means none."""
    raw = raw.strip()
    if not raw:
        return None
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters (a weak key makes user.hash guessable)")
    return raw.encode("utf-8")


# -- explicit arguments that are not strings (a string always goes through the parser) ----


def int_argument(parser: IntParser) -> Callable[[Any], int]:
    """An int (not a bool), within ``parser``'s bounds."""

    def coerce(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return parser(str(value))

    return coerce


def bool_argument(value: Any) -> bool:
    """A bool."""
    if not isinstance(value, bool):
        raise ValueError(f"expected a bool, got {value!r}")
    return value


def networks_argument(value: Iterable[Any]) -> tuple[IPNetwork, ...]:
    """Addresses or networks, as objects or strings."""
    return parse_networks(",".join(str(item) for item in value))


def strings_argument(value: Iterable[Any]) -> tuple[str, ...]:
    """A list of strings."""
    return tuple(str(item) for item in value)


def attack_tools_argument(value: Iterable[Any]) -> tuple[str, ...]:
    """A list of attack-tool tokens."""
    return parse_attack_tools(",".join(map(str, value)))


def hash_key_argument(value: Any) -> bytes | None:
    """Bytes of at least 16."""
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise ValueError(f"unsupported value {value!r}")
    if len(value) < 16:
        raise ValueError("must be at least 16 bytes")
    return value


def optional_path_argument(value: Any) -> Path | None:
    """A path-like or None."""
    return None if value is None else Path(value).expanduser()


def path_argument(value: Any) -> Path:
    """A path-like."""
    return Path(value).expanduser()


#: ``login_routes`` as a list of rules, ``status_events`` as {401: "auth.unauthenticated"} or
#: a list of rules.
login_routes_argument: Final[Callable[[Any], LoginRoutes]] = parse_login_routes
status_events_argument: Final[Callable[[Any], StatusRules]] = parse_status_rules
