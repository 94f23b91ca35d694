"""What counts as a secret: key rules and the catalogue of secret shapes.

Two kinds of rules, both data:

* **Key rules** decide from an attribute key, query parameter name or header name alone. A key is
  split into lower-case parts (``X-Api-Key`` -> ``x api key``, ``mfaCode`` -> ``mfa code``) and
  matched part by part, so ``pin`` and ``sig`` are secrets but ``spinner`` and ``designation``
  are not.
* **Value shapes** decide from a value. :data:`KNOWN_SECRET_SHAPES` are formats that are secrets
  whatever key carries them (JWT, PEM private keys, provider prefixes such as ``sk-``,
  ``ghp_``, ``AKIA``, URLs with a password, ``Bearer``/``Basic`` credentials, ``password=...``
  assignments); identifiers are checked against these only. :data:`FREE_TEXT_SHAPES` add the
  heuristics used for free text (long hex runs; long base64 and card-number runs are checked in
  ``pipeline``). The reference list for the provider formats is the rule catalogue of
  gitleaks and detect-secrets (facts only; the expressions here are written for RE2).

All value shapes are compiled with RE2 (``google-re2``): a DFA scan costs time linear in the
input whatever an attacker sends, so there is no catastrophic backtracking to reason about, and
one alternation of every shape costs one pass. Measured on 1 KiB: ~2.5 us with RE2 against
~60 us for four of these shapes in the stdlib engine (which tries every alternative at every
position), see ``benchmarks/adversarial.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

import re2

__all__ = [
    "FREE_TEXT_SHAPES",
    "KNOWN_SECRET_SHAPES",
    "KeyRules",
    "is_secret_header",
    "is_secret_key",
    "is_secret_query_name",
    "key_parts",
]

#: Keys, parameter and header names are cut to this before any rule runs.
MAX_KEY_LENGTH: Final = 128

# -- key rules ---------------------------------------------------------------------------------

#: Substrings that name a secret wherever they appear in a key part (``user_password``,
#: ``accessToken``, ``csrftoken``, ``sessionid``).
SECRET_STEMS: Final = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "cookie",
    "csrf",
    "xsrf",
    "credential",
    "authorization",
    "authorisation",
    "jwt",
    "bearer",
    "signature",
    "apikey",
    "privatekey",
    "privkey",
    "accesskey",
    "secretkey",
    "session",
    "totp",
    "creditcard",
    "cardnumber",
    "mnemonic",
)

#: Whole key parts that name a secret (never matched inside a longer word).
SECRET_PARTS: Final = frozenset(
    {
        "pass",
        "pw",
        "pwd",
        "pin",
        "sid",
        "hmac",
        "salt",
        "otp",
        "cvv",
        "cvv2",
        "cvc",
        "csc",
        "pan",
        "ssn",
        "sig",
        "pkce",
    }
)

#: A part naming a secret only as the *last* part (``auth``, but not ``auth_method``;
#: ``request_body``, but not ``body.size``).
SECRET_LAST_PARTS: Final = frozenset({"auth", "body"})

#: ``<qualifier> <noun>`` pairs of consecutive parts: ``api key``, ``mfa code``, ``card number``.
SECRET_COMPOUNDS: Final = {
    "key": frozenset(
        {
            "api",
            "access",
            "private",
            "secret",
            "signing",
            "encryption",
            "master",
            "subscription",
            "client",
            "account",
            "shared",
            "app",
            "ssh",
            "gpg",
            "pgp",
            "priv",
            "session",
            "auth",
            "license",
            "functions",
            "webhook",
            "hmac",
            "storage",
        }
    ),
    "code": frozenset(
        {
            "mfa",
            "otp",
            "totp",
            "sms",
            "verification",
            "verify",
            "recovery",
            "backup",
            "auth",
            "authorization",
            "reset",
            "confirmation",
            "confirm",
            "security",
            "time",  # one_time_code
            "2fa",
            "twofa",
            "activation",
            "magic",
            "login",
            "device",
            "pairing",
            "invite",
            "invitation",
        }
    ),
    "verifier": frozenset({"code"}),
    "number": frozenset({"card", "cc", "account", "routing", "iban"}),
    "no": frozenset({"card", "cc"}),
    "num": frozenset({"card", "cc"}),
    "card": frozenset({"credit", "debit"}),
    "phrase": frozenset({"seed", "recovery", "pass"}),
}

#: Query parameter names that carry secrets although they are too generic as attribute keys:
#: OAuth ``code``/``state``/``nonce``, Google's ``key``, signed URLs' ``sig``/``hmac``/``refresh``.
QUERY_SECRET_PARTS: Final = frozenset(
    {"code", "state", "key", "hmac", "pin", "refresh", "sig", "nonce", "ticket", "otp", "sas"}
)

#: Header names (normalized) that are secrets besides the key rules.
SECRET_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "x_api_key",
        "x_auth",
        "x_functions_key",
        "ocp_apim_subscription_key",
        "x_goog_api_key",
        "x_hub_signature",
        "x_hub_signature_256",
        "x_shopify_hmac_sha256",
        "stripe_signature",
        "x_twilio_signature",
        "x_slack_signature",
        "x_vault_token",
        "private_token",
        "x_gitlab_token",
        "x_amz_security_token",
    }
)
#: A header whose last part is one of these is a secret (``X-Foo-Key``, ``X-Bar-Sig``).
HEADER_SECRET_LAST_PARTS: Final = frozenset({"key", "sig", "hmac", "signature", "secret"})

# camelCase / ACRONYMWord boundaries, replaced by a literal "_" (no group references, so the
# substitution stays in C whatever the key).
_CAMEL_BOUNDARY: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_ALNUM: Final = re.compile(r"[^a-z0-9]+")
_NORMALIZE: Final = str.maketrans({"-": "_", " ": "_", ".": "_"})
_CACHE_SIZE: Final = 4096


def normalized_key(key: str) -> str:
    """A key as ``_part_part_..._`` (lower-case alphanumeric parts, camelCase split, cut to
    :data:`MAX_KEY_LENGTH` first): ``X-Api-Key`` -> ``_x_api_key_``, ``ssnLast4`` ->
    ``_ssn_last4_``. The rules below match whole parts as ``_part_``."""
    key = key[:MAX_KEY_LENGTH]
    if not key.islower():
        key = _CAMEL_BOUNDARY.sub("_", key)
    return "_" + _NON_ALNUM.sub("_", key.lower()).strip("_") + "_"


def key_parts(key: str) -> tuple[str, ...]:
    """The parts of :func:`normalized_key` (``X-Api-Key`` -> ``("x", "api", "key")``)."""
    return tuple(part for part in normalized_key(key).split("_") if part)


def _alternatives(words: Iterable[str]) -> str:
    """A regex alternation of literal words, longest first."""
    return "|".join(sorted((re.escape(word) for word in words), key=len, reverse=True))


def _key_rule_source() -> str:
    compounds = "|".join(
        f"_(?:{_alternatives(qualifiers)})_{re.escape(noun)}_"
        for noun, qualifiers in SECRET_COMPOUNDS.items()
    )
    return (
        f"(?:{_alternatives(SECRET_STEMS)})"
        f"|_(?:{_alternatives(SECRET_PARTS)})_"
        f"|_(?:{_alternatives(SECRET_LAST_PARTS)})_\\z"
        f"|{compounds}"
    )


# One RE2 program per rule set over the normalized key (ASCII by construction): one DFA pass,
# ~1 us whatever the key, where the stdlib engine tries ~150 alternatives at every position.
_SECRET_KEY: Final = re2.compile(_key_rule_source().encode())
_SECRET_QUERY_NAME: Final = re2.compile(
    (_key_rule_source() + f"|_(?:{_alternatives(QUERY_SECRET_PARTS)})_").encode()
)
_SECRET_HEADER: Final = re2.compile(
    (
        _key_rule_source()
        + f"|_(?:{_alternatives(HEADER_SECRET_LAST_PARTS)})_\\z"
        + f"|\\A_(?:{_alternatives(SECRET_HEADERS)})_\\z"
    ).encode()
)


def _matches(rule: re2._Regexp, key: str) -> bool:
    if rule.search(normalized_key(key).encode("ascii")) is not None:
        return True
    # A long dotted key (nested attributes): its last part matters most.
    if len(key) <= MAX_KEY_LENGTH:
        return False
    return rule.search(normalized_key(key[-MAX_KEY_LENGTH:]).encode("ascii")) is not None


class KeyRules:
    """Key rules plus a user's extra patterns (``OTEL_SECAUDIT_REDACT_KEYS``), with a bounded
    cache: keys repeat, so each distinct key is analysed once."""

    def __init__(self, extra_patterns: tuple[str, ...] | list[str] = ()) -> None:
        self._extra = tuple(
            p for p in (raw.strip().lower().translate(_NORMALIZE) for raw in extra_patterns) if p
        )
        self._keys: dict[str, bool] = {}
        self._queries: dict[str, bool] = {}
        self._headers: dict[str, bool] = {}

    def _extra_match(self, key: str) -> bool:
        if not self._extra:
            return False
        normalized = key[:MAX_KEY_LENGTH].lower().translate(_NORMALIZE)
        return any(pattern in normalized for pattern in self._extra)

    def is_secret_key(self, key: str) -> bool:
        """True when an attribute key names a secret (``password``, ``X-Api-Key``, ``mfa_code``,
        ``card_cvv``, ``ssn_last4``; not ``spinner``, ``designation``, ``document_id``)."""
        cached = self._keys.get(key)
        if cached is None:
            cached = _matches(_SECRET_KEY, key) or self._extra_match(key)
            _remember(self._keys, key, cached)
        return cached

    def is_secret_query_name(self, name: str) -> bool:
        """True when a (percent-decoded) query parameter name names a secret: the key rules plus
        :data:`QUERY_SECRET_PARTS` (``code``, ``state``, ``key``, ``sig``, ...)."""
        cached = self._queries.get(name)
        if cached is None:
            cached = _matches(_SECRET_QUERY_NAME, name) or self._extra_match(name)
            _remember(self._queries, name, cached)
        return cached

    def is_secret_header(self, name: str) -> bool:
        """True when an HTTP header name (any case, ``-`` or ``_``) carries a secret:
        ``Authorization``, ``Cookie``, ``X-Api-Key``, ``Ocp-Apim-Subscription-Key``, ..."""
        cached = self._headers.get(name)
        if cached is None:
            cached = _matches(_SECRET_HEADER, name) or self._extra_match(name)
            _remember(self._headers, name, cached)
        return cached


def _remember(cache: dict[str, bool], key: str, value: bool) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()  # bounded whatever attackers send
    cache[key] = value


DEFAULT_KEY_RULES: Final = KeyRules()


def is_secret_key(key: str) -> bool:
    """True when the attribute key names a secret (default rules, no extra patterns)."""
    return DEFAULT_KEY_RULES.is_secret_key(key)


def is_secret_query_name(name: str) -> bool:
    """True when a percent-decoded query parameter name names a secret (default rules)."""
    return DEFAULT_KEY_RULES.is_secret_query_name(name)


def is_secret_header(name: str) -> bool:
    """True when an HTTP request/response header's value is a secret (default rules)."""
    return DEFAULT_KEY_RULES.is_secret_header(name)


# -- value shapes --------------------------------------------------------------------------------
# Written for RE2 (no look-around, no backreferences). \b is an ASCII word boundary. Minimum
# lengths keep ordinary words out; counted repetitions stay small so the DFA stays small.

_B64URL = "[A-Za-z0-9_-]"


def _credential(length: int = 6) -> str:
    """RE2 for a run of token characters at least ``length`` long that contains an upper-case
    letter, digit or base64 symbol: one alternative per position of the first such character
    (0 .. length-2), and one for any later position. No look-ahead needed, still one DFA."""
    any_char, special = "[A-Za-z0-9._~+/=-]", "[A-Z0-9+/=]"
    early = [
        f"{any_char}{{{at}}}{special}{any_char}{{{length - at - 1},}}" for at in range(length - 1)
    ]
    return "(?:" + "|".join([*early, f"{any_char}{{{length - 1},}}{special}{any_char}*"]) + ")"


_ASSIGNMENT = (
    r"(?i)(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|access[_-]?key"
    r"|session(?:_?id)?|jwt|csrf|xsrf|authorization|cookie|private[_-]?key)"
    r"[\"']?\s*[{separator}]\s*[\"']?[^\s\"'&,;]+"
)

#: (name, RE2 pattern): formats that are secrets whatever key carries them.
KNOWN_SECRET_SHAPES: Final[tuple[tuple[str, str], ...]] = (
    ("jwt", rf"\beyJ{_B64URL}{{4,}}\.{_B64URL}{{4,}}"),
    ("private-key", r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY"),
    ("age-secret-key", r"AGE-SECRET-KEY-1[0-9A-Z]{20,}"),
    ("url-with-password", r"\b[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s/?#@:]*:[^\s/?#@]+@"),
    (
        "aws-access-key-id",
        r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}\b",
    ),
    ("github", r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    (
        "gitlab",
        r"\b(?:gl(?:pat|dt|ptt|rt|cbt|imt|oas|soat|ft|agent|ffct|sa)-[A-Za-z0-9_-]{16,}"
        r"|GR1348941[A-Za-z0-9_-]{20,})",
    ),
    ("slack", r"\b(?:xox[abposre]-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{10,})"),
    ("slack-webhook", r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,}"),
    ("stripe", r"\b(?:[sr]k_(?:live|test|prod)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,})"),
    # OpenAI (sk-, sk-proj-, sk-svcacct-, sk-admin-), Anthropic (sk-ant-api03-, ...)
    ("sk-api-key", r"\bsk-[A-Za-z0-9_-]{20,}"),
    ("npm", r"\bnpm_[A-Za-z0-9]{30,}"),
    ("pypi", r"\bpypi-AgE[A-Za-z0-9_-]{40,}"),
    ("google-api-key", r"\bAIza[0-9A-Za-z_-]{30,}"),
    ("google-oauth", r"\b(?:GOCSPX-[A-Za-z0-9_-]{20,}|ya29\.[0-9A-Za-z_-]{20,})"),
    ("huggingface", r"\bhf_[A-Za-z0-9]{30,}"),
    ("sendgrid", r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),
    ("twilio-api-key", r"\bSK[0-9a-fA-F]{32}\b"),
    ("mailgun", r"\bkey-[0-9a-z]{32}\b"),
    ("mailchimp", r"\b[0-9a-f]{32}-us[0-9]{1,2}\b"),
    ("shopify", r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
    ("digitalocean", r"\bdo[opr]_v1_[a-f0-9]{32,}"),
    ("databricks", r"\bdapi[a-f0-9]{32}"),
    ("doppler", r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{30,}"),
    ("dynatrace", r"\bdt0c01\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{32,}"),
    ("atlassian", r"\bATATT3[A-Za-z0-9_=-]{40,}"),
    ("azure-ad-client-secret", r"[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}"),
    ("azure-storage-key", r"(?i)AccountKey=[A-Za-z0-9+/=]{40,}"),
    ("square", r"\b(?:sq0(?:atp|csp)-[0-9A-Za-z_-]{22,}|EAAA[A-Za-z0-9_-]{40,})"),
    ("facebook", r"\bEAA[MC][A-Za-z0-9]{60,}"),
    ("alibaba", r"\bLTAI[A-Za-z0-9]{20}\b"),
    ("linear", r"\blin_api_[A-Za-z0-9]{32,}"),
    ("postman", r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{30,}"),
    ("pulumi", r"\bpul-[a-f0-9]{40}"),
    ("grafana", r"\b(?:glc_[A-Za-z0-9+/]{32,}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})"),
    ("heroku", r"\bHRKU-[A-Za-z0-9_-]{30,}"),
    ("vault", r"\bhv[sb]\.[A-Za-z0-9_-]{24,}"),
    ("sentry", r"\bsntr[ysu]_[A-Za-z0-9+/=_-]{40,}"),
    ("flyio", r"\b(?:fo1_[A-Za-z0-9_-]{40,}|fm[12][ar]?_[A-Za-z0-9+/]{60,})"),
    ("1password", r"\bops_eyJ[A-Za-z0-9+/]{40,}"),
    ("artifactory", r"\b(?:AKCp[A-Za-z0-9]{60,}|cmVmd[A-Za-z0-9]{50,})"),
    ("telegram-bot", r"\b[0-9]{8,10}:AA[A-Za-z0-9_-]{32,}"),
    ("discord-bot", r"\b[MNO][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,}"),
    ("docker", r"\bdckr_pat_[A-Za-z0-9_-]{20,}"),
    ("supabase", r"\bsbp_[a-f0-9]{40}"),
    ("notion", r"\b(?:secret_[A-Za-z0-9]{43}|ntn_[A-Za-z0-9]{40,})"),
    ("figma", r"\bfigd_[A-Za-z0-9_-]{40}"),
    ("planetscale", r"\bpscale_(?:tkn|pw|oauth)_[A-Za-z0-9_.=-]{32,}"),
    ("prefect", r"\bpnu_[A-Za-z0-9]{36}"),
    ("rubygems", r"\brubygems_[a-f0-9]{48}"),
    ("terraform", r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,}"),
    ("newrelic", r"\bNR(?:AK|II|JS|RA)-[A-Za-z0-9]{20,}"),
    ("clojars", r"\bCLOJARS_[A-Za-z0-9]{60}"),
    ("cloudflare-origin-ca", r"\bv1\.0-[a-f0-9]{24}-[a-f0-9]{64,}"),
    ("easypost", r"\bEZ[AT]K[A-Za-z0-9]{54}"),
    ("frameio", r"\bfio-u-[A-Za-z0-9_=-]{60,}"),
    ("age-recipient-secret", r"\bAGE-PLUGIN-[A-Z0-9-]{10,}1[0-9A-Z]{20,}"),
    # Credentials written out: ``password=...``/``token: ...`` assignments, ``Bearer ...``,
    # ``Basic ...``: never part of an identifier either.
    # ``password=...`` assignments (``password: ...`` is free text only: ``session:42`` and
    # ``token:abc`` are plausible resource ids).
    ("assignment", _ASSIGNMENT.format(separator="=")),
    ("bearer", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{6,}"),
    # ``Basic dXNlcjpwYXNz``: a credential of 6+ characters with an upper-case letter, digit or
    # base64 symbol somewhere, so ``basic checks failed`` is not one (see _credential()).
    ("auth-scheme", r"(?i:\b(?:basic|digest|negotiate|token))\s+" + _credential()),
)

#: (name, RE2 pattern): shapes that make *free text* a secret, on top of the known formats.
FREE_TEXT_SHAPES: Final[tuple[tuple[str, str], ...]] = (
    ("key-value", _ASSIGNMENT.format(separator="=:")),
    ("long-hex", r"[0-9A-Fa-f]{32,}"),
)


def _compile(shapes: tuple[tuple[str, str], ...]) -> re2._Regexp:
    options = re2.Options()
    options.max_mem = 64 << 20  # room for the DFA of one alternation of every shape
    return re2.compile("|".join(f"(?:{pattern})" for _, pattern in shapes).encode(), options)


#: One RE2 program for the known formats (identifiers) and one for free text.
KNOWN_SECRET_REGEX: Final = _compile(KNOWN_SECRET_SHAPES)
FREE_TEXT_REGEX: Final = _compile(KNOWN_SECRET_SHAPES + FREE_TEXT_SHAPES)

#: Runs of base64/base64url characters long enough to be a key (checked one by one, see
#: ``pipeline.looks_like_secret``), and digit runs shaped like card numbers.
BASE64_RUN: Final = re2.compile(rb"[A-Za-z0-9+/_=-]{32,}")
CARD_RUN: Final = re2.compile(rb"[0-9](?:[ -]?[0-9]){12,}")
