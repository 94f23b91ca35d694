"""End to end: the submitted user name is read the way each framework reads it, on real apps
under ``opentelemetry-instrument`` over real HTTP, exported to the real OTLP receiver.

Attackers choose the differential (issue 18): duplicate fields, two multipart parts, a part
header ``x-name="username"; name="note"``, two user fields to an app that logs in by e-mail, a
non-UTF-8 byte, a body over 64 KiB, a chunked body. Each scenario comes from its own client
address (X-Forwarded-For from a trusted proxy), so its records are told apart; the expected
``user.hash`` is computed here with the same hash key. Also: who the user is in Flask without
Flask-Login (``g.user``), and Django's redirect of a signed-in user to a login page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import (
    DJANGO_USERS,
    ROOT,
    OTLPReceiver,
    Served,
    prepare_django_db,
    serve_django,
    serve_flask,
    serve_uvicorn,
    telemetry_env,
    wait_for,
)
from harness.launchers import DJANGO_PROJECT
from otel_secaudit.redaction import hash_identity

pytest.importorskip("flask")
pytest.importorskip("django")
pytest.importorskip("fastapi")
pytest.importorskip("gunicorn")

pytestmark = pytest.mark.slow

HASH_KEY = "login-names-e2e-hash-key-0123456789"
WRONG = "Wr0ng-names-passw0rd-SECRET-5150"
BOUNDARY = "names-b0undary-42"
PADDING = "p" * 100_000  # a body over 64 KiB that every framework accepts


def user_hash(name: str) -> str:
    return hash_identity(HASH_KEY.encode(), name)


def settings(login_routes: str) -> dict[str, str]:
    return {
        "hash_key": HASH_KEY,
        "login_routes": login_routes,
        "trusted_proxies": "127.0.0.1/32",
        "host_threshold": "1000",
        "user_threshold": "1000",
    }


def multipart(*parts: tuple[str, str]) -> bytes:
    """Parts given as (Content-Disposition parameters, value)."""
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; {params}\r\n\r\n{value}\r\n".encode()
        for params, value in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
JSON = {"content-type": "application/json"}
TWO_EMAILS = f'{{"email": "a@example.com", "email": "b@example.com", "password": "{WRONG}"}}'


def chunked(body: bytes) -> Iterator[bytes]:
    """A generator body: httpx sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), 7):
        yield body[start : start + 7]


def send(http: httpx.Client, path: str, client: str, body: Any, headers: dict[str, str]) -> int:
    return http.post(path, content=body, headers={**headers, "x-forwarded-for": client}).status_code


def failures_by_client(receiver: OTLPReceiver, clients: set[str]) -> dict[str, list[str | None]]:
    """The user.hash of each auth.login.failed per client address, once every client has one."""

    def collect() -> dict[str, list[str | None]] | None:
        found: dict[str, list[str | None]] = {}
        for log in receiver.security_logs("auth.login.failed"):
            address = log.attributes.get("client.address")
            found.setdefault(address, []).append(log.attributes.get("user.hash"))
        return found if clients <= set(found) else None

    result: dict[str, list[str | None]] = wait_for(collect, timeout=30)
    return result


def assert_no_secret(receiver: OTLPReceiver, *secrets: str) -> None:
    raw = receiver.raw_bytes()
    for secret in (WRONG, *secrets):
        assert secret.encode() not in raw, f"{secret[:6]}... reached the collector"


# -- Flask: Werkzeug reads the first of duplicate fields -----------------------------------------


@pytest.fixture
def flask_form(otlp_receiver: OTLPReceiver) -> Iterator[Served]:
    env = telemetry_env(otlp_receiver.http_endpoint, **settings("POST /auth/token,POST /api/login"))
    served = serve_flask(env, app="harness.apps.flask_form_app:app")
    yield served
    served.stop()


def test_flask_reads_names_as_werkzeug_does(
    flask_form: Served, otlp_receiver: OTLPReceiver
) -> None:
    form_twice = f"username=first-name&username=second-name&password={WRONG}".encode()
    cases: dict[str, tuple[str, Any, dict[str, str], list[str | None]]] = {
        "10.0.0.1": ("/auth/token", form_twice, FORM, [user_hash("first-name")]),
        "10.0.0.2": (
            "/auth/token",
            multipart(('name="username"', "first-part"), ('name="username"', "second-part"),
                      ('name="password"', WRONG)),
            MULTIPART,
            [user_hash("first-part")],
        ),
        "10.0.0.3": (
            "/auth/token",
            multipart(('x-name="username"; name="note"', "decoy"), ('name="username"', "target"),
                      ('name="password"', WRONG)),
            MULTIPART,
            [user_hash("target")],
        ),
        # Werkzeug leaves an escape that is not UTF-8 as it is: the app looks up "t%E9rget"
        "10.0.0.4": ("/auth/token", f"username=t%E9rget&password={WRONG}".encode(), FORM,
                     [user_hash("t%E9rget")]),
        "10.0.0.5": ("/auth/token", f"note={PADDING}&username=big-body&password={WRONG}".encode(),
                     FORM, [user_hash("big-body")]),
        "10.0.0.6": ("/auth/token", chunked(f"username=chunked&password={WRONG}".encode()),
                     FORM, [user_hash("chunked")]),
        # JSON to an app that logs in by e-mail: both fields are candidates, both counted
        "10.0.0.7": (
            "/api/login",
            json.dumps({"username": "decoy", "email": "bob@example.com", "password": WRONG}),
            JSON,
            sorted([user_hash("decoy"), user_hash("bob@example.com")]),
        ),
        "10.0.0.8": ("/api/login",
                     TWO_EMAILS,
                     JSON, [user_hash("b@example.com")]),
    }  # fmt: skip
    with httpx.Client(base_url=flask_form.base_url) as http:
        for client, (path, body, headers, _) in cases.items():
            assert send(http, path, client, body, headers) == 401, client
    found = failures_by_client(otlp_receiver, set(cases))
    for client, (*_, expected) in cases.items():
        assert sorted(found[client]) == expected, client  # type: ignore[type-var]
    assert_no_secret(otlp_receiver)


def test_flask_g_user_is_the_user_when_flask_login_is_only_importable(
    flask_form: Served, otlp_receiver: OTLPReceiver
) -> None:
    import flask_login  # noqa: F401  (installed by the [flask] extra; the app does not use it)

    with httpx.Client(base_url=flask_form.base_url) as http:
        good = {"username": "bob", "password": "tr0ub4dor&3-bob-password"}
        assert http.post("/auth/login", data=good).status_code == 302
        assert http.get("/admin").status_code == 403
        session = http.cookies["session"]
    denied = wait_for(lambda: otlp_receiver.security_logs("authz.permission_denied"), 20)
    assert [log.attributes.get("user.id") for log in denied] == ["2"]  # g.user["id"]
    assert_no_secret(otlp_receiver, session, good["password"])


# -- FastAPI: Starlette reads the last of duplicate fields ---------------------------------------


@pytest.fixture
def fastapi_form(otlp_receiver: OTLPReceiver) -> Iterator[Served]:
    env = telemetry_env(otlp_receiver.http_endpoint, **settings("POST /token,POST /api/login"))
    served = serve_uvicorn(env, "harness.apps.fastapi_form_app:app")
    yield served
    served.stop()


def test_fastapi_reads_names_as_starlette_does(
    fastapi_form: Served, otlp_receiver: OTLPReceiver
) -> None:
    form_twice = f"username=first-name&username=second-name&password={WRONG}".encode()
    cases: dict[str, tuple[str, Any, dict[str, str], list[str | None]]] = {
        "10.0.1.1": ("/token", form_twice, FORM, [user_hash("second-name")]),
        "10.0.1.2": (
            "/token",
            multipart(('name="username"', "first-part"), ('name="username"', "second-part"),
                      ('name="password"', WRONG)),
            MULTIPART,
            [user_hash("second-part")],
        ),
        "10.0.1.3": (
            "/token",
            multipart(('name="username"', "target"), ('x-name="username"; name="note"', "decoy"),
                      ('name="password"', WRONG)),
            MULTIPART,
            [user_hash("target")],
        ),
        # Starlette: latin-1, then percent-decoding as UTF-8 with replacement
        "10.0.1.4": ("/token", f"username=t%E9rget&password={WRONG}".encode(), FORM,
                     [user_hash("t\ufffdrget")]),
        "10.0.1.5": ("/token", b"username=t\xe9rget&password=" + WRONG.encode(), FORM,
                     [user_hash("t\u00e9rget")]),
        "10.0.1.6": ("/token", f"note={PADDING}&username=big-body&password={WRONG}".encode(),
                     FORM, [user_hash("big-body")]),
        "10.0.1.7": ("/token", chunked(f"username=chunked&password={WRONG}".encode()), FORM,
                     [user_hash("chunked")]),
        "10.0.1.8": (
            "/api/login",
            json.dumps({"username": "decoy", "email": "bob@example.com", "password": WRONG}),
            JSON,
            sorted([user_hash("decoy"), user_hash("bob@example.com")]),
        ),
        "10.0.1.9": ("/api/login",
                     TWO_EMAILS,
                     JSON, [user_hash("b@example.com")]),
    }  # fmt: skip
    with httpx.Client(base_url=fastapi_form.base_url) as http:
        for client, (path, body, headers, _) in cases.items():
            assert send(http, path, client, body, headers) == 401, client
        # a success from a body naming two users is attributed to neither
        both = {"username": "decoy", "email": "alice@example.com",
                "password": "correct horse battery staple"}  # fmt: skip
        assert send(http, "/api/login", "10.0.1.10", json.dumps(both), JSON) == 200
    found = failures_by_client(otlp_receiver, set(cases))
    for client, (*_, expected) in cases.items():
        assert sorted(found[client]) == expected, client  # type: ignore[type-var]
    success = wait_for(lambda: otlp_receiver.security_logs("auth.login.succeeded"), 20)
    assert [log.attributes.get("client.address") for log in success] == ["10.0.1.10"]
    assert "user.hash" not in success[0].attributes
    assert_no_secret(otlp_receiver, both["password"])


# -- Django: request.POST keeps the last of duplicate fields; redirects to the login page -------


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return prepare_django_db(str(tmp_path_factory.mktemp("secsite-names")))


@pytest.fixture
def django_site(otlp_receiver: OTLPReceiver, django_db: str) -> Iterator[Served]:
    routes = "POST /api/form-login/,POST /api/email-login/"
    served = serve_django(telemetry_env(otlp_receiver.http_endpoint, **settings(routes)), django_db)
    yield served
    served.stop()


def test_django_reads_names_as_request_post_does(
    django_site: Served, otlp_receiver: OTLPReceiver
) -> None:
    # Without a password the view answers 400 before authenticate(), so no Django signal names
    # the user: the login route's failure carries the name the plugin read from request.POST.
    cases: dict[str, tuple[str, Any, dict[str, str], list[str | None]]] = {
        "10.0.2.1": ("/api/form-login/", b"username=first-name&username=second-name", FORM,
                     [user_hash("second-name")]),
        "10.0.2.2": (
            "/api/form-login/",
            multipart(('name="username"', "first-part"), ('name="username"', "second-part")),
            MULTIPART,
            [user_hash("second-part")],
        ),
        "10.0.2.3": (
            "/api/form-login/",
            multipart(('name="username"', "target"), ('x-name="username"; name="note"', "decoy")),
            MULTIPART,
            [user_hash("target")],
        ),
        "10.0.2.4": ("/api/form-login/", b"username=t\xe9rget", FORM, [user_hash("t\u00e9rget")]),
        "10.0.2.5": ("/api/form-login/", f"note={PADDING}&username=big-body".encode(), FORM,
                     [user_hash("big-body")]),
    }  # fmt: skip
    # an unknown address is refused before authenticate(): both user fields are candidates
    by_email = {"username": "decoy", "email": "nobody@example.com", "password": WRONG}
    # over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB): Django refuses it, so it names nobody
    too_big = b"username=huge&note=" + b"n" * 3_000_000
    with httpx.Client(base_url=django_site.base_url) as http:
        for client, (path, body, headers, _) in cases.items():
            assert send(http, path, client, body, headers) == 400, client
        assert send(http, "/api/email-login/", "10.0.2.6", json.dumps(by_email), JSON) == 401
        assert send(http, "/api/form-login/", "10.0.2.7", too_big, FORM) == 400
    expected = {client: case[-1] for client, case in cases.items()}
    expected["10.0.2.6"] = sorted([user_hash("decoy"), user_hash("nobody@example.com")])
    expected["10.0.2.7"] = [None]
    found = failures_by_client(otlp_receiver, set(expected))
    for client, hashes in expected.items():
        assert sorted(found[client]) == hashes, client  # type: ignore[type-var]
    django_site.stop()  # the worker flushes its metrics at exit
    assert otlp_receiver.metric_points("otel_secaudit.internal.errors") == []
    assert_no_secret(otlp_receiver)


def test_django_redirect_of_a_signed_in_user_to_a_login_page_is_permission_denied(
    django_site: Served, otlp_receiver: OTLPReceiver
) -> None:
    with httpx.Client(base_url=django_site.base_url) as http:
        assert http.get("/profile/").status_code == 302  # a visitor: no violation
        good = {"username": "bob", "password": DJANGO_USERS["bob"]}
        assert http.post("/api/form-login/", data=good).status_code == 200
        for path in ("/admin/", "/staff-only/", "/audit/"):
            answer = http.get(path, headers={"x-forwarded-for": "10.0.3.2"})
            assert answer.status_code == 302 and "login/?next=" in answer.headers["location"]
        assert http.get("/profile/").status_code == 200
    denied = wait_for(
        lambda: (
            (found := otlp_receiver.security_logs("authz.permission_denied"))
            and len(found) >= 3
            and found
        ),
        timeout=20,
    )
    succeeded = wait_for(lambda: otlp_receiver.security_logs("auth.login.succeeded"), 20)
    bob = succeeded[0].attributes["user.id"]
    assert sorted(log.attributes["http.route"] for log in denied) == [
        "admin/", "audit/", "staff-only/"
    ]  # fmt: skip
    for log in denied:
        assert log.attributes["user.id"] == bob
        assert log.attributes["security.reason"] == "login_redirect"
        assert log.attributes["http.response.status_code"] == 302
        assert log.attributes["client.address"] == "10.0.3.2"
    assert len(otlp_receiver.security_logs("authz.permission_denied")) == 3
    assert_no_secret(otlp_receiver, good["password"])


def test_django_redirect_to_login_is_patched_after_setup_and_restored_by_uninstrument(
    django_db: str,
) -> None:
    """In a fresh process (Django's apps load once per process): instrumenting after
    ``django.setup()`` wraps ``redirect_to_login`` where it is defined and where the mixins
    imported it; uninstrumenting puts the very same functions back."""
    script = """
import django
django.setup()
import django.contrib.auth.mixins as mixins
import django.contrib.auth.views as views
from otel_secaudit import SecAuditInstrumentor
original = views.redirect_to_login
SecAuditInstrumentor().instrument()
assert views.redirect_to_login.__wrapped__ is original
assert mixins.redirect_to_login.__wrapped__ is original
assert views.redirect_to_login("/x", "/login/")["Location"] == "/login/?next=/x"
SecAuditInstrumentor().uninstrument()
assert views.redirect_to_login is original and mixins.redirect_to_login is original
print("restored")
"""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "secsite.settings",
        "SECSITE_DB": django_db,
        "PYTHONPATH": os.pathsep.join([str(DJANGO_PROJECT), str(ROOT)]),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "restored"


def test_flask_form_page_without_a_login_route_hashes_the_name_werkzeug_read(
    flask_form: Served, otlp_receiver: OTLPReceiver
) -> None:
    """``/auth/login`` is no login route here: the observed ``check_password_hash`` makes the
    200 re-rendered form a failed attempt, and its user.hash is the name the view checked (the
    first of duplicate fields, as Werkzeug reads them), the body chunked and over 64 KiB."""
    body = f"note={PADDING}&username=first-name&username=second-name&password={WRONG}"
    with httpx.Client(base_url=flask_form.base_url) as http:
        assert send(http, "/auth/login", "10.0.4.1", chunked(body.encode()), FORM) == 200
    found = failures_by_client(otlp_receiver, {"10.0.4.1"})
    assert found["10.0.4.1"] == [user_hash("first-name")]
    assert otlp_receiver.security_logs("auth.login.succeeded") == []
    assert_no_secret(otlp_receiver)
