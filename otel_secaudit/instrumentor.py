"""Moved to :mod:`otel_secaudit.web.instrumentor`; this name stays importable for existing code."""

from __future__ import annotations

from .web.instrumentor import SecAuditInstrumentor

__all__ = ["SecAuditInstrumentor"]
