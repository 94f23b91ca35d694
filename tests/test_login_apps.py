"""The login test apps behave like the apps they stand for, under ``opentelemetry-instrument``
gunicorn with the plugin installed: the werkzeug-hash Flask form (harness/apps/flask_form_app.py)
re-renders the form with 200 on a wrong password and redirects with 302 on success; the Django
project's admin (harness/apps/django_project) refuses a staff-less account's correct password with
200 and lets a staff account in. Other test files assert what the plugin records for them."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from harness import (
    DJANGO_STAFF,
    DJANGO_USERS,
    Served,
    prepare_django_db,
    serve_django,
    serve_flask,
    telemetry_env,
)

pytest.importorskip("flask")
pytest.importorskip("django")
pytest.importorskip("gunicorn")

pytestmark = pytest.mark.slow

FLASK_FORM_APP = "harness.apps.flask_form_app:app"


@pytest.fixture(scope="module")
def flask_form() -> Iterator[Served]:
    served = serve_flask(telemetry_env(None), app=FLASK_FORM_APP)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def django_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    db = prepare_django_db(str(tmp_path_factory.mktemp("secsite-admin")))
    served = serve_django(telemetry_env(None), db)
    yield served
    served.stop()


def test_flask_form_login_answers_200_to_a_wrong_password_and_302_to_a_right_one(
    flask_form: Served,
) -> None:
    with httpx.Client(base_url=flask_form.base_url) as http:
        wrong = http.post("/auth/login", data={"username": "bob", "password": "nope"})
        assert wrong.status_code == 200 and "Incorrect user name" in wrong.text
        unknown = http.post("/auth/login", data={"username": "nobody", "password": "x"})
        assert unknown.status_code == 200 and "Incorrect user name" in unknown.text
        assert http.get("/admin").status_code == 401
        good = http.post(
            "/auth/login", data={"username": "bob", "password": "tr0ub4dor&3-bob-password"}
        )
        assert good.status_code == 302 and good.headers["location"] == "/"
        assert http.get("/").text == "hello bob"
        assert http.get("/admin").status_code == 403  # bob is no administrator
    with httpx.Client(base_url=flask_form.base_url) as http:
        # Werkzeug reads the first of duplicate fields
        twice = {"username": ["alice", "bob"], "password": "correct horse battery staple"}
        assert http.post("/auth/login", data=twice).status_code == 302
        assert http.get("/").text == "hello alice"
        assert http.get("/admin").text == "admin"
    with httpx.Client(base_url=flask_form.base_url) as http:
        by_email = {"email": "bob@example.com", "password": "tr0ub4dor&3-bob-password"}
        assert http.post("/api/login", json=by_email).status_code == 200
        assert http.post("/api/login", json={**by_email, "password": "x"}).status_code == 401


def _django_login(http: httpx.Client, path: str, user: str, password: str) -> httpx.Response:
    page = http.get(path)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None, page.text[:300]
    form = {"username": user, "password": password, "csrfmiddlewaretoken": token.group(1)}
    return http.post(path, data=form)


def test_django_admin_refuses_a_staff_less_account_and_admits_staff(django_site: Served) -> None:
    with httpx.Client(base_url=django_site.base_url) as http:
        refused = _django_login(http, "/admin/login/", "bob", DJANGO_USERS["bob"])
        assert refused.status_code == 200
        assert "for a staff account" in refused.text
        # signed in through contrib.auth.urls, bob is sent from the admin to its login page
        signed_in = _django_login(http, "/accounts/login/", "bob", DJANGO_USERS["bob"])
        assert signed_in.status_code == 302
        assert http.get("/admin/").status_code == 302
        assert http.get("/admin/").headers["location"].startswith("/admin/login/")
        assert http.get("/staff-only/").headers["location"].startswith("/accounts/login/")
        assert http.get("/audit/").headers["location"].startswith("/accounts/login/")
        assert http.get("/profile/").status_code == 200
    with httpx.Client(base_url=django_site.base_url) as http:
        assert http.get("/profile/").headers["location"].startswith("/accounts/login/")
        ((name, password),) = DJANGO_STAFF.items()
        assert _django_login(http, "/admin/login/", name, password).status_code == 302
        assert http.get("/admin/").status_code == 200
        assert http.get("/staff-only/").status_code == 200
    with httpx.Client(base_url=django_site.base_url) as http:
        by_email = {"email": "alice@example.com", "password": DJANGO_USERS["alice"]}
        assert http.post("/api/email-login/", json=by_email).status_code == 200
        assert http.post("/api/email-login/", json={**by_email, "password": "x"}).status_code == 401
