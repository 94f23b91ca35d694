"""Scrub the server span other instrumentations opened: secret query values and captured secret
headers become ``[REDACTED]``.

Contrib's ASGI middleware and FastAPI's own telemetry set the URL attributes (``http.url``,
``http.target``, ``url.full``, ``url.query``) before calling the application and never again, so
the security middleware, which runs inside the span, rewrites them once. Secrets are found in the
RAW query string (ASGI ``query_string``), never in contrib's percent-decoded ``http.url``, where
``?next=%2Fhome%23top&token=X`` would look like a fragment and ``password=a%26b%3Dx`` like two
parameters (:mod:`otel_secaudit.redaction.urls` does the scrubbing); exactly the secret values
are replaced, in the form the attribute has (nothing else re-encoded). E-mail addresses in the
path (``url.path`` and the path part of ``http.target``, ``http.url``, ``url.full``) and in
query values are replaced too, unless OTEL_SECAUDIT_RECORD_USER_NAME=true. An attribute is
rewritten only when it holds something to replace.
"""

from __future__ import annotations

from typing import Any, Final

from ..redaction import REDACTED, is_secret_header, looks_like_secret, scrub_url
from ..redaction.urls import QueryScan, scan_query, scrub_path_emails, scrub_url_path

__all__ = ["may_hold_email", "scrub_server_span"]

URL_ATTRIBUTES: Final = ("http.url", "http.target", "url.full")
QUERY_ATTRIBUTE: Final = "url.query"
PATH_ATTRIBUTE: Final = "url.path"
HEADER_PREFIX: Final = "http.request.header."
_URL_KEYS: Final = (*URL_ATTRIBUTES, QUERY_ATTRIBUTE, PATH_ATTRIBUTE)


def _scrub_url(key: str, value: str, raw: bytes | str, scan: QueryScan | None, emails: bool) -> str:
    if key == PATH_ATTRIBUTE:
        return scrub_path_emails(value)[0] if emails else value
    if key == QUERY_ATTRIBUTE:
        return scrub_url("?" + value, raw, scan=scan)[1:] if scan is not None else value
    if emails:
        value = scrub_url_path(value)
    if scan is not None and "?" in value:
        value = scrub_url(value, raw, scan=scan)
    return value


def may_hold_email(value: str) -> bool:
    """False when ``value`` holds no ``@`` in any form: no e-mail address to replace."""
    return "@" in value or "%40" in value


def _scrub_url_attributes(
    span: Any, attributes: Any, keys: list[str], raw: bytes | str, emails: bool
) -> None:
    scan: QueryScan | None = scan_query(raw, emails=emails) if raw else None
    if scan is not None and not scan.secret and not scan.truncated:
        scan = None
    if scan is None and not emails:
        return
    for key in keys:
        value = attributes[key]
        # Without a secret query only e-mail addresses are replaced: most requests have no '@'.
        if isinstance(value, str) and (scan is not None or may_hold_email(value)):
            cleaned = _scrub_url(key, value, raw, scan, emails)
            if cleaned != value:
                span.set_attribute(key, cleaned)


def _scrub_headers(span: Any, attributes: Any, keys: list[str]) -> None:
    for key in keys:
        value = attributes[key]
        values = value if isinstance(value, (tuple, list)) else (value,)
        if all(v == REDACTED for v in values):
            continue
        if is_secret_header(key[len(HEADER_PREFIX) :]) or any(
            isinstance(v, str) and looks_like_secret(v) for v in values
        ):
            span.set_attribute(key, (REDACTED,))


def scrub_server_span(
    span: Any, raw_query: bytes | str, *, headers: bool = True, emails: bool = True
) -> None:
    """Scrub a live server span: secret values of the raw query in its URL attributes (and,
    with ``emails``, e-mail addresses in their paths and query values), and captured request
    headers (``http.request.header.*``) naming a secret (``authorization``, ``cookie``,
    ``ocp-apim-subscription-key``...) or holding a secret-shaped value; ``headers=False``
    skips the headers."""
    attributes = getattr(span, "attributes", None)
    if not attributes or not span.is_recording():
        return
    # One pass over the attribute names (no lookup of absent keys, each a KeyError inside
    # Mapping.get); URL attributes in their fixed order.
    names = list(attributes)
    if raw_query or emails:
        present = set(names)
        url_keys = [key for key in _URL_KEYS if key in present]
        if url_keys:
            _scrub_url_attributes(span, attributes, url_keys, raw_query, emails)
    if headers:
        header_keys = [key for key in names if key.startswith(HEADER_PREFIX)]
        if header_keys:
            _scrub_headers(span, attributes, header_keys)
