"""Redaction: what never leaves the process.

* :mod:`.rules` - key rules (which attribute keys, query names and headers name a secret) and
  the catalogue of secret shapes (JWT, PEM, provider key prefixes, ...), compiled for RE2;
* :mod:`.pipeline` - small pure steps (cap before scan, shape checks, escaping, capping,
  identity hashing) composed by :class:`Redactor`, which sanitizes what ``record()`` gets;
* :mod:`.urls` - scrubbing of raw query strings, URL attributes, route paths and headers that
  other instrumentations export.

Every step costs time linear in its input, whatever an attacker sends. A redacted value becomes
:data:`REDACTED` as a whole: no prefix, suffix or length of the secret is echoed.
"""

from __future__ import annotations

from .pipeline import (
    JTI_PREFIX_LENGTH,
    MAX_KEY_LENGTH,
    MAX_USER_AGENT_LENGTH,
    MAX_VALUE_LENGTH,
    REDACTED,
    TRUNCATED_MARK,
    AttributeValue,
    Redactor,
    Sanitized,
    cap_length,
    escape_control,
    hash_identity,
    is_known_secret,
    looks_like_secret,
    scan_window,
)
from .rules import KeyRules, is_secret_key, is_secret_query_name
from .urls import MAX_QUERY_LENGTH, is_secret_header, scrub_path, scrub_query, scrub_url

__all__ = [
    "JTI_PREFIX_LENGTH",
    "MAX_KEY_LENGTH",
    "MAX_QUERY_LENGTH",
    "MAX_USER_AGENT_LENGTH",
    "MAX_VALUE_LENGTH",
    "REDACTED",
    "TRUNCATED_MARK",
    "AttributeValue",
    "KeyRules",
    "Redactor",
    "Sanitized",
    "cap_length",
    "escape_control",
    "hash_identity",
    "is_known_secret",
    "is_secret_header",
    "is_secret_key",
    "is_secret_query_name",
    "looks_like_secret",
    "scan_window",
    "scrub_path",
    "scrub_query",
    "scrub_url",
]
