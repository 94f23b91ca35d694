"""The libraries :class:`otel_secaudit.SecAuditInstrumentor` instruments.

One instrumentor covers several frameworks (Starlette/FastAPI today; Django and Flask adapters
join it), whichever are installed. ``_instruments`` is therefore empty: a listed library that is
missing would make ``opentelemetry-instrument`` skip the whole instrumentor, also for the
frameworks that are there. Each adapter checks for its framework itself and does nothing when it
is absent (:data:`_supported` says which versions are meant).
"""

from __future__ import annotations

_instruments: tuple[str, ...] = ()

#: The framework versions the adapters are written for (documentation; checked by the adapters).
_supported = ("starlette >= 0.37", "fastapi >= 0.110")

_supports_metrics = True
