"""Export of the records a command makes itself (``blocks release``'s ``admin.action``),
configured as an OpenTelemetry SDK would be: ``OTEL_LOGS_EXPORTER`` (default ``otlp``; a
comma-separated list; ``none``), the ``otlp`` exporter's protocol, endpoint and headers from
``OTEL_EXPORTER_OTLP_*``, any other name from the ``opentelemetry_logs_exporter`` entry points
(``console``, ``otlp_json_dir``), the resource from ``OTEL_SERVICE_NAME`` /
``OTEL_RESOURCE_ATTRIBUTES``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = ["AuditExport"]


class _Watched:
    """An exporter that remembers whether every export succeeded."""

    def __init__(self, name: str, exporter: Any) -> None:
        self.name, self.exporter = name, exporter
        self.failed = False
        self.exported = 0

    def export(self, batch: Sequence[Any]) -> Any:
        try:
            result = self.exporter.export(batch)
        except Exception:
            result = None
        # LogExportResult, LogRecordExportResult (renamed in newer SDKs): compare by name
        if getattr(result, "name", "") == "SUCCESS":
            self.exported += len(batch)
        else:
            self.failed = True
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(getattr(self.exporter, "force_flush", lambda *_: True)(timeout_millis))

    def shutdown(self) -> None:
        self.exporter.shutdown()


def _exporter(name: str) -> Any:
    if name == "otlp":
        from ..delivery.otlp import otlp_log_exporter

        return otlp_log_exporter()
    from opentelemetry.util._importlib_metadata import entry_points

    for entry_point in entry_points(group="opentelemetry_logs_exporter", name=name):
        return entry_point.load()()
    raise ValueError(f"OTEL_LOGS_EXPORTER: no log exporter named {name!r}")


class AuditExport:
    """A logger provider whose records go where ``OTEL_LOGS_EXPORTER`` says; :meth:`close`
    flushes it and says how that went."""

    def __init__(self, names: Sequence[str]) -> None:
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
        from opentelemetry.sdk.resources import Resource

        self.provider = LoggerProvider(resource=Resource.create())
        self.watched: list[_Watched] = []
        self.problems: list[str] = []
        for name in names:
            try:
                watched = _Watched(name, _exporter(name))
            except Exception as exc:  # a missing exporter package, a bad protocol
                self.problems.append(f"{name}: {exc}")
                continue
            self.watched.append(watched)
            self.provider.add_log_record_processor(SimpleLogRecordProcessor(watched))  # type: ignore[arg-type]

    @classmethod
    def from_environment(cls) -> AuditExport:
        """Exporters named by ``OTEL_LOGS_EXPORTER`` (default ``otlp``)."""
        raw = os.environ.get("OTEL_LOGS_EXPORTER", "otlp")
        names = [name.strip() for name in raw.split(",") if name.strip()]
        return cls([name for name in names if name != "none"])

    def close(self) -> str:
        """Flush and shut down; ``exported via NAME[, NAME]``, ``not exported (NAME: ...)``
        or ``not exported (OTEL_LOGS_EXPORTER=none)``."""
        self.provider.shutdown()
        if not self.watched and not self.problems:
            return "not exported (OTEL_LOGS_EXPORTER=none)"
        failed = [f"{w.name}: failed" for w in self.watched if w.failed or not w.exported]
        if failed or self.problems:
            return "not exported (" + "; ".join(failed + self.problems) + ")"
        return "exported via " + ", ".join(w.name for w in self.watched)
