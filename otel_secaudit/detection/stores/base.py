"""The :class:`Store` protocol every detection store implements, and its result types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple, Protocol, runtime_checkable

from ..window import Crossing, Hit, Policy

__all__ = ["DEFAULT_MAX_BLOCKS", "DEFAULT_MAX_KEYS", "BlockInfo", "Housekeeping", "Store"]

#: Default cap of tracked keys per scope (OTEL_SECAUDIT_MAX_KEYS).
DEFAULT_MAX_KEYS: Final = 20_000
#: At most this many blocked keys are kept (memory) or copied to an instance (Redis) at once.
DEFAULT_MAX_BLOCKS: Final = 100_000


class Housekeeping(NamedTuple):
    """What :meth:`Store.housekeeping` found."""

    #: (key, until) of the blocks that ended, each returned exactly once across all users
    #: of the store
    expired: list[tuple[str, float]]
    #: every active block, key -> until, for a store shared with other instances (their blocks
    #: are enforced here too); None when the caller already learnt every block through
    #: :meth:`Store.apply` (in-process stores)
    active: dict[str, float] | None


class BlockInfo(NamedTuple):
    """One block as an operator sees it (``otel-secaudit blocks list``, a release)."""

    #: the host key: an address, or an IPv6 network such as ``2001:db8:1:2::/64``
    key: str
    #: blocked until (epoch seconds); for a release, when the released block would have ended
    until: float
    #: blocks this key has had (its repeat-offender history: the next block doubles this many
    #: times)
    offences: int


@runtime_checkable
class Store(Protocol):
    """Storage of abuse-detection state. Implementations must be thread-safe.

    ``in_process`` stores do no I/O, so the detector counts on the caller's thread (detection
    and blocks take effect at once); the others are fed in batches by a worker thread.
    """

    in_process: bool

    def apply(self, hits: Sequence[Hit], policy: Policy) -> list[Crossing]:
        """Count ``hits`` in order, atomically; return the crossings, starting blocks for
        blockable host keys when ``policy.block_seconds > 0`` (see :mod:`..window`)."""
        ...

    def recent(self, scope: str, key: str, now: float, window: float) -> int:
        """How many violations of ``key`` the store holds within ``window`` seconds before
        ``now`` (at most the scope's threshold: the window keeps no more). Read only."""
        ...

    def housekeeping(self, now: float, limit: int = DEFAULT_MAX_BLOCKS) -> Housekeeping:
        """End the blocks whose time has come; for shared stores also return up to ``limit``
        active blocks."""
        ...

    def list_blocks(self, now: float, limit: int = DEFAULT_MAX_BLOCKS) -> list[BlockInfo]:
        """The blocks running at ``now`` (up to ``limit``), the longest-lasting first."""
        ...

    def release(self, key: str, now: float, window: float, forget: bool = False) -> BlockInfo:
        """End ``key``'s block now (every instance drops it at its next refresh), restart its
        count, keep its repeat-offender history one ``window`` unless ``forget``; the block
        released (``until`` 0.0 when none was running)."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters for :attr:`AbuseDetector.stats` (at least ``processed``)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
