"""``otlp_json_dir``: OTLP/JSON lines files in one folder, one file per signal.

Thin wrappers over the official ``opentelemetry-exporter-otlp-json-file`` exporters (which
write OTLP/JSON lines to one path or to stdout, registered as ``otlp_json_file``): these pick the
file inside OTEL_SECAUDIT_EXPORT_DIR (default ``./otel-secaudit-output``) that
``otel-secaudit report`` reads:

=========  ================================  =================
signal     exporter                          file
=========  ================================  =================
traces     :class:`OTLPJsonDirSpanExporter`  ``traces.jsonl``
logs       :class:`OTLPJsonDirLogExporter`   ``logs.jsonl``
metrics    :class:`OTLPJsonDirMetricExporter` ``metrics.jsonl``
=========  ================================  =================

Zero-code, without a collector::

    pip install 'otel-secaudit[otlp-json]'
    OTEL_TRACES_EXPORTER=otlp_json_dir OTEL_LOGS_EXPORTER=otlp_json_dir \\
    OTEL_METRICS_EXPORTER=otlp_json_dir OTEL_SECAUDIT_EXPORT_DIR=./audit \\
        opentelemetry-instrument uvicorn app:app
    otel-secaudit report ./audit

In code::

    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPJsonDirSpanExporter("audit")))

Each line is one ``Export{Trace,Logs,Metrics}ServiceRequest`` as the official encoder writes it
(hex trace and span IDs, lowerCamelCase keys, 64-bit integers as strings), the layout of the
Collector's ``file`` exporter. The folder is created (0700) when missing; files are created
0600 (telemetry holds addresses and user hashes) and opened append-only without following a
symbolic link. Each line is written with a single ``write(2)`` on an ``O_APPEND`` descriptor,
so several processes (gunicorn workers) can share one folder without tearing each other's
lines.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Any, Final, cast

from opentelemetry.exporter.otlp.json.file import FileMetricExporter, FileSpanExporter
from opentelemetry.exporter.otlp.json.file._log_exporter import FileLogExporter

# The row's own parser, not Settings.load(): an exporter must not fail because another
# OTEL_SECAUDIT_* variable (or its optional dependency) is broken.
from .config import ENV_PREFIX
from .config_values import parse_export_dir

__all__ = [
    "EXPORT_DIR_VARIABLE",
    "LOGS_FILE",
    "METRICS_FILE",
    "OTLPJsonDirLogExporter",
    "OTLPJsonDirMetricExporter",
    "OTLPJsonDirSpanExporter",
    "TRACES_FILE",
    "export_dir",
]

TRACES_FILE: Final = "traces.jsonl"
LOGS_FILE: Final = "logs.jsonl"
METRICS_FILE: Final = "metrics.jsonl"
EXPORT_DIR_VARIABLE: Final = ENV_PREFIX + "EXPORT_DIR"


def export_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """``directory`` when given, else OTEL_SECAUDIT_EXPORT_DIR, else the default."""
    if directory is not None:
        return Path(directory).expanduser()
    return parse_export_dir(os.environ.get(EXPORT_DIR_VARIABLE, ""))


class AppendOnlyLines(io.TextIOBase):
    """A text stream over an ``O_APPEND`` file descriptor: each ``write`` is one UTF-8
    encoded ``write(2)`` (repeated only for what a short write left), never split by a
    buffer, so concurrent appenders keep whole lines."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        flags |= getattr(os, "O_NOFOLLOW", 0)
        self.name = str(path)
        self._fd = os.open(path, flags, 0o600)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        data = memoryview(text.encode("utf-8"))
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
        return len(text)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()


def _open(directory: str | os.PathLike[str] | None, name: str) -> AppendOnlyLines:
    folder = export_dir(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return AppendOnlyLines(folder / name)


def _as_io(stream: AppendOnlyLines) -> IO[str]:
    # io.TextIOBase is what typeshed cannot see as IO[str]; the exporters only call write,
    # flush and closed.
    return cast(IO[str], stream)


class OTLPJsonDirSpanExporter(FileSpanExporter):
    """Spans to ``traces.jsonl`` in the export folder (entry point ``otlp_json_dir``)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.stream = _open(directory, TRACES_FILE)
        super().__init__(stream=_as_io(self.stream))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if not self.stream.closed:  # idempotent: providers and runtimes may both shut down
            super().shutdown(timeout_millis, **kwargs)
            self.stream.close()


class OTLPJsonDirLogExporter(FileLogExporter):
    """Log records to ``logs.jsonl`` in the export folder (entry point ``otlp_json_dir``)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.stream = _open(directory, LOGS_FILE)
        super().__init__(stream=_as_io(self.stream))

    def shutdown(self) -> None:
        if not self.stream.closed:  # idempotent: providers and runtimes may both shut down
            super().shutdown()
            self.stream.close()


class OTLPJsonDirMetricExporter(FileMetricExporter):
    """Metrics to ``metrics.jsonl`` in the export folder (entry point ``otlp_json_dir``).

    ``preferred_temporality`` / ``preferred_aggregation`` as for the official exporter
    (``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` applies)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        self.stream = _open(directory, METRICS_FILE)
        super().__init__(stream=_as_io(self.stream), **kwargs)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if not self.stream.closed:  # idempotent: providers and runtimes may both shut down
            super().shutdown(timeout_millis, **kwargs)
            self.stream.close()
