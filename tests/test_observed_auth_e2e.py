"""Observed authentication end to end: harness/apps/observed_auth_app.py (FastAPI, an OAuth2
password form on pwdlib, PyJWT bearer tokens, an itsdangerous reset token) under
``opentelemetry-instrument uvicorn`` with NO login-route variable, exporting over OTLP/gRPC to
the real receiver of the ``harness``.

The app answers a wrong password with 401, a bad token with 401 on the token-only route and
with 403 on the mixed route, where a missing privilege is 403 too: the plugin tells them
apart from what pwdlib and PyJWT did, not from the status codes. Every attacker comes through
the trusted proxy (127.0.0.1) with an X-Forwarded-For address of its own.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from harness import OTLPReceiver, Served, serve_uvicorn, wait_for

pytestmark = pytest.mark.slow

APP_KEY = "observed-auth-e2e-app-signing-key-9876543210"
RESET_MAX_AGE = 2
USER_THRESHOLD = 3
ALICE, ALICE_PASSWORD, ALICE_ID = "alice", "alice-in-wonderland-42", "u-1001"
ROOT_USER, ROOT_PASSWORD = "root", "root-of-all-evil-7"
BOB, BOB_PASSWORD = "bob", "bob-builds-bridges-8"
#: Every secret sent or received; none may appear in any exported byte.
SECRETS: set[str] = {APP_KEY, ALICE_PASSWORD, ROOT_PASSWORD, BOB_PASSWORD}


class App:
    def __init__(self, served: Served, receiver: OTLPReceiver) -> None:
        self.served = served
        self.receiver = receiver
        self.http = httpx.Client(base_url=served.base_url, timeout=20)

    def send(
        self, method: str, path: str, address: str, token: str | None = None, **kw: Any
    ) -> Any:
        headers = {"x-forwarded-for": address}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return self.http.request(method, path, headers=headers, **kw)

    def login(self, username: str, password: str, address: str) -> Any:
        SECRETS.add(password)
        return self.send(
            "POST", "/token", address, data={"username": username, "password": password}
        )

    def token(self, username: str, password: str, address: str) -> str:
        response = self.login(username, password, address)
        assert response.status_code == 200, response.text
        token = str(response.json()["access_token"])
        SECRETS.add(token)
        return token

    def logs(self, address: str, name: str | None = None) -> list[Any]:
        return [
            log
            for log in self.receiver.security_logs(name)
            if log.attributes.get("client.address") == address
        ]

    def wait_logs(self, address: str, count: int, name: str | None = None) -> list[Any]:
        return list(wait_for(lambda: len(x := self.logs(address, name)) >= count and x, 20))

    def settle(self, address: str, count: int) -> list[tuple[str, dict[str, Any]]]:
        """Exactly ``count`` security records for ``address`` (waits, then checks no more came)."""
        self.wait_logs(address, count)
        time.sleep(0.6)  # two export intervals: anything extra would be here by now
        found = self.logs(address)
        return [(log.event_name, log.attributes) for log in found]


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    receiver = OTLPReceiver().start()
    env = {
        **os.environ,
        "OTEL_SERVICE_NAME": "observed-auth-e2e",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_TRACES_SAMPLER": "always_on",
        # an operator who captures request headers, the Authorization header included
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "authorization",
        "OTEL_SECAUDIT_TRUSTED_PROXIES": "127.0.0.1/32",
        "OTEL_SECAUDIT_USER_THRESHOLD": str(USER_THRESHOLD),
        "OTEL_SECAUDIT_HOST_THRESHOLD": "50",
        "OTEL_SECAUDIT_HASH_KEY": "observed-auth-e2e-hash-key",
        "OTEL_SECAUDIT_STATUS_EVENTS": "401:auth.unauthenticated,403:authz.permission_denied,"
        "POST /me/password 200:auth.password.changed",
        "APP_SECRET_KEY": APP_KEY,
        "RESET_MAX_AGE": str(RESET_MAX_AGE),
    }
    env.pop("OTEL_SECAUDIT_LOGIN_ROUTES", None)  # no login-route variable at all
    try:
        served = serve_uvicorn(env, "harness.apps.observed_auth_app:app")
    except BaseException:
        receiver.stop()
        raise
    served_app = App(served, receiver)
    try:
        yield served_app
    finally:
        served_app.http.close()
        served.stop()
        receiver.stop()


def _forged(claims: dict[str, Any]) -> str:
    token = jwt.encode(claims, "not-the-app-key-at-all-0123456789", algorithm="HS256")
    SECRETS.add(token)
    return token


def _alg_none(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    token = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
    SECRETS.add(token)
    return token


def _expired(user_id: str) -> str:
    token = jwt.encode({"sub": user_id, "exp": int(time.time()) - 60}, APP_KEY, algorithm="HS256")
    SECRETS.add(token)
    return token


def test_password_form_failures_and_success(app: App) -> None:
    address = "198.51.100.31"
    assert app.login(BOB, "wrong-guess-1", address).status_code == 401
    assert app.login(BOB, "wrong-guess-2", address).status_code == 401
    assert app.login("mallory-unknown", "whatever-3", address).status_code == 401  # dummy hash
    app.token(BOB, BOB_PASSWORD, address)
    got = app.settle(address, 5)
    assert [(name, attrs.get("security.reason")) for name, attrs in got] == [
        ("auth.login.failed", "invalid_credentials"),
        ("auth.login.failed", "invalid_credentials"),
        ("auth.login.failed", "invalid_credentials"),
        ("auth.login.succeeded", None),
        ("auth.login.succeeded_after_failures", None),
    ]  # no auth.unauthenticated for the 401s: one request, one violation
    assert {attrs["http.route"] for _, attrs in got} == {"/token"}
    bob, bob_again, mallory, success, after = (attrs.get("user.hash") for _, attrs in got)
    assert bob is not None and bob == bob_again == success == after
    assert mallory is not None and mallory != bob
    assert got[4][1]["security.abuse.count"] == 2


def test_token_only_route(app: App) -> None:
    address = "198.51.100.32"
    cases = [
        (_expired(ALICE_ID), "auth.token.expired", "expired", "ExpiredSignatureError"),
        (_forged({"sub": "u-1"}), "auth.token.invalid", "bad_signature", "InvalidSignatureError"),
        (_alg_none({"sub": "u-1"}), "auth.token.invalid", "bad_signature", "InvalidAlgorithmError"),
        ("garbage", "auth.token.invalid", "malformed", "DecodeError"),
    ]
    for token, *_ in cases:
        assert app.send("GET", "/users/me", address, token).status_code == 401
    good = app.token(ALICE, ALICE_PASSWORD, address)
    assert app.send("GET", "/users/me", address, good).status_code == 200
    got = app.settle(address, 5)
    tokens = [
        (name, attrs["security.reason"], attrs["error.type"])
        for name, attrs in got
        if name.startswith("auth.token.")
    ]
    assert tokens == [(event, reason, error) for _, event, reason, error in cases]
    assert [name for name, _ in got if not name.startswith("auth.token.")] == [
        "auth.login.succeeded"
    ]
    assert all("user.id" not in attrs for name, attrs in got if name.startswith("auth.token."))


def test_mixed_route_tells_bad_tokens_from_missing_privileges(app: App) -> None:
    address = "198.51.100.33"
    alice = app.token(ALICE, ALICE_PASSWORD, address)
    root = app.token(ROOT_USER, ROOT_PASSWORD, address)
    assert app.send("GET", "/admin/stats", address, _forged({"sub": "u-1"})).status_code == 403
    assert app.send("GET", "/admin/stats", address, _expired("u-1")).status_code == 403
    assert app.send("GET", "/admin/stats", address, alice).status_code == 403
    assert app.send("GET", "/admin/stats", address, root).status_code == 200
    got = app.settle(address, 5)
    assert [(n, a.get("security.reason"), a.get("user.id")) for n, a in got] == [
        ("auth.login.succeeded", None, None),
        ("auth.login.succeeded", None, None),
        ("auth.token.invalid", "bad_signature", None),
        ("auth.token.expired", "expired", None),
        ("authz.permission_denied", None, ALICE_ID),  # who: the token's subject
    ]


def test_authenticated_abuser_raises_abuse_user(app: App) -> None:
    address = "198.51.100.34"
    alice = app.token(ALICE, ALICE_PASSWORD, address)
    for _ in range(USER_THRESHOLD):
        assert app.send("GET", "/admin/stats", address, alice).status_code == 403
    (signal,) = wait_for(
        lambda: [
            log
            for log in app.receiver.security_logs("abuse.user")
            if log.attributes.get("security.abuse.key") == ALICE_ID
        ],
        20,
    )
    assert signal.attributes["security.abuse.count"] >= USER_THRESHOLD


def test_reset_token_flow(app: App) -> None:
    address = "198.51.100.35"
    response = app.send("POST", "/password-recovery", address, data={"username": ROOT_USER})
    token = response.json()["token"]
    SECRETS.add(token)
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    SECRETS.add(tampered)
    new_password = "root-new-password-11"
    SECRETS.add(new_password)
    form = {"token": tampered, "new_password": new_password}
    assert app.send("POST", "/reset-password", address, data=form).status_code == 400
    time.sleep(RESET_MAX_AGE + 1.1)
    form = {"token": token, "new_password": new_password}
    assert app.send("POST", "/reset-password", address, data=form).status_code == 400
    fresh = app.send("POST", "/password-recovery", address, data={"username": ROOT_USER})
    fresh_token = fresh.json()["token"]
    SECRETS.add(fresh_token)
    form = {"token": fresh_token, "new_password": ROOT_PASSWORD}
    assert app.send("POST", "/reset-password", address, data=form).status_code == 200
    got = app.settle(address, 2)
    assert [(n, a["security.reason"]) for n, a in got] == [
        ("auth.token.invalid", "bad_signature"),
        ("auth.token.expired", "expired"),
    ]
    # which BadSignature subclass depends on the byte tampered with
    assert got[0][1]["error.type"] in ("BadSignature", "BadTimeSignature")
    assert got[1][1]["error.type"] == "SignatureExpired"


def test_change_password_route(app: App) -> None:
    address = "198.51.100.36"
    alice = app.token(ALICE, ALICE_PASSWORD, address)
    wrong = {"current_password": "not-my-password-5", "new_password": "alice-next-55"}
    SECRETS.update(wrong.values())
    assert app.send("POST", "/me/password", address, alice, data=wrong).status_code == 400
    right = {"current_password": ALICE_PASSWORD, "new_password": ALICE_PASSWORD}
    assert app.send("POST", "/me/password", address, alice, data=right).status_code == 200
    got = app.settle(address, 3)
    assert [(n, a.get("security.reason"), a.get("user.id")) for n, a in got] == [
        ("auth.login.succeeded", None, None),
        ("auth.password.change_failed", "invalid_credentials", ALICE_ID),
        ("auth.password.changed", None, ALICE_ID),
    ]


def test_no_secret_in_any_exported_byte(app: App) -> None:
    address = "198.51.100.37"
    app.send("GET", "/users/me", address, _forged({"sub": "u-1"}))
    app.wait_logs(address, 1)
    time.sleep(0.6)
    exported = app.receiver.raw_bytes()
    leaked = sorted(s for s in SECRETS if s.encode() in exported)
    assert leaked == []
    for token in [s for s in SECRETS if s.count(".") == 2]:
        for piece in token.split("."):
            if len(piece) >= 16:
                assert piece.encode() not in exported
