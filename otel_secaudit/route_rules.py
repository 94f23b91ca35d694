"""Status rules and login routes: parsing (OTEL_SECAUDIT_STATUS_EVENTS, OTEL_SECAUDIT_LOGIN_ROUTES)
and matching, framework-independent.

A **status rule** is ``[METHOD] [ROUTE] STATUS:EVENT``::

    401:auth.unauthenticated                        # any route, any method
    4xx:request.rejected                            # a status class; custom name, failure
    /auth/reset-password 400:auth.password.reset_failed
    POST /auth/jwt/* 400:auth.login.failed           # trailing * = route prefix
    accounts/login/ 403:request.csrf_mismatch        # a leading / is optional (Django)

The most specific rule wins: method and route, then route, then status alone; among equals an
exact route before a prefix (the longer prefix first), an exact status before a class. ROUTE is
compared with the route template the framework matched; when none matched (a 404) it is
compared with the request path, ``{param}`` segments matching one path segment.

A **login route** is ``METHOD ROUTE [SUCCESS]`` (``POST /auth/jwt/login``,
``POST /auth/login 3xx``; SUCCESS defaults to ``2xx,3xx``). It is matched against the request
*path* when the request starts, with the same template syntax. A route-scoped status rule for
the same route is more specific and wins (:func:`login_rule_conflicts` names such rules, for a
warning at start). The submitted user name is read by :mod:`otel_secaudit.web.user_names`.

Nothing here records anything or knows about a web framework.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from .events import FAILURE, SUCCESS, InvalidEventError, resolve_event

_Rule = TypeVar("_Rule")

__all__ = [
    "LoginRoute",
    "LoginRoutes",
    "RouteTemplate",
    "RuleError",
    "StatusRule",
    "StatusRules",
    "login_rule_conflicts",
    "parse_login_routes",
    "parse_status_rules",
]

_HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY"}
)
_MAX_RULE_LENGTH: Final = 512
_PARAM: Final = re.compile(r"\{[^{}/]*\}")
_STATUS_TOKEN: Final = re.compile(r"\A(?:\d+|[1-9][xX][xX]):")


class RuleError(ValueError):
    """One rule that cannot be used; the message quotes the rule."""


class RuleProblems(ValueError):
    """Some rules of a list were bad: ``usable`` holds the good ones (None when there is none),
    the message names each bad one. Lenient configuration keeps ``usable``; strict raises."""

    def __init__(self, problems: Sequence[str], usable: object | None) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)
        self.usable = usable


def _normalize(route: str) -> str:
    """A route template compared without its leading ``/`` (Django's routes have none)."""
    return route.lstrip("/")


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    """A route template as written in a rule: exact, or a prefix (trailing ``*``)."""

    text: str
    prefix: bool = False
    _pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, raw: str) -> RouteTemplate:
        prefix = raw.endswith("*")
        text = _normalize(raw[:-1] if prefix else raw)
        if any(ch.isspace() for ch in text) or "*" in text:
            raise RuleError(f"bad route {raw!r}: '*' only at the end, no spaces")
        # {param} segments match one path segment when the route is compared with a path.
        pieces = _PARAM.split(text)
        body = "[^/]+".join(re.escape(piece) for piece in pieces)
        pattern = re.compile(body + (".*" if prefix else "/?") + r"\Z", re.S)
        return cls(text, prefix, pattern)

    def matches_template(self, template: str) -> bool:
        """Whether the framework's route template ``template`` is this rule's route."""
        template = _normalize(template)
        if self.prefix:
            return template.startswith(self.text)
        return template == self.text

    def matches_path(self, path: str) -> bool:
        """Whether the concrete request ``path`` falls under this template."""
        assert self._pattern is not None
        return self._pattern.match(_normalize(path)) is not None

    @property
    def rank(self) -> tuple[int, int]:
        """Exact before prefix, longer prefix before shorter."""
        return (1 if self.prefix else 0, -len(self.text))


def _split_method_route(tokens: list[str], rule: str) -> tuple[str | None, RouteTemplate | None]:
    if len(tokens) > 2:
        raise RuleError(f"bad rule {rule!r}: expected [METHOD] [ROUTE] STATUS:event.name")
    method: str | None = None
    route: RouteTemplate | None = None
    if len(tokens) == 2:
        method, raw_route = tokens
        if method.upper() not in _HTTP_METHODS:
            raise RuleError(f"bad rule {rule!r}: {method!r} is not an HTTP method")
        method = method.upper()
        route = RouteTemplate.parse(raw_route)
    elif len(tokens) == 1:
        if tokens[0] in _HTTP_METHODS:
            method = tokens[0]
        else:
            route = RouteTemplate.parse(tokens[0])
    return method, route


def _parse_status(raw: str, rule: str) -> tuple[int, bool]:
    """``403`` -> (403, False); ``4xx`` -> (4, True)."""
    text = raw.strip().lower()
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        return int(text[0]), True
    if not text.isdigit() or not 100 <= int(text) <= 599:
        raise RuleError(f"bad rule {rule!r}: {raw!r} is not an HTTP status or class (4xx)")
    return int(text), False


@dataclass(frozen=True, slots=True)
class StatusRule:
    """``[METHOD] [ROUTE] STATUS:EVENT`` parsed; see the module documentation."""

    event: str
    outcome: str
    status: int
    status_class: bool = False
    method: str | None = None
    route: RouteTemplate | None = None
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> StatusRule:
        """Parse one rule.

        Raises:
            RuleError: naming the rule and what is wrong with it.
        """
        rule = text.strip()
        if len(rule) > _MAX_RULE_LENGTH:
            raise RuleError(f"rule too long ({len(rule)} characters): {rule[:60]!r}...")
        tokens = rule.split()
        # STATUS:EVENT is the first token shaped like a status (a route may hold ':' too);
        # whatever follows it is the event name, so "401:not a name" says the name is wrong.
        at = next((i for i, token in enumerate(tokens) if _STATUS_TOKEN.match(token)), None)
        if at is None:
            raise RuleError(f"bad rule {rule!r}: expected [METHOD] [ROUTE] STATUS:event.name")
        head = tokens[:at]
        status_text, _, event = " ".join(tokens[at:]).partition(":")
        if not event:
            raise RuleError(f"bad rule {rule!r}: expected [METHOD] [ROUTE] STATUS:event.name")
        status, is_class = _parse_status(status_text, rule)
        method, route = _split_method_route(head, rule)
        failure = (status if is_class else status // 100) >= 4
        try:
            spec = resolve_event(event)
        except InvalidEventError:
            try:
                spec = resolve_event(event, FAILURE if failure else SUCCESS)
            except InvalidEventError as exc:
                raise RuleError(f"bad rule {rule!r}: {exc}") from None
        return cls(spec.name, spec.outcome, status, is_class, method, route, rule)

    def applies(self, method: str | None, status: int) -> bool:
        """Method and status match (the route is checked by :class:`StatusRules`)."""
        if self.method is not None and self.method != method:
            return False
        return (status // 100 == self.status) if self.status_class else status == self.status

    @property
    def rank(self) -> tuple[int, int, int, int]:
        """Smaller is more specific: method+route, route, method, status alone; then exact
        route before prefix; then exact status before class."""
        tier = (0 if self.method else 1) if self.route else (2 if self.method else 3)
        route_rank = self.route.rank if self.route else (0, 0)
        return (tier, *route_rank, 1 if self.status_class else 0)


class StatusRules(Mapping[int, str]):
    """The parsed OTEL_SECAUDIT_STATUS_EVENTS.

    :meth:`match` finds the event for a response. As a mapping it shows the app-wide rules
    (``401:auth.unauthenticated``): status code -> event name.
    """

    __slots__ = ("rules", "_by_status", "_by_class", "_plain", "scoped")

    def __init__(self, rules: Iterable[StatusRule] = ()) -> None:
        self.rules: tuple[StatusRule, ...] = tuple(sorted(rules, key=lambda r: r.rank))
        self._by_status: dict[int, tuple[StatusRule, ...]] = {}
        self._by_class: dict[int, tuple[StatusRule, ...]] = {}
        for rule in self.rules:
            table = self._by_class if rule.status_class else self._by_status
            table[rule.status] = (*table.get(rule.status, ()), rule)
        self._plain = {
            r.status: r.event
            for r in reversed(self.rules)
            if r.method is None and r.route is None and not r.status_class
        }
        #: True when some rule names a route (the route must then be resolved to match).
        self.scoped = any(rule.route is not None for rule in self.rules)

    def candidates(self, status: int) -> tuple[StatusRule, ...]:
        """Rules that may apply to ``status``, most specific first (cheap; no route needed)."""
        exact = self._by_status.get(status, ())
        by_class = self._by_class.get(status // 100, ())
        if not by_class:
            return exact
        if not exact:
            return by_class
        return tuple(sorted((*exact, *by_class), key=lambda r: r.rank))

    def match(
        self, method: str | None, status: int, route: str | None, path: str | None
    ) -> StatusRule | None:
        """The most specific rule for a response, or None. ``route`` is the matched route
        template (None when no route matched, then ``path`` is compared)."""
        for rule in self.candidates(status):
            if not rule.applies(method, status):
                continue
            if rule.route is None:
                return rule
            if route is not None:
                if rule.route.matches_template(route):
                    return rule
            elif path is not None and rule.route.matches_path(path):
                return rule
        return None

    def route_events(
        self, method: str | None, route: str | None, path: str | None
    ) -> frozenset[str]:
        """Event names of the route-scoped rules written for this request's route, whatever
        their status (what the rules say the route is, e.g. a change-password endpoint)."""
        names: set[str] = set()
        for rule in self.rules:
            if rule.route is None or (rule.method is not None and rule.method != method):
                continue
            if route is not None:
                if rule.route.matches_template(route):
                    names.add(rule.event)
            elif path is not None and rule.route.matches_path(path):
                names.add(rule.event)
        return frozenset(names)

    # Mapping view: the app-wide rules by status code.
    def __getitem__(self, status: int) -> str:
        return self._plain[status]

    def __iter__(self) -> Iterator[int]:
        return iter(self._plain)

    def __len__(self) -> int:
        return len(self._plain)

    def __repr__(self) -> str:
        return f"StatusRules({', '.join(rule.text for rule in self.rules)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StatusRules):
            return self.rules == other.rules
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]


def _split_items(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _parse_each(
    items: Iterable[str], parse: Callable[[str], _Rule]
) -> tuple[list[_Rule], list[str]]:
    """Each item parsed, and the problems of the items that are not (one message each)."""
    parsed: list[_Rule] = []
    problems: list[str] = []
    for item in items:
        try:
            parsed.append(parse(item))
        except RuleError as exc:
            problems.append(str(exc))
    return parsed, problems


def parse_status_rules(raw: str | Iterable[str] | Mapping[int, str]) -> StatusRules:
    """Parse status rules from the environment string, a list of rule strings, or a mapping
    of status code to event name.

    Raises:
        RuleProblems: when some rules are bad; ``exc.usable`` holds the others.
    """
    if isinstance(raw, Mapping):
        items = [f"{status}:{event}" for status, event in raw.items()]
    elif isinstance(raw, str):
        items = _split_items(raw)
    else:
        items = [str(item).strip() for item in raw]
    rules, problems = _parse_each(items, StatusRule.parse)
    parsed = StatusRules(rules)
    if problems:  # with no good rule left, lenient configuration falls back to the default
        raise RuleProblems(problems, parsed if rules else None)
    return parsed


#: A status code (``302``, False) or class (``3``, True) of a login route's SUCCESS spec.
StatusSpec = tuple[int, bool]
#: A login route's default SUCCESS spec: ``2xx,3xx``.
DEFAULT_LOGIN_SUCCESS: Final[tuple[StatusSpec, ...]] = ((2, True), (3, True))
_STATUS_SPEC: Final = re.compile(r"\A(?:[1-5][xX][xX]|[1-5]\d\d)\Z")


def _is_status_list(text: str) -> bool:
    tokens = [t for t in re.split(r"[\s|]+", text.strip()) if t]
    return bool(tokens) and all(_STATUS_SPEC.match(t) for t in tokens)


@dataclass(frozen=True, slots=True)
class LoginRoute:
    """``METHOD ROUTE [SUCCESS]`` of a login endpoint; SUCCESS (default ``2xx,3xx``) is the
    codes or classes (``302``, ``3xx``) of a successful login's answer."""

    method: str
    route: RouteTemplate
    text: str = ""
    success: tuple[StatusSpec, ...] = DEFAULT_LOGIN_SUCCESS

    @classmethod
    def parse(cls, text: str) -> LoginRoute:
        """Parse ``POST /auth/jwt/login`` or ``POST /auth/login 3xx`` (several codes or
        classes separated by spaces, ``|`` or, in the variable, commas).

        Raises:
            RuleError: naming the entry and what is wrong with it.
        """
        entry = text.strip()
        tokens = entry.split()
        if len(tokens) < 2 or tokens[0].upper() not in _HTTP_METHODS:
            raise RuleError(f"bad login route {entry[:120]!r}: expected METHOD ROUTE [SUCCESS]")
        try:
            route = RouteTemplate.parse(tokens[1])
        except RuleError as exc:
            raise RuleError(f"bad login route {entry[:120]!r}: {exc}") from None
        success = DEFAULT_LOGIN_SUCCESS
        if len(tokens) > 2:
            spec = " ".join(tokens[2:]).replace(",", " ")
            if not _is_status_list(spec):
                raise RuleError(
                    f"bad login route {entry[:120]!r}: SUCCESS must be status codes or classes"
                    " (302, 3xx)"
                )
            success = tuple(
                _parse_status(token, entry) for token in re.split(r"[\s|]+", spec) if token
            )
        return cls(tokens[0].upper(), route, entry, success)

    def succeeded(self, status: int) -> bool:
        """Whether ``status`` is a successful login's answer (the SUCCESS spec)."""
        return any(
            (status // 100 == code) if is_class else status == code
            for code, is_class in self.success
        )


class LoginRoutes(tuple[LoginRoute, ...]):
    """The parsed OTEL_SECAUDIT_LOGIN_ROUTES."""

    def for_request(self, method: str | None, path: str | None) -> LoginRoute | None:
        """The login route a request goes to (matched on its path, before routing)."""
        if not self or method is None or path is None:
            return None
        for login in self:
            if login.method == method and login.route.matches_path(path):
                if _same_trailing_slash(login.route, path):
                    return login
        return None


def _same_trailing_slash(route: RouteTemplate, path: str) -> bool:
    """A login route is the path written in the rule, trailing slash included: the other form
    gets the framework's redirect (FastAPI 307, Django APPEND_SLASH 301, Flask 308), whatever
    the credentials, and a 3xx there is no login success."""
    if route.prefix or not route.text:
        return True
    return path.endswith("/") == route.text.endswith("/")


def _login_route_items(raw: str) -> list[str]:
    """Comma-separated entries; an item that is only status codes continues the SUCCESS
    spec of the entry before it (``POST /auth/login 200,302``)."""
    items: list[str] = []
    for item in _split_items(raw):
        if items and _is_status_list(item) and len(items[-1].split()) >= 2:
            items[-1] = f"{items[-1]} {item}"
        else:
            items.append(item)
    return items


def parse_login_routes(raw: str | Iterable[str]) -> LoginRoutes:
    """Parse login routes from the environment string or a list of entries.

    Raises:
        RuleProblems: when some entries are bad; ``exc.usable`` holds the others.
    """
    items = _login_route_items(raw) if isinstance(raw, str) else [str(i).strip() for i in raw]
    routes, problems = _parse_each(items, LoginRoute.parse)
    parsed = LoginRoutes(routes)
    if problems:
        raise RuleProblems(problems, parsed if routes else None)
    return parsed


def login_rule_conflicts(rules: StatusRules, logins: Sequence[LoginRoute]) -> list[str]:
    """Warnings for route-scoped status rules written for a login route: the rule is more
    specific and wins over the login route's SUCCESS spec for the statuses it names."""
    found: list[str] = []
    for login in logins:
        for rule in rules.rules:
            if rule.route is None or rule.method not in (None, login.method):
                continue
            if rule.route.prefix or login.route.prefix:
                same = rule.route.matches_template(login.route.text) or (
                    login.route.prefix and login.route.matches_template(rule.route.text)
                )
            else:
                same = rule.route.text.rstrip("/") == login.route.text.rstrip("/")
            if same:
                found.append(
                    f"status rule {rule.text!r} is more specific than login route "
                    f"{login.text!r} and wins for the statuses it names"
                )
    return found
