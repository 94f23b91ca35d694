"""Where abuse detection keeps its state, chosen by URI like the ``limits`` library's storage.

* :class:`Store`: the small protocol (``apply`` a batch of hits, ``recent``,
  ``housekeeping``, ``stats``, ``close``);
* :class:`MemoryStore` (``memory://``, the default): in process;
* :class:`RedisStore` (every Redis form of :mod:`.redis_clients`): shared by every instance,
  one atomic Lua round trip per batch (``apply.lua``, ``housekeeping.lua``);
* :func:`build_store` turns a URI that :func:`otel_secaudit.store_uris.parse_store_uri`
  accepts into a store: the one place a URI becomes a store.
"""

from __future__ import annotations

from typing import Any

from ...store_uris import parse_store_uri
from .base import DEFAULT_MAX_BLOCKS, DEFAULT_MAX_KEYS, BlockInfo, Housekeeping, Store
from .memory import MemoryStore
from .redis import RedisStore  # redis-py itself is imported only when a client is built

__all__ = [
    "DEFAULT_MAX_BLOCKS",
    "DEFAULT_MAX_KEYS",
    "BlockInfo",
    "Housekeeping",
    "MemoryStore",
    "RedisStore",
    "Store",
    "build_store",
    "parse_store_uri",
]


def build_store(
    uri: str, *, max_keys: int = DEFAULT_MAX_KEYS, client: Any = None, **options: Any
) -> Store:
    """A store for ``uri`` (see :func:`parse_store_uri`). Does no network I/O.

    ``max_keys`` caps the keys tracked per scope; ``client`` is a ready Redis client (tests,
    or a caller that builds its own); other ``options`` go to the store's constructor.

    Raises:
        ValueError: a URI :func:`parse_store_uri` refuses. (A missing redis-py shows when
            the client is first used, in the detector's worker, which then counts in memory.)
    """
    uri = parse_store_uri(uri)
    if uri == "memory://":
        return MemoryStore(max_keys=max_keys, **options)
    return RedisStore(uri, max_keys=max_keys, client=client, **options)
