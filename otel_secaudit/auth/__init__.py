"""Observed authentication: password checks and token decodes, seen in the libraries
applications already call (README, "Logins without configuration").

:func:`instrument_auth` patches every installed library of :mod:`.passwords` (werkzeug,
pwdlib, passlib, bcrypt, argon2-cffi, Django's hashers) and :mod:`.tokens` (PyJWT,
python-jose, authlib's jose, itsdangerous timed serializers) with ``wrapt``; each is optional.
:func:`uninstrument_auth` undoes exactly those patches. The ``otel_secaudit`` instrumentor
calls both.

What a patched call saw goes on the current request's
:class:`~otel_secaudit.auth.state.AuthObservation`; the web core
(:mod:`otel_secaudit.web.outcomes`) decides the request's event from it. Nothing in this
package knows HTTP, records an event, or keeps anything of a password or token.
"""

from __future__ import annotations

from .passwords import instrument_passwords
from .patching import Patched, unpatch
from .state import AuthObservation, TokenFailure
from .tokens import classify, instrument_tokens

__all__ = [
    "AuthObservation",
    "Patched",
    "TokenFailure",
    "classify",
    "instrument_auth",
    "uninstrument_auth",
]


def instrument_auth() -> list[Patched]:
    """Patch the installed password and token libraries; returns the patches, for
    :func:`uninstrument_auth`. Never raises."""
    patched: list[Patched] = []  # the deferred patches are added to it when they are made
    instrument_passwords(patched)
    instrument_tokens(patched)
    return patched


def uninstrument_auth(patched: list[Patched]) -> None:
    """Undo :func:`instrument_auth` (the patches it returned); never raises."""
    unpatch(reversed(patched))
