"""Attack tools named in a User-Agent: ``request.attack_tool`` (OWASP ``malicious_attack_tool``).

Scanners and brute-forcers announce themselves unless told not to: ``sqlmap/1.8#stable
(https://sqlmap.org)``, ``Mozilla/5.00 (Nikto/2.1.6)``, ``Mozilla/4.0 (Hydra)``. A request
whose (length-capped) User-Agent names one of :data:`ATTACK_TOOLS` is that request's violation
(the web core records it at response time and adds no status event on top; it feeds abuse
detection like any other violation). A tool that lies about its User-Agent is not caught here;
its 404s are (``abuse.scan``).

The list is data in this one place: tool -> the User-Agent tokens that name it. Tokens are
matched case-insensitively as whole words (``sqlmap`` matches ``sqlmap/1.8``, not
``mysqlmapper``), all at once by one RE2 pattern, so the cost is linear in the User-Agent
whatever it holds. ``OTEL_SECAUDIT_ATTACK_TOOLS`` adds tokens of your own (comma-separated,
literal text, each its own tool name), e.g. ``OTEL_SECAUDIT_ATTACK_TOOLS=acme-prober,evilscan``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Final

import re2

__all__ = ["ATTACK_TOOLS", "MAX_TOKEN_LENGTH", "AttackToolMatcher", "attack_tool_matcher"]

#: Tool name (exported as ``security.reason``) -> User-Agent tokens that name it. Drawn from
#: the tools' own default User-Agents and the scanner lists of web application firewalls
#: (OWASP CRS ``scanners-user-agents``). Only tokens no browser, library or crawler uses.
ATTACK_TOOLS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "sqlmap": ("sqlmap",),
        "nikto": ("nikto",),
        "nuclei": ("nuclei", "projectdiscovery/nuclei"),
        "masscan": ("masscan",),
        "zgrab": ("zgrab", "zgrab2"),
        "gobuster": ("gobuster",),
        "dirbuster": ("dirbuster",),
        "dirb": ("dirb",),
        "wpscan": ("wpscan",),
        "hydra": ("hydra", "thc-hydra"),
        "nmap": ("nmap scripting engine", "nmap nse"),
        "ffuf": ("fuzz faster u fool", "ffuf"),
        "feroxbuster": ("feroxbuster",),
        "wfuzz": ("wfuzz",),
        "acunetix": ("acunetix", "acunetix-product"),
        "netsparker": ("netsparker",),
        "openvas": ("openvas",),
        "nessus": ("nessus",),
        "w3af": ("w3af", "w3af.org"),
        "arachni": ("arachni",),
        "skipfish": ("skipfish",),
        "whatweb": ("whatweb",),
        "commix": ("commix",),
        "xsstrike": ("xsstrike",),
        "joomscan": ("joomscan",),
        "droopescan": ("droopescan",),
        "cmsmap": ("cmsmap",),
        "havij": ("havij",),
        "sqlninja": ("sqlninja",),
        "bsqlbf": ("bsqlbf",),
        "fimap": ("fimap",),
        "zmeu": ("zmeu",),
        "morfeus": ("morfeus fucking scanner", "morfeus"),
        "jorgee": ("jorgee",),
        "medusa": ("medusa",),
        "patator": ("patator",),
        "ncrack": ("ncrack",),
        "webshag": ("webshag",),
        "paros": ("paros",),
        "n-stealth": ("n-stealth",),
        "grabber": ("grabber",),
    }
)

#: User-Agents whose answer is remembered at once (then the memo starts over).
_MEMO_SIZE: Final = 4096
_UNSEEN: Final = object()
#: Longer configured tokens are refused (a User-Agent is capped, a token longer than it could
#: never match anyway).
MAX_TOKEN_LENGTH: Final = 100


class AttackToolMatcher:
    """Finds the attack tool a User-Agent names, in time linear in its length.

    Args:
        extra: tokens of ``OTEL_SECAUDIT_ATTACK_TOOLS``, each its own tool name (lower case).

    Raises:
        ValueError: a token that is empty, longer than :data:`MAX_TOKEN_LENGTH` or holds a
            control character.
    """

    __slots__ = ("_memo", "_pattern", "_tool_of")

    def __init__(self, extra: Iterable[str] = ()) -> None:
        tool_of: dict[str, str] = {}
        for tool, tokens in ATTACK_TOOLS.items():
            for token in tokens:
                tool_of[token.lower()] = tool
        for raw in extra:
            token = raw.strip().lower()
            if not token or len(token) > MAX_TOKEN_LENGTH or not token.isprintable():
                raise ValueError(
                    f"attack tool token {raw[:40]!r} must be 1..{MAX_TOKEN_LENGTH} printable "
                    "characters"
                )
            tool_of.setdefault(token, token)
        self._tool_of = tool_of
        # Whole words: a word boundary on each side that starts or ends with a word character.
        # Longest first, so "nmap scripting engine" wins over a shorter token inside it.
        alternatives = "|".join(_bounded(token) for token in sorted(tool_of, key=len, reverse=True))
        options = re2.Options()
        options.case_sensitive = False
        # Searched as UTF-8 bytes: google-re2 maps every offset back for a str (twice the cost).
        self._pattern = re2.compile(f"(?:{alternatives})".encode(), options)
        #: User-Agents repeat: their answers are remembered (bounded, cleared when full).
        self._memo: dict[str, str | None] = {}

    def tool(self, user_agent: str | None) -> str | None:
        """The tool ``user_agent`` names (its canonical name), or None."""
        if not user_agent:
            return None
        memo = self._memo
        remembered = memo.get(user_agent, _UNSEEN)  # one lookup: another thread may clear it
        if remembered is not _UNSEEN:
            return remembered  # type: ignore[return-value]
        found = self._pattern.search(user_agent.encode("utf-8", "replace"))
        tool = None
        if found is not None:
            token = found.group(0).decode("utf-8", "replace").lower()
            tool = self._tool_of.get(token, token)
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[user_agent] = tool
        return tool


def _bounded(token: str) -> str:
    pattern = re2.escape(token)
    if token[0].isalnum() or token[0] == "_":
        pattern = r"\b" + pattern
    if token[-1].isalnum() or token[-1] == "_":
        pattern += r"\b"
    return pattern


@lru_cache(maxsize=8)
def attack_tool_matcher(extra: tuple[str, ...] = ()) -> AttackToolMatcher:
    """The matcher for the built-in list plus ``extra`` (one per configuration, built once)."""
    return AttackToolMatcher(extra)
