"""Errors inside otel_secaudit: counted, logged once per kind, never raised into the app.

One :class:`InternalErrors` is shared by the parts :func:`otel_secaudit.runtime.build` puts
together (delivery, recorder, detector), so ``security.internal_errors`` and
``SecurityRecorder.stats`` count them all, whichever part failed.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally

from opentelemetry.metrics import MeterProvider, get_meter

from . import attributes as attr
from .version import __version__

__all__ = ["InternalErrors"]

_log = logging.getLogger("otel_secaudit")


class InternalErrors:
    """Counts internal errors by ``where:ExceptionType`` and on the
    ``otel_secaudit.internal_errors`` counter (attribute ``error.type``).

    Args:
        meter_provider: the provider of the counter (default: the global one).
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        meter = get_meter(attr.SCOPE_NAME, __version__, meter_provider=meter_provider)
        self._counter = meter.create_counter(
            attr.METRIC_INTERNAL_ERRORS,
            unit="{error}",
            description="Errors inside otel_secaudit (never raised into the application)",
        )
        self._lock = threading.Lock()
        self._tally: Tally[str] = Tally()
        self._logged: set[str] = set()

    def __call__(self, exc: BaseException, where: str = "record", *, log: bool = True) -> None:
        """Count ``exc`` and log it (with its traceback) the first time its kind is seen;
        ``log=False``: count only (the caller logged one line of its own). Never raises."""
        kind = f"{where}:{type(exc).__name__}"
        try:
            with self._lock:
                self._tally[kind] += 1
                first = kind not in self._logged
                self._logged.add(kind)
            self._counter.add(1, {attr.ERROR_TYPE: type(exc).__name__})
            if first and log:
                _log.warning("otel_secaudit: internal error in %s (counted)", where, exc_info=exc)
        except Exception:  # the error path itself must not raise
            pass

    def count(self, error_type: str) -> None:
        """Add one to the counter only, with ``error.type`` = ``error_type`` (an input
        problem the caller logged itself)."""
        self._counter.add(1, {attr.ERROR_TYPE: error_type})

    def snapshot(self) -> dict[str, int]:
        """Counts by ``where:ExceptionType``."""
        with self._lock:
            return dict(self._tally)
