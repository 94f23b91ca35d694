"""One settings object from constructor arguments, then ``OTEL_SECAUDIT_*`` environment variables.

:meth:`Settings.load` takes keyword arguments named like the variables without the prefix, in
lower case (``host_threshold=20`` mirrors ``OTEL_SECAUDIT_HOST_THRESHOLD=20``). An argument wins
over the environment. The README's "Configuration" section lists them.

Bad values raise :class:`ConfigError` naming the argument or variable when configured
explicitly (``lenient=False``). Under auto-instrumentation (``lenient=True``) a bad environment
value is logged as a warning and the default is used, because an instrumentor must never stop
the application from starting.

Each setting is declared once, as a field of :class:`Settings` made by :func:`setting`: its
type, its parser (with bounds), its default (in the environment's form), how an argument that
is not a string is taken, whether it is a secret, and what it is for. The defaults of the
dataclass, the environment parsing, the argument checks and the masking in ``repr`` and in
error messages are all read from those declarations (:data:`SETTINGS`).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from . import config_values as values
from .config_values import IntParser, IPNetwork
from .errors import ConfigError
from .route_rules import LoginRoutes, StatusRules, login_rule_conflicts
from .store_uris import parse_store_uri, redact_uri_password

__all__ = [
    "ENV_PREFIX",
    "SETTINGS",
    "ConfigError",
    "Setting",
    "Settings",
    "redact_uri_password",
    "setting",
]

_log = logging.getLogger(__name__)

ENV_PREFIX: Final = "OTEL_SECAUDIT_"


@dataclass(frozen=True)
class Setting:
    """The declaration of one setting (see the module docstring)."""

    #: the environment string -> the value (raises ValueError saying what is expected)
    parse: Callable[[str], Any]
    #: the default, in the environment's form (parsed like a value of the variable)
    default: str
    #: what the setting is for
    doc: str
    #: an explicit argument that is not a string -> the value (None: strings only)
    argument: Callable[[Any], Any] | None = None
    #: never echoed, not even in an error message
    secret: bool = False


#: The key of a setting's declaration in its dataclass field's metadata.
_DECLARATION: Final = "otel_secaudit.setting"
_PLAIN_DEFAULTS: Final = (bool, int, str, bytes, tuple, Path, type(None))


def setting(
    parse: Callable[[str], Any],
    default: str,
    *,
    doc: str,
    argument: Callable[[Any], Any] | None = None,
    secret: bool = False,
) -> Any:
    """Declare a field of :class:`Settings`. An :class:`IntParser` or
    :func:`~.config_values.parse_bool` setting takes an int or a bool argument by itself."""
    if argument is None and isinstance(parse, IntParser):
        argument = values.int_argument(parse)
    elif argument is None and parse is values.parse_bool:
        argument = values.bool_argument
    declaration = Setting(parse, default, doc, argument, secret)
    # Parsed when first needed (a parser may import what imports this module), then kept
    # when the value is immutable.
    return field(
        default_factory=lambda: _default_of(declaration), metadata={_DECLARATION: declaration}
    )


_defaults: dict[int, Any] = {}


def _default_of(declaration: Setting) -> Any:
    key = id(declaration)  # declarations live as long as the Settings class
    if key in _defaults:
        return _defaults[key]
    value = declaration.parse(declaration.default)
    if isinstance(value, _PLAIN_DEFAULTS):
        _defaults[key] = value
    return value


def _shown(settings: Settings, name: str) -> str:
    value = getattr(settings, name)
    if SETTINGS[name].secret and value:
        return "<set>"
    if isinstance(value, str):
        return repr(redact_uri_password(value))
    return repr(value)


def _config_error_text(name: str, shown_value: str, problem: object) -> str:
    """The message of a bad setting, with no secret in it (neither the value of a secret
    setting nor a URI password, also when the parser quoted the value)."""
    if SETTINGS[name].secret:
        return f"{shown_value.split('=', 1)[0]}=<hidden>: {redact_uri_password(str(problem))}"
    return redact_uri_password(f"{shown_value}: {problem}")


def _warn_shadowed_login_routes(settings: Settings) -> None:
    for problem in login_rule_conflicts(settings.status_events, settings.login_routes):
        _log.warning("otel_secaudit: %s", problem)


@dataclass(frozen=True)
class Settings:
    """All of otel_secaudit's configuration (the README's "Configuration" section).

    Build it with :meth:`load`; the constructor takes already-validated values.
    """

    host_threshold: int = setting(
        IntParser(1, 1_000_000), "10", doc="Violations from one client address that escalate."
    )
    user_threshold: int = setting(
        IntParser(1, 1_000_000), "5", doc="Violations against one user that escalate."
    )
    window_seconds: int = setting(
        IntParser(1, values.ONE_YEAR_S), "3600", doc="The moving window of the thresholds."
    )
    store: str = setting(
        parse_store_uri, "memory://", doc="Where detection keeps its state: memory:// or Redis."
    )
    block_seconds: int = setting(
        IntParser(0, values.ONE_YEAR_S), "0", doc="429 blocks of escalated addresses (0 = off)."
    )
    max_keys: int = setting(
        IntParser(1, 100_000_000),
        "20000",
        doc="Keys tracked per scope (host, user) in every store; least recently seen dropped "
        "first.",
    )
    block_max_seconds: int = setting(
        IntParser(1, values.ONE_YEAR_S),
        "86400",
        doc="A repeat offender's block doubles each time, up to this.",
    )
    allowlist: tuple[IPNetwork, ...] = setting(
        values.parse_networks,
        "",
        argument=values.networks_argument,
        doc="Client networks never blocked (their events and abuse signals are still recorded).",
    )
    ipv6_prefix: int = setting(
        IntParser(1, 128),
        "64",
        doc="IPv6 clients are counted and blocked per network of this prefix (128 = per address).",
    )
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        values.parse_networks,
        "",
        argument=values.networks_argument,
        doc="Proxies whose forwarding header is believed.",
    )
    hash_key: bytes | None = setting(
        values.parse_hash_key,
        "",
        argument=values.hash_key_argument,
        secret=True,
        doc="The key of user.hash (at least 16 characters); default: a random one per process.",
    )
    record_user_name: bool = setting(
        values.parse_bool, "false", doc="Record user.name beside user.hash."
    )
    span_events: bool = setting(
        values.parse_bool, "true", doc="Add each event to its span as a span event too."
    )
    status_events: StatusRules = setting(
        values.parse_status_events,
        "401:auth.unauthenticated,403:authz.permission_denied,429:request.rate_limited",
        argument=values.status_events_argument,
        doc="Responses that become events; also a Mapping of the app-wide rules (status -> event).",
    )
    login_routes: LoginRoutes = setting(
        values.parse_login_routes,
        "",
        argument=values.login_routes_argument,
        doc="METHOD ROUTE of login endpoints (their 2xx/3xx/4xx become auth.login.*).",
    )
    login_user_fields: tuple[str, ...] = setting(
        values.parse_list,
        "username,email,login",
        argument=values.strings_argument,
        doc="Form/JSON fields of a login body that hold the user name.",
    )
    user_id_claim: str = setting(
        values.parse_claim,
        "sub",
        doc="The claim of a token decoded during a request that is the request's user.id.",
    )
    client_address_header: str = setting(
        values.parse_client_address_header,
        "x-forwarded-for",
        doc="The one forwarding header trusted proxies set.",
    )
    redact_keys: tuple[str, ...] = setting(
        values.parse_list,
        "",
        argument=values.strings_argument,
        doc="Extra attribute keys whose values are redacted.",
    )
    spool_dir: Path | None = setting(
        values.parse_path,
        "",
        argument=values.optional_path_argument,
        doc="Durable delivery: spool the security log records in this directory.",
    )
    spool_max_bytes: int = setting(
        IntParser(4096, 1 << 40),
        "268435456",
        doc="Size cap of the spool's segment files; records beyond it are refused and counted.",
    )
    export_dir: Path = setting(
        values.parse_export_dir,
        "./otel-secaudit-output",
        argument=values.path_argument,
        doc="Where the otlp_json_dir exporters write (otel_secaudit.exporters).",
    )
    strict: bool = setting(
        values.parse_bool,
        "false",
        doc="Raise SecAuditInputError from record() on bad input (tests and development); "
        "off in production, where bad input is counted and logged.",
    )
    scan_threshold: int = setting(
        IntParser(0, 1_000_000),
        "50",
        doc="404/405 answers to one client address within 60 s that raise abuse.scan (0 = off).",
    )
    new_device_days: int = setting(
        IntParser(0, 3650),
        "90",
        doc="Days a user key's known devices and networks are remembered (0 = no "
        "auth.login.new_device).",
    )
    attack_tools: tuple[str, ...] = setting(
        values.parse_attack_tools,
        "",
        argument=values.attack_tools_argument,
        doc="Extra User-Agent tokens of attack tools, beside the built-in list.",
    )
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
        loaded: dict[str, Any] = {}
        for name in arguments:
            if name not in SETTINGS:
                raise ConfigError(
                    f"unknown setting {name!r}; known settings: {', '.join(sorted(SETTINGS))}"
                )
        for name, declaration in SETTINGS.items():
            parser, default = declaration.parse, declaration.default
            given = arguments.get(name)
            if given is not None:
                try:
                    loaded[name] = _coerce_argument(name, given)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(_config_error_text(name, f"{name}={given!r}", exc)) from None
                continue
            variable = ENV_PREFIX + name.upper()
            raw = env.get(variable)
            if raw is None:
                loaded[name] = parser(default)
                continue
            try:
                loaded[name] = parser(raw)
            except ValueError as exc:
                message = _config_error_text(name, f"{variable}={raw[:200]!r}", exc)
                if not lenient:
                    raise ConfigError(message) from None
                usable = getattr(exc, "usable", None)
                if usable is not None:  # a list with some bad entries keeps the good ones
                    _log.warning("otel_secaudit: %s; keeping the other entries", message)
                    loaded[name] = usable
                    continue
                _log.warning("otel_secaudit: %s; using the default %r", message, default)
                loaded[name] = parser(default)
        settings = cls(**loaded)
        if lenient:  # the instrumentor's load: say once what the operator wrote that is shadowed
            _warn_shadowed_login_routes(settings)
        if settings.hash_key is None:
            _log.info(
                "otel_secaudit: OTEL_SECAUDIT_HASH_KEY is not set; user.hash uses a random "
                "per-process key, so hashes do not correlate across instances or restarts"
            )
        return settings


#: Every setting's declaration, by name (the fields of :class:`Settings` made by :func:`setting`).
SETTINGS: Final[Mapping[str, Setting]] = {
    f.name: f.metadata[_DECLARATION] for f in fields(Settings) if _DECLARATION in f.metadata
}


def _coerce_argument(name: str, value: Any) -> Any:
    """Validate an explicit argument; strings go through the environment parser."""
    declaration = SETTINGS[name]
    if isinstance(value, str):
        return declaration.parse(value)
    if declaration.argument is None:
        raise ValueError(f"unsupported value {value!r}")
    return declaration.argument(value)
