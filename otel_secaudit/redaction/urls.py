"""Scrubbing of URLs, query strings, paths and headers that other instrumentations export.

Everything works from the **raw** query string (the bytes of the ASGI scope / WSGI
``QUERY_STRING``), never from a percent-decoded URL: in ``?next=%2Fhome%23top&token=SECRET``
the ``%23`` is data, not a fragment, and in ``?password=a%26b%3Dx`` the ``%26`` is part of the
password. Only secret values change, to ``[REDACTED]``; every other byte of the query is kept
as it came (nothing is re-encoded, and a value contrib already replaced with ``REDACTED`` stays
as it is). In a URL attribute another instrumentation wrote (contrib's ``http.url`` carries the
query percent-decoded), the secret values are located from the raw query and exactly they are
replaced, in the form the attribute has (:func:`scrub_url`). E-mail addresses in query values
and path segments are personal data and are redacted too (``emails=False`` when
OTEL_SECAUDIT_RECORD_USER_NAME=true). Queries longer than :data:`MAX_QUERY_LENGTH` are cut
before any scan. Time is linear in the input.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final, NamedTuple

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
    "QueryScan",
    "scan_query",
    "contains_email",
    "is_secret_header",
    "scrub_path",
    "scrub_path_emails",
    "scrub_query",
    "scrub_url",
    "scrub_url_path",
]

#: Characters of a query string that are scanned and kept; a longer query is cut at the last
#: ``&`` before this and marked with ``...[truncated]``.
MAX_QUERY_LENGTH: Final = 4096
_LONE_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: Values that are already a redaction marker (contrib writes ``REDACTED``) are left alone.
_MARKERS: Final = frozenset({"REDACTED", REDACTED, "%5BREDACTED%5D", "%5bREDACTED%5d"})
#: Path parameter names that are identifiers: checked against known secret formats only.
_ID_SUFFIXES: Final = ("id", "pk", "uuid", "slug")
#: An e-mail address: a local-part character, ``@``, labels ending in ``.``, a TLD of two or
#: more letters. Linear: a label cannot contain ``.`` or ``@``, so every split of the domain is
#: forced (no backtracking blow-up), and a start position fails at once unless an ``@`` follows.
_EMAIL: Final = re.compile(r"[\w!#$%&'*+/=?^`{|}~.-]@(?:[\w-]+\.)+[^\W\d_]{2,}(?![\w-])")


def contains_email(text: str) -> bool:
    """True when ``text`` holds an e-mail address (``local@domain.tld``: a local-part
    character before an ``@``, a domain of at least two labels whose last is two or more
    letters after it). Linear time (one regular-expression scan, see :data:`_EMAIL`)."""
    return "@" in text and _EMAIL.search(text) is not None


def _has_email(component: str) -> bool:
    """:func:`contains_email` of a URL component, percent-decoded when it may hide an ``@``."""
    if "@" in component:
        return contains_email(percent_decode(component, plus=False))
    if "%40" in component:
        return contains_email(percent_decode(component, plus=False))
    return False


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


def _pair_is_secret(name: str, value: str, rules: KeyRules, emails: bool = True) -> bool:
    # Cheapest checks first: most pairs are short, with plain names (decoded only if encoded).
    if "%" in name or "+" in name:
        name = percent_decode(name[: 3 * MAX_KEY_LENGTH])
    if rules.is_secret_query_name(name):
        return True
    # Decoding never lengthens a value, and nothing shorter than 8 is shaped like a secret.
    if len(value) >= 8 and looks_like_secret(percent_decode(value)):
        return True
    if emails and len(value) >= 6 and _has_email(value):
        return True
    return len(name) >= 16 and looks_like_secret(name)


def _cut(query: str) -> tuple[str, bool]:
    if len(query) <= MAX_QUERY_LENGTH:
        return query, False
    end = query.rfind("&", 0, MAX_QUERY_LENGTH)
    return (query[:end] if end > 0 else ""), True


class QueryScan(NamedTuple):
    """One scan of a raw query (:func:`scan_query`), shared by the attributes of a span."""

    #: the raw query's ``&``-separated pairs, after the cut
    parts: list[str]
    #: indexes of the secret pairs (a bare secret-shaped parameter is a pair without ``=``)
    secret: list[int]
    #: the query was longer than :data:`MAX_QUERY_LENGTH` and cut
    truncated: bool


def scan_query(
    raw: bytes | str, rules: KeyRules = DEFAULT_KEY_RULES, *, emails: bool = True
) -> QueryScan:
    """Find the secret pairs of a raw query (see :func:`scrub_query` for what is secret)."""
    return QueryScan(*_secret_pairs(raw, rules, emails))


def _secret_pairs(
    raw: bytes | str, rules: KeyRules, emails: bool
) -> tuple[list[str], list[int], bool]:
    query, truncated = _cut(_text(raw))
    if not query:
        return [], [], truncated
    parts = query.split("&")
    secret = []
    for index, pair in enumerate(parts):
        name, eq, value = pair.partition("=")
        if not eq:
            if len(name) >= 8 and looks_like_secret(percent_decode(name)):
                secret.append(index)
            continue
        if value in _MARKERS or not _pair_is_secret(name, value, rules, emails):
            continue
        secret.append(index)
    return parts, secret, truncated


def _redacted_pair(pair: str) -> str:
    name, eq, _ = pair.partition("=")
    return name + "=" + REDACTED if eq else REDACTED


def scrub_query(
    raw: bytes | str, rules: KeyRules = DEFAULT_KEY_RULES, *, emails: bool = True
) -> tuple[str, int]:
    """Scrub a raw query string (without the ``?``).

    Returns ``(query, count)``: ``query`` is ``raw`` (decoded from UTF-8 if bytes) with the value
    of every secret parameter replaced by ``[REDACTED]`` (and a bare secret-shaped parameter
    such as ``?AKIA...`` replaced as a whole); ``count`` is how many were replaced. A parameter is
    secret when its percent-decoded name names a secret (``password``, ``token``, ``code``,
    ``state``, ``key``, ``sig``, ``hmac``, ``pin``, ``refresh``, ...; see
    :meth:`KeyRules.is_secret_query_name`), its decoded value or name is shaped like one
    (:func:`looks_like_secret`), or (``emails``) its decoded value holds an e-mail address.
    All other bytes are unchanged. A query longer than :data:`MAX_QUERY_LENGTH` is cut at the
    last ``&`` before it and ends with ``...[truncated]`` (the cut is not counted).
    """
    parts, secret, truncated = _secret_pairs(raw, rules, emails)
    if not parts:
        return (TRUNCATED_MARK if truncated else ""), 0
    for index in secret:
        parts[index] = _redacted_pair(parts[index])
    scrubbed = "&".join(parts)
    return (scrubbed + TRUNCATED_MARK if truncated else scrubbed), len(secret)


def _locate(rendered: str, parts: list[str], secret: list[int], truncated: bool) -> str | None:
    """``rendered`` (a query as another instrumentation wrote it: raw, or percent-decoded as
    contrib's ``http.url``) with exactly the secret pairs' values replaced, found by walking
    the raw pairs in order, each as written or decoded; None when ``rendered`` is not such a
    rendering of them (the caller then falls back to the raw query). Linear time."""
    secret_set = set(secret)
    out: list[str] = []
    position = 0
    for index, pair in enumerate(parts):
        if index:
            if not rendered.startswith("&", position):
                return None
            out.append("&")
            position += 1
        form = pair
        if not rendered.startswith(pair, position):
            form = percent_decode(pair, plus=False)
            if not rendered.startswith(form, position):
                return None
        if index in secret_set:
            name, eq, _ = pair.partition("=")
            if eq:
                shown = name if form is pair else percent_decode(name, plus=False)
                out.append(shown + "=" + REDACTED)
            else:
                out.append(REDACTED)
        else:
            out.append(form)
        position += len(form)
    if truncated:  # the rest was never scanned: it does not leave
        return "".join(out) + TRUNCATED_MARK
    return "".join(out) if position == len(rendered) else None


def scrub_url(
    url: str,
    raw_query: bytes | str | None,
    *,
    rules: KeyRules = DEFAULT_KEY_RULES,
    scrubbed: tuple[str, int] | None = None,
    emails: bool = True,
    scan: QueryScan | None = None,
) -> str:
    """Scrub a URL attribute another instrumentation exported (``http.url``, ``url.full``,
    ``http.target``, ``url.query``) using the raw query.

    ``url``'s query part may be the raw query or its percent-decoded form (contrib's
    ``http.url``, where ``%23`` became ``#`` and ``%20`` a space). Returns ``url`` unchanged
    when ``raw_query`` is empty or has no secret and needs no cut. Otherwise the secret values
    are located from the raw query and exactly they become ``[REDACTED]``, every other
    character as ``url`` had it (nothing re-encoded). When ``url`` is no rendering of the raw
    query that can be walked (an instrumentation that reordered or re-encoded it), everything
    after its first ``?`` is replaced by :func:`scrub_query` of the raw query: a secret never
    survives. A ``url`` without ``?`` is returned unchanged (``url.query`` has none: pass
    ``"?" + value``). Pass ``scan``, :func:`scan_query` of this ``raw_query``, when several
    attributes of one request are scrubbed (one scan per request); ``scrubbed`` (the result of
    :func:`scrub_query`) is used only for the fallback.
    """
    if not raw_query:
        return url
    parts, secret, truncated = (
        scan if scan is not None else scan_query(raw_query, rules, emails=emails)
    )
    if not secret and not truncated:
        return url
    base, rendered = _split_query(url, raw_query)
    if rendered is None:
        return url
    located = _locate(rendered, parts, secret, truncated)
    if located is None:
        query = (
            scrubbed[0] if scrubbed is not None else scrub_query(raw_query, rules, emails=emails)[0]
        )
        return base + query
    return base + located


def _split_query(url: str, raw_query: bytes | str) -> tuple[str, str | None]:
    """(everything up to and including the ``?`` that starts the query, the query) of
    ``url``; the query is found as the raw or decoded query at the end when it can be (a
    decoded path may hold a ``?``), else after the first ``?``."""
    raw = _text(raw_query)
    for form in (raw, percent_decode(raw, plus=False)):
        if form and url.endswith("?" + form):
            cut = len(url) - len(form)
            return url[:cut], url[cut:]
    base, sep, rendered = url.partition("?")
    if not sep:
        return url, None
    return base + "?", rendered


def scrub_path_emails(path: str) -> tuple[str, int]:
    """``path`` with every segment holding an e-mail address (percent-encoded or not)
    replaced by ``[REDACTED]``, and how many were. Linear time."""
    if "@" not in path and "%40" not in path:
        return path, 0
    segments = path.split("/")
    count = 0
    for index, segment in enumerate(segments):
        if segment and segment not in _MARKERS and _has_email(segment):
            segments[index] = REDACTED
            count += 1
    return ("/".join(segments), count) if count else (path, 0)


def scrub_url_path(url: str) -> str:
    """A URL attribute's path part (of ``scheme://host/path?query``, or of ``/path?query``)
    with e-mail segments redacted (:func:`scrub_path_emails`); the rest untouched."""
    start = 0
    scheme, query_at = url.find("://"), url.find("?")
    if scheme != -1 and (query_at == -1 or scheme < query_at):
        slash = url.find("/", scheme + 3)
        if slash == -1 or (query_at != -1 and slash > query_at):
            return url
        start = slash
    end = url.find("?", start)
    end = len(url) if end == -1 else end
    path, count = scrub_path_emails(url[start:end])
    return url[:start] + path + url[end:] if count else url


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
    route: str | None, path: str, *, rules: KeyRules = DEFAULT_KEY_RULES, emails: bool = True
) -> tuple[str, int]:
    """Scrub the path parameters of a concrete request path, given the matched route template.

    Returns ``(path, count)``: ``path`` with every segment that a template parameter matched
    replaced by ``[REDACTED]`` when the parameter's name names a secret (``/reset/{token}``,
    ``<code>``, ``{api_key}``) or the segment's value is shaped like one; parameters named like
    identifiers (``{user_id}``, ``<int:pk>``, ``{uuid}``) only when they contain a known secret
    format. Literal segments are kept as they are; ``count`` is how many segments were replaced.
    Templates in Starlette/FastAPI (``{name}``, ``{name:path}``), Django and Flask (``<name>``,
    ``<conv:name>``) forms; a leading ``/`` is optional. When ``route`` is None or its segments do
    not line up with ``path``, every segment is judged by its value alone. With ``emails``,
    any segment holding an e-mail address (``/password-recovery/alice@example.com``) is
    replaced too.
    """
    leading = path[:1] == "/"
    body = path[1:] if leading else path
    trailing = body.endswith("/")
    segments = (body[:-1] if trailing else body).split("/")
    if route:
        names, literal = _route_names(route, len(segments))
        if literal and not (emails and ("@" in path or "%40" in path)):
            return path, 0  # every segment a literal of the template, no e-mail: nothing to do
    else:
        names = ("",) * len(segments)
    count = 0
    for index, segment in enumerate(segments):
        name = names[index]
        if not segment or segment in _MARKERS:
            continue
        if (emails and _has_email(segment)) or (
            name is not None and _segment_is_secret(name, segment, rules)
        ):
            segments[index] = REDACTED
            count += 1
    if not count:
        return path, 0
    return ("/" if leading else "") + "/".join(segments) + ("/" if trailing else ""), count


@lru_cache(maxsize=1024)
def _route_names(route: str, length: int) -> tuple[tuple[str | None, ...], bool]:
    """:func:`_align` of ``route``'s template for ``length`` segments (a route template is
    low-cardinality: computed once per template and length), and whether every segment is a
    literal one."""
    names = tuple(_align(_template_segments(route), length))
    return names, all(name is None for name in names)


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
