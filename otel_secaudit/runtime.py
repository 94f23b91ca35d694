"""The one process-wide runtime: recorder, abuse detector and delivery, as a unit.

Everything that records, detects or blocks reaches these through :func:`current`, once per
call or request; no other module keeps a recorder or detector of its own. Replacing the
runtime (:func:`install`, used by :func:`otel_secaudit.configure` and the instrumentor) builds a
new recorder *and* a new detector from the same settings and closes the previous pair, so a
changed threshold is never left behind in an old detector and ``abuse.*`` events never go out
through a replaced recorder.

Usage::

    from otel_secaudit import runtime

    rt = runtime.install(runtime.build(Settings.load(host_threshold=3)))
    rt.recorder.record("auth.login.failed", user_name="alice")
    rt.flush()  # before the process exits: detector queue, SDK pipelines, spool

Shutdown: uvicorn re-raises SIGTERM after its graceful shutdown, so ``atexit`` hooks (the SDK's
own flush included) never run. The web integrations call :meth:`Runtime.flush` on ASGI lifespan
shutdown and WSGI worker exit, so the last audit records of a rolling deploy still leave.

Assembly: :func:`build` is the one place the parts are put together, each handed its
collaborators: the delivery (from the settings and the providers), the recorder on it (and on
the internal-error count they share), the abuse detector on the recorder, fed by the recorder's
violation and login sinks.

Fork safety: under a pre-forking server (gunicorn) the runtime is built in the master, and the
detector's worker threads and the spool sender do not survive ``fork()``. Each of them
registers its own ``os.register_at_fork`` hook (:mod:`otel_secaudit.forks`), as the SDK's
batch processors do.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry._logs import LoggerProvider
from opentelemetry.metrics import MeterProvider

from .config import Settings
from .internal_errors import InternalErrors
from .recorder import SecurityRecorder
from .version import __version__

if TYPE_CHECKING:
    from .detection import AbuseDetector

__all__ = ["Runtime", "build", "current", "install", "peek", "swap"]

_log = logging.getLogger("otel_secaudit")


class Runtime:
    """The recorder, the detector (``None`` when detection is off) and their providers.

    Build it with :func:`build`; make it the process-wide one with :func:`install`.
    """

    def __init__(
        self,
        recorder: SecurityRecorder,
        detector: AbuseDetector | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        logger_provider: LoggerProvider | None = None,
    ) -> None:
        self.recorder = recorder
        self.detector = detector
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.logger_provider = logger_provider
        self._closed = False
        self._tracer: trace.Tracer | None = None

    def tracer(self) -> trace.Tracer:
        """otel_secaudit's own tracer (scope ``otel_secaudit``) on this runtime's tracer
        provider, or on the global one when none was given (made once; the API's proxy
        follows a global provider set later)."""
        if self._tracer is None:
            self._tracer = trace.get_tracer(
                "otel_secaudit", __version__, tracer_provider=self.tracer_provider
            )
        return self._tracer

    @property
    def settings(self) -> Settings:
        """The settings the recorder and detector were built from."""
        return self.recorder.settings

    def flush(self, timeout_millis: int = 5000) -> bool:
        """Push out everything queued, within ``timeout_millis`` in all: the detector's pending
        violations first (so their ``abuse.*`` events are emitted), then the tracer pipeline
        (span events ride on the request spans), then what the recorder wrote (its log and
        metric pipelines, the spool: :meth:`Delivery.flush`). Never raises; returns False when
        something did not finish in time.
        """
        deadline = time.monotonic() + timeout_millis / 1000
        results = []
        if self.detector is not None:
            results.append(_call(self.recorder, "flush", self.detector.flush, _left(deadline)))
        tracer_provider = self.tracer_provider or trace.get_tracer_provider()
        force_flush = getattr(tracer_provider, "force_flush", None)
        if callable(force_flush):
            results.append(_call(self.recorder, "flush", force_flush, _left_ms(deadline)))
        delivery = self.recorder.delivery
        results.append(_call(self.recorder, "flush", delivery.flush, _left_ms(deadline)))
        # SDK providers return None or a bool; only an explicit False (or an error) is a miss.
        return all(result is not False for result in results)

    def close(self, timeout_millis: int = 5000) -> None:
        """Stop the detector (its pending violations are counted first) and the spool. The
        providers belong to the application and stay open. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        detector, self.detector = self.detector, None
        if detector is not None:
            try:
                if self.recorder.violation_sink == detector.submit:
                    self.recorder.violation_sink = None
                if self.recorder.login_sink == detector.anomalies.login:
                    self.recorder.login_sink = None
                detector.shutdown()
            except Exception as exc:
                self.recorder.internal_error(exc, "runtime.close")
        try:
            self.recorder.close(timeout_millis)
        except Exception as exc:
            self.recorder.internal_error(exc, "runtime.close")

    def __repr__(self) -> str:
        detection = "on" if self.detector is not None else "off"
        return f"Runtime(settings={self.settings!r}, detection={detection})"


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _left_ms(deadline: float) -> int:
    return int(_left(deadline) * 1000)


def _call(recorder: SecurityRecorder, where: str, function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Exception as exc:  # flushing and closing never raise into the application
        recorder.internal_error(exc, where)
        return False


def build(
    settings: Settings | None = None,
    *,
    recorder: SecurityRecorder | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    logger_provider: LoggerProvider | None = None,
    detection: bool = True,
) -> Runtime:
    """A new runtime: a recorder from ``settings`` (default: the environment, lenient) on the
    given providers (default: the global ones), and, with ``detection``, an abuse detector fed
    by it. Pass a ready ``recorder`` instead of ``settings`` to wrap one (tests).

    Raises:
        ConfigError: only through ``Settings.load`` done by the caller; building itself falls
            back to running without detection when the detector cannot start (logged).
    """
    if recorder is None:
        recorder = _recorder(
            settings if settings is not None else Settings.load(lenient=True),
            logger_provider,
            meter_provider,
        )
    elif settings is not None:
        raise TypeError("pass either settings or recorder, not both")
    detector = None
    if detection:
        try:
            from .detection import AbuseDetector

            detector = AbuseDetector(recorder)
        except Exception:
            _log.exception("otel_secaudit: abuse detection could not start; recording only")
        else:
            # The detector emits abuse.* through the recorder, so it is built on it; the
            # recorder then feeds it every violation and every successful login.
            recorder.violation_sink = detector.submit
            recorder.login_sink = detector.anomalies.login
    return Runtime(
        recorder,
        detector,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
    )


def _recorder(
    settings: Settings,
    logger_provider: LoggerProvider | None,
    meter_provider: MeterProvider | None,
) -> SecurityRecorder:
    """Delivery from the settings and the providers, then the recorder on it; both count
    their internal errors in one :class:`InternalErrors`."""
    from . import delivery as delivering  # the SDK is imported only when a runtime is built

    errors = InternalErrors(meter_provider)
    delivery = delivering.build(
        settings.spool_dir,
        settings.spool_max_bytes,
        logger_provider=logger_provider,
        meter_provider=meter_provider,
        on_error=errors,
    )
    return SecurityRecorder(
        settings, meter_provider=meter_provider, delivery=delivery, errors=errors
    )


_lock = threading.Lock()
_current: Runtime | None = None


def current() -> Runtime:
    """The process-wide runtime, built on first use from the environment (lenient settings,
    global providers, detection off until the instrumentor or :func:`install` turns it on)."""
    runtime = _current
    if runtime is None:
        with _lock:
            if _current is None:
                swap(build(detection=False))
            runtime = _current
    assert runtime is not None
    return runtime


def peek() -> Runtime | None:
    """The process-wide runtime if one exists, without building one (an instrumentor about to
    install its own must not build, and close, a throwaway runtime with its spool first)."""
    return _current


def swap(runtime: Runtime | None) -> Runtime | None:
    """Make ``runtime`` the process-wide one and return the previous one, left open (tests
    restore it afterwards). ``None`` resets to "build from the environment on first use"."""
    global _current
    previous, _current = _current, runtime
    return previous


def install(runtime: Runtime) -> Runtime:
    """Make ``runtime`` the process-wide one and close the previous one (its detector stops,
    its spool delivers what it can). Returns ``runtime``."""
    with _lock:
        previous = swap(runtime)
    if previous is not None and previous is not runtime:
        previous.close()
    return runtime
