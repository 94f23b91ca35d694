"""Observed token decoding in a real Flask application (our own, on python-jose and authlib),
driven through werkzeug's WSGI client under contrib's Flask instrumentation and the SDK's
in-memory exporters: what python-jose and authlib did decides the event, not the status the
application answers (one route answers 401 to a bad token, the other a sloppy 403, which a
missing privilege also gets)."""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor

from otel_secaudit import SecAuditInstrumentor

from .conftest import SDK

KEY = "flask-token-libraries-signing-key-0123456789"


@pytest.fixture
def client(make_sdk: Any) -> Iterator[tuple[Any, SDK]]:
    sdk: SDK = make_sdk()
    instrumentor = SecAuditInstrumentor()
    instrumentor.instrument(tracer_provider=sdk.tracer_provider)
    try:
        yield _app(sdk).test_client(), sdk
    finally:
        instrumentor.uninstrument()


def _app(sdk: SDK) -> flask.Flask:
    from jose import JWTError
    from jose import jwt as jose_jwt

    with warnings.catch_warnings():  # authlib.jose announces its move to joserfc
        warnings.simplefilter("ignore")
        from authlib.jose import jwt as authlib_jwt
        from authlib.jose.errors import JoseError

    app = flask.Flask("token_libraries")

    def bearer() -> str:
        header = flask.request.headers.get("Authorization", "")
        return header[7:] if header.startswith("Bearer ") else ""

    @app.get("/jose")
    def jose_route() -> Any:
        try:
            claims = jose_jwt.decode(bearer(), KEY, algorithms=["HS256"])
        except JWTError:
            return "bad token", 401
        return ("admins only", 403) if claims.get("role") != "admin" else "ok"

    @app.get("/authlib")
    def authlib_route() -> Any:
        try:
            claims = authlib_jwt.decode(bearer(), KEY)
            claims.validate()
        except JoseError:
            flask.abort(403)  # the same answer as a missing privilege
        return ("admins only", 403) if claims.get("role") != "admin" else "ok"

    FlaskInstrumentor.instrument_app(app, tracer_provider=sdk.tracer_provider)
    return app


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _tokens() -> dict[str, str]:
    from jose import jwt as jose_jwt

    return {
        "good": jose_jwt.encode({"sub": "alice"}, KEY, algorithm="HS256"),
        "admin": jose_jwt.encode({"sub": "root", "role": "admin"}, KEY, algorithm="HS256"),
        "expired": jose_jwt.encode(
            {"sub": "alice", "exp": int(time.time()) - 100}, KEY, algorithm="HS256"
        ),
        "forged": jose_jwt.encode({"sub": "alice", "role": "admin"}, KEY + "x", algorithm="HS256"),
        "alg_none": _b64({"alg": "none", "typ": "JWT"})
        + "."
        + _b64({"sub": "mallory", "role": "admin"})
        + ".",
        "garbage": "not.a-token",
    }


#: token -> (event, security.reason, user.id) on both routes
EXPECTED = {
    "good": ("authz.permission_denied", None, "alice"),
    "admin": None,  # 200: nothing recorded
    "expired": ("auth.token.expired", "expired", None),
    "forged": ("auth.token.invalid", "bad_signature", None),
    "alg_none": ("auth.token.invalid", "bad_signature", None),
    "garbage": ("auth.token.invalid", "malformed", None),
}


@pytest.mark.parametrize("route", ["/jose", "/authlib"])
def test_the_decode_decides_the_event_whatever_the_status(
    client: tuple[Any, SDK], route: str
) -> None:
    http, sdk = client
    tokens = _tokens()
    seen: dict[str, Any] = {}
    for name, token in tokens.items():
        before = len(sdk.logs())
        response = http.get(route, headers={"Authorization": f"Bearer {token}"})
        records = [
            log.log_record
            for log in sdk.logs()[before:]
            if log.instrumentation_scope.name == "otel_secaudit"
        ]
        # /jose answers a bad token 401; /authlib answers 403, as to a missing privilege
        bad = 401 if route == "/jose" else 403
        assert response.status_code == {"admin": 200, "good": 403}.get(name, bad)
        seen[name] = [
            (
                r.event_name,
                r.attributes.get("security.reason"),
                r.attributes.get("user.id"),
            )
            for r in records
            if not str(r.event_name).startswith("abuse.")
        ] or None
    assert seen == {
        name: [expected] if expected is not None else None for name, expected in EXPECTED.items()
    }
    exported = repr([dict(log.log_record.attributes) for log in sdk.logs()]) + repr(
        [(dict(s.attributes), [dict(e.attributes) for e in s.events]) for s in sdk.spans()]
    )
    for token in tokens.values():
        assert token not in exported
    assert KEY not in exported
