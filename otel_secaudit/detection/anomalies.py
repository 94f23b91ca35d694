"""Scans and new devices: detection fed by what is not a violation, off the request path.

:class:`AnomalyDetector` belongs to the :class:`~.detector.AbuseDetector` (``detector.anomalies``)
and is fed from two places:

* :meth:`AnomalyDetector.probe`: the web core calls it for every 404/405 answer (the probes of
  a scan, :mod:`.scans`);
* :meth:`AnomalyDetector.login`: the recorder calls it for every ``auth.login.succeeded``,
  whoever recorded it (its ``login_sink``; :mod:`.devices`).

Both calls cost the request a ``deque.append`` (:class:`~.handoff.HandOff`): no parsing, no I/O,
never a raise. One worker thread resolves host keys, parses User-Agents, counts (in memory, or
in the shared Redis store with :mod:`.stores.anomalies` so every instance sees the same scan and
the same device history) and emits ``abuse.scan`` (blocking the key through
:meth:`AbuseDetector.escalate` when blocks are on) and ``auth.login.new_device``. When the queue
is full an item is dropped and counted (``stats["dropped"]``), never silently.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from .. import attributes as attr
from ..redaction import Redactor, Sanitized
from .devices import DeviceHistory, Login, SeenLogin, device_family, network_of
from .handoff import HandOff
from .scans import MAX_PATH_LENGTH, Probe, ScanCounter, ScanCrossing

if TYPE_CHECKING:
    from ..config import Settings
    from ..recorder import SecurityRecorder
    from .emission import AbuseEmitter
    from .keys import HostKeys
    from .window import Policy

__all__ = ["NEW_DEVICE_EVENT", "AnomalyDetector", "Escalation"]


class Escalation(Protocol):
    """What the anomaly detector uses of its :class:`~.detector.AbuseDetector`."""

    keys: HostKeys
    policy: Policy
    recorder: SecurityRecorder
    settings: Settings

    def escalate(self, key: str, trace_id: str, at: float) -> float:
        """Block host key ``key`` now; the block's length (0.0: none)."""


NEW_DEVICE_EVENT: Final = "auth.login.new_device"
_DAY: Final = 86400.0

#: A probe as queued on the request thread: (client address, path, trace ID, time).
_RawProbe = tuple[str, str, str, float]


class AnomalyDetector:
    """Scans and new devices for one :class:`~.detector.AbuseDetector` (see the module
    docstring).

    Args:
        detector: its settings, host keys, policy, recorder and
            :meth:`~.detector.AbuseDetector.escalate` (:class:`Escalation`).
        emitter: emits ``abuse.scan`` (and the block it started).
        shared: the Redis side (:class:`~.stores.anomalies.SharedAnomalies`), or None to keep
            the state in this process.
        clock: seconds since the epoch (the detector's).
        queue_size: bound of the queue to the worker.
        max_keys: host keys (scans) and user keys (devices) tracked in this process.
    """

    def __init__(
        self,
        detector: Escalation,
        emitter: AbuseEmitter,
        shared: Any = None,
        *,
        clock: Callable[[], float],
        queue_size: int = 10_000,
        max_keys: int | None = None,
    ) -> None:
        self._detector = detector
        self._emitter = emitter
        settings = detector.settings
        self.scan_threshold = settings.scan_threshold
        self.device_period = settings.new_device_days * _DAY
        self._clock = clock
        max_keys = max_keys if max_keys is not None else settings.max_keys
        self.scans = ScanCounter(max_keys)
        self.devices = DeviceHistory(max_keys)
        self.shared = shared
        self._redactor = Redactor(settings.redact_keys)
        self._lock = threading.Lock()
        self.dropped = 0
        self._handoff: HandOff[_RawProbe | Login] | None = None
        if self.enabled:
            self._handoff = HandOff(
                self._process,
                _nothing,
                self._failed,
                capacity=queue_size,
                tick_interval=3600.0,
                name="otel-secaudit-anomalies",
            )

    @property
    def enabled(self) -> bool:
        """Scans (OTEL_SECAUDIT_SCAN_THRESHOLD > 0) or new devices (NEW_DEVICE_DAYS > 0)."""
        return self.scan_threshold > 0 or self.device_period > 0

    # -- request path ---------------------------------------------------------------------

    def probe(self, address: str | None, path: str | None) -> None:
        """A 404/405 answer to ``address`` for ``path`` (scrubbed). Never raises, no I/O."""
        try:
            if self.scan_threshold <= 0 or not address:
                return
            span_context = trace.get_current_span().get_span_context()
            trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else ""
            self._offer((address, (path or "")[:MAX_PATH_LENGTH], trace_id, self._clock()))
        except Exception as exc:
            self._failed(exc)

    def login(self, login: Login) -> None:
        """A successful login (the recorder's ``login_sink``). Never raises, no I/O."""
        try:
            if self.device_period > 0 and login.user_key:
                self._offer(login)
        except Exception as exc:
            self._failed(exc)

    def _offer(self, item: _RawProbe | Login) -> None:
        handoff = self._handoff
        if handoff is None or not handoff.offer(item):
            with self._lock:
                self.dropped += 1

    # -- lifecycle ------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is counted and its events emitted."""
        handoff = self._handoff
        if handoff is None:
            return True
        return handoff.flush(timeout) if handoff.alive() else handoff.pending() == 0

    def close(self, timeout: float = 5.0) -> None:
        """Count what is queued, stop the worker, close the shared side. Idempotent."""
        handoff = self._handoff
        if handoff is not None:
            handoff.close(timeout)
            leftover = handoff.drain()
            if leftover:
                self._process(leftover)
        if self.shared is not None:
            self.shared.close()

    def after_fork_in_child(self) -> None:
        """Restart the worker threads in a forked child (``fork()`` keeps only the caller's
        thread). Their hand-offs do it themselves from their fork hooks; this is a no-op then."""
        if self._handoff is not None:
            self._handoff.after_fork_in_child()

    def stats(self) -> dict[str, int]:
        """``scan_keys``, ``device_keys`` (in this process), ``dropped``."""
        with self._lock:
            dropped = self.dropped
        return {
            "scan_keys": self.scans.tracked_keys(),
            "device_keys": self.devices.tracked_keys(),
            "dropped": dropped,
        }

    # -- worker ---------------------------------------------------------------------------

    def _process(self, batch: list[_RawProbe | Login]) -> None:
        probes: list[Probe] = []
        logins: list[Login] = []
        keys = self._detector.keys
        for item in batch:
            if isinstance(item, Login):
                logins.append(item)
            else:
                address, path, trace_id, at = item
                key, blockable = keys.resolve(address)
                # Redacted before it is kept (in memory or Redis), as url.path would be.
                clean = self._redactor.text(path, Sanitized(), MAX_PATH_LENGTH) or ""
                probes.append(Probe(key, clean, trace_id, at, blockable))
        if probes:
            self._scans(probes)
        if logins:
            self._logins(logins)

    def _scans(self, probes: list[Probe]) -> None:
        blocking = self._detector.policy.block_seconds > 0
        crossings: list[ScanCrossing] | None = None
        if self.shared is not None:
            crossings = self.shared.scans(probes, self.scan_threshold, blocking)
        if crossings is None:  # no shared store, or it failed: count here
            crossings = self.scans.apply(probes, self.scan_threshold, blocking)
        for crossing in crossings:
            seconds = 0.0
            if crossing.blockable:
                last = crossing.trace_ids[-1] if crossing.trace_ids else ""
                seconds = self._detector.escalate(crossing.key, last, crossing.at)
            self._emitter.scan(crossing, seconds)

    def _logins(self, logins: list[Login]) -> None:
        seen = [
            SeenLogin(
                login.user_key,
                device_family(login.user_agent),
                network_of(login.client_address),
                login.at,
            )
            for login in logins
        ]
        reasons: list[str | None] | None = None
        if self.shared is not None:
            reasons = self.shared.devices(seen, self.device_period)
        if reasons is None:
            reasons = self.devices.apply(seen, self.device_period)
        for login, reason in zip(logins, reasons, strict=True):
            if reason is not None:
                contextvars.Context().run(self._new_device, login, reason)

    def _new_device(self, login: Login, reason: str) -> None:
        recorder = self._detector.recorder
        try:
            fields: dict[str, Any] = {"reason": reason}
            internal: dict[str, Any] = {}
            if login.hashed:
                internal[attr.USER_HASH] = login.user_key
            else:
                fields["user_id"] = login.user_key
            if login.client_address:
                fields["client_address"] = login.client_address
            if login.user_agent:
                fields["user_agent"] = login.user_agent
            if login.trace_id:
                internal[attr.ABUSE_TRACE_IDS] = (login.trace_id,)
            recorder.emit(
                NEW_DEVICE_EVENT,
                fields,
                context=_login_context(login),
                internal_attributes=internal,
            )
        except Exception as exc:
            recorder.internal_error(exc, "detection.new_device")

    def _failed(self, exc: BaseException) -> None:
        self._detector.recorder.internal_error(exc, "detection.anomalies")


def _nothing() -> None:
    """The worker's periodic tick: nothing to expire here (blocks are the detector's)."""


def _login_context(login: Login) -> Any:
    """A context whose span is the login's (its trace and span ID), so the new-device record
    carries the login's trace context although it is emitted on the worker thread."""
    if not login.trace_id:
        return None
    span_context = SpanContext(
        trace_id=int(login.trace_id, 16),
        span_id=int(login.span_id, 16) if login.span_id else 0,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))
