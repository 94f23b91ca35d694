"""The redaction pipeline: small pure steps, composed by :class:`Redactor`.

Each step has one job and costs time linear in its input:

* :func:`scan_window` - the cap, applied *before* any scan: only what can be exported (plus a
  margin, so a secret cut by the cap is still recognised) is ever looked at;
* :func:`looks_like_secret` - free text shaped like a credential (one RE2 pass over the known
  formats and free-text heuristics, then bounded checks of long base64 and card-number runs);
* :func:`is_known_secret` - a known secret *format* (JWT, PEM private key, provider key
  prefixes, URL with a password): the only check applied to identifiers;
* :func:`escape_control` - control, invisible and direction-changing characters escaped, one pass;
* :func:`cap_length` - values are length-capped, the cut marked;
* :func:`hash_identity` - an unverified identity becomes a keyed HMAC-SHA256 of its NFKC,
  trimmed, case-folded form.

A redacted value becomes :data:`REDACTED` as a whole: no prefix, suffix or length of the secret
is echoed.
"""

from __future__ import annotations

import hmac
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Final

from .. import attributes as attr
from .rules import (
    BASE64_RUN,
    CARD_RUN,
    FREE_TEXT_REGEX,
    KNOWN_SECRET_REGEX,
    MAX_KEY_LENGTH,
    KeyRules,
)

__all__ = [
    "JTI_PREFIX_LENGTH",
    "MAX_KEY_LENGTH",
    "MAX_USER_AGENT_LENGTH",
    "MAX_VALUE_LENGTH",
    "REDACTED",
    "TRUNCATED_MARK",
    "AttributeValue",
    "Redactor",
    "Sanitized",
    "cap_length",
    "escape_and_cap",
    "escape_control",
    "hash_identity",
    "is_known_secret",
    "looks_like_secret",
    "scan_window",
]

REDACTED: Final = "[REDACTED]"
TRUNCATED_MARK: Final = "...[truncated]"

#: Maximum length of an attribute value (after escaping), of user_agent.original.
MAX_VALUE_LENGTH: Final = 1024
MAX_USER_AGENT_LENGTH: Final = 256
#: Extra attributes per event, nesting depth of ``attributes``, elements per sequence.
MAX_EXTRA_ATTRIBUTES: Final = 64
MAX_DEPTH: Final = 4
MAX_SEQUENCE: Final = 32
JTI_PREFIX_LENGTH: Final = 8
#: Characters scanned beyond the cap: a secret that starts before the cut is still recognised
#: from its first SCAN_MARGIN characters (every shape in the catalogue is shorter than that).
SCAN_MARGIN: Final = 256
#: Long base64 / card-number runs checked one by one per value; a value with more is redacted
#: as a whole (fail closed), so an attacker cannot buy unbounded per-run work.
MAX_RUN_CHECKS: Final = 16

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CLEAN_CACHE_SIZE: Final = 4096
_CLEAN_CACHE_MAX_LENGTH: Final = 256

# C0 and C1 controls, DEL, the line/paragraph separators, and the invisible and
# direction-changing characters (zero-width space/joiners, LRM/RLM, bidi embeddings, overrides
# and isolates, the Arabic letter mark, word joiner and invisible operators, BOM). And lone
# surrogates (a str from ``surrogateescape`` decoding or a bad JSON escape): they have no UTF-8
# form, so an OTLP encoder drops the whole attribute (and logs a traceback per record); escaped
# they are visible text.
_INVISIBLE_RANGES: Final = (
    (0x00, 0x1F),
    (0x7F, 0x9F),
    (0x061C, 0x061C),
    (0x200B, 0x200F),
    (0x2028, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x2069),
    (0xD800, 0xDFFF),
    (0xFEFF, 0xFEFF),
)
_CONTROL: Final = re.compile(
    "[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in _INVISIBLE_RANGES) + "]"
)
# One str.translate pass (C) instead of a Python callback per character.
_ESCAPES: Final = {
    code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for lo, hi in _INVISIBLE_RANGES
    for code in range(lo, hi + 1)
}
_DIGITS: Final = b"0123456789"
_LUHN_DOUBLE: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _needs_escape(value: str) -> bool:
    # Every escaped character is non-printable, and str.isprintable() is ~4x faster than a
    # character-class search; printable text (nearly all of it) skips the search.
    return not value.isprintable() and _CONTROL.search(value) is not None


def escape_control(value: str) -> str:
    """``value`` with control, invisible and bidi characters and lone surrogates escaped
    (``\\n`` -> ``\\x0a``, U+200B -> ``\\u200b``, U+D800 -> ``\\ud800``); other characters
    unchanged. One ``str.translate`` pass."""
    return value.translate(_ESCAPES) if _needs_escape(value) else value


def escape_and_cap(value: str, limit: int) -> str:
    """``cap_length(escape_control(value), limit)``, escaping no more of ``value`` than can be
    exported: an escape is 4-6 characters, so a value full of control characters fills
    ``limit`` from its first ``limit / 4`` characters. At most two ``translate`` passes over at
    most ``limit + 1`` characters in all."""
    head = value[: limit + 1]
    if not _needs_escape(head):
        return cap_length(head, limit)
    first = limit // 4 + 1
    escaped = head[:first].translate(_ESCAPES)
    if len(escaped) <= limit and len(head) > first:
        # Each character adds at least one, so limit - len + 1 more characters either finish
        # the value or overflow the cap (and cap_length marks the cut).
        escaped += head[first : first + limit - len(escaped) + 1].translate(_ESCAPES)
    return cap_length(escaped, limit)


def cap_length(value: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """``value`` cut to at most ``limit`` characters, the cut marked with ``...[truncated]``."""
    if len(value) <= limit:
        return value
    return value[: max(0, limit - len(TRUNCATED_MARK))] + TRUNCATED_MARK


def scan_window(value: str, limit: int) -> str:
    """The part of ``value`` any scan looks at: at most ``limit + SCAN_MARGIN`` characters.

    Only the first ``limit`` characters can be exported; the margin lets a secret that the cap
    cuts still be recognised by its whole shape."""
    return value if len(value) <= limit + SCAN_MARGIN else value[: limit + SCAN_MARGIN]


def _encode(value: str) -> bytes:
    # RE2 on bytes: no offset translation for non-ASCII text, and lone surrogates survive.
    return value.encode("utf-8", "surrogatepass")


def is_known_secret(value: str) -> bool:
    """True when ``value`` contains a known secret format: JWT, PEM private key, a provider key
    (``sk-``, ``sk-proj-``, ``ghp_``, ``xoxb-``, ``AKIA...``, ``npm_``, ``glpat-``, ...), a URL
    with a password, a ``Bearer``/``Basic`` credential or a ``password=...`` assignment.
    UUIDs, hex ids and ``user_2abc...`` ids are not. Linear time; callers cap ``value`` first
    (:func:`scan_window`)."""
    if len(value) < 8:
        return False
    return KNOWN_SECRET_REGEX.search(_encode(value)) is not None


def _base64_secret(run: bytes) -> bool:
    # Paths are made of many short segments; keys and tokens are long, mixed-case, with digits.
    if run.count(b"/") > len(run) // 10:
        return False
    return run.lower() != run and run.upper() != run and run.translate(None, _DIGITS) != run


def _luhn_ok(digits: bytes) -> bool:
    odd = sum(digits[-1::-2]) - 48 * len(digits[-1::-2])
    even = sum(_LUHN_DOUBLE[d - 48] for d in digits[-2::-2])
    return (odd + even) % 10 == 0


def _has_secret_run(data: bytes) -> bool:
    checks = 0
    if len(data) >= 32:
        for match in BASE64_RUN.finditer(data):
            checks += 1
            if checks > MAX_RUN_CHECKS or _base64_secret(match.group()):
                return True
    if len(data) >= 13:
        for match in CARD_RUN.finditer(data):
            checks += 1
            if checks > MAX_RUN_CHECKS:
                return True
            digits = match.group().replace(b" ", b"").replace(b"-", b"")
            if 13 <= len(digits) <= 19 and _luhn_ok(digits):
                return True
    return False


def looks_like_secret(value: str) -> bool:
    """True when ``value`` contains something shaped like a credential: any known format (see
    :func:`is_known_secret`), ``password=...``/``token: ...`` in free text, ``Bearer``/``Basic``
    credentials, 32+ hex digits, a long mixed-case base64 run, a card number passing Luhn.

    Time is linear in ``len(value)``: one RE2 pass plus at most :data:`MAX_RUN_CHECKS` bounded
    run checks. Callers cap ``value`` first (:func:`scan_window`)."""
    if len(value) < 8:
        return False
    data = _encode(value)
    if FREE_TEXT_REGEX.search(data) is not None:
        return True
    return _has_secret_run(data)


def hash_identity(key: bytes, identity: str) -> str:
    """Keyed HMAC-SHA256 (hex) of an identity, NFKC-normalized, trimmed and case-folded first,
    so ``ａｌｉｃｅ``, ``ＡＬＩＣＥ``, `` Alice `` and ``alice`` give one hash.

    The same key on every instance makes the same user name give the same ``user.hash``.
    """
    normalized = unicodedata.normalize("NFKC", identity).strip().casefold()
    # Case folding can produce characters that NFKC composes differently (NFKC_Casefold).
    normalized = unicodedata.normalize("NFKC", normalized)
    return hmac.digest(key, normalized.encode("utf-8", "surrogatepass"), "sha256").hex()


AttributeValue = str | bool | int | float | tuple


class Sanitized:
    """Accumulator for one event: redaction count and input problems."""

    __slots__ = ("count", "problems")

    def __init__(self) -> None:
        self.count = 0
        self.problems: list[str] = []


def _as_text(value: object, acc: Sanitized) -> str | None:
    """A caller-supplied scalar as ``str`` (ints as decimal, bytes decoded); None and a problem
    noted for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, bytes, bytearray)):
        acc.problems.append(f"expected str, got {type(value).__name__}")
        return None
    if isinstance(value, int):
        return str(value)
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        acc.problems.append("bytes value is not valid UTF-8")
        return bytes(value).decode("utf-8", "backslashreplace")


class Redactor:
    """Sanitizes everything a caller hands to ``record()`` before it becomes an attribute.

    Every method returns sanitized values and counts redactions in :attr:`Sanitized.count`;
    problems (wrong types, undecodable bytes) are appended to ``Sanitized.problems`` so the
    recorder can raise (strict mode) or count them (production).
    """

    def __init__(self, extra_key_patterns: Iterable[str] = ()) -> None:
        self.keys = KeyRules(tuple(extra_key_patterns))
        self._clean: dict[tuple[str, int, bool], str] = {}

    def is_secret_key(self, key: str) -> bool:
        """True when ``key`` names a secret (default rules plus the extra patterns)."""
        return self.keys.is_secret_key(key)

    def text(self, value: object, acc: Sanitized, limit: int = MAX_VALUE_LENGTH) -> str | None:
        """A free-text scalar as a safe string: :data:`REDACTED` if it looks like a secret
        (:func:`looks_like_secret`), else escaped and capped to ``limit``. None (and a problem
        noted) for an unsupported type."""
        return self._sanitize(value, acc, limit, identifier=False)

    def identifier(
        self, value: object, acc: Sanitized, limit: int = MAX_VALUE_LENGTH
    ) -> str | None:
        """An identifier (``user.id``, ``security.tenant.id``, ``security.tenant.requested_id``,
        ``security.resource.id``) as given, escaped and capped to ``limit``; :data:`REDACTED`
        only if it contains a known secret format (:func:`is_known_secret`), so UUIDs, hex ids
        and ``user_2abc...`` ids pass. None (and a problem noted) for an unsupported type."""
        return self._sanitize(value, acc, limit, identifier=True)

    def _sanitize(
        self, value: object, acc: Sanitized, limit: int, *, identifier: bool
    ) -> str | None:
        cache_key = None
        if isinstance(value, str):
            # Routes, reasons, user agents and ids repeat: remember clean values (never
            # secrets, so the cache keeps no secret in memory).
            cache_key = (value, limit, identifier)
            cached = self._clean.get(cache_key)
            if cached is not None:
                return cached
        text = _as_text(value, acc)
        if text is None:
            return None
        window = scan_window(text, limit)
        if is_known_secret(window) if identifier else looks_like_secret(window):
            acc.count += 1
            return REDACTED
        clean = escape_and_cap(window, limit)
        if cache_key is not None and len(text) <= _CLEAN_CACHE_MAX_LENGTH:
            if len(self._clean) >= _CLEAN_CACHE_SIZE:
                self._clean.clear()  # bounded whatever attackers send
            self._clean[cache_key] = clean
        return clean

    def value(self, value: object, acc: Sanitized) -> AttributeValue | None:
        """A caller-supplied attribute value: primitives kept, strings sanitized, sequences
        made homogeneous; anything else is a problem and is dropped."""
        if isinstance(value, bool) or isinstance(value, float):
            return value
        if isinstance(value, int):
            return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
        if isinstance(value, (str, bytes, bytearray)):
            return self.text(value, acc)
        if isinstance(value, Sequence):
            items = [self.value(item, acc) for item in islice(value, MAX_SEQUENCE)]
            items = [item for item in items if item is not None and not isinstance(item, tuple)]
            if not items:
                return ()
            kinds = {type(item) for item in items}
            if len(kinds) > 1:
                items = [str(item) for item in items]
            return tuple(items)
        if value is None:
            return None
        acc.problems.append(f"unsupported attribute value type {type(value).__name__}")
        return None

    def extra(self, attributes: object, acc: Sanitized) -> dict[str, AttributeValue]:
        """Flatten and sanitize the ``attributes=`` mapping of ``record()``.

        Nested mappings become dotted keys; a key naming a secret makes its whole value
        (nested content included) ``[REDACTED]``; JTI keys are cut to
        ``security.token.jti_prefix``; reserved keys cannot be overridden.
        """
        out: dict[str, AttributeValue] = {}
        if attributes is None:
            return out
        if not isinstance(attributes, Mapping):
            acc.problems.append(f"attributes must be a mapping, not {type(attributes).__name__}")
            return out
        self._flatten(attributes, "", 0, out, acc)
        return out

    def _jti(self, raw_value: object, out: dict[str, AttributeValue], acc: Sanitized) -> None:
        # Cut before shape checks: a 32-hex JTI is an identifier, and 8 characters of it
        # cannot be replayed.
        if isinstance(raw_value, (str, bytes, bytearray)):
            raw_value = raw_value[:JTI_PREFIX_LENGTH]
        text = self.text(raw_value, acc)
        if text is not None:
            out[attr.TOKEN_JTI_PREFIX] = text[: JTI_PREFIX_LENGTH * 4]

    def _flatten(
        self,
        mapping: Mapping[object, object],
        prefix: str,
        depth: int,
        out: dict[str, AttributeValue],
        acc: Sanitized,
    ) -> None:
        for raw_key, raw_value in list(mapping.items()):
            if len(out) >= MAX_EXTRA_ATTRIBUTES:
                acc.problems.append(f"more than {MAX_EXTRA_ATTRIBUTES} attributes; rest dropped")
                return
            if not isinstance(raw_key, str) or not raw_key:
                acc.problems.append(
                    "attribute keys must be non-empty str, not "
                    + (repr(raw_key) if raw_key == "" else type(raw_key).__name__)
                )
                continue
            key = prefix + escape_and_cap(raw_key, MAX_KEY_LENGTH)
            if raw_key.lower() in ("jti", "token_jti", "jwt_id") or key == attr.TOKEN_JTI_PREFIX:
                self._jti(raw_value, out, acc)
                continue
            if key in attr.RESERVED_KEYS:
                acc.problems.append(f"attribute {key!r} is computed by otel_secaudit")
                continue
            if self.is_secret_key(key):
                acc.count += 1
                out[key] = REDACTED
                continue
            if isinstance(raw_value, Mapping):
                if depth + 1 >= MAX_DEPTH:
                    acc.problems.append(f"attributes nested deeper than {MAX_DEPTH}")
                    continue
                self._flatten(raw_value, key + ".", depth + 1, out, acc)
                continue
            value = self.value(raw_value, acc)
            if value is not None:
                out[key] = value
