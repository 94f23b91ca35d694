"""An app on the real fastapi-users library (harness/apps/fastapi_members.py: SQLAlchemy on
SQLite, JWT bearer sign-in, fastapi-users' own routers) under ``opentelemetry-instrument
uvicorn``, configured only through environment variables (README, "FastAPI Users in one
variable"), exporting over OTLP/gRPC to the real receiver of the ``harness``.

fastapi-users answers a wrong password with 400 ``LOGIN_BAD_CREDENTIALS`` and bad reset or
verification tokens with 400 too (issue 12: without login routes and route-scoped rules the
plugin saw none of it). One app process serves every scenario; each attacker comes through the
trusted proxy (127.0.0.1) with an X-Forwarded-For address of its own, so the scenarios' keys do
not mix. Blocks and windows are seconds long (env), the whole module runs in well under 40 s.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import OTLPReceiver, Served, serve_uvicorn, telemetry_env, wait_for

pytestmark = pytest.mark.slow

LOGIN = "/auth/jwt/login"
HOST_THRESHOLD = 8
USER_THRESHOLD = 4
BLOCK_SECONDS = 2
STATUS_EVENTS = ",".join(
    [
        "401:auth.unauthenticated",
        "403:authz.permission_denied",
        "429:request.rate_limited",
        "POST /auth/forgot-password 202:auth.password.reset_requested",
        "POST /auth/reset-password 2xx:auth.password.reset_completed",
        "POST /auth/reset-password 400:auth.password.reset_failed",
        "POST /auth/verify 2xx:auth.email.verified",
        "POST /auth/verify 400:auth.email.verification_failed",
        "POST /auth/jwt/logout 2xx:auth.logout",
    ]
)
#: The whole plugin configuration of the recipe (README, "FastAPI Users in one variable").
SECAUDIT_ENV = {
    "OTEL_SECAUDIT_LOGIN_ROUTES": f"POST {LOGIN}",
    "OTEL_SECAUDIT_STATUS_EVENTS": STATUS_EVENTS,
    "OTEL_SECAUDIT_TRUSTED_PROXIES": "127.0.0.1/32",
    "OTEL_SECAUDIT_HOST_THRESHOLD": str(HOST_THRESHOLD),
    "OTEL_SECAUDIT_USER_THRESHOLD": str(USER_THRESHOLD),
    "OTEL_SECAUDIT_WINDOW_SECONDS": "120",
    "OTEL_SECAUDIT_BLOCK_SECONDS": str(BLOCK_SECONDS),
    "OTEL_SECAUDIT_BLOCK_MAX_SECONDS": "60",
    "OTEL_SECAUDIT_HASH_KEY": "fastapi-users-e2e-hash-key",
}

#: Every secret the scenarios send or receive; none may appear in any exported byte.
SECRETS: set[str] = set()
VICTIM = "victim@example.com"
VICTIM_PASSWORD = "Victim-correct-horse-7"
LUCKY = "lucky@example.com"
LUCKY_PASSWORD = "Lucky-battery-staple-9"
WRONG = "Tr0ub4dor&3-wrong-guess-"
SECRETS.update({VICTIM_PASSWORD, LUCKY_PASSWORD, WRONG})


class App:
    """The served app, its receiver and small helpers for the scenarios."""

    def __init__(self, served: Served, receiver: OTLPReceiver) -> None:
        self.served = served
        self.receiver = receiver
        self.http = httpx.Client(base_url=served.base_url, timeout=10)

    def send(self, method: str, path: str, address: str | None = None, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if address is not None:
            headers["x-forwarded-for"] = address
        return self.http.request(method, path, headers=headers, **kw)

    def login(self, username: str, password: str, address: str | None = None) -> Any:
        form = {"username": username, "password": password}
        return self.send("POST", LOGIN, address, data=form)

    def logs(self, name: str, **attributes: Any) -> list[Any]:
        return [
            log
            for log in self.receiver.logs()
            if log.scope == "otel_secaudit"
            and log.event_name == name
            and all(log.attributes.get(k) == v for k, v in attributes.items())
        ]

    def wait_logs(self, name: str, count: int = 1, **attributes: Any) -> list[Any]:
        found = wait_for(
            lambda: len(logs := self.logs(name, **attributes)) >= count and logs, timeout=20
        )
        return list(found)

    def register(self, email: str, password: str) -> None:
        response = self.send("POST", "/auth/register", json={"email": email, "password": password})
        assert response.status_code == 201, response.text

    def printed_token(self, kind: str, since: int) -> str:
        """The token the app's account rules printed (``Reset token: ...``) after offset
        ``since`` of the app's output."""
        pattern = re.compile(rf"{kind} token: (\S+)")
        match = wait_for(lambda: pattern.search(self.served.output()[since:]), timeout=10)
        return match.group(1)


def serve_members(receiver: OTLPReceiver, db_dir: str, *uvicorn_args: str) -> Served:
    """The app under ``opentelemetry-instrument uvicorn``, configured by env only."""
    env = {
        **telemetry_env(receiver.grpc_endpoint, protocol="grpc"),
        "OTEL_SERVICE_NAME": "fastapi-members",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "",
        # an operator who also captures request headers: the Authorization header included
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "authorization,user-agent",
        "MEMBERS_DB_DIR": db_dir,
        "PYTHONUNBUFFERED": "1",
        **SECAUDIT_ENV,
    }
    return serve_uvicorn(env, "harness.apps.fastapi_members:app", *uvicorn_args)


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    receiver = OTLPReceiver().start()
    db_dir = tempfile.mkdtemp(prefix="fastapi-users-")
    try:
        served = serve_members(receiver, db_dir)
    except BaseException:
        receiver.stop()
        shutil.rmtree(db_dir, ignore_errors=True)
        raise
    served_app = App(served, receiver)
    try:
        served_app.register(VICTIM, VICTIM_PASSWORD)
        served_app.register(LUCKY, LUCKY_PASSWORD)
        yield served_app
    finally:
        served_app.http.close()
        served.stop()
        receiver.stop()
        shutil.rmtree(db_dir, ignore_errors=True)


def _until_unblocked(app: App, address: str) -> float:
    """Seconds until ``address`` is served again (its block ended)."""
    start = time.monotonic()
    wait_for(lambda: app.send("GET", "/docs", address).status_code == 200, timeout=15, interval=0.1)
    return time.monotonic() - start


def test_brute_force_on_one_account(app: App) -> None:
    address = "198.51.100.10"
    statuses = [
        app.login(VICTIM, f"{WRONG}{i}", address).status_code for i in range(HOST_THRESHOLD)
    ]
    assert statuses == [400] * HOST_THRESHOLD  # fastapi-users' LOGIN_BAD_CREDENTIALS
    failed = app.wait_logs("auth.login.failed", HOST_THRESHOLD, **{"client.address": address})
    hashes = {log.attributes.get("user.hash") for log in failed}
    assert len(hashes) == 1 and None not in hashes
    (victim_hash,) = hashes
    # pwdlib's failed check, observed (no status-based guess)
    assert {log.attributes["security.reason"] for log in failed} == {"invalid_credentials"}
    assert {log.attributes["http.route"] for log in failed} == {LOGIN}
    assert {log.attributes["http.response.status_code"] for log in failed} == {400}

    (user,) = app.wait_logs("abuse.user", **{"security.abuse.key": victim_hash})
    assert user.attributes["security.abuse.threshold"] == USER_THRESHOLD
    (host,) = app.wait_logs("abuse.host", **{"security.abuse.key": address})
    assert host.attributes["security.abuse.count"] == HOST_THRESHOLD
    (started,) = app.wait_logs("abuse.block.started", **{"security.abuse.key": address})
    assert started.attributes["security.block.seconds"] == BLOCK_SECONDS

    # blocked before any view runs: even the right password gets 429 + Retry-After
    refused = app.login(VICTIM, VICTIM_PASSWORD, address)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= BLOCK_SECONDS
    (blocked,) = app.wait_logs("request.blocked", **{"client.address": address})
    assert blocked.attributes["http.response.status_code"] == 429
    assert blocked.attributes["security.block.count"] >= 1
    assert blocked.attributes.get("http.route") == LOGIN  # the route it asked for
    assert app.logs("request.rate_limited") == []  # our own 429 is not a status event

    # repeat offender: the count restarts when the block ends; the next block is twice as long
    _until_unblocked(app, address)
    app.wait_logs("abuse.block.ended", **{"security.abuse.key": address})
    for i in range(HOST_THRESHOLD):
        assert app.login(VICTIM, f"{WRONG}again-{i}", address).status_code == 400
    hosts = app.wait_logs("abuse.host", 2, **{"security.abuse.key": address})
    assert len(hosts) == 2
    starts = app.wait_logs("abuse.block.started", 2, **{"security.abuse.key": address})
    assert sorted(s.attributes["security.block.seconds"] for s in starts) == [
        BLOCK_SECONDS,
        2 * BLOCK_SECONDS,
    ]
    refused = app.send("GET", "/docs", address)
    assert refused.status_code == 429
    assert BLOCK_SECONDS < int(refused.headers["retry-after"]) <= 2 * BLOCK_SECONDS
    assert _until_unblocked(app, address) > BLOCK_SECONDS - 0.5


def test_credential_stuffing_over_many_names(app: App) -> None:
    address = "203.0.113.77"
    names = [f"customer{i}@shop.example" for i in range(HOST_THRESHOLD)]
    for name in names:
        assert app.login(name, WRONG + name, address).status_code == 400
    failed = app.wait_logs("auth.login.failed", len(names), **{"client.address": address})
    assert len({log.attributes["user.hash"] for log in failed}) == len(names)
    (host,) = app.wait_logs("abuse.host", **{"security.abuse.key": address})
    assert host.attributes["security.abuse.count"] == HOST_THRESHOLD
    # each name failed once: no user crossed its threshold
    user_keys = {log.attributes["security.abuse.key"] for log in app.logs("abuse.user")}
    assert not user_keys & {log.attributes["user.hash"] for log in failed}
    assert app.login("one-more@shop.example", WRONG, address).status_code == 429


def test_bad_reset_and_verify_tokens(app: App) -> None:
    address = "192.0.2.44"
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmb3JnZWQifQ.forged-signature-0000000000"
    SECRETS.add(forged)
    new_password = "Brand-new-password-42"
    SECRETS.add(new_password)
    for _ in range(2):
        response = app.send(
            "POST",
            "/auth/reset-password",
            address,
            json={"token": forged, "password": new_password},
        )
        assert response.status_code == 400
        assert response.json()["detail"] == "RESET_PASSWORD_BAD_TOKEN"
    response = app.send("POST", "/auth/verify", address, json={"token": forged})
    assert response.status_code == 400
    assert response.json()["detail"] == "VERIFY_USER_BAD_TOKEN"

    reset = app.wait_logs("auth.password.reset_failed", 2, **{"client.address": address})
    assert {log.attributes["http.route"] for log in reset} == {"/auth/reset-password"}
    assert {log.attributes["security.event.outcome"] for log in reset} == {"failure"}
    (verify,) = app.wait_logs("auth.email.verification_failed", **{"client.address": address})
    assert verify.attributes["http.route"] == "/auth/verify"
    # other 400s of the app are not mislabelled: a duplicate registration is no event
    assert app.send("POST", "/auth/register", address, json={
        "email": VICTIM, "password": "whatever-123"
    }).status_code == 400  # fmt: skip
    time.sleep(0.5)
    names = {log.event_name for log in app.receiver.logs() if log.scope == "otel_secaudit"
             and log.attributes.get("client.address") == address}  # fmt: skip
    assert names == {"auth.password.reset_failed", "auth.email.verification_failed"}


def test_real_reset_token_and_verification_token(app: App) -> None:
    """The app's real tokens travel in request bodies (and its JWTs in headers); their
    flows are recorded by route-scoped success rules."""
    address = "192.0.2.45"
    email = "forgetful@example.com"
    app.register(email, "Forgetful-first-password-1")
    SECRETS.add("Forgetful-first-password-1")
    since = len(app.served.output())
    assert (
        app.send("POST", "/auth/forgot-password", address, json={"email": email}).status_code == 202
    )
    token = app.printed_token("Reset", since)
    SECRETS.add(token)
    new_password = "Forgetful-second-password-2"
    SECRETS.add(new_password)
    body = {"token": token, "password": new_password}
    assert app.send("POST", "/auth/reset-password", address, json=body).status_code == 200
    # the same token again: fastapi-users refuses it once the password changed
    assert app.send("POST", "/auth/reset-password", address, json=body).status_code == 400

    since = len(app.served.output())
    body = {"email": email}
    assert app.send("POST", "/auth/request-verify-token", address, json=body).status_code == 202
    verify_token = app.printed_token("Verification", since)
    SECRETS.add(verify_token)
    assert (
        app.send("POST", "/auth/verify", address, json={"token": verify_token}).status_code == 200
    )

    app.wait_logs("auth.password.reset_requested", **{"client.address": address})
    app.wait_logs("auth.password.reset_completed", **{"client.address": address})
    app.wait_logs("auth.password.reset_failed", **{"client.address": address})
    app.wait_logs("auth.email.verified", **{"client.address": address})


def test_success_after_failures(app: App) -> None:
    attacker, owner = "198.51.100.20", "198.51.100.21"
    for i in range(USER_THRESHOLD - 1):
        assert app.login(LUCKY, f"{WRONG}lucky-{i}", attacker).status_code == 400
    # no pause: the right password comes straight after the wrong ones
    response = app.login(LUCKY.upper(), LUCKY_PASSWORD, owner)  # same user, normalized
    assert response.status_code == 200
    access_token = response.json()["access_token"]
    SECRETS.add(access_token)
    (succeeded,) = app.wait_logs("auth.login.succeeded", **{"client.address": owner})
    (after,) = app.wait_logs("auth.login.succeeded_after_failures", **{"client.address": owner})
    assert after.attributes["user.hash"] == succeeded.attributes["user.hash"]
    assert after.attributes["security.abuse.count"] == USER_THRESHOLD - 1
    assert after.trace_id == succeeded.trace_id

    # the JWT at work, in the Authorization header (which the operator captures)
    bearer = {"authorization": f"Bearer {access_token}"}
    me = app.send("GET", "/users/me", owner, headers=bearer)
    assert me.status_code == 200 and me.json()["email"] == LUCKY
    assert app.send("GET", "/authenticated-route", owner, headers=bearer).status_code == 200
    assert app.send("GET", "/authenticated-route", owner).status_code == 401
    app.wait_logs("auth.unauthenticated", **{"client.address": owner})
    assert app.send("POST", "/auth/jwt/logout", owner, headers=bearer).status_code == 204
    app.wait_logs("auth.logout", **{"client.address": owner, "http.route": "/auth/jwt/logout"})


def test_ipv6_rotation_within_one_network(app: App) -> None:
    network = "2001:db8:1:2::/64"
    addresses = [f"2001:db8:1:2:{i:x}:{i * 7:x}:{i * 13:x}:{i + 1:x}" for i in range(30)]
    statuses = [
        app.login(f"user{i}@v6.example", WRONG, a).status_code for i, a in enumerate(addresses)
    ]
    assert statuses[:HOST_THRESHOLD] == [400] * HOST_THRESHOLD
    assert statuses[-1] == 429  # the network is blocked, whichever address it uses next
    (host,) = app.wait_logs("abuse.host", **{"security.abuse.key": network})
    assert "client.address" not in host.attributes  # a network is many clients
    (started,) = app.wait_logs("abuse.block.started", **{"security.abuse.key": network})
    assert started.attributes["security.block.seconds"] == BLOCK_SECONDS
    fresh = app.send("GET", "/docs", "2001:db8:1:2:ffff:ffff:ffff:fffe")
    assert fresh.status_code == 429
    assert app.send("GET", "/docs", "2001:db8:1:3::1").status_code == 200  # next /64 is not
    assert {h.attributes["security.abuse.key"] for h in app.logs("abuse.host")} & {
        a for a in addresses
    } == set()  # no per-address signal


def test_login_bodies_of_every_shape(app: App) -> None:
    """The plugin reads the user name from the body chunks fastapi-users itself reads: every
    shape of body names its user, the one over 64 KiB and the chunked one too."""
    address = "192.0.2.60"
    padding = {"scope": "x" * 70_000}  # > 64 KiB: read like the others
    big = {"username": VICTIM, "password": VICTIM_PASSWORD, **padding}
    assert app.send("POST", LOGIN, address, data=big).status_code == 200

    def chunks() -> Iterator[bytes]:
        body = httpx.QueryParams({"username": VICTIM, "password": VICTIM_PASSWORD})
        text = str(body).encode()
        yield text[:7]
        yield text[7:]

    chunked = {"content-type": "application/x-www-form-urlencoded"}
    response = app.send("POST", LOGIN, address, content=chunks(), headers=chunked)
    assert response.status_code == 200
    multipart = {"username": (None, VICTIM), "password": (None, VICTIM_PASSWORD)}
    assert app.send("POST", LOGIN, address, files=multipart).status_code == 200
    succeeded = app.wait_logs("auth.login.succeeded", 3, **{"client.address": address})
    hashes = [log.attributes.get("user.hash") for log in succeeded]
    assert None not in hashes and len(set(hashes)) == 1


def test_trailing_slash_redirect_is_not_a_login(app: App) -> None:
    """``POST /auth/jwt/login/`` gets FastAPI's 307 to the canonical path, whatever the
    password: that redirect is not a login success (the plugin used to record one, with the
    user.hash of the submitted name: forged successes for anybody)."""
    address = "192.0.2.70"
    form = {"username": "slash@example.com", "password": WRONG}
    response = app.send("POST", LOGIN + "/", address, data=form)
    assert response.status_code == 307
    # a client that follows it sends the attempt again to the login route: that one counts
    assert app.send("POST", LOGIN, address, data=form).status_code == 400
    (failed,) = app.wait_logs("auth.login.failed", **{"client.address": address})
    time.sleep(0.5)  # the 307 was answered first: anything it recorded is exported by now
    names = [log.event_name for log in app.receiver.logs() if log.scope == "otel_secaudit"
             and log.attributes.get("client.address") == address]  # fmt: skip
    assert names == ["auth.login.failed"]


def test_no_secret_in_any_exported_byte(app: App) -> None:
    """Last: everything the scenarios sent and received (passwords, the app's JWTs, real
    reset and verification tokens, a forged token), scanned for in the raw OTLP requests."""
    assert app.login(VICTIM, VICTIM_PASSWORD, "192.0.2.99").status_code == 200
    app.wait_logs("auth.login.succeeded", **{"client.address": "192.0.2.99"})
    wait_for(lambda: app.receiver.metric_points("security.violations"), timeout=20)
    app.served.stop()  # flushes every pipeline (lifespan shutdown)
    raw = app.receiver.raw_bytes()
    assert b"/auth/jwt/login" in raw and b"LOGIN_BAD_CREDENTIALS" not in raw
    assert len(SECRETS) >= 10
    for secret in sorted(SECRETS):
        assert secret.encode() not in raw, f"secret leaked to the collector: {secret[:6]}..."
    for email in (VICTIM, LUCKY, "customer0@shop.example"):
        assert email.encode() not in raw  # submitted user names are hashed


def test_login_route_behind_root_path(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    """Behind a proxy that serves the app under ``/api`` (``uvicorn --root-path /api``, the
    proxy strips the prefix): uvicorn puts the prefix back in ``scope["path"]``, Starlette
    routes on the path without it. The login route must still be seen."""
    served = serve_members(otlp_receiver, str(tmp_path), "--root-path", "/api")
    try:
        form = {"username": "prefixed@example.com", "password": WRONG}
        headers = {"x-forwarded-for": "192.0.2.80"}
        for _ in range(2):
            response = httpx.post(served.base_url + LOGIN, data=form, headers=headers)
            assert response.status_code == 400
        failed = wait_for(
            lambda: len(logs := [log for log in otlp_receiver.logs()
                                 if log.event_name == "auth.login.failed"]) >= 2 and logs,
            timeout=20,
        )  # fmt: skip
    finally:
        served.stop()
    assert {log.attributes["http.route"] for log in failed} == {LOGIN}
    assert len({log.attributes["user.hash"] for log in failed}) == 1
