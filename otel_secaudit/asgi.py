"""Moved to :mod:`otel_secaudit.web.asgi`; this name stays importable for existing code."""

from __future__ import annotations

from .web.asgi import SecAuditMiddleware, UserIdResolver
from .web.client import resolve_client_address

__all__ = ["SecAuditMiddleware", "UserIdResolver", "resolve_client_address"]
