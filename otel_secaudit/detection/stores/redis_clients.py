"""Redis clients for ``OTEL_SECAUDIT_STORE``, from the ``limits`` library's URI forms.

One parser (:func:`parse_redis_uri`) and one factory (:class:`RedisConnector`) for every Redis
topology, each built with redis-py's own client:

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS; ``?ssl_ca_certs=``
  and the other redis-py URL options), ``unix:///path/redis.sock[?db=n]``, ``redis+unix://``:
  ``redis.Redis.from_url``;
* ``redis+sentinel://[[user]:password@]host:port[,host:port]/service_name``:
  ``redis.sentinel.Sentinel(...).master_for(service_name)``;
* ``redis+cluster://[[user]:password@]host:port[,host:port]``:
  ``redis.cluster.RedisCluster(startup_nodes=...)``.

As in ``limits`` (``limits/_storage_scheme.py``, ``limits/storage/redis_sentinel.py``,
``redis_cluster.py``): the locations of a sentinel or cluster URI are comma-separated, each
with a host *and* a port; a sentinel's service name is the path; credentials in the URI are
used for the sentinels and for the Redis servers they manage alike. Unlike ``limits``, the
user name and password are percent-decoded (as ``redis.Redis.from_url`` does), so a password
with ``@`` or ``,`` can be written ``%40`` / ``%2C``, and query options on a sentinel or
cluster URI are refused rather than silently ignored.

Errors are :class:`~otel_secaudit.config.ConfigError` naming ``OTEL_SECAUDIT_STORE``; neither
they nor any ``repr`` ever contain the password.

Redis Cluster: a Lua script may only touch keys of one hash slot, and redis-py routes
``EVALSHA`` by its first key. The Redis store therefore splits its state into shards, each
under a hash tag of its own (its prefix, ``{secaudit:abuse:<i>}:``), runs one script per shard
with one of the shard's keys in ``KEYS[1]``, and chooses the tags in evenly spaced slots, so
the state and the work are spread over the masters (see :mod:`.redis`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

from ...config import ConfigError, redact_uri_password

__all__ = [
    "CLUSTER",
    "SENTINEL",
    "STANDALONE",
    "LazyRedisClient",
    "RedisConnector",
    "RedisTarget",
    "parse_redis_uri",
    "redact_password",
    "redis_client",
]

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

#: ``redact_password(uri)``: the URI with its password (user info, ``?password=``) masked;
#: the one implementation is the config module's.
redact_password: Final = redact_uri_password


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
        return redact_password(self.uri)

    def __repr__(self) -> str:
        return (
            f"RedisTarget(kind={self.kind!r}, uri={self.redacted_uri!r}, "
            f"locations={self.locations!r}, service_name={self.service_name!r})"
        )


def _error(uri: str, why: str, variable: str | None) -> ConfigError:
    if variable is None:  # the caller (Settings.load) names the variable and shows the value
        return ConfigError(why)
    return ConfigError(f"{variable}={redact_password(uri)!r}: {why}")


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


class RedisConnector:
    """Builds and keeps one redis-py client for a store URI.

    Building the connector does no network I/O; :meth:`client` builds the client on first
    call (``RedisCluster`` reads the slot map from a startup node as it is built, so call it
    from a worker thread, never on a request). A failed build raises and is tried again on
    the next call. Thread-safe.

    Every client has socket and connect timeouts of ``timeout`` seconds and no retries of its
    own: the caller (the detector's worker) owns retrying, with backoff, and counts locally
    meanwhile. A sentinel client asks the sentinels for the current master on every new
    connection, so after a failover the next attempt reaches the new master.
    """

    def __init__(
        self, uri: str, *, timeout: float = 2.0, variable: str = STORE_VARIABLE, **options: Any
    ) -> None:
        self.target = parse_redis_uri(uri, variable=variable)
        self.timeout = timeout
        #: extra keyword arguments for the redis-py client (tests, TLS files for sentinel...)
        self.options = options
        self._lock = threading.Lock()
        self._client: Any = None

    @property
    def is_cluster(self) -> bool:
        """True for ``redis+cluster://``: scripts must run one slot at a time."""
        return self.target.kind == CLUSTER

    def __repr__(self) -> str:
        return f"RedisConnector({self.target.redacted_uri!r}, timeout={self.timeout!r})"

    def client(self) -> Any:
        """The redis-py client (``redis.Redis`` or ``redis.cluster.RedisCluster``)."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def close(self) -> None:
        """Close the client's connections; never raises. :meth:`client` builds a new one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing must not raise
                pass

    def _connection_options(self) -> dict[str, Any]:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            # The detector owns retrying (with backoff, off the request path).
            "retry": Retry(NoBackoff(), 0),
            **self.options,
        }

    def _auth(self) -> dict[str, Any]:
        auth: dict[str, Any] = {}
        if self.target.username is not None:
            auth["username"] = self.target.username
        if self.target.password is not None:
            auth["password"] = self.target.password
        return auth

    def _build(self) -> Any:
        import redis  # optional dependency: pip install otel-secaudit[redis]

        target = self.target
        options = self._connection_options()
        if target.kind == STANDALONE:
            uri = target.uri
            if target.scheme == "redis+unix":  # the limits spelling of redis-py's unix://
                uri = "unix" + uri[len("redis+unix") :]
            return redis.Redis.from_url(uri, health_check_interval=0, **options)
        if target.kind == SENTINEL:
            from redis.sentinel import Sentinel

            assert target.service_name is not None
            # the sentinels too: no retries of redis-py's own (its default, 3 with backoff,
            # costs ~4 s per attempt when a sentinel is down)
            sentinel_options = {
                "socket_timeout": self.timeout,
                "socket_connect_timeout": self.timeout,
                "retry": options["retry"],
                **self._auth(),
            }
            sentinel = Sentinel(
                list(target.locations), sentinel_kwargs=sentinel_options, **self._auth()
            )
            return sentinel.master_for(target.service_name, **options)
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.locations],
            # ``retry`` (no retries) is the cluster-level one here; MOVED/ASK redirections are
            # still followed
            **self._auth(),
            **options,
        )


class LazyRedisClient:
    """A redis-py client built on first use, for any topology; no network I/O until then.

    :meth:`register_script` returns a script that is registered with the real client when
    first called (and again if :meth:`close` dropped that client); any other attribute is
    the real client's (``client.info("memory")``...), which builds it.
    """

    def __init__(self, connector: RedisConnector) -> None:
        self.connector = connector

    def register_script(self, script: str) -> _LazyScript:
        """Like ``redis.Redis.register_script``: ``script(keys=[...], args=[...])``."""
        return _LazyScript(self.connector, script)

    def close(self) -> None:
        """Close the real client, if built; never raises."""
        self.connector.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connector.client(), name)

    def __repr__(self) -> str:
        return f"LazyRedisClient({self.connector!r})"


class _LazyScript:
    """A Lua script bound to whichever client the connector currently has."""

    def __init__(self, connector: RedisConnector, script: str) -> None:
        self.connector = connector
        self.script = script
        self._bound: tuple[Any, Any] | None = None

    def __call__(self, keys: list[Any] | None = None, args: list[Any] | None = None) -> Any:
        client = self.connector.client()
        bound = self._bound
        if bound is None or bound[0] is not client:
            bound = self._bound = (client, client.register_script(self.script))
        return bound[1](keys=keys, args=args)


def redis_client(
    uri: str, timeout: float = 2.0, *, variable: str = STORE_VARIABLE, **options: Any
) -> LazyRedisClient:
    """The client for a Redis store URI of any form (see the module docstring): a
    :class:`LazyRedisClient`, so building it does no network I/O.

    Raises:
        ConfigError: a malformed URI (naming ``variable``, password masked).
    """
    return LazyRedisClient(RedisConnector(uri, timeout=timeout, variable=variable, **options))
