"""Scrub the server span other instrumentations opened: secret query values and captured secret
headers become ``[REDACTED]``.

Contrib's ASGI middleware and FastAPI's own telemetry set the URL attributes (``http.url``,
``http.target``, ``url.full``, ``url.query``) before calling the application and never again, so
the security middleware, which runs inside the span, rewrites them once. Secrets are found in the
RAW query string (ASGI ``query_string``), never in contrib's percent-decoded ``http.url``, where
``?next=%2Fhome%23top&token=X`` would look like a fragment and ``password=a%26b%3Dx`` like two
parameters (:mod:`otel_secaudit.redaction.urls` does the scrubbing). An attribute is rewritten
only when its query holds a secret.
"""

from __future__ import annotations

from typing import Any, Final

from ..redaction import (
    REDACTED,
    TRUNCATED_MARK,
    is_secret_header,
    looks_like_secret,
    scrub_query,
    scrub_url,
)

__all__ = ["scrub_server_span"]

URL_ATTRIBUTES: Final = ("http.url", "http.target", "url.full")
QUERY_ATTRIBUTE: Final = "url.query"
HEADER_PREFIX: Final = "http.request.header."


def _scrub_url_attributes(span: Any, attributes: Any, raw: bytes | str) -> None:
    scrubbed, count = scrub_query(raw)
    if count == 0 and not scrubbed.endswith(TRUNCATED_MARK):
        return
    query = attributes.get(QUERY_ATTRIBUTE)
    if isinstance(query, str) and query != scrubbed:
        span.set_attribute(QUERY_ATTRIBUTE, scrubbed)
    for key in URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str) and "?" in value:
            cleaned = scrub_url(value, raw, scrubbed=(scrubbed, count))
            if cleaned != value:
                span.set_attribute(key, cleaned)


def _scrub_headers(span: Any, attributes: Any) -> None:
    for key in [k for k in attributes if k.startswith(HEADER_PREFIX)]:
        value = attributes[key]
        values = value if isinstance(value, (tuple, list)) else (value,)
        if all(v == REDACTED for v in values):
            continue
        if is_secret_header(key[len(HEADER_PREFIX) :]) or any(
            isinstance(v, str) and looks_like_secret(v) for v in values
        ):
            span.set_attribute(key, (REDACTED,))


def scrub_server_span(span: Any, raw_query: bytes | str, *, headers: bool = True) -> None:
    """Scrub a live server span: secret values of the raw query in its URL attributes and
    captured request headers (``http.request.header.*``) naming a secret (``authorization``,
    ``cookie``, ``ocp-apim-subscription-key``...) or holding a secret-shaped value;
    ``headers=False`` skips the headers."""
    attributes = getattr(span, "attributes", None)
    if not attributes or not span.is_recording():
        return
    if raw_query:
        _scrub_url_attributes(span, attributes, raw_query)
    if headers:
        _scrub_headers(span, attributes)
