"""Password checks and token decodes observed in the real libraries (otel_secaudit.auth):
patched and unpatched exactly, results and exceptions untouched, nothing outside a request,
each library's failures classified, the verified subject as the request's user.id."""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from otel_secaudit.auth import instrument_auth, uninstrument_auth
from otel_secaudit.auth.patching import ObjectProxy
from otel_secaudit.context import request_scope
from otel_secaudit.web.exchange import Exchange

from .conftest import SDK

KEY = "k" * 32


def events(sdk: SDK) -> list[tuple[str, dict[str, Any]]]:
    return [(r.event_name, dict(r.attributes)) for r in sdk.security_logs()]


@pytest.fixture
def patched(sdk: SDK) -> Iterator[list[Any]]:
    places = instrument_auth()
    try:
        yield places
    finally:
        uninstrument_auth(places)


def exchange(method: str = "POST", path: str = "/login", route: str | None = "/login") -> Exchange:
    return Exchange.open(
        method=method,
        path=path,
        peer="10.9.8.7",
        header=lambda name: [],
        route_of=lambda: route,
    )


def served(status: int, call: Any, **kw: Any) -> tuple[Exchange, Any]:
    """Run ``call`` inside a request, then answer ``status``; returns the exchange and what
    ``call`` returned (or the exception it raised)."""
    ex = exchange(**kw)
    with request_scope(ex.request):
        try:
            result = call()
        except Exception as exc:
            result = exc
        ex.respond(status)
    return ex, result


# -- patching ---------------------------------------------------------------------------------


def _targets() -> list[tuple[Any, str]]:
    import argon2
    import bcrypt
    import itsdangerous.timed
    import jose.jwt
    import jwt.api_jws
    import jwt.api_jwt
    import passlib.context
    import pwdlib
    import werkzeug.security
    from authlib.jose.rfc7519 import claims as authlib_claims
    from authlib.jose.rfc7519 import jwt as authlib_jwt
    from django.contrib.auth import hashers

    return [
        (werkzeug.security, "check_password_hash"),
        (pwdlib.PasswordHash, "verify"),
        (pwdlib.PasswordHash, "verify_and_update"),
        (passlib.context.CryptContext, "verify"),
        (passlib.context.CryptContext, "verify_and_update"),
        (bcrypt, "checkpw"),
        (argon2.PasswordHasher, "verify"),
        (hashers, "verify_password"),
        (jwt.api_jwt.PyJWT, "decode_complete"),
        (jwt.api_jws, "decode_complete"),
        (jwt.api_jws, "decode"),
        (jose.jwt, "decode"),
        (authlib_jwt.JsonWebToken, "decode"),
        (authlib_claims.JWTClaims, "validate"),
        (itsdangerous.timed.TimedSerializer, "loads"),
        (itsdangerous.timed.TimestampSigner, "unsign"),
    ]


def _raw(owner: Any, name: str) -> Any:
    return owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)


def test_every_library_is_patched_and_restored_exactly(sdk: SDK) -> None:
    targets = _targets()
    originals = [_raw(owner, name) for owner, name in targets]
    places = instrument_auth()
    try:
        for owner, name in targets:
            assert isinstance(_raw(owner, name), ObjectProxy), (owner, name)
        assert instrument_auth() == []  # a second call patches nothing twice
    finally:
        uninstrument_auth(places)
    for (owner, name), original in zip(targets, originals, strict=True):
        assert _raw(owner, name) is original, (owner, name)


def test_a_function_imported_by_name_before_instrumenting_is_reached(sdk: SDK) -> None:
    from werkzeug.security import check_password_hash, generate_password_hash

    app = types.ModuleType("secaudit_test_app_module")
    app.check_password_hash = check_password_hash  # type: ignore[attr-defined]
    sys.modules[app.__name__] = app
    try:
        stored = generate_password_hash("right-password", method="pbkdf2:sha256:1000")
        places = instrument_auth()
        try:
            assert isinstance(app.check_password_hash, ObjectProxy)
            ex, ok = served(200, lambda: app.check_password_hash(stored, "wrong"))
            assert ok is False
            assert ex.request.auth is not None and ex.request.auth.check_failed
        finally:
            uninstrument_auth(places)
        assert app.check_password_hash is check_password_hash
    finally:
        del sys.modules[app.__name__]


# -- password checks --------------------------------------------------------------------------


def _hash_and_check() -> list[tuple[str, Any, Any]]:
    """(library, check(right) -> result, check(wrong) -> result) for each library."""
    import argon2
    import bcrypt
    import passlib.context
    import werkzeug.security
    from pwdlib import PasswordHash
    from pwdlib.hashers.bcrypt import BcryptHasher

    w = werkzeug.security.generate_password_hash("right", method="pbkdf2:sha256:1000")
    pw = PasswordHash((BcryptHasher(rounds=4),))
    p = pw.hash("right")
    ctx = passlib.context.CryptContext(schemes=["pbkdf2_sha256"], pbkdf2_sha256__rounds=1000)
    c = ctx.hash("right")
    b = bcrypt.hashpw(b"right", bcrypt.gensalt(4))
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    a = hasher.hash("right")
    return [
        ("werkzeug", lambda s: werkzeug.security.check_password_hash(w, s)),
        ("pwdlib", lambda s: pw.verify(s, p)),
        ("pwdlib.update", lambda s: pw.verify_and_update(s, p)),
        ("passlib", lambda s: ctx.verify(s, c)),
        ("passlib.update", lambda s: ctx.verify_and_update(s, c)),
        ("bcrypt", lambda s: bcrypt.checkpw(s.encode(), b)),
        ("argon2", lambda s: hasher.verify(a, s)),
    ]  # type: ignore[misc]


@pytest.mark.parametrize("index", range(7))
def test_each_password_library_decides_the_login(sdk: SDK, patched: Any, index: int) -> None:
    library, check = _hash_and_check()[index]
    _, right = served(302, lambda: check("right"))
    assert right not in (False, (False, None)) and not isinstance(right, Exception), library
    _, wrong = served(200, lambda: check("wrong"))
    if library == "argon2":
        import argon2.exceptions

        assert isinstance(wrong, argon2.exceptions.VerifyMismatchError)  # passed through
    else:
        assert wrong in (False, (False, None))
    assert [(name, attrs.get("security.reason")) for name, attrs in events(sdk)] == [
        ("auth.login.succeeded", None),
        ("auth.login.failed", "invalid_credentials"),
    ], library


_DJANGO_CHECK = """
import django
from django.conf import settings

settings.configure(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"])
django.setup()
from django.contrib.auth.hashers import check_password, make_password

from otel_secaudit.auth import instrument_auth, uninstrument_auth
from otel_secaudit.context import RequestContext, request_scope

stored = make_password("right", hasher="md5")
places = instrument_auth()
seen = []
for password in ("wrong", "right"):
    request = RequestContext(method="POST")
    with request_scope(request):
        result = check_password(password, stored)
    seen.append((result, request.auth.checks, request.auth.check_failed))
uninstrument_auth(places)
print(seen)
"""


def test_django_check_password() -> None:
    # In a process of its own: Django settings configured here would be configured for the
    # whole test session (tests/test_django.py configures its own).
    import os
    import subprocess
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", _DJANGO_CHECK],
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[(False, 1, True), (True, 1, False)]"


def test_nothing_outside_a_request(sdk: SDK, patched: Any) -> None:
    for _, check in _hash_and_check():
        try:
            check("wrong")
        except Exception:
            pass
    import jwt

    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(jwt.encode({"sub": "x"}, KEY + "x"), KEY, algorithms=["HS256"])
    assert sdk.security_logs() == []


def test_a_nested_check_is_one_check(sdk: SDK, patched: Any) -> None:
    from pwdlib import PasswordHash

    pw = PasswordHash.recommended()  # argon2 inside pwdlib: both patched
    stored = pw.hash("right")
    ex, _ = served(200, lambda: pw.verify("wrong", stored))
    assert ex.request.auth is not None and ex.request.auth.checks == 1


def test_a_broken_observation_never_reaches_the_check(
    sdk: SDK, patched: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import werkzeug.security

    from otel_secaudit.auth.state import AuthObservation

    def broken(self: Any, passed: bool) -> None:
        raise RuntimeError("observation broke")

    monkeypatch.setattr(AuthObservation, "password_checked", broken)
    stored = werkzeug.security.generate_password_hash("right", method="pbkdf2:sha256:1000")
    _, result = served(200, lambda: werkzeug.security.check_password_hash(stored, "right"))
    assert result is True
    assert sdk.recorder.stats.snapshot()["internal_errors"] == {"auth.password:RuntimeError": 1}


# -- tokens -----------------------------------------------------------------------------------


def _pyjwt(claims: dict[str, Any], key: str = KEY, **kw: Any) -> str:
    import jwt

    return jwt.encode(claims, key, algorithm=kw.pop("algorithm", "HS256"), **kw)


def _decode(token: str, **kw: Any) -> Any:
    import jwt

    return lambda: jwt.decode(token, KEY, algorithms=["HS256"], **kw)


def _none_token() -> str:
    import base64
    import json

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': 'admin'})}."


PYJWT_CASES = [
    (lambda: _decode(_pyjwt({"sub": "u", "exp": 1})), "auth.token.expired", "expired",
     "ExpiredSignatureError"),
    (lambda: _decode(_pyjwt({"sub": "u"}, KEY + "!")), "auth.token.invalid", "bad_signature",
     "InvalidSignatureError"),
    (lambda: _decode(_none_token()), "auth.token.invalid", "bad_signature",
     "InvalidAlgorithmError"),
    (lambda: _decode("garbage.not-a.token"), "auth.token.invalid", "malformed", "DecodeError"),
    (lambda: _decode(_pyjwt({"sub": "u", "aud": "other"}), audience="api"),
     "auth.token.claims_invalid", "bad_audience", "InvalidAudienceError"),
    (lambda: _decode(_pyjwt({"sub": "u", "iss": "evil"}), issuer="us"),
     "auth.token.claims_invalid", "bad_issuer", "InvalidIssuerError"),
    (lambda: _decode(_pyjwt({"sub": "u", "nbf": int(time.time()) + 600})),
     "auth.token.claims_invalid", "not_yet_valid", "ImmatureSignatureError"),
    (lambda: _decode(_pyjwt({"sub": "u"}), options={"require": ["exp"]}),
     "auth.token.claims_invalid", "missing_claim", "MissingRequiredClaimError"),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(PYJWT_CASES)))
def test_pyjwt_failures_whatever_the_status(sdk: SDK, patched: Any, case: int) -> None:
    make, event, reason, error = PYJWT_CASES[case]
    _, raised = served(403, make(), route="/items", path="/items")
    assert type(raised).__name__ == error  # the application sees the library's exception
    ((name, attrs),) = events(sdk)  # no authz.permission_denied on top
    assert (name, attrs["security.reason"], attrs["error.type"]) == (event, reason, error)
    assert "user.id" not in attrs


def test_pyjwt_success_names_the_user_and_later_events_carry_it(sdk: SDK, patched: Any) -> None:
    token = _pyjwt({"sub": "user-42", "exp": int(time.time()) + 60})
    _, claims = served(403, _decode(token), route="/items", path="/items")
    assert claims["sub"] == "user-42"
    ((name, attrs),) = events(sdk)
    assert (name, attrs["user.id"]) == ("authz.permission_denied", "user-42")


def test_an_unverified_decode_names_nobody(sdk: SDK, patched: Any) -> None:
    import jwt

    token = _pyjwt({"sub": "admin"}, "attacker-key-" * 3)
    served(
        403,
        lambda: jwt.decode(token, options={"verify_signature": False}),
        route="/items",
        path="/items",
    )
    ((name, attrs),) = events(sdk)
    assert name == "authz.permission_denied" and "user.id" not in attrs


def test_the_application_user_wins_over_the_token(sdk: SDK, patched: Any) -> None:
    ex = Exchange.open(
        method="GET", path="/a", peer="10.0.0.1", header=lambda n: [], user_id_of=lambda: "app-7"
    )
    with request_scope(ex.request):
        _decode(_pyjwt({"sub": "token-9"}))()
        ex.respond(403)
    ((_, attrs),) = events(sdk)
    assert attrs["user.id"] == "app-7"


def test_a_later_success_resolves_a_failure_of_the_family(sdk: SDK, patched: Any) -> None:
    import jwt

    token = _pyjwt({"sub": "rotated"})

    def two_keys() -> Any:
        try:
            return jwt.decode(token, "old-key-" * 4, algorithms=["HS256"])
        except jwt.InvalidSignatureError:
            return jwt.decode(token, KEY, algorithms=["HS256"])

    served(200, two_keys)
    assert events(sdk) == []


def test_user_id_claim_setting(make_sdk: Any, patched: Any) -> None:
    sdk = make_sdk(user_id_claim="uid")
    served(403, _decode(_pyjwt({"sub": "s", "uid": 77})), route="/x", path="/x")
    ((_, attrs),) = events(sdk)
    assert attrs["user.id"] == "77"


def test_a_secret_shaped_subject_is_redacted(sdk: SDK, patched: Any) -> None:
    inner = _pyjwt({"sub": "nested"})
    served(403, _decode(_pyjwt({"sub": inner})), route="/x", path="/x")
    ((_, attrs),) = events(sdk)
    assert inner not in str(attrs) and attrs.get("user.id") in (None, "[REDACTED]")


def test_python_jose(sdk: SDK, patched: Any) -> None:
    from jose import jwt as jose_jwt

    good = jose_jwt.encode({"sub": "jose-user"}, KEY, algorithm="HS256")
    expired = jose_jwt.encode({"sub": "u", "exp": 1}, KEY, algorithm="HS256")
    forged = jose_jwt.encode({"sub": "u"}, KEY + "x", algorithm="HS256")
    wrong_aud = jose_jwt.encode({"sub": "u", "aud": "other"}, KEY, algorithm="HS256")
    for token, kw in ((expired, {}), (forged, {}), (wrong_aud, {"audience": "api"})):
        served(401, lambda t=token, k=kw: jose_jwt.decode(t, KEY, algorithms=["HS256"], **k))
    served(403, lambda: jose_jwt.decode(good, KEY, algorithms=["HS256"]))
    got = [(n, a.get("security.reason"), a.get("error.type"), a.get("user.id")) for n, a in
           events(sdk)]  # fmt: skip
    assert got == [
        ("auth.token.expired", "expired", "ExpiredSignatureError", None),
        ("auth.token.invalid", "bad_signature", "JWTError", None),
        ("auth.token.claims_invalid", "bad_audience", "JWTClaimsError", None),
        ("authz.permission_denied", None, None, "jose-user"),
    ]


def test_authlib(sdk: SDK, patched: Any) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from authlib.jose import jwt as authlib_jwt

    header = {"alg": "HS256"}
    good = authlib_jwt.encode(header, {"sub": "authlib-user"}, KEY).decode()
    expired = authlib_jwt.encode(header, {"sub": "u", "exp": 1}, KEY).decode()

    def decode_and_validate(token: str, key: str = KEY) -> Any:
        claims = authlib_jwt.decode(token, key)
        claims.validate()
        return claims

    served(401, lambda: decode_and_validate(expired))
    served(401, lambda: decode_and_validate(good, KEY + "x"))
    served(401, lambda: decode_and_validate("not a token"))
    served(403, lambda: decode_and_validate(good))
    got = [(n, a.get("security.reason"), a.get("error.type"), a.get("user.id")) for n, a in
           events(sdk)]  # fmt: skip
    assert got == [
        ("auth.token.expired", "expired", "ExpiredTokenError", None),
        ("auth.token.invalid", "bad_signature", "BadSignatureError", None),
        ("auth.token.invalid", "malformed", "DecodeError", None),
        ("authz.permission_denied", None, None, "authlib-user"),
    ]


def test_itsdangerous(sdk: SDK, patched: Any) -> None:
    from itsdangerous import URLSafeTimedSerializer

    reset = URLSafeTimedSerializer(KEY, salt="password-reset")
    token = reset.dumps({"sub": "reset-user"})
    forged = URLSafeTimedSerializer(KEY + "x", salt="password-reset").dumps({"sub": "x"})
    time.sleep(1.1)
    served(400, lambda: reset.loads(token, max_age=0))
    served(400, lambda: reset.loads(forged, max_age=3600))
    served(403, lambda: reset.loads(token, max_age=3600))
    got = [(n, a.get("security.reason"), a.get("error.type"), a.get("user.id")) for n, a in
           events(sdk)]  # fmt: skip
    assert got == [
        ("auth.token.expired", "expired", "SignatureExpired", None),
        ("auth.token.invalid", "bad_signature", "BadTimeSignature", None),
        ("authz.permission_denied", None, None, "reset-user"),
    ]


def test_flask_session_cookies_are_not_tokens(sdk: SDK, patched: Any) -> None:
    from itsdangerous import URLSafeTimedSerializer

    session = URLSafeTimedSerializer(KEY, salt="cookie-session")  # Flask's session serializer
    stale = URLSafeTimedSerializer("rotated-away-key-xx", salt="cookie-session").dumps({"a": 1})
    served(200, lambda: session.loads(stale, max_age=3600))
    assert events(sdk) == []


def test_jws_only_decodes(sdk: SDK, patched: Any) -> None:
    import jwt.api_jws

    signed = jwt.api_jws.encode(b"payload", KEY + "x", algorithm="HS256")
    _, raised = served(401, lambda: jwt.api_jws.decode(signed, KEY, algorithms=["HS256"]))
    assert type(raised).__name__ == "InvalidSignatureError"
    assert [(n, a["security.reason"]) for n, a in events(sdk)] == [
        ("auth.token.invalid", "bad_signature")
    ]


def test_no_token_bytes_are_exported(sdk: SDK, patched: Any) -> None:
    token = _pyjwt({"sub": "u", "exp": 1, "jti": "jti-secret-value"})
    served(401, _decode(token))
    exported = repr(sdk.security_logs()) + repr(sdk.spans())
    for piece in token.split("."):
        assert piece not in exported
    assert "jti-secret-value" not in exported


def test_the_instrumentor_patches_and_restores_the_libraries(sdk: SDK) -> None:
    import jwt.api_jwt
    import werkzeug.security

    from otel_secaudit import SecAuditInstrumentor

    originals = (
        jwt.api_jwt.PyJWT.__dict__["decode_complete"],
        werkzeug.security.check_password_hash,
    )
    instrumentor = SecAuditInstrumentor()
    instrumentor.instrument(tracer_provider=sdk.tracer_provider)
    try:
        assert isinstance(jwt.api_jwt.PyJWT.__dict__["decode_complete"], ObjectProxy)
        assert isinstance(werkzeug.security.check_password_hash, ObjectProxy)
    finally:
        instrumentor.uninstrument()
    assert jwt.api_jwt.PyJWT.__dict__["decode_complete"] is originals[0]
    assert werkzeug.security.check_password_hash is originals[1]
