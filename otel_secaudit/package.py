"""The libraries :class:`otel_secaudit.SecAuditInstrumentor` instruments.

One instrumentor covers several frameworks (Starlette/FastAPI, Django, Flask), whichever are
installed. ``_instruments`` is therefore empty: a listed library that is missing would make
``opentelemetry-instrument`` skip the whole instrumentor, also for the frameworks that are
there. Each adapter checks for its framework itself and does nothing when it is absent; the
versions each one is written for are the extras of pyproject.toml (``web``, ``django``,
``flask``).
"""

from __future__ import annotations

_instruments: tuple[str, ...] = ()

_supports_metrics = True
