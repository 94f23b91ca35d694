"""The libraries :class:`otel_secaudit.SecAuditInstrumentor` instruments.

FastAPI subclasses Starlette (``fastapi.FastAPI`` is a ``starlette.applications.Starlette``),
so Starlette is the one real requirement; FastAPI is patched too when it is importable, but is
not listed: listing it would make the instrumentor skip plain Starlette applications.
"""

from __future__ import annotations

_instruments = ("starlette >= 0.37",)

_supports_metrics = True
