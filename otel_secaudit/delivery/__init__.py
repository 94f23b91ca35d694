"""How security log records leave the process: durable (the spool) or through the app's SDK.

:func:`build` is called once per recorder (by :func:`otel_secaudit.runtime.build`, or by a
:class:`otel_secaudit.SecurityRecorder` built on its own), before the recorder:

* With ``OTEL_SECAUDIT_SPOOL_DIR`` set (and no explicit ``logger_provider``), the recorder
  writes to a dedicated SDK ``LoggerProvider`` that spools to disk and delivers
  at-least-once with the dedup key ``log.record.uid``: :mod:`.spool` (segments, cursor,
  directory safety), :mod:`.codec` (frames, record encoding), :mod:`.sender` (the processor and
  the thread that ships spooled records).
* Without it, records go through the application's ``LoggerProvider``. The plugin does not
  reach into that provider's processors (public OpenTelemetry API only); how its losses are
  counted is in :mod:`.drops`.

:mod:`.otlp` is the one OTLP exporter factory (the spool's and the demo's), configured
from the standard ``OTEL_EXPORTER_OTLP_*`` variables as the SDK does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from opentelemetry._logs import LoggerProvider, get_logger_provider
from opentelemetry.metrics import MeterProvider, get_meter_provider
from opentelemetry.sdk._logs import LoggerProvider as SDKLoggerProvider

from .codec import LOG_RECORD_UID, new_record_uid
from .drops import METRIC_LOGS_DROPPED, DropCountingLogExporter, DropStats
from .otlp import (
    OTLPExporters,
    otlp_exporters,
    otlp_log_exporter,
    otlp_metric_exporter,
    otlp_protocol,
    otlp_span_exporter,
)
from .sender import SpoolingLogRecordProcessor, create_spool_logger_provider
from .spool import DEFAULT_MAX_BYTES, Spool, SpoolDirectoryError, SpoolStats, SpoolWriteError

__all__ = [
    "LOG_RECORD_UID",
    "METRIC_LOGS_DROPPED",
    "Delivery",
    "DropCountingLogExporter",
    "DropStats",
    "OTLPExporters",
    "Spool",
    "SpoolDirectoryError",
    "SpoolStats",
    "SpoolWriteError",
    "SpoolingLogRecordProcessor",
    "build",
    "create_spool_logger_provider",
    "new_record_uid",
    "otlp_exporters",
    "otlp_log_exporter",
    "otlp_metric_exporter",
    "otlp_protocol",
    "otlp_span_exporter",
]

_log = logging.getLogger("otel_secaudit")


class Delivery:
    """What :func:`build` set up for one recorder.

    Args:
        logger_provider: the provider the recorder's log records go to (None: the global one,
            looked up when flushing, so a provider installed later is flushed too).
        meter_provider: the provider of the recorder's counters (None: the global one).
        spool: the spooling processor when durable delivery is on (its provider is
            ``logger_provider`` then).
        on_error: called with (exception, where) for errors while flushing or closing (the
            recorder counts them); default: logged.
    """

    def __init__(
        self,
        logger_provider: Any,
        meter_provider: Any,
        spool: SpoolingLogRecordProcessor | None = None,
        *,
        on_error: Callable[[BaseException, str], None] | None = None,
    ) -> None:
        #: The spooling processor when durable delivery is on, else None.
        self.spool = spool
        self._logger_provider = logger_provider
        self._meter_provider = meter_provider
        self._on_error = on_error

    @property
    def records_provider(self) -> Any:
        """The provider the recorder writes its log records to: the spool's, the one given,
        or None (the global one)."""
        return self._logger_provider

    @property
    def logger_provider(self) -> SDKLoggerProvider | None:
        """The spool's own LoggerProvider when durable delivery is on (add processors to it to
        see the security records elsewhere too, as the demo does), else None."""
        return self._logger_provider if self.spool is not None else None

    def flush(self, timeout_millis: int = 5000) -> bool:
        """Push out what the recorder wrote: its log pipeline (with the spool on, until the
        collector acknowledged every spooled record) and its metric pipeline, within
        ``timeout_millis`` in all. True when everything finished in time. Never raises."""
        deadline = time.monotonic() + max(0, timeout_millis) / 1000
        done = True
        providers = (
            self._logger_provider if self._logger_provider is not None else get_logger_provider(),
            self._meter_provider if self._meter_provider is not None else get_meter_provider(),
        )
        for provider in providers:
            force_flush = getattr(provider, "force_flush", None)
            if not callable(force_flush):
                continue
            left = max(0, int((deadline - time.monotonic()) * 1000))
            try:
                # SDK providers return a bool or None; only an explicit False is a miss.
                done = force_flush(left) is not False and done
            except Exception as exc:  # flushing never raises into the application
                done = False
                self._error(exc, "delivery.flush")
        return done

    def close(self, timeout_millis: int = 5000) -> None:
        """Deliver what is spooled for up to ``timeout_millis``, then stop the spool. The
        application's providers stay open. Never raises."""
        if self.spool is None:
            return
        try:
            self.spool.shutdown(timeout_millis)
        except Exception as exc:
            self._error(exc, "delivery.close")

    def _error(self, exc: BaseException, where: str) -> None:
        with contextlib.suppress(Exception):
            if self._on_error is not None:
                self._on_error(exc, where)
            else:
                _log.warning("otel_secaudit: %s failed", where, exc_info=exc)


def build(
    spool_dir: str | os.PathLike[str] | None,
    spool_max_bytes: int | None = None,
    *,
    logger_provider: LoggerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    on_error: Callable[[BaseException, str], None] | None = None,
) -> Delivery:
    """Set up delivery for one recorder (never raises).

    With ``spool_dir`` and no explicit ``logger_provider``, records go to the spool's own
    provider (:attr:`Delivery.records_provider`). A spool that cannot be opened (unsafe
    directory, disk, bad ``OTEL_EXPORTER_OTLP_PROTOCOL``) is logged and reported to
    ``on_error`` (``spool.start``); records then go through the application's provider.
    """
    delivery = Delivery(logger_provider, meter_provider, on_error=on_error)
    if spool_dir is None or logger_provider is not None:
        if not _sdk_drop_metrics_enabled():
            _log.info(
                "otel_secaudit: security log records go through the application's log pipeline; "
                "records it drops are counted only with OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"
                "=true (the SDK's otel.sdk.processor.log.processed) or an exporter wrapped in "
                "DropCountingLogExporter; OTEL_SECAUDIT_SPOOL_DIR makes delivery durable"
            )
        return delivery
    try:
        provider, processor = create_spool_logger_provider(
            spool_dir,
            meter_provider=meter_provider,
            on_error=on_error,
            max_bytes=spool_max_bytes or DEFAULT_MAX_BYTES,
        )
    except Exception as exc:
        _log.error(
            "otel_secaudit: cannot open the spool in %s (%s); security log records go "
            "through the global LoggerProvider without durable delivery",
            spool_dir,
            exc,
        )
        delivery._error(exc, "spool.start")
        return delivery
    return Delivery(provider, meter_provider, processor, on_error=on_error)


def _sdk_drop_metrics_enabled() -> bool:
    return os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "").strip().lower() == "true"
