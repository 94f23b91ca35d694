"""The abuse detector: counts violations per client address and per user, escalates, blocks.

Violations arrive through :meth:`AbuseDetector.submit` (from the span processor's ``on_end``
or from the recorder's ``violation_sink``). ``submit`` never blocks, never raises and never
does network I/O:

* memory store (``memory://``, the default): the violation is counted at once, on the calling
  thread; detection is immediate;
* Redis store (``redis://host:port/db``): the violation goes to a bounded in-process queue; a
  daemon worker thread takes up to 500 violations (or what arrived in 50 ms) and applies them
  in one atomic round trip (a Lua script). Detection latency stays well under one second.
  When the queue is full the violation is counted in the local memory store instead, and the
  drop from the shared view is counted (``stats["dropped"]``): never silent.

When a key crosses its threshold within the window (``OTEL_SECAUDIT_HOST_THRESHOLD``,
``OTEL_SECAUDIT_USER_THRESHOLD``, ``OTEL_SECAUDIT_WINDOW_SECONDS``) the detector emits
``abuse.host`` or ``abuse.user`` (WARNING log record; the body is the breakdown of violation
names; attributes ``security.abuse.scope/key/count/threshold/window_s/trace_ids`` plus
``client.address`` or ``user.id``/``user.hash``; the log record carries the trace context of
the last triggering violation) and increments ``security.abuse.signals``. Once per key per
window.

Blocks (``OTEL_SECAUDIT_BLOCK_SECONDS > 0``): an escalated *client address* is blocked for
that long, in the store, so every instance enforces it (:meth:`AbuseDetector.is_blocked`,
called by the web integration on every request: O(1), no I/O; with Redis it reads a local
copy of the blocked set that the worker refreshes every 0.3 s). ``abuse.block.started`` is
emitted by the instance whose batch crossed, ``abuse.block.ended`` exactly once by whichever
instance's housekeeping (or ``is_blocked`` check, in memory) first sees the expiry.

Why never block on the user scope: the user key of a failed login is the *attempted* user
name, which the attacker chooses. Blocking by user would let anyone lock any account (or the
whole admin team) out by failing a few logins in their name: account lockout as a denial of
service weapon. User-scope escalation is reported (``abuse.user``) for people to act on;
automated blocking applies only to the client address that actually sent the traffic.

Redis failures (down, slow, wrong password) never reach the request: the worker falls back to
the memory store, logs once, counts (``stats["redis_errors"]`` and
``otel_secaudit.internal.errors``), retries with exponential backoff (0.25 s to 5 s) and goes
back to Redis when it answers again. Counts made during the outage stay local to the
instance (they are not merged back), so the shared view may miss that period's violations.
A batch that times out (2 s) is counted locally although Redis may have applied it after all:
a slow Redis can make the two views count it twice, never zero times. After
:meth:`AbuseDetector.shutdown`, violations are counted locally.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from .. import attributes as attr
from ..config import Settings
from ..events import Violation
from ..recorder import SecurityRecorder
from .stores import DEFAULT_MAX_KEYS, MemoryStore, Store, build_store
from .window import HOST, USER, Crossing, Hit, Policy

__all__ = ["AbuseDetector"]

_log = logging.getLogger("otel_secaudit.detection")

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Attribute with the block duration on abuse.block.* events (not in CONTRACT section 3).
BLOCK_SECONDS_ATTRIBUTE = "security.abuse.block_s"


class _Marker:
    """Put in the queue by :meth:`AbuseDetector.flush`; set once everything before it ran."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class AbuseDetector:
    """Escalates repeated violations per client address and per user; blocks addresses.

    Args:
        recorder: emits the ``abuse.*`` events and owns the ``security.abuse.signals`` counter.
        settings: default ``recorder.settings``.
        store: default :func:`build_store` of ``settings.store``; when building a Redis store
            fails (redis-py missing), the memory store is used and the error counted.
        clock: seconds since the epoch (tests inject a fake clock).
        queue_size: bound of the queue to the Redis worker.
        batch_size, batch_interval: a Redis batch is up to ``batch_size`` violations or what
            arrived within ``batch_interval`` seconds.
        refresh_interval: how often the worker expires blocks and refreshes the local copy
            of the blocked addresses.
        max_keys: LRU cap of the memory store (per scope).
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
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.recorder = recorder
        self.settings = settings if settings is not None else recorder.settings
        self.policy = Policy.from_settings(self.settings)
        self._clock = clock
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._batch_interval = batch_interval
        self._refresh_interval = refresh_interval
        self._counts_lock = threading.Lock()
        self._dropped = 0
        self._redis_errors = 0
        self._applied_shared = 0
        if store is None:
            try:
                store = build_store(self.settings.store)
            except Exception as exc:  # e.g. redis-py not installed: observe locally
                recorder.internal_error(exc, "detection.store")
                store = MemoryStore(max_keys=max_keys)
        if isinstance(store, MemoryStore):
            self._local = store
            self._shared: Store | None = None
        else:
            self._local = MemoryStore(max_keys=max_keys)
            self._shared = store
        self._queue: deque[tuple[Violation, float] | _Marker] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._shared_blocks: dict[str, float] = {}
        self._fallback_active = False
        self._retry_at = 0.0
        self._backoff = 0.0
        self._worker: threading.Thread | None = None
        #: the span processor registered by :func:`enable_detection`, if any
        self.processor: Any = None
        if self._shared is not None or self.policy.block_seconds > 0:
            self._worker = threading.Thread(
                target=self._run, name="otel-secaudit-detector", daemon=True
            )
            self._worker.start()

    # -- request path ---------------------------------------------------------------------

    def submit(self, violation: Violation) -> None:
        """Count one violation. Never blocks, never raises, never does network I/O."""
        try:
            now = self._clock()
            if self._shared is None:
                self._count_local(violation, now)
            elif len(self._queue) >= self._queue_size or self._stop.is_set():
                with self._counts_lock:
                    self._dropped += 1
                self._count_local(violation, now)
            else:
                self._queue.append((violation, now))
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.submit")

    def is_blocked(self, address: str) -> float:
        """Seconds ``address`` remains blocked (0.0 = not blocked). O(1), no I/O, never
        raises; meant to be called on every request."""
        try:
            if self.policy.block_seconds <= 0 or not address:
                return 0.0
            now = self._clock()
            until = self._local.block_until(address)
            if until:
                if until > now:
                    return until - now
                if self._local.end_block(address, until):
                    self._report_block_ended(address, until)
            until = self._shared_blocks.get(address, 0.0)
            return until - now if until > now else 0.0
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.is_blocked")
            return 0.0

    # -- lifecycle ------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every violation submitted so far is applied and blocks are refreshed;
        False on timeout. Memory store: expires blocks and returns at once."""
        worker = self._worker
        if worker is None or not worker.is_alive():
            self._housekeeping()
            return not self._queue
        marker = _Marker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Apply what is queued, stop the worker, close the store. Idempotent."""
        self._stop.set()
        self._wake.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        if self._shared is not None:
            self._shared.close()

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot: processed, dropped, queued, evictions, tracked_keys, redis_errors,
        fallback_active."""
        with self._counts_lock:
            return {
                "processed": self._applied_shared + self._local.violations,
                "dropped": self._dropped,
                "queued": sum(1 for item in list(self._queue) if not isinstance(item, _Marker)),
                "evictions": self._local.evictions,
                "tracked_keys": self._local.tracked_keys(),
                "redis_errors": self._redis_errors,
                "fallback_active": self._fallback_active,
            }

    # -- counting -------------------------------------------------------------------------

    def _count_local(self, violation: Violation, now: float) -> None:
        for crossing in self._local.count(
            violation.client_address,
            violation.user_key,
            violation.name,
            violation.trace_id,
            now,
            self.policy,
        ):
            self._report(crossing)

    @staticmethod
    def _hits(batch: list[tuple[Violation, float]]) -> list[Hit]:
        hits = []
        for violation, at in batch:
            if violation.client_address:
                hits.append(
                    Hit(HOST, violation.client_address, violation.name, violation.trace_id, at)
                )
            if violation.user_key:
                hits.append(Hit(USER, violation.user_key, violation.name, violation.trace_id, at))
        return hits

    def _apply_batch(self, batch: list[tuple[Violation, float]]) -> None:
        shared = self._shared
        assert shared is not None
        if time.monotonic() >= self._retry_at:
            try:
                crossings = shared.apply(self._hits(batch), self.policy)
            except Exception as exc:
                self._redis_failed(exc)
            else:
                with self._counts_lock:
                    self._applied_shared += len(batch)
                if self._fallback_active:
                    self._fallback_active = False
                    _log.warning("otel_secaudit: Redis store is back; detection is shared again")
                self._backoff = 0.0
                for crossing in crossings:
                    if crossing.blocked_until:
                        self._shared_blocks = {
                            **self._shared_blocks,
                            crossing.key: crossing.blocked_until,
                        }
                    self._report(crossing)
                return
        for violation, at in batch:
            self._count_local(violation, at)

    def _redis_failed(self, exc: BaseException) -> None:
        with self._counts_lock:
            self._redis_errors += 1
        self._backoff = min(self._backoff * 2 or 0.25, 5.0)
        self._retry_at = time.monotonic() + self._backoff
        if not self._fallback_active:
            self._fallback_active = True
            _log.warning(
                "otel_secaudit: Redis store failed (%s: %s); counting in memory on this "
                "instance until it answers again",
                type(exc).__name__,
                exc,
            )
        self.recorder.internal_error(exc, "detection.redis")

    # -- worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        next_housekeeping = 0.0
        while True:
            try:
                stopping = self._stop.is_set()
                batch: list[tuple[Violation, float]] = []
                markers: list[_Marker] = []
                queue = self._queue
                while queue and len(batch) < self._batch_size:
                    item = queue.popleft()
                    if isinstance(item, _Marker):
                        markers.append(item)
                    else:
                        batch.append(item)
                if batch:
                    if self._shared is None:
                        for violation, at in batch:
                            self._count_local(violation, at)
                    else:
                        self._apply_batch(batch)
                if markers or time.monotonic() >= next_housekeeping:
                    self._housekeeping()
                    next_housekeeping = time.monotonic() + self._refresh_interval
                for marker in markers:
                    marker.done.set()
                if stopping and not queue:
                    return
                if not queue:
                    # memory store: the worker only keeps time for blocks
                    self._wake.wait(
                        self._batch_interval if self._shared is not None else self._refresh_interval
                    )
                    self._wake.clear()
            except Exception as exc:  # the worker must survive anything
                self.recorder.internal_error(exc, "detection.worker")
                time.sleep(0.05)

    def _housekeeping(self) -> None:
        """Expire blocks (emitting ``abuse.block.ended``) and refresh the shared-block copy."""
        now = self._clock()
        try:
            expired, _ = self._local.housekeeping(now, limit=0)
            for address, until in expired:
                self._report_block_ended(address, until)
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.housekeeping")
        shared = self._shared
        if shared is None or self.policy.block_seconds <= 0:
            return
        if time.monotonic() < self._retry_at:
            return
        try:
            expired, active = shared.housekeeping(now)
        except Exception as exc:
            self._redis_failed(exc)
            return
        self._shared_blocks = active
        for address, until in expired:
            self._report_block_ended(address, until)

    # -- reporting ------------------------------------------------------------------------

    def _report(self, crossing: Crossing) -> None:
        # An empty contextvars context: the abuse event must not pick up the attributes of
        # whatever request happens to be current (it is about the key, not this request).
        contextvars.Context().run(self._emit_crossing, crossing)

    def _emit_crossing(self, crossing: Crossing) -> None:
        recorder = self.recorder
        try:
            internal: dict[str, Any] = {
                attr.ABUSE_SCOPE: crossing.scope,
                attr.ABUSE_KEY: crossing.key,
                attr.ABUSE_COUNT: crossing.count,
                attr.ABUSE_THRESHOLD: crossing.threshold,
                attr.ABUSE_WINDOW_S: _number(crossing.window_seconds),
                attr.ABUSE_TRACE_IDS: tuple(t for t in crossing.trace_ids if _HEX32.match(t)),
            }
            if crossing.scope == HOST:
                internal[attr.CLIENT_ADDRESS] = crossing.key
            elif _HEX64.match(crossing.key):
                internal[attr.USER_HASH] = crossing.key
            else:
                internal[attr.USER_ID] = crossing.key
            context = _context_of(crossing.trace_ids)
            recorder.emit(
                "abuse.host" if crossing.scope == HOST else "abuse.user",
                {},
                body=dict(crossing.breakdown),
                context=context,
                internal_attributes=internal,
            )
            recorder.abuse_signals.add(1, {attr.ABUSE_SCOPE: crossing.scope})
            if crossing.blocked_until:
                recorder.emit(
                    "abuse.block.started",
                    {},
                    context=context,
                    internal_attributes={
                        attr.ABUSE_SCOPE: HOST,
                        attr.ABUSE_KEY: crossing.key,
                        attr.CLIENT_ADDRESS: crossing.key,
                        BLOCK_SECONDS_ATTRIBUTE: _number(self.policy.block_seconds),
                    },
                )
        except Exception as exc:
            recorder.internal_error(exc, "detection.report")

    def _report_block_ended(self, address: str, until: float) -> None:
        contextvars.Context().run(self._emit_block_ended, address)

    def _emit_block_ended(self, address: str) -> None:
        try:
            self.recorder.emit(
                "abuse.block.ended",
                {},
                internal_attributes={
                    attr.ABUSE_SCOPE: HOST,
                    attr.ABUSE_KEY: address,
                    attr.CLIENT_ADDRESS: address,
                    BLOCK_SECONDS_ATTRIBUTE: _number(self.policy.block_seconds),
                },
            )
        except Exception as exc:
            self.recorder.internal_error(exc, "detection.report")


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _context_of(trace_ids: tuple[str, ...]) -> Any:
    """A context whose span carries the trace ID of the last triggering violation."""
    for trace_id in reversed(trace_ids):
        if _HEX32.match(trace_id):
            span_context = SpanContext(
                trace_id=int(trace_id, 16),
                span_id=0,  # unknown: the log record links to the trace, not to a span
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            return trace.set_span_in_context(NonRecordingSpan(span_context))
    return None
