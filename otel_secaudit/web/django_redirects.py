"""Django: a signed-in user sent to a login page is ``authz.permission_denied`` (README,
"Django and Flask").

``login_required``, ``permission_required``, ``user_passes_test``, the access mixins,
``LoginRequiredMiddleware`` and the admin all send a visitor to a login page through
``django.contrib.auth.views.redirect_to_login``. :func:`patch` wraps it (with wrapt, as
contrib's instrumentations patch libraries) so that a call during a request is noted in
:func:`watching`'s list; after the response, :func:`record_login_redirect` turns a 3xx of a
signed-in user into ``authz.permission_denied`` (``security.reason`` ``login_redirect``). A
visitor who is not signed in is sent there without a violation.

Patching needs Django's apps loaded (the auth views import the user model): the Django adapter
calls :func:`patch` once Django built its middleware chain. A module that imported the function
by name before that keeps the original, except ``django.contrib.auth.mixins`` and
``django.contrib.auth.middleware``, which are patched too. :func:`unpatch` undoes all of it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from ..auth.patching import ObjectProxy
from .exchange import Exchange
from .wsgi_core import record_signal

__all__ = ["patch", "record_login_redirect", "unpatch", "watching"]

_DEFINED_IN: Final = "django.contrib.auth.views"
_MODULES: Final = (_DEFINED_IN, "django.contrib.auth.mixins", "django.contrib.auth.middleware")
_NAME: Final = "redirect_to_login"
_noted: ContextVar[list[bool] | None] = ContextVar(
    "otel_secaudit_django_login_redirects", default=None
)


@contextmanager
def watching() -> Iterator[list[bool]]:
    """Note the ``redirect_to_login`` calls made inside the block (one request's view)."""
    noted: list[bool] = []
    token = _noted.set(noted)
    try:
        yield noted
    finally:
        _noted.reset(token)


def record_login_redirect(
    exchange: Exchange, status: int, noted: list[bool], user_id: Callable[[], str | None]
) -> None:
    """After the response: a signed-in user (``user_id()`` not None) sent to a login page
    (``redirect_to_login`` called, a 3xx answer) is ``authz.permission_denied``, unless the
    request already recorded a violation. Call before ``exchange.respond``."""
    if not noted or not 300 <= status < 400 or exchange.request.failure_recorded:
        return
    if user_id() is None:
        return  # a visitor who is not signed in: the login page is the way in
    exchange.request.status_code = status
    record_signal("authz.permission_denied", reason="login_redirect")


def _noting(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    response = wrapped(*args, **kwargs)
    noted = _noted.get()
    if noted is not None:
        noted.append(True)
    return response


def _ours(module: Any) -> bool:
    """Whether ``module``'s ``redirect_to_login`` is our wrapper (its own, or the wrapped
    definition it imported by name after :func:`patch`)."""
    current = getattr(module, _NAME, None)
    return isinstance(current, ObjectProxy) and getattr(current, "_self_wrapper", None) is _noting


def patch() -> None:
    """Wrap ``redirect_to_login`` where Django defines it and where it was imported by name;
    idempotent. Needs Django's apps loaded."""
    importlib.import_module(_DEFINED_IN)
    for name in _MODULES:
        module = sys.modules.get(name)
        if module is not None and not isinstance(getattr(module, _NAME, None), ObjectProxy):
            wrap_function_wrapper(module, _NAME, _noting)


def unpatch() -> None:
    """Undo :func:`patch` (a module that imported the wrapped definition gets the original)."""
    for name in _MODULES:
        module = sys.modules.get(name)
        if module is not None and _ours(module):
            unwrap(module, _NAME)
