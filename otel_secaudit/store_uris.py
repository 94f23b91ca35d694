"""Store URIs (``OTEL_SECAUDIT_STORE``), parsed without importing a store or redis-py.

The one parser of the forms the README's "Shared state" section lists, as ``limits`` keeps
its storage schemes apart from its storages: ``memory://`` or a Redis URI:

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path``,
  ``redis+unix://``: one server;
* ``redis+sentinel://[[user]:password@]host:port[,host:port]/service_name``;
* ``redis+cluster://[[user]:password@]host:port[,host:port]``.

The settings (:mod:`otel_secaudit.config`) validate the variable with :func:`parse_store_uri`;
the stores (:mod:`otel_secaudit.detection.stores`) build clients from :class:`RedisTarget`.
Errors are :class:`~otel_secaudit.errors.ConfigError`; neither they nor any ``repr`` ever
contain the password (:func:`redact_uri_password`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError
from .redaction.pipeline import REDACTED

__all__ = [
    "CLUSTER",
    "SCHEMES",
    "SENTINEL",
    "STANDALONE",
    "STORE_VARIABLE",
    "RedisTarget",
    "parse_redis_uri",
    "parse_store_uri",
    "redact_uri_password",
]

# A password in a URI's user info (``redis://user:PASSWORD@host``, up to the last ``@``, as a
# password with an unencoded ``/`` or ``#`` makes the URI unparsable and quoted in an error)
# or in a query parameter
# (``?password=...``, ``?sentinel_password=...``; redis-py reads those too).
_URI_PASSWORD: Final = re.compile(
    r"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"]*:)[^\s'\"]*(?=@)"
    r"|(?P<param>[?&][A-Za-z_]*pass(?:word|wd)?=)[^&#\s'\"]*",
    re.IGNORECASE,
)


def redact_uri_password(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``[REDACTED]``
    (``redis://user:[REDACTED]@host:6379/0``); the rest (scheme, user, host, port, path) is
    kept, so a configuration error stays diagnosable. Works on a URI or on a message that
    quotes one."""
    return _URI_PASSWORD.sub(lambda m: (m.group("keep") or m.group("param")) + REDACTED, text)


STORE_VARIABLE: Final = "OTEL_SECAUDIT_STORE"

STANDALONE: Final = "standalone"
SENTINEL: Final = "sentinel"
CLUSTER: Final = "cluster"

#: scheme -> topology
SCHEMES: Final[Mapping[str, str]] = {
    "redis": STANDALONE,
    "rediss": STANDALONE,
    "unix": STANDALONE,
    "redis+unix": STANDALONE,
    "redis+sentinel": SENTINEL,
    "redis+cluster": CLUSTER,
}


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis store URI. ``repr`` never shows the password."""

    #: :data:`STANDALONE`, :data:`SENTINEL` or :data:`CLUSTER`
    kind: str
    scheme: str
    #: sentinel or cluster nodes (host, port); the one server of a standalone TCP URI
    locations: tuple[tuple[str, int], ...] = ()
    #: the master's name, for a sentinel URI
    service_name: str | None = None
    #: the URI as given (a standalone one goes to ``redis.Redis.from_url``)
    uri: str = field(default="", repr=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def redacted_uri(self) -> str:
        """The URI with its password masked (for logs and errors)."""
        return redact_uri_password(self.uri)

    def __repr__(self) -> str:
        return (
            f"RedisTarget(kind={self.kind!r}, uri={self.redacted_uri!r}, "
            f"locations={self.locations!r}, service_name={self.service_name!r})"
        )


def _error(uri: str, why: str, variable: str | None) -> ConfigError:
    if variable is None:  # the caller (Settings.load) names the variable and shows the value
        return ConfigError(why)
    return ConfigError(f"{variable}={redact_uri_password(uri)!r}: {why}")


def _locations(netloc: str, uri: str, variable: str | None) -> tuple[tuple[str, int], ...]:
    # limits: everything after the '@' is host:port[,host:port...], each with a port
    hosts = netloc[netloc.rfind("@") + 1 :]
    out = []
    for location in hosts.split(","):
        location = location.strip()
        try:
            parts = urlsplit(f"//{location}")
            host, port = parts.hostname, parts.port
        except ValueError:
            raise _error(uri, f"bad port in location {location!r}", variable) from None
        if not host or port is None:
            raise _error(
                uri, f"location {location!r} needs a host and a port (host:port)", variable
            )
        out.append((host, port))
    return tuple(out)


def _credentials(netloc: str) -> tuple[str | None, str | None]:
    at = netloc.rfind("@")
    if at == -1:
        return None, None
    user, colon, password = netloc[:at].partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _check_standalone(uri: str, scheme: str, variable: str | None) -> tuple[tuple[str, int], ...]:
    parts = urlsplit(uri)
    if scheme in ("unix", "redis+unix"):
        if not parts.path:
            raise _error(uri, "a unix socket URI needs a path: unix:///path/redis.sock", variable)
        return ()
    if "," in parts.netloc:
        raise _error(
            uri,
            "one server only; for several use redis+sentinel:// or redis+cluster://",
            variable,
        )
    try:
        host, port = parts.hostname, parts.port or 6379
    except ValueError:
        raise _error(uri, "bad port", variable) from None
    if not host:
        raise _error(uri, f"needs a host: {scheme}://host:port/db", variable)
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise _error(uri, f"the database must be a number, got {db!r}", variable)
    if "db" in parse_qs(parts.query) and db:
        raise _error(uri, "the database is given twice (path and ?db=)", variable)
    return ((host, port),)


def parse_redis_uri(uri: str, *, variable: str | None = STORE_VARIABLE) -> RedisTarget:
    """Parse a Redis store URI (see the module docstring); no network I/O.

    Raises:
        ConfigError: unknown scheme or malformed URI; the message names ``variable`` and
            shows the URI with its password masked (with ``variable=None``, only what is
            wrong: for a caller that names the variable itself, like ``Settings.load``).
    """
    uri = uri.strip()
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    kind = SCHEMES.get(scheme)
    if kind is None:
        raise _error(
            uri,
            "expected redis://host:port/db, rediss://, redis+sentinel://host:port/service_name "
            "or redis+cluster://host:port[,host:port]",
            variable,
        )
    if kind == STANDALONE:
        locations = _check_standalone(uri, scheme, variable)
        user, password = _credentials(urlsplit(uri).netloc)
        return RedisTarget(kind, scheme, locations, None, uri, user, password)
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise _error(uri, str(exc), variable) from None
    if parts.query or parts.fragment:
        raise _error(uri, f"{scheme}:// takes no query options", variable)
    if not parts.netloc[parts.netloc.rfind("@") + 1 :]:
        raise _error(uri, f"needs at least one host:port: {scheme}://host:port", variable)
    locations = _locations(parts.netloc, uri, variable)
    path = parts.path.strip("/")
    service_name = None
    if kind == SENTINEL:
        if not path or "/" in path:
            raise _error(
                uri,
                "needs the service name as its path: redis+sentinel://host:port/service_name",
                variable,
            )
        service_name = unquote(path)
    elif path:
        raise _error(uri, "a cluster has no database number; drop the path", variable)
    user, password = _credentials(parts.netloc)
    return RedisTarget(kind, scheme, locations, service_name, uri, user, password)


def parse_store_uri(raw: str) -> str:
    """Validate a store URI and return it normalized (``memory://``) or as given.

    Forms (the README's "Configuration"): ``memory://`` or any Redis form of
    :func:`parse_redis_uri` (``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://``, ``redis+cluster://``).

    Raises:
        ValueError: saying what is wrong (the password is never echoed).
    """
    uri = raw.strip()
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "memory":
        return "memory://"
    if scheme in SCHEMES:
        parse_redis_uri(uri, variable=None)  # Settings.load names the variable itself
        return uri
    raise ValueError(
        "expected memory:// or a Redis URI (redis://host:port/db, rediss://, unix://, "
        f"redis+sentinel://host:port[,host:port]/service, redis+cluster://host:port), got "
        f"{redact_uri_password(uri)[:100]!r}"
    )
