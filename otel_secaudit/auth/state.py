"""What a request's authentication looked like, as the instrumented libraries saw it.

One :class:`AuthObservation` hangs on the current request context
(:attr:`otel_secaudit.context.RequestContext.auth`), created on the first observed password
check or token decode. The web core reads it when the response starts and decides the
request's authentication event (README, "Logins without configuration"). Nothing of a
password or token is kept: whether each check passed, the first unresolved token failure
(event name, reason code, exception class name) and the token subject named by
OTEL_SECAUDIT_USER_ID_CLAIM.

Memory stays bounded whatever the application does: checks are counted, not listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_USER_ID_LENGTH", "AuthObservation", "TokenFailure"]

#: A token subject longer than this is cut (it becomes ``user.id``).
MAX_USER_ID_LENGTH: Final = 256


@dataclass(frozen=True, slots=True)
class TokenFailure:
    """A token decode that raised: ``event`` (``auth.token.*``), ``reason`` (``expired``,
    ``bad_signature``...), ``error_type`` (the exception class name) and the library
    ``family`` (``jwt``, ``itsdangerous``), so a later success of the same family (the
    application trying its next key) resolves it."""

    event: str
    reason: str
    error_type: str
    family: str


@dataclass(slots=True)
class AuthObservation:
    """Password checks and token decodes seen during one request (see the module docs)."""

    #: True while an observed call runs: a check or decode made inside another one (pwdlib's
    #: ``verify`` calling argon2's) is the same attempt. Calls of one request are sequential.
    busy: bool = False
    #: Password checks seen, passed or failed.
    checks: int = 0
    #: Whether the last failed check came after the last passing one ("a failed check with
    #: no later passing one").
    failed_last: bool = False
    #: Whether some check passed.
    passed: bool = False
    #: A framework that sends a success signal for this kind of login will send one (Django's
    #: ``AuthenticationForm``, an app with a Flask-Login ``LoginManager``): a passing check
    #: without that signal is a login the framework refused.
    expects_login_signal: bool = False
    #: The first token failure not resolved by a later success of its family.
    token_failure: TokenFailure | None = None
    #: The decoded token's subject (OTEL_SECAUDIT_USER_ID_CLAIM) and the family it came from.
    token_user_id: str | None = None
    token_family: str | None = None

    def password_checked(self, passed: bool) -> None:
        """Note one password check and its result."""
        self.checks += 1
        if passed:
            self.passed = True
            self.failed_last = False
        else:
            self.failed_last = True

    @property
    def check_failed(self) -> bool:
        """A failed check with no later passing one."""
        return self.checks > 0 and self.failed_last

    @property
    def check_passed(self) -> bool:
        """Some check passed and no failed one came after it."""
        return self.passed and not self.failed_last

    def token_failed(self, failure: TokenFailure) -> None:
        """Note a token decode that raised; the subject of that family is forgotten (the
        application did not accept its token)."""
        if self.token_failure is None:
            self.token_failure = failure
        if self.token_family == failure.family:
            self.token_user_id = None
            self.token_family = None

    def token_decoded(self, family: str, user_id: str | None) -> None:
        """Note a successful decode; ``user_id`` is its verified subject, if any."""
        if self.token_failure is not None and self.token_failure.family == family:
            self.token_failure = None
        if user_id is not None:
            self.token_user_id = user_id[:MAX_USER_ID_LENGTH]
            self.token_family = family
