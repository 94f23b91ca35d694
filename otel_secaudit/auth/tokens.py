"""Token decoders, observed: PyJWT, python-jose, authlib's jose and itsdangerous's timed
serializers.

While a request is served, a decode that raises is noted on the request
(:class:`~otel_secaudit.auth.state.AuthObservation`) as ``auth.token.expired``,
``auth.token.claims_invalid`` or ``auth.token.invalid`` with a reason code
(:func:`classify`) and the exception's class name; the web core records it when the response
starts, whatever the status (one request, one violation). A later successful decode of the
same family (the application trying its next key) resolves it. A decode that succeeds, with
its signature verified, gives the request its subject: the claim named by
OTEL_SECAUDIT_USER_ID_CLAIM (``sub``) becomes the request's ``user.id`` unless the
application or its framework names the user. An unverified decode
(``options={"verify_signature": False}``) names nobody: its claims are whatever the sender
wrote. Nothing else of a token is kept. Results and exceptions reach the application
untouched; outside a request nothing is noted.

===============================================  ===================================
patched                                          family
===============================================  ===================================
``jwt.PyJWT.decode_complete`` (``jwt.decode``)   jwt
``jwt.api_jws.decode`` / ``decode_complete``     jwt
``jose.jwt.decode``                              jwt
``authlib.jose.JsonWebToken.decode``             jwt
``authlib.jose`` ``JWTClaims.validate``          jwt
``itsdangerous.TimedSerializer.loads``           itsdangerous
``itsdangerous.TimestampSigner.unsign``          itsdangerous
===============================================  ===================================

Flask signs its session cookie with an itsdangerous timed serializer (salt
``cookie-session``): that is a session, not a token, and is not observed (a stale cookie after
a key rotation would otherwise count as an attack on every request).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from .. import runtime as _runtime
from .patching import (
    Patched,
    Wrapper,
    current_observation,
    internal_error,
    patch_targets,
)
from .state import MAX_USER_ID_LENGTH, AuthObservation, TokenFailure

__all__ = ["classify", "instrument_tokens"]

EXPIRED: Final = "auth.token.expired"
CLAIMS_INVALID: Final = "auth.token.claims_invalid"
INVALID: Final = "auth.token.invalid"

#: (library root module, exception class name) -> (event, reason). Looked up along the
#: exception's MRO, most derived class first.
_ERRORS: Final[Mapping[tuple[str, str], tuple[str, str]]] = {
    # PyJWT
    ("jwt", "ExpiredSignatureError"): (EXPIRED, "expired"),
    ("jwt", "ImmatureSignatureError"): (CLAIMS_INVALID, "not_yet_valid"),
    ("jwt", "InvalidAudienceError"): (CLAIMS_INVALID, "bad_audience"),
    ("jwt", "InvalidIssuerError"): (CLAIMS_INVALID, "bad_issuer"),
    ("jwt", "MissingRequiredClaimError"): (CLAIMS_INVALID, "missing_claim"),
    ("jwt", "InvalidIssuedAtError"): (CLAIMS_INVALID, "malformed"),
    ("jwt", "InvalidJTIError"): (CLAIMS_INVALID, "malformed"),
    ("jwt", "InvalidSubjectError"): (CLAIMS_INVALID, "malformed"),
    ("jwt", "InvalidSignatureError"): (INVALID, "bad_signature"),
    ("jwt", "InvalidAlgorithmError"): (INVALID, "bad_signature"),  # alg=none, HS/RS confusion
    ("jwt", "InvalidKeyError"): (INVALID, "bad_signature"),
    ("jwt", "DecodeError"): (INVALID, "malformed"),
    ("jwt", "InvalidTokenError"): (INVALID, "malformed"),
    # python-jose (claims and JWT errors are refined by their fixed message texts below)
    ("jose", "ExpiredSignatureError"): (EXPIRED, "expired"),
    ("jose", "JWTClaimsError"): (CLAIMS_INVALID, "malformed"),
    ("jose", "JWSSignatureError"): (INVALID, "bad_signature"),
    ("jose", "JWSAlgorithmError"): (INVALID, "bad_signature"),
    ("jose", "JOSEError"): (INVALID, "malformed"),
    # authlib
    ("authlib", "ExpiredTokenError"): (EXPIRED, "expired"),
    ("authlib", "InvalidTokenError"): (CLAIMS_INVALID, "not_yet_valid"),  # nbf / iat ahead
    ("authlib", "MissingClaimError"): (CLAIMS_INVALID, "missing_claim"),
    ("authlib", "InvalidClaimError"): (CLAIMS_INVALID, "malformed"),
    ("authlib", "BadSignatureError"): (INVALID, "bad_signature"),
    ("authlib", "UnsupportedAlgorithmError"): (INVALID, "bad_signature"),
    ("authlib", "MissingAlgorithmError"): (INVALID, "bad_signature"),
    ("authlib", "JoseError"): (INVALID, "malformed"),
    # itsdangerous
    ("itsdangerous", "SignatureExpired"): (EXPIRED, "expired"),
    ("itsdangerous", "BadSignature"): (INVALID, "bad_signature"),
    ("itsdangerous", "BadData"): (INVALID, "malformed"),
}

#: Fixed message fragments of python-jose's and authlib's claim errors -> reason.
_CLAIM_MESSAGES: Final = (
    ("audience", "bad_audience"),
    ('"aud"', "bad_audience"),
    ("issuer", "bad_issuer"),
    ('"iss"', "bad_issuer"),
    ("not yet valid", "not_yet_valid"),
    ("missing", "missing_claim"),
)


def classify(exc: BaseException) -> tuple[str, str] | None:
    """``(event, reason)`` for an exception a token library raised while decoding, None for
    anything else (a ``TypeError`` from a bad call is the application's bug, not a token)."""
    for cls in type(exc).__mro__:
        root = cls.__module__.partition(".")[0]
        found = _ERRORS.get((root, cls.__name__))
        if found is None:
            continue
        event, reason = found
        if root == "jose" or root == "authlib":
            event, reason = _refine(exc, event, reason)
        return event, reason
    return None


def _refine(exc: BaseException, event: str, reason: str) -> tuple[str, str]:
    """python-jose says what failed in the text of a generic error; the texts are the
    library's own (the token's content is not quoted in them)."""
    text = str(exc)[:200].lower()
    if event == CLAIMS_INVALID and reason == "malformed":
        for fragment, refined in _CLAIM_MESSAGES:
            if fragment in text:
                return event, refined
    elif event == INVALID and reason == "malformed":
        if "signature" in text or "alg" in text:
            return event, "bad_signature"
    return event, reason


# -- the observing wrapper --------------------------------------------------------------------

#: ``claims_of(result, args, kwargs)`` -> the verified claims of a successful decode, or None.
ClaimsOf = Callable[[Any, tuple[Any, ...], dict[str, Any]], "Mapping[str, Any] | None"]


def decode_wrapper(
    family: str, claims_of: ClaimsOf, skip: Callable[[Any], bool] | None = None
) -> Wrapper:
    """A wrapt wrapper noting one decode (see the module documentation); ``skip(instance)``
    true leaves a call unobserved (Flask's session serializer)."""

    def observe_decode(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        # The hot path of every decode in a request: few calls, no ABC checks (benchmarks/
        # observed_auth.py measures it against the bare PyJWT decode).
        observation = current_observation()
        if (
            observation is None
            or observation.busy
            or (skip is not None and _skipped(skip, instance))
        ):
            return wrapped(*args, **kwargs)
        observation.busy = True
        try:
            result = wrapped(*args, **kwargs)
        except Exception as exc:
            _failed(observation, family, exc)
            raise
        finally:
            observation.busy = False
        try:
            claims = claims_of(result, args, kwargs)
            user_id = None
            if claims is not None:
                value = claims.get(_runtime.current().settings.user_id_claim)
                user_id = value if type(value) is str and value else _subject(value)
            if observation.token_failure is None and user_id is not None:
                observation.token_user_id = user_id[:MAX_USER_ID_LENGTH]
                observation.token_family = family
            else:
                observation.token_decoded(family, user_id)
        except Exception as error:  # observing never breaks the decode
            internal_error(error, "auth.token")
        return result

    return observe_decode


def _skipped(skip: Callable[[Any], bool], instance: Any) -> bool:
    try:
        return bool(skip(instance))
    except Exception:
        return False


def _failed(observation: AuthObservation, family: str, exc: BaseException) -> None:
    try:
        found = classify(exc)
        if found is not None:
            event, reason = found
            observation.token_failed(TokenFailure(event, reason, type(exc).__name__, family))
    except Exception as error:  # observing never breaks the decode
        internal_error(error, "auth.token")


def _subject(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


# -- per library: where the verified claims are ----------------------------------------------


def _verifies(options: object, verify: object = None) -> bool:
    if verify is False:
        return False
    return not (isinstance(options, Mapping) and options.get("verify_signature") is False)


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _pyjwt_claims(result: Any, args: Any, kwargs: Any) -> Mapping[str, Any] | None:
    # decode_complete(jwt, key, algorithms, options, verify, ...) -> {"payload": {...}, ...}
    options = args[3] if len(args) > 3 else kwargs.get("options")
    verify = args[4] if len(args) > 4 else kwargs.get("verify")
    if (options is not None or verify is not None) and not _verifies(options, verify):
        return None
    payload = result.get("payload") if type(result) is dict else None
    if type(payload) is dict:
        return payload
    return payload if isinstance(payload, Mapping) else None


def _jose_claims(result: Any, args: Any, kwargs: Any) -> Mapping[str, Any] | None:
    # jose.jwt.decode(token, key, algorithms=None, options=None, ...) -> claims
    if not _verifies(_argument(args, kwargs, 3, "options")):
        return None
    return result if isinstance(result, Mapping) else None


def _verified_result(result: Any, args: Any, kwargs: Any) -> Mapping[str, Any] | None:
    """authlib's decode always verifies; itsdangerous's loads is signed data."""
    if isinstance(result, tuple) and result:  # loads(..., return_timestamp=True)
        result = result[0]
    return result if isinstance(result, Mapping) else None


def _no_claims(result: Any, args: Any, kwargs: Any) -> Mapping[str, Any] | None:
    return None


def _flask_session(instance: Any) -> bool:
    return getattr(instance, "salt", None) == b"cookie-session"


_TARGETS: Final[tuple[tuple[str, str, str, ClaimsOf, bool], ...]] = (
    ("jwt.api_jwt", "PyJWT.decode_complete", "jwt", _pyjwt_claims, False),
    # JWS-only decodes through the module's functions (bound methods of its PyJWS object); a
    # PyJWT decode runs its own PyJWS object, inside PyJWT.decode_complete (one layer).
    ("jwt.api_jws", "decode_complete", "jwt", _no_claims, True),
    ("jwt.api_jws", "decode", "jwt", _no_claims, True),
    ("jose.jwt", "decode", "jwt", _jose_claims, True),
    ("authlib.jose.rfc7519.jwt", "JsonWebToken.decode", "jwt", _verified_result, False),
    ("authlib.jose.rfc7519.claims", "JWTClaims.validate", "jwt", _no_claims, False),
    ("itsdangerous.timed", "TimedSerializer.loads", "itsdangerous", _verified_result, False),
    ("itsdangerous.timed", "TimestampSigner.unsign", "itsdangerous", _no_claims, False),
)


def instrument_tokens(patched: list[Patched] | None = None) -> list[Patched]:
    """Patch every installed token library (when the application imports it); returns
    ``patched`` (a new list by default) with what was patched now, and what is patched later
    is added to it. A library that is not installed is skipped; never raises."""
    return patch_targets(
        (
            (module, name, decode_wrapper(family, claims_of, _skip_of(family)), exported)
            for module, name, family, claims_of, exported in _TARGETS
        ),
        patched,
    )


def _skip_of(family: str) -> Callable[[Any], bool] | None:
    return _flask_session if family == "itsdangerous" else None
