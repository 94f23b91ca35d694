"""Password checks, observed: werkzeug, pwdlib, passlib, bcrypt, argon2-cffi and Django.

Each check made while a request is served is noted on the request
(:class:`~otel_secaudit.auth.state.AuthObservation`): passed or failed, nothing of the
password or hash. The web core turns the checks into the request's login outcome when the
response starts (README, "Logins without configuration"). Outside a request nothing is noted.
The check's own result, and its exceptions, reach the application untouched.

==========================================  ==========================================
patched                                     a failed check is
==========================================  ==========================================
``werkzeug.security.check_password_hash``   ``False``
``pwdlib.PasswordHash.verify``              ``False``
``pwdlib.PasswordHash.verify_and_update``   ``(False, None)``
``passlib.context.CryptContext.verify``     ``False``
``CryptContext.verify_and_update``          ``(False, None)``
``bcrypt.checkpw``                          ``False``
``argon2.PasswordHasher.verify``            ``VerifyMismatchError`` (any ``VerificationError``)
``django.contrib.auth.hashers``             ``check_password`` returning ``False`` (patched at
                                            ``verify_password``, which it calls)
==========================================  ==========================================

A check made inside another observed one (pwdlib's ``verify`` calling argon2's) is the same
check. Functions imported by name before instrumenting are reached as
:mod:`otel_secaudit.auth.patching` explains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .patching import (
    Patched,
    Wrapper,
    current_observation,
    defer,
    internal_error,
    patch_targets,
)
from .state import AuthObservation

__all__ = ["instrument_passwords"]


def _bool_result(result: Any) -> bool:
    return result is True or (not isinstance(result, tuple) and bool(result))


def _pair_result(result: Any) -> bool:
    return isinstance(result, tuple) and len(result) > 0 and bool(result[0])


def _none_is_pass(result: Any) -> bool:
    return True  # argon2's verify returns True or raises


def check_wrapper(
    passed_of: Callable[[Any], bool], failed_on: tuple[type[BaseException], ...] = ()
) -> Wrapper:
    """A wrapt wrapper noting one password check: ``passed_of(result)`` says whether it
    passed; an exception in ``failed_on`` is a failed check (re-raised untouched)."""

    def observe_check(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        observation = current_observation()
        # None outside a request; busy inside another observed check (the same check).
        if observation is None or observation.busy:
            return wrapped(*args, **kwargs)
        observation.busy = True
        try:
            result = wrapped(*args, **kwargs)
        except failed_on:
            _note(observation, None)
            raise
        finally:
            observation.busy = False
        _note(observation, result, passed_of)
        return result

    return observe_check


def _note(
    observation: AuthObservation, result: Any, passed_of: Callable[[Any], bool] | None = None
) -> None:
    try:
        passed = passed_of(result) if passed_of is not None else False
        observation.password_checked(passed)
    except Exception as exc:  # observing never breaks the check
        internal_error(exc, "auth.password")


def _argon2_failures() -> tuple[type[BaseException], ...]:
    from argon2.exceptions import VerificationError  # VerifyMismatchError is one

    return (VerificationError,)


#: (module, attribute, how a result says the check passed, patch re-exports of a function).
_TARGETS: Final[tuple[tuple[str, str, Callable[[Any], bool], bool], ...]] = (
    ("werkzeug.security", "check_password_hash", _bool_result, True),
    ("pwdlib", "PasswordHash.verify", _bool_result, False),
    ("pwdlib", "PasswordHash.verify_and_update", _pair_result, False),
    ("passlib.context", "CryptContext.verify", _bool_result, False),
    ("passlib.context", "CryptContext.verify_and_update", _pair_result, False),
    ("bcrypt", "checkpw", _bool_result, True),
)


def _django_targets() -> list[tuple[str, str, Callable[[Any], bool], bool]]:
    from django.contrib.auth import hashers

    if hasattr(hashers, "verify_password"):  # Django >= 5.0: check_password calls it
        return [("django.contrib.auth.hashers", "verify_password", _pair_result, False)]
    return [("django.contrib.auth.hashers", "check_password", _bool_result, True)]


def instrument_passwords(patched: list[Patched] | None = None) -> list[Patched]:
    """Patch every installed password library; returns what was patched (for
    :func:`~otel_secaudit.auth.patching.unpatch`). A library that is not installed is
    skipped; never raises."""
    patched = patch_targets(
        (
            (module, name, check_wrapper(passed_of), exported)
            for module, name, passed_of, exported in _TARGETS
        ),
        patched,
    )
    # Which Django function to patch, and argon2's failure class, are known once imported.
    defer(
        patched,
        "django.contrib.auth.hashers",
        lambda: [(m, n, check_wrapper(p), e) for m, n, p, e in _django_targets()],
    )
    defer(
        patched,
        "argon2",
        lambda: [
            (
                "argon2",
                "PasswordHasher.verify",
                check_wrapper(_none_is_pass, _argon2_failures()),
                False,
            )
        ],
    )
    return patched
