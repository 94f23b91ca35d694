"""Redis clients for ``OTEL_SECAUDIT_STORE``, from the ``limits`` library's URI forms.

One factory (:class:`RedisConnector`) for every Redis topology, each built with redis-py's own
client, on the URI forms that :mod:`otel_secaudit.store_uris` parses (:func:`parse_redis_uri`):

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

Errors are :class:`~otel_secaudit.errors.ConfigError` naming ``OTEL_SECAUDIT_STORE``; neither
they nor any ``repr`` ever contain the password.

Redis Cluster: a Lua script may only touch keys of one hash slot, and redis-py routes
``EVALSHA`` by its first key. The Redis store therefore splits its state into shards, each
under a hash tag of its own (its prefix, ``{secaudit:abuse:<i>}:``), runs one script per shard
with one of the shard's keys in ``KEYS[1]``, and chooses the tags in evenly spaced slots, so
the state and the work are spread over the masters (see :mod:`.redis`).
"""

from __future__ import annotations

import threading
from typing import Any

from ...store_uris import (
    CLUSTER,
    SENTINEL,
    STANDALONE,
    STORE_VARIABLE,
    parse_redis_uri,
)

__all__ = ["LazyRedisClient", "RedisConnector", "redis_client"]


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
