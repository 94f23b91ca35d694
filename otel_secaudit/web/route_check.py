"""A warning at start for each route-scoped status rule and login route whose route matches no
route of the application, where the framework can list its routes: Starlette/FastAPI (the
app's routes, mounts and router prefixes included), Django (the URL resolver), Flask (the
``url_map``). A typo in ``OTEL_SECAUDIT_STATUS_EVENTS`` or ``OTEL_SECAUDIT_LOGIN_ROUTES``
would otherwise silently record nothing. Never raises: a framework that cannot list its routes
gets no warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from .. import runtime as _runtime
from ..route_rules import RouteTemplate

__all__ = ["django_routes", "flask_routes", "starlette_routes", "unmatched", "warn_unmatched"]

_log = logging.getLogger("otel_secaudit")
_MAX_ROUTES: Final = 10_000
_MAX_DEPTH: Final = 16


def _matches(route: RouteTemplate, templates: list[str]) -> bool:
    return any(route.matches_template(t) or route.matches_path(t) for t in templates)


def unmatched(templates: Iterable[str], rules: Iterable[Any], logins: Iterable[Any]) -> list[str]:
    """Warning texts for the status rules (with a route) and login routes whose route matches
    none of ``templates`` (as a template, or as a path for rules written with a concrete
    path)."""
    known = [t for t in templates if isinstance(t, str)]
    found: list[str] = []
    for rule in rules:
        if rule.route is not None and not _matches(rule.route, known):
            found.append(f"status rule {rule.text!r} names a route the application does not have")
    for login in logins:
        if not _matches(login.route, known):
            found.append(f"login route {login.text!r} names a route the application does not have")
    return found


def warn_unmatched(list_routes: Callable[[], Iterable[str]], framework: str) -> None:
    """Log :func:`unmatched` for the current settings and the routes ``list_routes()`` lists."""
    try:
        settings = _runtime.current().settings
        rules = [r for r in settings.status_events.rules if r.route is not None]
        logins = list(settings.login_routes)
        if not rules and not logins:
            return
        templates = []
        for count, template in enumerate(list_routes()):
            if count >= _MAX_ROUTES:
                return  # too many to be sure of anything
            templates.append(template)
        if not templates:
            return
        for problem in unmatched(templates, rules, logins):
            _log.warning("otel_secaudit: %s (%s routes)", problem, framework)
    except Exception:  # an unusual router: no warning rather than a broken start
        _log.debug("otel_secaudit: could not list the %s routes", framework, exc_info=True)


def starlette_routes(app: Any) -> Iterator[str]:
    """Route templates of a Starlette/FastAPI app, mount and router prefixes included."""
    from .asgi import _routes_of

    def walk(routes: Iterable[Any], prefix: str, depth: int) -> Iterator[str]:
        for route in routes:
            path = getattr(route, "path", None)
            if not isinstance(path, str):
                continue
            inner = getattr(route, "routes", None)
            if inner is not None and depth < _MAX_DEPTH:  # a Mount
                yield prefix + path.rstrip("/") + "/{path}"
                yield from walk(_routes_of(route) or inner, prefix + path.rstrip("/"), depth + 1)
            else:
                yield prefix + path

    yield from walk(_routes_of(app), "", 0)


def django_routes() -> Iterator[str]:
    """Route strings of the project's URL resolver, as ``resolver_match.route`` joins them."""
    from django.urls import URLPattern, URLResolver, get_resolver

    def walk(patterns: Iterable[Any], prefix: str, depth: int) -> Iterator[str]:
        for pattern in patterns:
            text = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver) and depth < _MAX_DEPTH:
                yield from walk(pattern.url_patterns, text, depth + 1)
            elif isinstance(pattern, URLPattern):
                yield text

    yield from walk(get_resolver().url_patterns, "", 0)


def flask_routes(app: Any) -> Iterator[str]:
    """URL rules of a Flask app (``/items/<item_id>``)."""
    for rule in app.url_map.iter_rules():
        yield str(rule.rule)
