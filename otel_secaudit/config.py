"""One settings object from constructor arguments, then ``OTEL_SECAUDIT_*`` environment variables.

:meth:`Settings.load` takes keyword arguments named like the variables without the prefix, in
lower case (``host_threshold=20`` mirrors ``OTEL_SECAUDIT_HOST_THRESHOLD=20``). An argument wins
over the environment.

Bad values raise :class:`ConfigError` naming the argument or variable when configured
explicitly (``lenient=False``). Under auto-instrumentation (``lenient=True``) a bad environment
value is logged as a warning and the default is used, because an instrumentor must never stop
the application from starting.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from .errors import ConfigError
from .store_uris import parse_store_uri, redact_uri_password
from .web.client import CLIENT_ADDRESS_HEADERS
from .web.rules import (
    LoginRoutes,
    StatusRules,
    login_rule_conflicts,
    parse_login_routes,
    parse_status_rules,
)

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "redact_uri_password"]

_log = logging.getLogger(__name__)

ENV_PREFIX: Final = "OTEL_SECAUDIT_"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


#: The upper bound of a numeric setting that declares none: large enough for any real
#: configuration, small enough that no arithmetic on it overflows (a value of a few hundred
#: digits parses as an int and then overflows the float seconds of the detector).
DEFAULT_INT_MAXIMUM: Final = 1_000_000_000
_ONE_YEAR_S: Final = 366 * 24 * 3600


class IntParser:
    """Parses an integer setting and checks it against inclusive bounds.

    Every numeric row of the settings table is one of these, so every numeric setting has
    bounds: a value outside them is a :class:`ConfigError` (strict) or the default with a
    warning (lenient). Declare a new row as ``IntParser(minimum, maximum)``.
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


def _parse_int(minimum: int, maximum: int = DEFAULT_INT_MAXIMUM) -> IntParser:
    """An :class:`IntParser` (kept for rows declared the older way)."""
    return IntParser(minimum, maximum)


def _parse_int_between(minimum: int, maximum: int) -> IntParser:
    """An integer parser bounded on both sides (an absurd value is an error, not a hang)."""
    return IntParser(minimum, maximum)


def _parse_proxies(raw: str) -> tuple[IPNetwork, ...]:
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


def _parse_status_events(raw: str) -> StatusRules:
    # Route-scoped rules ([METHOD] [ROUTE] STATUS:EVENT) live with the web integration; a bad
    # rule raises RuleProblems, whose ``usable`` keeps the others in lenient mode.
    return parse_status_rules(raw)


def _parse_login_routes(raw: str) -> LoginRoutes:
    return parse_login_routes(raw)


def _parse_client_address_header(raw: str) -> str:
    header = raw.strip().lower()
    if header not in CLIENT_ADDRESS_HEADERS:
        raise ValueError(f"expected one of {', '.join(CLIENT_ADDRESS_HEADERS)}, got {raw!r}")
    return header


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _parse_attack_tools(raw: str) -> tuple[str, ...]:
    # The matcher is built once here to refuse a bad token at start (the web core reuses it).
    from .detection.attack_tools import attack_tool_matcher

    tokens = _parse_list(raw)
    attack_tool_matcher(tokens)
    return tokens


def _parse_path(raw: str) -> Path | None:
    raw = raw.strip()
    return Path(raw).expanduser() if raw else None


def _parse_export_dir(raw: str) -> Path:
    """The ``otlp_json_dir`` exporters' folder; blank means the default."""
    return Path(raw.strip() or "./otel-secaudit-output").expanduser()


def _parse_claim(raw: str) -> str:
    name = raw.strip()
    if not name or len(name) > 128 or any(ch.isspace() for ch in name):
        raise ValueError("expected a claim name such as sub")
    return name


def _parse_hash_key(raw: str) -> bytes | None:
    raw = raw.strip()
    if not raw:
        return None
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters (a weak key makes user.hash guessable)")
    return raw.encode("utf-8")


_DEFAULT_STATUS_EVENTS: Final = (
    "401:auth.unauthenticated,403:authz.permission_denied,429:request.rate_limited"
)

# name -> (parser for environment strings, default as an environment string)
_PARSERS: Final[Mapping[str, tuple[Callable[[str], Any], str]]] = {
    "host_threshold": (IntParser(1, 1_000_000), "10"),
    "user_threshold": (IntParser(1, 1_000_000), "5"),
    "window_seconds": (IntParser(1, _ONE_YEAR_S), "3600"),
    "store": (parse_store_uri, "memory://"),
    "block_seconds": (IntParser(0, _ONE_YEAR_S), "0"),
    "max_keys": (IntParser(1, 100_000_000), "20000"),
    "block_max_seconds": (IntParser(1, _ONE_YEAR_S), "86400"),
    "allowlist": (_parse_proxies, ""),
    "ipv6_prefix": (IntParser(1, 128), "64"),
    "trusted_proxies": (_parse_proxies, ""),
    "hash_key": (_parse_hash_key, ""),
    "record_user_name": (_parse_bool, "false"),
    "span_events": (_parse_bool, "true"),
    "status_events": (_parse_status_events, _DEFAULT_STATUS_EVENTS),
    "login_routes": (_parse_login_routes, ""),
    "login_user_fields": (_parse_list, "username,email,login"),
    "user_id_claim": (_parse_claim, "sub"),
    "client_address_header": (_parse_client_address_header, "x-forwarded-for"),
    "redact_keys": (_parse_list, ""),
    "spool_dir": (_parse_path, ""),
    "spool_max_bytes": (IntParser(4096, 1 << 40), "268435456"),
    "export_dir": (_parse_export_dir, "./otel-secaudit-output"),
    "strict": (_parse_bool, "false"),
    # 404/405 answers to one client address within 60 s that raise abuse.scan (0 = off).
    "scan_threshold": (IntParser(0, 1_000_000), "50"),
    # Days a user key's devices and networks are remembered for auth.login.new_device (0 = off).
    "new_device_days": (IntParser(0, 3650), "90"),
    # Extra attack-tool User-Agent tokens for request.attack_tool (added to the built-in list).
    "attack_tools": (_parse_attack_tools, ""),
}


# Non-string arguments of the web rows: status_events as {401: "auth.unauthenticated"} or a list
# of rules, login_routes and login_user_fields as lists.
_WEB_ARGUMENTS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "status_events": parse_status_rules,
    "login_routes": parse_login_routes,
    "login_user_fields": lambda value: tuple(str(item) for item in value),
}


def _int_argument(parser: Callable[[str], Any], value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return parser(str(value))


def _bool_argument(parser: Callable[[str], Any], value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f"expected a bool, got {value!r}")
    return value


def _hash_key_argument(parser: Callable[[str], Any], value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise ValueError(f"unsupported value {value!r}")
    if len(value) < 16:
        raise ValueError("must be at least 16 bytes")
    return value


def _value_only(
    coerce: Callable[[Any], Any],
) -> Callable[[Callable[[str], Any], Any], Any]:
    """A coercer that needs no environment parser."""

    def coerce_value(parser: Callable[[str], Any], value: Any) -> Any:
        return coerce(value)

    return coerce_value


def _networks(value: Any) -> Any:
    return _parse_proxies(",".join(str(item) for item in value))


def _optional_path(value: Any) -> Path | None:
    return None if value is None else Path(value).expanduser()


# Explicit non-string arguments, by setting: (parser of the environment form, value) -> value.
_INT_SETTINGS: Final = tuple(
    name for name, (parser, _) in _PARSERS.items() if isinstance(parser, IntParser)
)
_ARGUMENT_COERCERS: Final[Mapping[str, Callable[[Callable[[str], Any], Any], Any]]] = {
    **{name: _int_argument for name in _INT_SETTINGS},
    **{name: _bool_argument for name in ("record_user_name", "span_events", "strict")},
    **{name: _value_only(_networks) for name in ("trusted_proxies", "allowlist")},
    **{name: _value_only(rows) for name, rows in _WEB_ARGUMENTS.items()},
    "redact_keys": _value_only(lambda value: tuple(str(item) for item in value)),
    "attack_tools": _value_only(lambda value: _parse_attack_tools(",".join(map(str, value)))),
    "hash_key": _hash_key_argument,
    "spool_dir": _value_only(_optional_path),
    "export_dir": _value_only(lambda value: Path(value).expanduser()),
}


def _coerce_argument(name: str, value: Any) -> Any:
    """Validate an explicit argument; strings go through the environment parser."""
    parser, _ = _PARSERS[name]
    if isinstance(value, str):
        return parser(value)
    coerce = _ARGUMENT_COERCERS.get(name)
    if coerce is None:
        raise ValueError(f"unsupported value {value!r}")
    return coerce(parser, value)


# Settings whose values are secrets: never echoed, not even in an error message.
_SECRET_SETTINGS: Final = frozenset({"hash_key"})


def _shown(settings: Settings, name: str) -> str:
    value = getattr(settings, name)
    if name in _SECRET_SETTINGS and value:
        return "<set>"
    if isinstance(value, str):
        return repr(redact_uri_password(value))
    return repr(value)


def _config_error_text(name: str, shown_value: str, problem: object) -> str:
    """The message of a bad setting, with no secret in it (neither the value of a secret
    setting nor a URI password, also when the parser quoted the value)."""
    if name in _SECRET_SETTINGS:
        return f"{shown_value.split('=', 1)[0]}=<hidden>: {redact_uri_password(str(problem))}"
    return redact_uri_password(f"{shown_value}: {problem}")


def _warn_shadowed_login_routes(settings: Settings) -> None:
    for problem in login_rule_conflicts(settings.status_events, settings.login_routes):
        _log.warning("otel_secaudit: %s", problem)


@dataclass(frozen=True)
class Settings:
    """All of otel_secaudit's configuration (CONTRACT section 5).

    Build it with :meth:`load`; the constructor takes already-validated values.
    """

    host_threshold: int = 10
    user_threshold: int = 5
    window_seconds: int = 3600
    store: str = "memory://"
    block_seconds: int = 0
    #: Keys tracked per scope (host, user) in every store; least recently seen dropped first.
    max_keys: int = 20000
    #: A repeat offender's block doubles each time, up to this.
    block_max_seconds: int = 86400
    #: Client networks never blocked (their events and abuse signals are still recorded).
    allowlist: tuple[IPNetwork, ...] = ()
    #: IPv6 clients are counted and blocked per network of this prefix (128 = per address).
    ipv6_prefix: int = 64
    trusted_proxies: tuple[IPNetwork, ...] = ()
    hash_key: bytes | None = None
    record_user_name: bool = False
    span_events: bool = True
    #: OTEL_SECAUDIT_STATUS_EVENTS; also a Mapping of the app-wide rules (status -> event).
    status_events: StatusRules = field(
        default_factory=lambda: _parse_status_events(_DEFAULT_STATUS_EVENTS)
    )
    #: ``METHOD ROUTE`` of login endpoints (their 2xx/3xx/4xx become auth.login.*).
    login_routes: LoginRoutes = field(default_factory=LoginRoutes)
    #: Form/JSON fields of a login body that hold the user name.
    login_user_fields: tuple[str, ...] = ("username", "email", "login")
    #: The claim of a token decoded during a request that is the request's user.id.
    user_id_claim: str = "sub"
    #: The one forwarding header trusted proxies set.
    client_address_header: str = "x-forwarded-for"
    redact_keys: tuple[str, ...] = ()
    spool_dir: Path | None = None
    #: Size cap of the spool's segment files; records beyond it are refused and counted.
    spool_max_bytes: int = 256 * 1024 * 1024
    #: Where the ``otlp_json_dir`` exporters write (``otel_secaudit.exporters``).
    export_dir: Path = Path("./otel-secaudit-output")
    #: Raise :class:`otel_secaudit.SecAuditInputError` from ``record()`` on bad input
    #: (tests and development). Off in production, where bad input is counted and logged.
    strict: bool = False
    #: 404/405 answers to one client address within 60 s that raise abuse.scan (0 = off).
    scan_threshold: int = 50
    #: Days a user key's known devices and networks are remembered (0 = no new-device events).
    new_device_days: int = 90
    #: Extra User-Agent tokens of attack tools (OTEL_SECAUDIT_ATTACK_TOOLS), beside the
    #: built-in list.
    attack_tools: tuple[str, ...] = ()
    #: A per-process random key used when ``hash_key`` is not configured.
    effective_hash_key: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.effective_hash_key:
            key = self.hash_key or secrets.token_bytes(32)
            object.__setattr__(self, "effective_hash_key", key)

    def __repr__(self) -> str:  # never print the hash key
        shown = ", ".join(f"{f.name}={_shown(self, f.name)}" for f in fields(self) if f.repr)
        return f"Settings({shown})"

    @classmethod
    def load(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        lenient: bool = False,
        **arguments: Any,
    ) -> Settings:
        """Settings from ``arguments`` first, then ``OTEL_SECAUDIT_*`` in ``environ``.

        Args:
            environ: the environment to read (default ``os.environ``).
            lenient: log a warning and use the default for a bad *environment* value instead of
                raising (auto-instrumentation). Bad explicit arguments always raise.
            arguments: ``host_threshold=...`` and so on; ``None`` means "not given".

        Raises:
            ConfigError: naming the argument or variable and saying what is expected.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in arguments:
            if name not in _PARSERS:
                raise ConfigError(
                    f"unknown setting {name!r}; known settings: {', '.join(sorted(_PARSERS))}"
                )
        for name, (parser, default) in _PARSERS.items():
            given = arguments.get(name)
            if given is not None:
                try:
                    values[name] = _coerce_argument(name, given)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(_config_error_text(name, f"{name}={given!r}", exc)) from None
                continue
            variable = ENV_PREFIX + name.upper()
            raw = env.get(variable)
            if raw is None:
                values[name] = parser(default)
                continue
            try:
                values[name] = parser(raw)
            except ValueError as exc:
                message = _config_error_text(name, f"{variable}={raw[:200]!r}", exc)
                if not lenient:
                    raise ConfigError(message) from None
                usable = getattr(exc, "usable", None)
                if usable is not None:  # a list with some bad entries keeps the good ones
                    _log.warning("otel_secaudit: %s; keeping the other entries", message)
                    values[name] = usable
                    continue
                _log.warning("otel_secaudit: %s; using the default %r", message, default)
                values[name] = parser(default)
        settings = cls(**values)
        if lenient:  # the instrumentor's load: say once what the operator wrote that is shadowed
            _warn_shadowed_login_routes(settings)
        if settings.hash_key is None:
            _log.info(
                "otel_secaudit: OTEL_SECAUDIT_HASH_KEY is not set; user.hash uses a random "
                "per-process key, so hashes do not correlate across instances or restarts"
            )
        return settings
