"""pytest plugin: otel_secaudit active while a peer's test suite runs, as under
``opentelemetry-instrument`` (which loads every installed instrumentor, ours included, before
the application and its own instrumentation set up).

    python -m pytest -p secaudit_peer_plugin tests     # with .ci/peers on PYTHONPATH

Used by ``.ci/peers/run_peer_suites.py`` to run contrib's Django, Flask, WSGI and ASGI
instrumentation suites with and without the plugin; no test may fail only with it.
"""

from __future__ import annotations

import os
from typing import Any

_instrumentor: Any = None


def pytest_configure(config: Any) -> None:
    """Instrument before any test module is imported (configuration comes from the
    environment, as under ``opentelemetry-instrument``)."""
    global _instrumentor
    from otel_secaudit import SecAuditInstrumentor

    _instrumentor = SecAuditInstrumentor()
    _instrumentor.instrument()
    marker = os.environ.get("SECAUDIT_PEER_MARKER")
    if marker:  # the runner checks the plugin really was active
        with open(marker, "w", encoding="utf-8") as out:
            out.write(f"instrumented={_instrumentor.is_instrumented_by_opentelemetry}\n")


def pytest_unconfigure(config: Any) -> None:
    if _instrumentor is not None and _instrumentor.is_instrumented_by_opentelemetry:
        _instrumentor.uninstrument()
