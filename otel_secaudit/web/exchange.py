"""The framework-independent request core every web adapter (ASGI, WSGI, Django, Flask) shares.

An adapter turns its framework's request into an :class:`Exchange` and acts on its answers::

    exchange = Exchange.open(method=..., path=..., peer=..., header=..., user_agent=...,
                             route_of=lambda: matched_template_or_None,
                             user_id_of=lambda: authenticated_user_id_or_None)
    with request_scope(exchange.request):          # every record() gets the request context
        refusal = exchange.refusal()                # blocked client: answer it, app not called
        if refusal is not None:
            return respond(refusal.status, refusal.headers(), refusal.body)
        exchange.read_user_names(names)             # how the framework reads the user name(s)
        ...run the application...
        exchange.respond(status)                    # at response start: status/login events
        # or exchange.failed() when the application raised before answering (500)

What it decides, once per request:

* **blocks** (the README's "Abuse detection and blocks"): a client address the detector
  blocks gets a :class:`RefusalResponse` (429, ``Retry-After`` = seconds left) before any
  application code runs; ``request.blocked`` is recorded and ``security.requests.blocked``
  counted.
* **login routes** (OTEL_SECAUDIT_LOGIN_ROUTES): 2xx/3xx -> ``auth.login.succeeded`` (and
  ``auth.login.succeeded_after_failures`` when the user key had violations in the window),
  4xx other than 429 -> ``auth.login.failed`` with ``security.reason`` ``http_<status>``, with
  ``user.hash`` of the submitted user name (:meth:`Exchange.submitted_user_names`, read as the
  framework reads the body; an ambiguous body records a failure for each of its names and a
  success for none of them). On a login route these take the place of the status rules.
* **status rules** (OTEL_SECAUDIT_STATUS_EVENTS): the most specific rule's event.
* **attack tools**: a User-Agent naming a known scanner or brute-forcer records
  ``request.attack_tool`` (the request's violation, :mod:`otel_secaudit.attack_tools`);
  a 404/405 answer is a probe counted towards ``abuse.scan`` (not recorded itself).
* **one request, one violation**: no failure event when the application already recorded one
  during the request; no event name twice for one request.

The runtime (recorder, detector, settings) is looked up once per request through
:func:`otel_secaudit.runtime.current`; nothing here keeps a recorder or detector.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace

from .. import attributes as attr
from .. import runtime as _runtime
from ..attack_tools import attack_tool_matcher
from ..context import RequestContext, request_scope
from ..detection.blocks import Refusal
from ..detection.scans import is_probe_status
from ..redaction import MAX_USER_AGENT_LENGTH, hash_identity
from ..route_rules import LoginRoute, StatusRule
from .client import normalize_ip, resolve_client_address
from .outcomes import observed_outcome
from .user_names import NameSource
from .web_request import WebRequest

__all__ = [
    "BLOCK_CHECKED",
    "Exchange",
    "RefusalResponse",
    "WebRequest",
    "checked_by_gate",
    "record_after_failures",
]

MAX_PATH_LENGTH: Final = 1024
LOGIN_SUCCEEDED: Final = "auth.login.succeeded"
LOGIN_FAILED: Final = "auth.login.failed"
LOGIN_AFTER_FAILURES: Final = "auth.login.succeeded_after_failures"
ATTACK_TOOL: Final = "request.attack_tool"

#: The ASGI scope / WSGI environ key under which a gate (:mod:`otel_secaudit.web.gate`,
#: :mod:`otel_secaudit.web.wsgi_gate`) leaves the client address it found not blocked, before
#: the server span: the adapter does not look that address up again. An address, not a flag:
#: middleware inside the application (werkzeug's ``ProxyFix``, uvicorn's
#: ``ProxyHeadersMiddleware``) may rewrite the client after the gate, and the adapter then
#: looks up the address it resolved itself (see :func:`checked_by_gate`).
BLOCK_CHECKED: Final = "otel_secaudit.block_checked"

#: ``header(name) -> values``: every value of one request header (lower-case name), in order.
HeaderLookup = Callable[[str], Sequence[str]]


@dataclass(frozen=True, slots=True)
class RefusalResponse:
    """The answer to a blocked client: ``status`` 429, ``Retry-After`` in seconds."""

    retry_after: int
    status: int = 429
    body: bytes = b"Too Many Requests"

    def headers(self) -> list[tuple[str, str]]:
        """Response headers (``content-type``, ``content-length``, ``retry-after``)."""
        return [
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(self.body))),
            ("retry-after", str(self.retry_after)),
        ]


def _server_span(span: trace.Span | None = None) -> object | None:
    """The current span (or ``span``, the current one the adapter looked up already) when
    it is a recording server span (adapters open the exchange inside the HTTP
    instrumentation's server span), else None."""
    if span is None:
        span = trace.get_current_span()
    if span.is_recording() and getattr(span, "kind", None) is trace.SpanKind.SERVER:
        return span
    return None


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


class Exchange:
    """One HTTP request and its response, as the security core sees them; see the module
    documentation. Every method is defensive: an internal error is counted and the request
    proceeds (security plumbing never breaks the application)."""

    __slots__ = ("runtime", "request", "login", "_names", "_answered")

    def __init__(
        self, runtime: _runtime.Runtime, request: WebRequest, login: LoginRoute | None
    ) -> None:
        self.runtime = runtime
        self.request = request
        #: The login route this request goes to, if any.
        self.login = login
        self._names: NameSource | None = None
        self._answered = False

    @classmethod
    def open(
        cls,
        *,
        method: str | None,
        path: str | None,
        peer: str | None,
        header: HeaderLookup,
        user_agent: str | None = None,
        route_of: Callable[[], str | None] | None = None,
        user_id_of: Callable[[], str | None] | None = None,
        runtime: _runtime.Runtime | None = None,
        route_path: str | None = None,
        span: trace.Span | None = None,
    ) -> Exchange:
        """Start the exchange of one request (the runtime is looked up now, once).

        Args:
            method, path: the request line (path without query string).
            peer: the socket peer address.
            header: ``header(name) -> values`` of the request headers (see :data:`HeaderLookup`).
            user_agent: the User-Agent header.
            route_of: returns the matched route template once routing happened (or None).
            user_id_of: returns the authenticated user's id (called lazily, at most once).
            route_path: the path the framework routes on, when it differs from ``path``
                (ASGI: ``path`` without ``root_path``); login routes are matched on it.
            span: the current span, when the adapter has looked it up already.
        """
        rt = runtime if runtime is not None else _runtime.current()
        settings = rt.settings
        peer_text = _text(peer, 64)
        peer_ip = normalize_ip(peer_text) if peer_text is not None else None
        client = resolve_client_address(
            peer_text,
            header(settings.client_address_header) if settings.trusted_proxies else (),
            settings.trusted_proxies,
            settings.client_address_header,
        )
        method_text = _text(method, 32)
        path_text = _text(path, MAX_PATH_LENGTH)
        request = WebRequest(
            route_of,
            redact_emails=not settings.record_user_name,
            method=method_text,
            path=path_text,
            client_address=client,
            peer_address=peer_ip if peer_ip is not None else peer_text,
            user_agent=_text(user_agent, MAX_USER_AGENT_LENGTH),
            user_id_resolver=user_id_of,
            server_span=_server_span(span),
        )
        routed = _text(route_path, MAX_PATH_LENGTH) if route_path is not None else path_text
        login = settings.login_routes.for_request(method_text, routed)
        return cls(rt, request, login)

    # -- before the application ---------------------------------------------------------------

    def refusal(self) -> RefusalResponse | None:
        """A :class:`RefusalResponse` when the client address is blocked, else None. Every
        refusal is counted in ``security.requests.blocked`` (by the detector);
        ``request.blocked`` is recorded at most once per key per 60 s, with
        ``security.block.count``."""
        decision = self.block_decision()
        return self.refuse(decision) if decision is not None else None

    def block_decision(self) -> Refusal | None:
        """The detector's decision for this request's client address: None when it is not
        blocked (or blocks are off). A refusal is counted in ``security.requests.blocked`` when
        decided; answer it with :meth:`refuse`."""
        rt = self.runtime
        address = self.request.client_address
        if rt.settings.block_seconds <= 0 or address is None or rt.detector is None:
            return None
        try:
            return rt.detector.refusal(address)
        except Exception as exc:
            rt.recorder.internal_error(exc, "web.block")
            return None

    def refuse(self, decision: Refusal, status: int = 429) -> RefusalResponse:
        """Answer a blocked client (``decision`` from :meth:`block_decision`) with ``status``
        (429; a WebSocket handshake refused by a close is 403): records ``request.blocked``
        when the decision says so (at most once per key per 60 s)."""
        self.request.status_code = status
        if decision.record_count:
            try:
                self._record(
                    "request.blocked",
                    reason="blocked",
                    attributes={attr.BLOCK_COUNT: decision.record_count},
                )
            except Exception as exc:
                self.runtime.recorder.internal_error(exc, "web.block")
        return RefusalResponse(decision.retry_after, status)

    @property
    def user_fields(self) -> tuple[str, ...]:
        """The form or JSON fields that hold a user name (OTEL_SECAUDIT_LOGIN_USER_FIELDS)."""
        return self.runtime.settings.login_user_fields

    def read_user_names(self, names: NameSource) -> None:
        """How the adapter reads this request's submitted user names: ``names()`` returns the
        candidates (:mod:`otel_secaudit.web.user_names`) the way the application's framework
        reads the body, called only when an authentication attempt needs them."""
        self._names = names

    def submitted_user_names(self) -> tuple[str, ...]:
        """Every distinct user name the request's body submits in one of the user fields, read
        as the framework reads it: one name, several (an ambiguous body: a failure counts for
        each, a success is attributed to none), or none. Never raises."""
        names = self._names
        if names is None:
            return ()
        try:
            return tuple(name for name in names() if isinstance(name, str))
        except Exception as exc:
            self.runtime.recorder.internal_error(exc, "web.user_names")
            return ()

    # -- after the application ----------------------------------------------------------------

    def respond(self, status: int, www_authenticate: str | None = None) -> None:
        """The application answered ``status`` (call at response start, once), with its
        ``WWW-Authenticate`` header when the status is 401 (RFC 6750 ``invalid_token``).

        Observed authentication (:mod:`~otel_secaudit.web.outcomes`) comes first, then a
        route-scoped status rule, then the login route's SUCCESS spec, then the other rules."""
        if self._answered:
            return
        self._answered = True
        try:
            self.request.status_code = status
            self._probe(status)
            if observed_outcome(self, status, www_authenticate) or (
                self.login is not None
                and self.scoped_rule(status) is None
                and self._login_answered(status)
            ):
                # Authentication is observed, whatever the User-Agent says: an attack tool's
                # login failure stays auth.login.failed (counted per user); a tool's success
                # is recorded and the tool is the request's violation.
                self._attack_tool()
                return
            if not self._attack_tool():
                self._status_rule(status)
        except Exception as exc:
            self.runtime.recorder.internal_error(exc, "web.status")

    def scoped_rule(self, status: int) -> StatusRule | None:
        """The route-scoped status rule matching this answer, if any (more specific than a
        login route and than observed outcomes' defaults)."""
        rules = self.runtime.settings.status_events
        if not rules.scoped:
            return None
        candidates = rules.candidates(status)
        if not any(rule.route is not None for rule in candidates):
            return None
        request = self.request
        rule = rules.match(request.method, status, request.route, request.raw_path)
        return rule if rule is not None and rule.route is not None else None

    def login_succeeded(self, name: str | None) -> None:
        """``auth.login.succeeded`` (once per request) with ``user.hash`` of ``name`` when the
        login's user name is unambiguous, and ``auth.login.succeeded_after_failures`` when its
        user key had violations in the window."""
        fields: dict[str, Any] = {"user_name": name} if name else {}
        if not self._already(LOGIN_SUCCEEDED):
            self._record(LOGIN_SUCCEEDED, **fields)
        if name:
            record_after_failures(self.runtime, self.request, name, fields)

    def failed(self) -> None:
        """The application raised before answering: the server answers 500."""
        self.respond(500)

    # -- internals ----------------------------------------------------------------------------

    def _attack_tool(self) -> bool:
        """``request.attack_tool`` when the User-Agent names an attack tool and no failure was
        recorded for the request (one request, one violation: the status rules then add none).
        True when recorded. The User-Agent is the client's word: it never decides an
        authentication outcome, which is observed first."""
        rt = self.runtime
        request = self.request
        try:
            if request.failure_recorded:
                return False
            tool = attack_tool_matcher(rt.settings.attack_tools).tool(request.user_agent)
            if tool is None:
                return False
            self._record(ATTACK_TOOL, reason=tool)
            return True
        except Exception as exc:  # counted; the status event still follows
            rt.recorder.internal_error(exc, "web.detections")
            return False

    def _probe(self, status: int) -> None:
        """A 404/405 answer is a probe of a scan, counted by the detector (off the request
        path)."""
        rt = self.runtime
        try:
            if is_probe_status(status) and rt.detector is not None:
                rt.detector.anomalies.probe(self.request.client_address, self.request.path)
        except Exception as exc:  # counted; the status and login events still follow
            rt.recorder.internal_error(exc, "web.detections")

    def _record(self, name: str, outcome: str | None = None, **fields: Any) -> None:
        if outcome is not None:
            fields["outcome"] = outcome
        self.runtime.recorder.record(name, **fields)  # notes ``name`` on the request

    def _already(self, name: str) -> bool:
        return name in self.request.recorded_names

    def _login_answered(self, status: int) -> bool:
        """Record the login route's outcome by its SUCCESS spec; False when the status is not
        the login rule's (429, 5xx, 1xx): the status rules apply then."""
        assert self.login is not None
        names = self.submitted_user_names()
        if self.login.succeeded(status):
            if self.request.failure_recorded:
                # The application or a framework signal recorded a failure for this request
                # (Django's LoginView answers 200 to a wrong password, after user_login_failed):
                # the answer's status says nothing about success then.
                return True
            # A success is never attributed to a name the application did not authenticate.
            self.login_succeeded(names[0] if len(names) == 1 else None)
            return True
        if 200 <= status < 500 and status != 429:
            if not self.request.failure_recorded and not self._already(LOGIN_FAILED):
                for candidate in names or (None,):  # an ambiguous body: each candidate's failure
                    named = {"user_name": candidate} if candidate else {}
                    self._record(LOGIN_FAILED, reason=f"http_{status}", **named)
            return True
        return False

    def _status_rule(self, status: int) -> None:
        rules = self.runtime.settings.status_events
        candidates = rules.candidates(status)
        if not candidates:
            return
        request = self.request
        route = request.route if any(r.route is not None for r in candidates) else None
        rule: StatusRule | None = rules.match(request.method, status, route, request.raw_path)
        if rule is None or self._already(rule.event):
            return
        if rule.outcome == "failure" and request.failure_recorded:
            return  # one request, one violation: the application recorded its own
        self._record(rule.event, outcome=rule.outcome)


def checked_by_gate(carrier: Mapping[str, Any], exchange: Exchange) -> bool:
    """Whether a gate found ``exchange``'s client address not blocked already (``carrier``: the
    request's ASGI scope or WSGI environ, see :data:`BLOCK_CHECKED`)."""
    address = carrier.get(BLOCK_CHECKED)
    return address is not None and address == exchange.request.client_address


def record_after_failures(
    rt: _runtime.Runtime, request: RequestContext | None, name: str, fields: dict[str, Any]
) -> None:
    """After a successful login of user name ``name``: ``auth.login.succeeded_after_failures``
    (with ``security.abuse.count``) when its user key had violations in the window (a brute
    force that worked), once per request. Login-route rules and framework login signals both
    call this. ``fields`` are the success event's fields (``user_id``...).

    No shared-store I/O here: the detector looks the count up (with the memory store at once,
    with Redis on its worker thread) and the event is emitted there, in the login's trace and
    with the request's attributes; a slow store delays the event, never the response.
    """
    detector = rt.detector
    if detector is None:
        return
    if request is not None:
        if LOGIN_AFTER_FAILURES in request.recorded_names:
            return
        # Claimed now: a second call for this request (rule and framework signal) must not
        # queue a second check while the first is still on the worker.
        request.recorded_names.add(LOGIN_AFTER_FAILURES)
    recorder = rt.recorder
    trace_context = otel_context.get_current()
    event_fields = {**fields, "user_name": name}

    def report(count: int) -> None:
        def emit() -> None:
            with request_scope(request) if request is not None else nullcontext():
                recorder.emit(
                    LOGIN_AFTER_FAILURES,
                    event_fields,
                    context=trace_context,
                    internal_attributes={attr.ABUSE_COUNT: count},
                )

        # On the worker the thread's own context is empty; inline, the request's is current:
        # either way the event carries the login request's attributes and trace.
        contextvars.Context().run(emit)

    detector.check_user(hash_identity(rt.settings.effective_hash_key, name), report)
