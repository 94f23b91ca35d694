"""Redaction: what never leaves the process.

Small pure functions, each with one job, composed by :class:`Redactor`:

* :func:`is_secret_key` - an attribute *key* names a secret (password, token, cookie, ...);
* :func:`looks_like_secret` - a *value* is shaped like one (JWT, ``Bearer ...``, AWS key,
  PEM private key, long hex/base64 string, ``token=...`` in free text, a card number);
* :func:`escape_control` - control characters are escaped so no log line can be forged;
* :func:`cap_length` - values are length-capped;
* :func:`hash_identity` - an unverified identity (the user name of a failed login) becomes a
  keyed HMAC-SHA256, so events correlate without storing PII.

A redacted value becomes :data:`REDACTED` as a whole: no prefix, suffix or length of the secret
is echoed.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from . import attributes as attr

__all__ = [
    "REDACTED",
    "Redactor",
    "cap_length",
    "escape_control",
    "hash_identity",
    "is_secret_key",
    "looks_like_secret",
]

REDACTED: Final = "[REDACTED]"
TRUNCATED_MARK: Final = "...[truncated]"

#: Maximum length of an attribute value (after escaping), of user_agent.original, of a key.
MAX_VALUE_LENGTH: Final = 1024
MAX_USER_AGENT_LENGTH: Final = 256
MAX_KEY_LENGTH: Final = 128
#: Extra attributes per event, nesting depth of ``attributes``, elements per sequence.
MAX_EXTRA_ATTRIBUTES: Final = 64
MAX_DEPTH: Final = 4
MAX_SEQUENCE: Final = 32
JTI_PREFIX_LENGTH: Final = 8

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CLEAN_CACHE_SIZE: Final = 4096
_CLEAN_CACHE_MAX_LENGTH: Final = 256

#: Key fragments that name a secret. Keys are lower-cased and ``-``/space become ``_`` first.
DEFAULT_KEY_PATTERNS: Final = (
    r"pass(?:word|wd|phrase)?",
    r"pwd",
    r"secret",
    r"token",
    r"authori[sz]ation",
    r"\bauth\b",
    r"cookie",
    r"csrf",
    r"xsrf",
    r"api_?key",
    r"access_?key",
    r"session",
    r"jwt",
    r"bearer",
    r"private_?key",
    r"signature",
    r"credential",
    r"otp\b",
    r"totp",
    r"backup_?code",
    r"credit_?card",
    r"card_?(?:number|no)",
    r"cc_?num",
    r"\bcvv\b",
    r"\bcvc\b",
    r"\bpan\b",
    r"\bssn\b",
    r"body",
)

# Value shapes. Scanning every position of every value with one big alternation costs ~20 µs
# for a user agent, so shapes are found in two cheap steps: keyword checks guarded by `in`,
# then token-shaped runs (>= 16 characters of the base64/hex alphabets) checked one by one.
_KEY_VALUE: Final = re.compile(
    r"(?i)(?:pass(?:word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|session(?:_?id)?"
    r"|jwt|csrf|xsrf|authorization|cookie|private[_-]?key)[\"']?\s*[=:]\s*[\"']?[^\s\"'&,;]+"
)
_AUTH_SCHEME: Final = re.compile(
    r"(?i)\b(?:bearer|basic|digest|negotiate|token)\s+[A-Za-z0-9._~+/=-]{6,}"
)
_AUTH_WORDS: Final = ("bearer", "basic", "digest", "negotiate", "token")
_TOKEN_RUN: Final = re.compile(r"[A-Za-z0-9+/_=.~-]{16,}")
_TOKEN_SHAPES: Final = re.compile(
    "|".join(
        (
            # JSON Web Token / JWS / JWE (the header always starts with base64url '{"')
            r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}",
            # AWS access key ids
            r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}"
            r"(?![A-Z0-9])",
            # Well-known token prefixes (GitHub, Slack, Stripe, GitLab, Google API)
            r"gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
            r"|xox[abpors]-[A-Za-z0-9-]{10,}|[sr]k_(?:live|test)_[A-Za-z0-9]{10,}"
            r"|glpat-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,}",
            # long hex strings (keys, session ids, digests)
            r"[0-9A-Fa-f]{32,}",
        )
    )
)
_BASE64_PART: Final = re.compile(r"[A-Za-z0-9+/_=-]{32,}")
_CARD_RUN: Final = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators and bidi overrides.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_KEY_NORMALIZE: Final = str.maketrans({"-": "_", " ": "_"})


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(value: str) -> str:
    """Escape control characters (``\\n`` becomes the four characters ``\\x0a``)."""
    return _CONTROL.sub(_escape_char, value)


def cap_length(value: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """Cut ``value`` to at most ``limit`` characters, marking the cut."""
    if len(value) <= limit:
        return value
    return value[: max(0, limit - len(TRUNCATED_MARK))] + TRUNCATED_MARK


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        number = ord(char) - 48
        if index % 2:
            number *= 2
            if number > 9:
                number -= 9
        total += number
    return total % 10 == 0


def _base64_secret(run: str) -> bool:
    # Paths are made of many short segments; keys and tokens are long, mixed-case, with digits.
    if run.count("/") > len(run) // 10:
        return False
    has_upper = has_lower = has_digit = False
    for char in run:
        if char.isupper():
            has_upper = True
        elif char.islower():
            has_lower = True
        elif char.isdigit():
            has_digit = True
    return has_upper and has_lower and has_digit


def looks_like_secret(value: str) -> bool:
    """True when ``value`` contains something shaped like a credential."""
    if len(value) < 8:
        return False
    if ("=" in value or ":" in value) and _KEY_VALUE.search(value):
        return True
    lowered = value.lower()
    if "-----begin" in lowered and "private key" in lowered:
        return True
    if any(word in lowered for word in _AUTH_WORDS) and _AUTH_SCHEME.search(value):
        return True
    for run in _TOKEN_RUN.findall(value):
        if _TOKEN_SHAPES.search(run):
            return True
        if len(run) >= 32:
            for part in _BASE64_PART.findall(run):
                if _base64_secret(part):
                    return True
    if len(value) >= 13:
        for run in _CARD_RUN.findall(value):
            digits = run.replace(" ", "").replace("-", "")
            if 13 <= len(digits) <= 19 and _luhn_ok(digits):
                return True
    return False


def compile_key_pattern(extra_patterns: Iterable[str] = ()) -> re.Pattern[str]:
    """One regex for :data:`DEFAULT_KEY_PATTERNS` plus user patterns (OTEL_SECAUDIT_REDACT_KEYS).

    User patterns are plain substrings (``ssn``, ``x-internal-sig``), matched case-insensitively.
    """
    parts = list(DEFAULT_KEY_PATTERNS)
    for pattern in extra_patterns:
        pattern = pattern.strip().lower().translate(_KEY_NORMALIZE)
        if pattern:
            parts.append(re.escape(pattern))
    return re.compile("|".join(f"(?:{part})" for part in parts))


_DEFAULT_KEY_PATTERN: Final = compile_key_pattern()


def is_secret_key(key: str, pattern: re.Pattern[str] = _DEFAULT_KEY_PATTERN) -> bool:
    """True when the attribute key names a secret (``password``, ``X-Api-Key``, ``csrf_token``)."""
    return pattern.search(key.lower().translate(_KEY_NORMALIZE).replace(".", "_ ")) is not None


def hash_identity(key: bytes, identity: str) -> str:
    """Keyed HMAC-SHA256 (hex) of an identity, case-folded and stripped first.

    The same key on every instance makes the same user name give the same ``user.hash``.
    """
    normalized = identity.strip().casefold().encode("utf-8", "surrogatepass")
    return hmac.digest(key, normalized, "sha256").hex()  # one-shot C path


class InputProblem(ValueError):
    """A field or attribute that cannot be exported as given (wrong type, invalid UTF-8)."""


AttributeValue = str | bool | int | float | tuple


class Redactor:
    """Sanitizes everything a caller hands to ``record()`` before it becomes an attribute.

    Every method returns sanitized values and counts redactions in :attr:`count` of the
    :class:`Sanitized` accumulator; problems (wrong types, undecodable bytes) are appended to
    its ``problems`` list so the recorder can raise (strict mode) or count them (production).
    """

    def __init__(self, extra_key_patterns: Iterable[str] = ()) -> None:
        extra = tuple(extra_key_patterns)
        self._key_pattern = compile_key_pattern(extra) if extra else _DEFAULT_KEY_PATTERN
        self._clean: dict[tuple[str, int], str] = {}

    def is_secret_key(self, key: str) -> bool:
        return is_secret_key(key, self._key_pattern)

    def text(self, value: object, acc: Sanitized, limit: int = MAX_VALUE_LENGTH) -> str | None:
        """A caller-supplied scalar as a safe string (shape-redacted, escaped, capped)."""
        if isinstance(value, str):
            # Routes, reasons, user agents and addresses repeat: remember clean values (never
            # secrets, so no secret is kept in memory by the cache).
            cached = self._clean.get((value, limit))
            if cached is not None:
                return cached
            text = value
        elif isinstance(value, bool) or not isinstance(value, (int, bytes, bytearray)):
            acc.problems.append(f"expected str, got {type(value).__name__}")
            return None
        elif isinstance(value, int):
            return str(value)
        else:
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                acc.problems.append("bytes value is not valid UTF-8")
                text = bytes(value).decode("utf-8", "backslashreplace")
        if looks_like_secret(text):
            acc.count += 1
            return REDACTED
        clean = text
        if _CONTROL.search(clean):
            clean = escape_control(clean)
        clean = cap_length(clean, limit)
        if isinstance(value, str) and len(value) <= _CLEAN_CACHE_MAX_LENGTH:
            if len(self._clean) >= _CLEAN_CACHE_SIZE:
                self._clean.clear()  # bounded whatever attackers send
            self._clean[(value, limit)] = clean
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
            items = [self.value(item, acc) for item in list(value)[:MAX_SEQUENCE]]
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
            key = prefix + cap_length(escape_control(raw_key), MAX_KEY_LENGTH)
            lowered = raw_key.lower()
            if lowered in ("jti", "token_jti", "jwt_id") or key == attr.TOKEN_JTI_PREFIX:
                # Cut before shape checks: a 32-hex JTI is an identifier, and 8 characters of
                # it cannot be replayed.
                if isinstance(raw_value, (str, bytes, bytearray)):
                    raw_value = raw_value[:JTI_PREFIX_LENGTH]
                text = self.text(raw_value, acc)
                if text is not None:
                    out[attr.TOKEN_JTI_PREFIX] = text[: JTI_PREFIX_LENGTH * 4]
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


class Sanitized:
    """Accumulator for one event: redaction count and input problems."""

    __slots__ = ("count", "problems")

    def __init__(self) -> None:
        self.count = 0
        self.problems: list[str] = []
