"""Observed login outcomes on the login test apps under ``opentelemetry-instrument gunicorn``,
with NO login-route variable, exported over OTLP/HTTP to the real receiver:

* the werkzeug-hash Flask form (harness/apps/flask_form_app.py): a wrong password re-rendered
  with 200 is ``auth.login.failed`` (``invalid_credentials``) with the name's ``user.hash``,
  never a forged success; the right one (302) is ``auth.login.succeeded``, and
  ``auth.login.succeeded_after_failures`` after failures;
* the Django project's admin: a staff-less account's correct password, refused with 200, is
  ``auth.login.failed`` (``login_not_allowed``); a staff account's is the signal's success.

Each scenario comes from its own client address (X-Forwarded-For from the trusted proxy)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import (
    DJANGO_STAFF,
    DJANGO_USERS,
    OTLPReceiver,
    Served,
    prepare_django_db,
    serve_django,
    serve_flask,
    telemetry_env,
    wait_for,
)
from otel_secaudit.redaction import hash_identity

pytest.importorskip("flask")
pytest.importorskip("django")
pytest.importorskip("gunicorn")

pytestmark = pytest.mark.slow

HASH_KEY = "observed-login-apps-hash-key-0123"
FLASK_BOB = "tr0ub4dor&3-bob-password"
SETTINGS = {"hash_key": HASH_KEY, "trusted_proxies": "127.0.0.1/32", "user_threshold": "1000"}


def user_hash(name: str) -> str:
    return hash_identity(HASH_KEY.encode(), name)


def records(receiver: OTLPReceiver, address: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    def found() -> list[Any] | None:
        logs = [
            log
            for log in receiver.security_logs()
            if log.attributes.get("client.address") == address
        ]
        return logs if len(logs) >= count else None

    wait_for(found, timeout=30)
    time.sleep(0.8)  # anything extra would have arrived by now
    return [
        (log.event_name, log.attributes)
        for log in receiver.security_logs()
        if log.attributes.get("client.address") == address
    ]


@pytest.fixture
def flask_form(otlp_receiver: OTLPReceiver) -> Iterator[Served]:
    env = telemetry_env(otlp_receiver.http_endpoint, **SETTINGS)
    env.pop("OTEL_SECAUDIT_LOGIN_ROUTES", None)
    served = serve_flask(env, app="harness.apps.flask_form_app:app")
    yield served
    served.stop()


def test_flask_form_wrong_password_with_200_is_a_failure_not_a_success(
    flask_form: Served, otlp_receiver: OTLPReceiver
) -> None:
    address = "203.0.113.71"
    headers = {"x-forwarded-for": address}
    with httpx.Client(base_url=flask_form.base_url, headers=headers) as http:
        for guess in ("guess-1", "guess-2"):
            wrong = http.post("/auth/login", data={"username": "bob", "password": guess})
            assert wrong.status_code == 200 and "Incorrect user name" in wrong.text
        unknown = http.post("/auth/login", data={"username": "nobody", "password": "x"})
        assert unknown.status_code == 200  # the dummy hash was checked
        good = http.post("/auth/login", data={"username": "bob", "password": FLASK_BOB})
        assert good.status_code == 302
    got = records(otlp_receiver, address, 5)
    assert [
        (name, attrs.get("security.reason"), attrs.get("user.hash")) for name, attrs in got
    ] == [
        ("auth.login.failed", "invalid_credentials", user_hash("bob")),
        ("auth.login.failed", "invalid_credentials", user_hash("bob")),
        ("auth.login.failed", "invalid_credentials", user_hash("nobody")),
        ("auth.login.succeeded", None, user_hash("bob")),
        ("auth.login.succeeded_after_failures", None, user_hash("bob")),
    ]
    raw = otlp_receiver.raw_bytes()
    for secret in (FLASK_BOB, "guess-1", "guess-2"):
        assert secret.encode() not in raw


@pytest.fixture
def django_site(
    otlp_receiver: OTLPReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    db = prepare_django_db(str(tmp_path_factory.mktemp("secsite-observed")))
    rules = (
        "401:auth.unauthenticated,403:authz.permission_denied,"
        "accounts/login/ 403:request.csrf_mismatch,"  # a route the project has
        "POST /admin/logn/ 200:auth.login.failed"  # a typo: warned about at start
    )
    env = telemetry_env(otlp_receiver.http_endpoint, status_events=rules, **SETTINGS)
    env.pop("OTEL_SECAUDIT_LOGIN_ROUTES", None)
    served = serve_django(env, db)
    yield served
    served.stop()


def _django_login(http: httpx.Client, path: str, user: str, password: str) -> httpx.Response:
    page = http.get(path)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None, page.text[:300]
    form = {"username": user, "password": password, "csrfmiddlewaretoken": token.group(1)}
    return http.post(path, data=form)


def test_django_admin_staff_less_account_is_login_not_allowed(
    django_site: Served, otlp_receiver: OTLPReceiver
) -> None:
    refused_from, staff_from = "203.0.113.72", "203.0.113.73"
    with httpx.Client(
        base_url=django_site.base_url, headers={"x-forwarded-for": refused_from}
    ) as http:
        refused = _django_login(http, "/admin/login/", "bob", DJANGO_USERS["bob"])
        assert refused.status_code == 200 and "for a staff account" in refused.text
    with httpx.Client(
        base_url=django_site.base_url, headers={"x-forwarded-for": staff_from}
    ) as http:
        ((name, password),) = DJANGO_STAFF.items()
        assert _django_login(http, "/admin/login/", name, password).status_code == 302
    ((event, attrs),) = records(otlp_receiver, refused_from, 1)
    assert (event, attrs["security.reason"], attrs.get("user.hash")) == (
        "auth.login.failed",
        "login_not_allowed",
        user_hash("bob"),
    )
    staff = records(otlp_receiver, staff_from, 1)
    assert [event for event, _ in staff] == ["auth.login.succeeded"]
    assert staff[0][1].get("user.id")  # the signal's user
    output = django_site.output()
    assert "'POST /admin/logn/ 200:auth.login.failed' names a route" in output
    assert "accounts/login/ 403" not in output
