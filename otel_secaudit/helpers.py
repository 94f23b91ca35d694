"""One-line helpers for common security events, built on :func:`otel_secaudit.record`.

Each helper fills in the catalogue name, reason code and attributes of one case, so application
code stays short and consistent::

    from otel_secaudit import helpers

    if not hmac.compare_digest(form_token, session_token):
        helpers.csrf_mismatch()
        raise HTTPException(403)

    if requested_tenant != user.tenant_id:
        helpers.cross_tenant(user.id, user.tenant_id, requested_tenant, resource_type="invoice")
        raise HTTPException(403)

    try:
        claims = jwt.decode(token, key, algorithms=["HS256"], options={"require": ["jti", "sub"]})
    except jwt.PyJWTError as exc:
        helpers.token_failure(exc)
        raise HTTPException(401) from None

Inside a request served through the middleware the request context (client address, route,
user agent, user id) is added automatically. Like ``record()``, no helper raises into the
application. PyJWT is optional: exceptions are recognised by class name (and base classes), so
this module never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from typing_extensions import Unpack

from . import runtime
from .recorder import EventFields, SecAuditInputError

__all__ = [
    "cross_tenant",
    "csrf_mismatch",
    "login_failed",
    "login_succeeded",
    "permission_denied",
    "tenant_context_missing",
    "token_failure",
    "token_revoked",
]


def _record(name: str, fields: Mapping[str, Any]) -> None:
    # Named arguments come first in ``fields`` and keyword fields after them, so
    # ``csrf_mismatch(reason="missing_token")`` (a keyword field) overrides the default.
    runtime.current().recorder.record(name, **{k: v for k, v in fields.items() if v is not None})


def csrf_mismatch(reason: str = "token_mismatch", /, **fields: Unpack[EventFields]) -> None:
    """A request whose CSRF token did not match (``request.csrf_mismatch``).

    Never pass the token values: they are secrets (and would be redacted anyway).

    >>> csrf_mismatch()                                 # doctest: +SKIP
    >>> csrf_mismatch(reason="missing_token")          # doctest: +SKIP
    """
    _record("request.csrf_mismatch", {"reason": reason, **fields})


def cross_tenant(
    user_id: str | int | None,
    tenant_id: str | int | None,
    requested_tenant_id: str | int,
    /,
    **fields: Unpack[EventFields],
) -> None:
    """A user of tenant ``tenant_id`` tried to reach ``requested_tenant_id``
    (``authz.cross_tenant``).

    >>> cross_tenant("u-7", "acme", "globex", resource_type="invoice")  # doctest: +SKIP
    """
    _record(
        "authz.cross_tenant",
        {
            "user_id": user_id,
            "tenant_id": tenant_id,
            "requested_tenant_id": requested_tenant_id,
            "reason": "tenant_mismatch",
            **fields,
        },
    )


def tenant_context_missing(**fields: Unpack[EventFields]) -> None:
    """A tenant-scoped operation ran without a tenant context
    (``authz.tenant_context_missing``).

    >>> tenant_context_missing(user_id="u-7", resource_type="report")  # doctest: +SKIP
    """
    _record("authz.tenant_context_missing", {"reason": "no_tenant", **fields})


def permission_denied(permission: str, /, **fields: Unpack[EventFields]) -> None:
    """The caller lacks ``permission`` (``authz.permission_denied``).

    >>> permission_denied("invoices:delete", user_id="u-7", resource_id=42)  # doctest: +SKIP
    """
    _record("authz.permission_denied", {"permission": permission, **fields})


def login_succeeded(user_id: str | int, /, **fields: Unpack[EventFields]) -> None:
    """A successful login (``auth.login.succeeded``).

    >>> login_succeeded("u-7")  # doctest: +SKIP
    """
    _record("auth.login.succeeded", {"user_id": user_id, **fields})


def login_failed(
    user_name: str | None,
    reason: str = "invalid_credentials",
    /,
    **fields: Unpack[EventFields],
) -> None:
    """A failed login (``auth.login.failed``). ``user_name`` is the *claimed* identity: it is
    exported as ``user.hash`` (keyed HMAC), in clear only with OTEL_SECAUDIT_RECORD_USER_NAME.

    >>> login_failed(form.username)                          # doctest: +SKIP
    >>> login_failed(form.username, reason="account_locked")  # doctest: +SKIP
    """
    _record("auth.login.failed", {"user_name": user_name, "reason": reason, **fields})


#: PyJWT exception class name -> (event, security.reason). Looked up along the MRO, so
#: subclasses are mapped by their nearest known base.
_TOKEN_ERRORS: dict[str, tuple[str, str]] = {
    "ExpiredSignatureError": ("auth.token.expired", "expired"),
    "InvalidSignatureError": ("auth.token.invalid", "bad_signature"),
    "DecodeError": ("auth.token.invalid", "malformed"),
    "InvalidAlgorithmError": ("auth.token.invalid", "bad_algorithm"),
    "InvalidKeyError": ("auth.token.invalid", "bad_key"),
    "MissingRequiredClaimError": ("auth.token.claims_invalid", "missing_claim"),
    "InvalidAudienceError": ("auth.token.claims_invalid", "bad_audience"),
    "InvalidIssuerError": ("auth.token.claims_invalid", "bad_issuer"),
    "ImmatureSignatureError": ("auth.token.claims_invalid", "not_yet_valid"),
    "InvalidIssuedAtError": ("auth.token.claims_invalid", "bad_issued_at"),
    "InvalidJTIError": ("auth.token.claims_invalid", "bad_jti"),
    "InvalidSubjectError": ("auth.token.claims_invalid", "bad_subject"),
}


def classify_token_error(exc: BaseException) -> tuple[str, str]:
    """The ``(event name, security.reason)`` of a token validation exception.

    Works on PyJWT exceptions without importing PyJWT; anything unknown is
    ``auth.token.invalid`` with reason ``invalid``. A missing claim gets
    ``missing_<claim>`` for the claims that matter here (``jti``, ``sub``, ``exp``...).
    """
    for klass in type(exc).__mro__:
        mapped = _TOKEN_ERRORS.get(klass.__name__)
        if mapped is None:
            continue
        name, reason = mapped
        if klass.__name__ == "MissingRequiredClaimError":
            claim = getattr(exc, "claim", None)
            if isinstance(claim, str) and claim.isidentifier() and len(claim) <= 16:
                reason = f"missing_{claim}"
        return name, reason
    return "auth.token.invalid", "invalid"


def token_failure(
    exc: BaseException,
    jti: str | None = None,
    **fields: Unpack[EventFields],
) -> None:
    """A bearer token failed validation: maps the exception to ``auth.token.expired``,
    ``auth.token.invalid`` or ``auth.token.claims_invalid`` with ``error.type`` (the exception
    class) and ``security.reason``; ``jti`` becomes ``security.token.jti_prefix`` (8 characters,
    never more). The exception message is not exported (it can echo token content).

    >>> try:
    ...     jwt.decode(token, key, algorithms=["HS256"])
    ... except jwt.PyJWTError as exc:
    ...     token_failure(exc, jti=unverified_jti)   # doctest: +SKIP
    """
    try:
        name, reason = classify_token_error(exc)
        extra: dict[str, Any] = {"error.type": type(exc).__name__}
        if jti is not None:
            extra["jti"] = jti  # the redactor keeps only security.token.jti_prefix
        given = fields.pop("attributes", None)
        if given:
            extra.update(given)
        _record(name, {"reason": reason, **fields, "attributes": extra})
    except SecAuditInputError:
        raise  # strict mode (tests, development) only
    except Exception as error:  # rule 1
        _internal_error(error)


def token_revoked(
    jti: str | None, user_id: str | int | None = None, /, **fields: Unpack[EventFields]
) -> None:
    """A token on the revocation list was presented (``auth.token.revoked``).

    >>> if await denylist.contains(claims["jti"]):
    ...     token_revoked(claims["jti"], user_id=claims["sub"])   # doctest: +SKIP
    """
    try:
        extra: dict[str, Any] = {}
        if jti is not None:
            extra["jti"] = jti
        given = fields.pop("attributes", None)
        if given:
            extra.update(given)
        _record(
            "auth.token.revoked",
            {"user_id": user_id, "reason": "revoked", **fields, "attributes": extra},
        )
    except SecAuditInputError:
        raise  # strict mode (tests, development) only
    except Exception as error:  # rule 1
        _internal_error(error)


def _internal_error(error: Exception) -> None:
    runtime.current().recorder.internal_error(error, "helpers")
