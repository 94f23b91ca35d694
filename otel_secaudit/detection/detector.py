"""The abuse detector: counts violations per client address (or IPv6 network) and per user,
escalates, blocks, and answers "is this client refused?" on every request.

It wires pieces that each do one job:

* :class:`~.keys.HostKeys`: the host key of a client address (IPv6 network, IPv4-mapped
  addresses, allowlist);
* a :class:`~.stores.Store` (``OTEL_SECAUDIT_STORE``): the moving window
  (:mod:`.window`), signals, blocks and repeat-offender doubling; a shared store is wrapped in
  a :class:`~.failover.FailoverStore` (memory while Redis fails);
* :class:`~.handoff.HandOff`: the queue from the request path to a worker thread, which
  applies batches to a shared store and runs housekeeping (block expiry);
* :class:`~.blocks.BlockTable` and :class:`~.blocks.RefusalTally`: the blocks enforced here and
  the aggregation of ``request.blocked`` records;
* :class:`~.emission.AbuseEmitter`: the ``abuse.*`` events.

Violations arrive through :meth:`AbuseDetector.submit` (the recorder's ``violation_sink``),
whichever tracer provider made the span. ``submit`` never blocks, never raises and never does
network I/O: with the memory store it counts at once on the calling thread (detection and
blocks are immediate); with Redis it appends to the hand-off queue, and the worker applies up
to 500 violations (or what arrived in 50 ms) in one atomic round trip. When the queue is full
the violation is counted in the local memory store and the drop from the shared view is
counted (``stats["dropped"]``): never silent.

Blocks (``OTEL_SECAUDIT_BLOCK_SECONDS > 0``, the README's "Abuse detection and blocks") apply to
client addresses (host keys) only, never to a user: the user key of a failed login is the
*attempted* user name, which the attacker chooses, so blocking by user would let anyone lock any
account out.
``abuse.block.started`` is emitted by the instance whose batch crossed, ``abuse.block.ended``
exactly once by whichever instance's housekeeping first sees the expiry.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

from .. import attributes as attr
from ..config import Settings
from ..events import Violation
from ..recorder import SecurityRecorder
from .anomalies import AnomalyDetector
from .blocks import BlockTable, Refusal, RefusalTally
from .emission import AbuseEmitter
from .failover import FailoverStore
from .handoff import HandOff
from .keys import HostKeys
from .stores import BlockInfo, MemoryStore, Store, build_store
from .stores.anomalies import shared_anomalies
from .window import HOST, USER, Crossing, Hit, Policy

__all__ = ["AbuseDetector"]

#: Failure events the detector writes itself; never counted again.
_NOT_FED: Final = frozenset({"request.blocked"})


class AbuseDetector:
    """Escalates repeated violations per client address and per user; blocks addresses.

    Args:
        recorder: emits the ``abuse.*`` events and owns the ``security.abuse.signals`` and
            ``security.requests.blocked`` counters.
        settings: default ``recorder.settings``.
        store: default :func:`build_store` of ``settings.store``; when building it fails, the
            memory store is used and the error counted (a Redis client is built lazily: a
            missing redis-py or an unreachable server shows later as Redis errors, with the
            memory fallback).
        clock: seconds since the epoch (tests inject a fake clock).
        queue_size: bound of the queue to the worker (shared stores).
        batch_size, batch_interval: a batch is up to ``batch_size`` violations or what arrived
            within ``batch_interval`` seconds.
        refresh_interval: how often the worker expires blocks and refreshes the shared blocks.
        max_keys: keys tracked per scope (default ``settings.max_keys``).
    """

    def __init__(
        self,
        recorder: SecurityRecorder,
        settings: Settings | None = None,
        store: Store | None = None,
        *,
        clock: Callable[[], float] = time.time,
        queue_size: int = 10_000,
        batch_size: int = 500,
        batch_interval: float = 0.05,
        refresh_interval: float = 0.3,
        max_keys: int | None = None,
    ) -> None:
        self.recorder = recorder
        self.settings = settings if settings is not None else recorder.settings
        self.policy = Policy.from_settings(self.settings)
        self.keys = HostKeys(
            self.settings.ipv6_prefix,
            self.settings.allowlist,
            blocking=self.policy.block_seconds > 0,
        )
        self.blocks = BlockTable()
        self._refusals = RefusalTally()
        self._emitter = AbuseEmitter(recorder)
        self._clock = clock
        self._lock = threading.Lock()
        self._dropped = 0
        max_keys = max_keys if max_keys is not None else self.settings.max_keys
        if store is None:
            try:
                store = build_store(self.settings.store, max_keys=max_keys)
            except Exception as exc:  # never stop the application: observe locally
                recorder.internal_error(exc, "detection.store")
                store = MemoryStore(max_keys=max_keys)
        #: a shared store: violations go through the hand-off queue to the worker
        self._queued = not store.in_process
        # shared store: request.blocked once per key across instances (see blocks.py)
        self._refusals.shared = self._queued
        self._local: Store = store
        if self._queued:
            local = MemoryStore(max_keys=max_keys)
            self._local = local
            store = FailoverStore(store, local, self._redis_failed)
        self.store: Store = store
        self._handoff: HandOff[tuple[Violation, float] | _UserCheck] | None = None
        #: scans and new devices (:mod:`.anomalies`), counted off the request path
        self.anomalies = AnomalyDetector(
            self,
            self._emitter,
            shared_anomalies(store),
            clock=clock,
            queue_size=queue_size,
            max_keys=max_keys,
        )
        if self._queued or self.policy.block_seconds > 0:
            self._handoff = HandOff(
                self._process,
                self._housekeeping,
                self._worker_failed,
                capacity=queue_size,
                batch_size=batch_size,
                poll=batch_interval if self._queued else refresh_interval,
                tick_interval=refresh_interval,
            )

    # -- request path ---------------------------------------------------------------------

    def submit(self, violation: Violation) -> None:
        """Count one violation. Never blocks, never raises, never does network I/O."""
        try:
            if violation.name in _NOT_FED:
                return
            now = self._clock()
            if self._queued:
                handoff = self._handoff
                if handoff is not None and handoff.offer((violation, now)):
                    return
                with self._lock:
                    self._dropped += 1
            for crossing in self._local.apply((self._hit(violation, now),), self.policy):
                self._report(crossing)
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.submit")

    def is_blocked(self, address: str) -> float:
        """Seconds ``address`` (its host key) remains blocked; 0.0 = not blocked. O(1), no
        I/O, no side effect, never raises."""
        try:
            if self.policy.block_seconds <= 0 or not address:
                return 0.0
            until = self.blocks.until(self.keys.key(address))
            if until:
                left = until - self._clock()
                if left > 0:
                    return left
            return 0.0
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.is_blocked")
            return 0.0

    def refusal(self, address: str | None) -> Refusal | None:
        """What to do with a request from ``address``: None = let it through; a
        :class:`Refusal` = answer 429 with ``Retry-After: refusal.retry_after`` before any
        view runs. Call it once per request; no I/O, never raises.

        A refusal is counted here in ``security.requests.blocked`` (every one). The caller
        records ``request.blocked`` only when ``refusal.record_count`` is not 0 (at most once
        per key per 60 s, so a flood cannot flood the audit trail), in the request's context, with
        ``attributes={"security.block.count": refusal.record_count}``.
        """
        try:
            if self.policy.block_seconds <= 0 or not address:
                return None
            key = self.keys.key(address)
            until = self.blocks.until(key)
            if not until:
                return None
            now = self._clock()
            left = until - now
            if left <= 0:
                return None
            self.recorder.requests_blocked.add(1, {attr.ABUSE_SCOPE: HOST})
            count = self._refusals.refused(key, now)
            return Refusal(key, left, max(1, math.ceil(left)), count)
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.refusal")
            return None

    def check_user(self, user_key: str, report: Callable[[int], None]) -> None:
        """Call ``report(count)`` with :meth:`user_violations` of ``user_key``, never with
        shared-store I/O on the calling thread: with the memory store at once (a local read),
        with a shared store on the worker, after the violations queued before it (a hanging
        Redis delays the report, never the request). For
        ``auth.login.succeeded_after_failures``. Never raises; ``report``'s errors are
        counted."""
        try:
            if not user_key:
                return
            check = _UserCheck(user_key, report)
            if self._queued:
                handoff = self._handoff
                if handoff is not None and handoff.offer(check):
                    return
                with self._lock:
                    self._dropped += 1
                check.run(self._local, self)  # queue full: what this instance counted
                return
            check.run(self.store, self)
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.check_user")

    def user_violations(self, user_key: str) -> int:
        """Violations of ``user_key`` (``user.id`` or ``user.hash``) within the window, up to
        the user threshold. Never raises (0 on error). Memory store: a local read. Redis: one
        ``LRANGE`` round trip on the calling thread (bounded by the store timeout): never on a
        request thread, use :meth:`check_user` there."""
        try:
            if not user_key:
                return 0
            return self.store.recent(USER, user_key, self._clock(), self.policy.window_seconds)
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.user_violations")
            return 0

    def escalate(self, key: str, trace_id: str, at: float) -> float:
        """Block host key ``key`` now (a scan crossed its threshold) with the store's own block
        logic: a one-violation threshold for this one hit, so the block length, the
        repeat-offender doubling and the count restart are exactly ``abuse.host``'s and shared
        with it. Returns the block's length; 0.0 when blocks are off or the key is blocked
        already. Worker threads only (a shared store does I/O)."""
        if self.policy.block_seconds <= 0:
            return 0.0
        policy = replace(self.policy, host_threshold=1)
        hit = Hit(key, None, "abuse.scan", trace_id, at, True)
        for crossing in self.store.apply((hit,), policy):
            if crossing.previous_block_until:
                self._block_ended(crossing.key, crossing.previous_block_until)
            if crossing.blocked_until:
                self.blocks.start(crossing.key, crossing.blocked_until)
                return crossing.block_seconds
        return 0.0

    def release(self, key: str, forget: bool = False) -> BlockInfo:
        """End the block of host ``key`` now (see :func:`otel_secaudit.release_block`): in
        the store (a shared store: every instance drops it at its next refresh) and here at
        once. Raises what a shared store raises (it is released locally first)."""
        self.blocks.drop(key)
        self._refusals.forget(key)
        return self.store.release(key, self._clock(), self.policy.window_seconds, forget)

    def list_blocks(self) -> list[BlockInfo]:
        """The blocks running now, the longest-lasting first. Raises what a shared store
        raises."""
        return self.store.list_blocks(self._clock())

    # -- lifecycle ------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every violation submitted so far is applied (its ``abuse.*`` events
        emitted) and blocks are expired/refreshed; False on timeout."""
        if not self.anomalies.flush(timeout):
            return False
        handoff = self._handoff
        if handoff is not None and handoff.alive():
            return handoff.flush(timeout)
        self._housekeeping()
        return handoff is None or handoff.pending() == 0

    def shutdown(self, timeout: float = 5.0) -> None:
        """Apply what is queued, stop the worker, close the store. Idempotent. Violations
        submitted afterwards are counted locally."""
        self.anomalies.close(timeout)
        handoff = self._handoff
        if handoff is not None:
            handoff.close(timeout)
            leftover = handoff.drain()
            if leftover:
                self._process(leftover)
        self.store.close()

    def after_fork_in_child(self) -> None:
        """Restart the worker threads in a forked child (``fork()`` keeps only the caller's
        thread). Their hand-offs do it themselves from their fork hooks; this is a no-op then."""
        if self._handoff is not None:
            self._handoff.after_fork_in_child()
        self.anomalies.after_fork_in_child()

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot: processed, dropped, queued, evictions, tracked_keys, redis_errors,
        fallback_active, blocked_keys."""
        counters = self.store.stats()
        handoff = self._handoff
        with self._lock:
            dropped = self._dropped
        return {
            "processed": counters.get("processed", 0),
            "dropped": dropped,
            "queued": handoff.pending() if handoff is not None else 0,
            "evictions": counters.get("evictions", 0),
            "tracked_keys": counters.get("tracked_keys", 0),
            "redis_errors": counters.get("redis_errors", 0),
            "fallback_active": bool(counters.get("fallback_active", 0)),
            "blocked_keys": len(self.blocks),
        }

    # -- worker side ----------------------------------------------------------------------

    def _hit(self, violation: Violation, at: float) -> Hit:
        address = violation.client_address
        if address:
            host, blockable = self.keys.resolve(address)
            return Hit(host, violation.user_key, violation.name, violation.trace_id, at, blockable)
        return Hit(None, violation.user_key, violation.name, violation.trace_id, at)

    def _process(self, batch: list[tuple[Violation, float] | _UserCheck]) -> None:
        hits = [self._hit(*item) for item in batch if not isinstance(item, _UserCheck)]
        if hits:
            for crossing in self.store.apply(hits, self.policy):
                self._report(crossing)
        for item in batch:
            if isinstance(item, _UserCheck):  # after the violations queued before it
                item.run(self.store, self)

    def _report(self, crossing: Crossing) -> None:
        if crossing.previous_block_until:
            self._block_ended(crossing.key, crossing.previous_block_until)
        if crossing.blocked_until:
            self.blocks.start(crossing.key, crossing.blocked_until)
        self._emitter.crossing(crossing)

    def _housekeeping(self) -> None:
        """Expire blocks (emitting ``abuse.block.ended``) and refresh the shared blocks."""
        if self.policy.block_seconds <= 0:
            return
        result = self.store.housekeeping(self._clock())
        if result.active is not None:
            for key in self.blocks.replace(result.active):
                self._refusals.forget(key)  # ended, or released by an operator
        for key, until in result.expired:
            self._block_ended(key, until)
        if self._refusals.shared:
            self._settle_refusals()

    def _settle_refusals(self) -> None:
        """Shared store: trade this instance's unrecorded refusals for record rights, and
        write the records of rights no refusal used (see blocks.py)."""
        now = self._clock()
        claims = self._refusals.demand(now)
        if claims:
            claim = getattr(self.store, "claim_refusal_records", None)
            granted = claim(claims, now) if claim is not None else dict(claims)
            self._refusals.grant(granted, now)
        for key, count, last in self._refusals.unused(now):
            self._emitter.refusals(key, count, last)

    def _block_ended(self, key: str, until: float) -> None:
        self.blocks.end(key, until)
        self._refusals.forget(key)
        self._emitter.block_ended(key)

    def _redis_failed(self, exc: BaseException) -> None:
        # counted only: FailoverStore already logged one line for this kind of error
        self.recorder.internal_error(exc, "detection.redis", log=False)

    def _worker_failed(self, exc: BaseException) -> None:
        self.recorder.internal_error(exc, "detection.worker")


class _UserCheck:
    """A :meth:`AbuseDetector.check_user` waiting for the worker."""

    __slots__ = ("user_key", "report")

    def __init__(self, user_key: str, report: Callable[[int], None]) -> None:
        self.user_key = user_key
        self.report = report

    def run(self, store: Store, detector: AbuseDetector) -> None:
        try:
            window = detector.policy.window_seconds
            count = store.recent(USER, self.user_key, detector._clock(), window)
            if count > 0:
                self.report(count)
        except Exception as exc:
            detector.recorder.internal_error(exc, "detection.check_user")
