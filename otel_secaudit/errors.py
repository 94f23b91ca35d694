"""Errors otel_secaudit raises to its caller (a leaf module: everything may import it)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""
