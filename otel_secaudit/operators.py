"""The operator's side of blocks: release one early, in-process or for every instance.

:func:`release_block` is the in-process call (``otel_secaudit.release_block``): with the
default ``memory://`` store blocks live in each process, so the application releases its own
(an admin view, a management command). With a shared store (Redis) it releases the block for
every instance, as ``otel-secaudit blocks release ADDRESS`` does from a shell
(:mod:`otel_secaudit.commands.blocks`).

A release ends the block at once here and within a second everywhere else (every instance
refreshes its copy of the shared blocks every 0.3 s), restarts the key's count, and keeps its
repeat-offender history (the doubling of its next block) unless ``forget=True``. It is an audit
event: ``admin.action`` with ``security.action=release_block`` and ``security.abuse.key`` the
released address or network (:func:`record_release`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from . import attributes as attr

if TYPE_CHECKING:  # ``import otel_secaudit`` does not load detection
    from .detection.stores import BlockInfo
    from .recorder import SecurityRecorder

__all__ = ["RELEASE_ACTION", "ReleasedBlock", "StoreUnavailable", "record_release", "release_block"]

#: ``security.action`` of the ``admin.action`` record of a release.
RELEASE_ACTION: Final = "release_block"


class StoreUnavailable(RuntimeError):
    """The shared store did not answer (the message names it, never its password)."""


@dataclass(frozen=True)
class ReleasedBlock:
    """What a release did."""

    #: the host key released: an address, or an IPv6 network such as ``2001:db8:1:2::/64``
    key: str
    #: whether a block was running (False: only the count was restarted)
    was_blocked: bool
    #: seconds the released block still had to run
    seconds_left: float
    #: blocks the key has had (its repeat-offender history; 0 after ``forget``)
    offences: int
    #: whether that history was dropped
    forgotten: bool

    @classmethod
    def of(cls, info: BlockInfo, now: float, forget: bool) -> ReleasedBlock:
        """From a store's answer."""
        left = max(0.0, info.until - now) if info.until else 0.0
        return cls(info.key, left > 0, left, 0 if forget else info.offences, forget)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def record_release(recorder: SecurityRecorder, released: ReleasedBlock) -> None:
    """The audit record of a release: ``admin.action``, ``security.action=release_block``,
    ``security.abuse.key``; never raises."""
    reason = "history_forgotten" if released.forgotten else "history_kept"
    recorder.emit(
        "admin.action",
        {"action": RELEASE_ACTION, "reason": reason},
        internal_attributes={attr.ABUSE_KEY: released.key},
    )


def release_block(address: str, *, forget: bool = False) -> ReleasedBlock:
    """End the block of ``address`` now (its host key: an IPv6 address is its
    OTEL_SECAUDIT_IPV6_PREFIX network; a network such as ``2001:db8:1:2::/64`` is taken as
    written), restart its count and record ``admin.action`` (see the module docstring).

    Raises:
        ValueError: ``address`` is not an IP address or a blockable network.
        RuntimeError: abuse detection is not running in this process.
        StoreUnavailable: the shared store did not answer (the block is released in this
            process only).
    """
    from . import runtime
    from .detection.keys import operator_key

    rt = runtime.current()
    detector = rt.detector
    if detector is None:
        raise RuntimeError(
            "abuse detection is not running in this process (SecAuditInstrumentor or "
            "otel_secaudit.runtime.install starts it)"
        )
    key = operator_key(address, detector.keys.ipv6_prefix)
    try:
        info = detector.release(key, forget)
    except Exception as exc:
        raise StoreUnavailable(f"the shared store did not answer ({type(exc).__name__})") from exc
    released = ReleasedBlock.of(info, time.time(), forget)
    record_release(rt.recorder, released)
    return released
