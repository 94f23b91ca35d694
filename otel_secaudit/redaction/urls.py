"""Scrubbing of URLs, query strings, paths and headers that other instrumentations export.

Everything works from the **raw** query string (the bytes of the ASGI scope / WSGI
``QUERY_STRING``), never from a percent-decoded URL: in ``?next=%2Fhome%23top&token=SECRET``
the ``%23`` is data, not a fragment, and in ``?password=a%26b%3Dx`` the ``%26`` is part of the
password. Only secret values change, to ``[REDACTED]``; every other byte of the query is kept
as it came (nothing is re-encoded, and a value contrib already replaced with ``REDACTED`` stays
as it is). Queries longer than :data:`MAX_QUERY_LENGTH` are cut before any scan. Time is linear
in the input.
"""

from __future__ import annotations

import re
from typing import Final

from .pipeline import (
    MAX_VALUE_LENGTH,
    REDACTED,
    TRUNCATED_MARK,
    is_known_secret,
    looks_like_secret,
    scan_window,
)
from .rules import DEFAULT_KEY_RULES, MAX_KEY_LENGTH, KeyRules

__all__ = [
    "MAX_QUERY_LENGTH",
    "is_secret_header",
    "scrub_path",
    "scrub_query",
    "scrub_url",
]

#: Characters of a query string that are scanned and kept; a longer query is cut at the last
#: ``&`` before this and marked with ``...[truncated]``.
MAX_QUERY_LENGTH: Final = 4096
_LONE_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: Values that are already a redaction marker (contrib writes ``REDACTED``) are left alone.
_MARKERS: Final = frozenset({"REDACTED", REDACTED, "%5BREDACTED%5D", "%5bREDACTED%5d"})
#: Path parameter names that are identifiers: checked against known secret formats only.
_ID_SUFFIXES: Final = ("id", "pk", "uuid", "slug")


def _text(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    # Raw UTF-8 is kept; a byte that is not valid UTF-8 shows as \\xNN rather than failing.
    return raw.decode("utf-8", "backslashreplace")


def percent_decode(component: str, *, plus: bool = True) -> str:
    """``component`` percent-decoded as UTF-8 (invalid sequences become U+FFFD, a ``%`` not
    followed by two hex digits stays as it is), ``+`` as a space when ``plus``: what
    ``urllib.parse.unquote_plus`` returns, in a fixed number of C-level passes.

    ``unquote`` loops in Python once per ``%``, so ``%41%41...`` would cost ~10x a benign
    value of the same length; here every step is a ``str``/``bytes`` method or a regex
    substitution with a constant replacement."""
    if "%" not in component:
        return component.replace("+", " ") if plus else component
    if plus:
        component = component.replace("+", " ")
    # Backslashes become escapes, lone % a literal percent: then every backslash in the text is
    # the start of a \xNN escape and the unicode_escape codec decodes them all at once.
    component = _LONE_PERCENT.sub("%25", component.replace("\\", "%5C"))
    escaped = component.replace("%", "\\x").encode("utf-8", "surrogatepass")
    raw = escaped.decode("unicode_escape").encode("latin-1")
    return raw.decode("utf-8", "replace")


def _pair_is_secret(name: str, value: str, rules: KeyRules) -> bool:
    # Cheapest checks first: most pairs are short, with plain names (decoded only if encoded).
    if "%" in name or "+" in name:
        name = percent_decode(name[: 3 * MAX_KEY_LENGTH])
    if rules.is_secret_query_name(name):
        return True
    # Decoding never lengthens a value, and nothing shorter than 8 is shaped like a secret.
    if len(value) >= 8 and looks_like_secret(percent_decode(value)):
        return True
    return len(name) >= 16 and looks_like_secret(name)


def _cut(query: str) -> tuple[str, bool]:
    if len(query) <= MAX_QUERY_LENGTH:
        return query, False
    end = query.rfind("&", 0, MAX_QUERY_LENGTH)
    return (query[:end] if end > 0 else ""), True


def scrub_query(raw: bytes | str, rules: KeyRules = DEFAULT_KEY_RULES) -> tuple[str, int]:
    """Scrub a raw query string (without the ``?``).

    Returns ``(query, count)``: ``query`` is ``raw`` (decoded from UTF-8 if bytes) with the value
    of every secret parameter replaced by ``[REDACTED]`` (and a bare secret-shaped parameter
    such as ``?AKIA...`` replaced as a whole); ``count`` is how many were replaced. A parameter is
    secret when its percent-decoded name names a secret (``password``, ``token``, ``code``,
    ``state``, ``key``, ``sig``, ``hmac``, ``pin``, ``refresh``, ...; see
    :meth:`KeyRules.is_secret_query_name`) or its decoded value or name is shaped like one
    (:func:`looks_like_secret`). All other bytes are unchanged. A query longer than
    :data:`MAX_QUERY_LENGTH` is cut at the last ``&`` before it and ends with
    ``...[truncated]`` (the cut is not counted).
    """
    query, truncated = _cut(_text(raw))
    if not query:
        return (TRUNCATED_MARK if truncated else query), 0
    parts = query.split("&")
    count = 0
    for index, pair in enumerate(parts):
        name, eq, value = pair.partition("=")
        if not eq:
            if len(name) >= 8 and looks_like_secret(percent_decode(name)):
                parts[index] = REDACTED
                count += 1
            continue
        if value in _MARKERS or not _pair_is_secret(name, value, rules):
            continue
        parts[index] = name + "=" + REDACTED
        count += 1
    scrubbed = "&".join(parts) if count else query
    return (scrubbed + TRUNCATED_MARK if truncated else scrubbed), count


def scrub_url(
    url: str,
    raw_query: bytes | str | None,
    *,
    rules: KeyRules = DEFAULT_KEY_RULES,
    scrubbed: tuple[str, int] | None = None,
) -> str:
    """Rebuild a URL attribute (``http.url``, ``url.full``, ``http.target``) from the raw query.

    ``url`` is what an instrumentation exported, whose query part may be percent-decoded
    (contrib's ``http.url``). Returns ``url`` unchanged when ``raw_query`` is empty or has no
    secret and needs no cut; otherwise everything before the first ``?`` of ``url`` followed by
    ``?`` and :func:`scrub_query` of ``raw_query`` (so secrets are found in the raw bytes, and
    nothing after the ``?`` of the decoded form, such as a ``#`` that was ``%23``, survives).
    A ``url`` without ``?`` is returned unchanged. Pass ``scrubbed``, the result of
    :func:`scrub_query` for this ``raw_query``, when you already have it (one scan per request).
    """
    if not raw_query:
        return url
    base, sep, _ = url.partition("?")
    if not sep:
        return url
    query, count = scrubbed if scrubbed is not None else scrub_query(raw_query, rules)
    if count == 0 and not query.endswith(TRUNCATED_MARK):
        return url
    return base + "?" + query


def is_secret_header(name: str, rules: KeyRules = DEFAULT_KEY_RULES) -> bool:
    """True when the value of HTTP header ``name`` (any case; ``-`` or ``_``; also the
    ``http.request.header.<name>`` attribute suffix) is a secret: ``Authorization``,
    ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``, ``X-Api-Key``,
    ``Ocp-Apim-Subscription-Key``, ``X-CSRF-Token``, any ``...-Key``/``...-Signature``, ..."""
    return rules.is_secret_header(name)


def _template_segments(route: str) -> list[str]:
    return route.strip("/").split("/") if route.strip("/") else []


def _param_name(segment: str) -> str | None:
    """The parameter name of a template segment (``{token}``, ``{path:path}``, ``<token>``,
    ``<int:pk>``), or None for a literal segment."""
    if len(segment) >= 2 and segment[0] == "{" and segment[-1] == "}":
        return segment[1:-1].split(":", 1)[0]
    if len(segment) >= 2 and segment[0] == "<" and segment[-1] == ">":
        return segment[1:-1].rsplit(":", 1)[-1]
    if "{" in segment or "<" in segment:
        return ""  # a parameter inside a literal (``{name}.txt``): judge by value only
    return None


def _is_multi_segment(segment: str) -> bool:
    return segment.endswith((":path}", ">")) and segment.startswith(("{", "<path:"))


def _segment_is_secret(name: str, segment: str, rules: KeyRules) -> bool:
    value = scan_window(percent_decode(segment, plus=False), MAX_VALUE_LENGTH)
    if name and rules.is_secret_query_name(name):
        return True
    lowered = name.lower()
    if lowered.endswith(_ID_SUFFIXES):
        return is_known_secret(value)
    return looks_like_secret(value)


def scrub_path(
    route: str | None, path: str, *, rules: KeyRules = DEFAULT_KEY_RULES
) -> tuple[str, int]:
    """Scrub the path parameters of a concrete request path, given the matched route template.

    Returns ``(path, count)``: ``path`` with every segment that a template parameter matched
    replaced by ``[REDACTED]`` when the parameter's name names a secret (``/reset/{token}``,
    ``<code>``, ``{api_key}``) or the segment's value is shaped like one; parameters named like
    identifiers (``{user_id}``, ``<int:pk>``, ``{uuid}``) only when they contain a known secret
    format. Literal segments are kept as they are; ``count`` is how many segments were replaced.
    Templates in Starlette/FastAPI (``{name}``, ``{name:path}``), Django and Flask (``<name>``,
    ``<conv:name>``) forms; a leading ``/`` is optional. When ``route`` is None or its segments do
    not line up with ``path``, every segment is judged by its value alone.
    """
    leading = path[:1] == "/"
    body = path[1:] if leading else path
    trailing = body.endswith("/")
    segments = (body[:-1] if trailing else body).split("/")
    template = _template_segments(route) if route else []
    names = _align(template, len(segments))
    count = 0
    for index, segment in enumerate(segments):
        name = names[index]
        if name is None or not segment or segment in _MARKERS:
            continue
        if _segment_is_secret(name, segment, rules):
            segments[index] = REDACTED
            count += 1
    if not count:
        return path, 0
    return ("/" if leading else "") + "/".join(segments) + ("/" if trailing else ""), count


def _align(template: list[str], length: int) -> list[str | None]:
    """For each of ``length`` path segments, the name of the template parameter that matched
    it ("" when unnamed or unknown), or None for a literal segment."""
    if not template:
        return [""] * length
    multi = [i for i, segment in enumerate(template) if _is_multi_segment(segment)]
    if len(template) == length and not multi:
        return [_param_name(segment) for segment in template]
    if len(multi) == 1 and length >= len(template):
        at = multi[0]
        head = [_param_name(segment) for segment in template[:at]]
        tail = [_param_name(segment) for segment in template[at + 1 :]]
        middle = _param_name(template[at]) or ""
        return head + [middle] * (length - len(head) - len(tail)) + tail
    return [""] * length
