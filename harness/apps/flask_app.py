"""A Flask + Flask-Login + Flask-WTF app for the end-to-end tests and
``benchmarks/wsgi_overhead.py``.

Nothing in it mentions otel_secaudit: under ``opentelemetry-instrument`` the plugin adds status
events, login routes (``OTEL_SECAUDIT_LOGIN_ROUTES=POST /login``), Flask-Login's signals,
Flask-WTF's CSRFError and blocks. ``GET /calls`` counts how often each view ran in this process.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from flask import Flask, abort, jsonify, render_template_string, request
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)
from flask_wtf import CSRFProtect

USERS = {"alice": "correct horse battery staple", "bob": "tr0ub4dor&3-bob-password"}
ADMINS = {"alice"}
_LOGIN_FORM = (
    '<form method="post"><input type="hidden" name="csrf_token" value="{{ csrf_token() }}">'
    '<input name="username"><input name="password" type="password"></form>'
)


class User(UserMixin):
    def __init__(self, name: str) -> None:
        self.id = name


def create_app() -> Flask:
    """A fresh app."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test-only-flask-secret-0123456789", WTF_CSRF_TIME_LIMIT=None)
    CSRFProtect(app)
    login_manager = LoginManager(app)
    calls: Counter[str] = Counter()

    @login_manager.user_loader
    def load_user(name: str) -> User | None:
        return User(name) if name in USERS else None

    @app.get("/ok")
    def ok() -> str:
        calls["ok"] += 1
        return "ok"

    @app.get("/forbidden")
    def forbidden() -> Any:
        calls["forbidden"] += 1
        abort(403)

    @app.get("/items/<item_id>")
    def item(item_id: str) -> Any:
        calls["item"] += 1
        return {"id": item_id[:16]}

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        calls["login"] += 1
        if request.method == "GET":
            return render_template_string(_LOGIN_FORM)
        name = request.form.get("username", "")
        if USERS.get(name) == request.form.get("password"):
            login_user(User(name))
            return "welcome"
        return "bad credentials", 401

    @app.post("/logout")
    @login_required
    def logout() -> str:
        logout_user()
        return "bye"

    @app.get("/admin/reports/<int:year>")
    @login_required
    def reports(year: int) -> Any:
        calls["reports"] += 1
        if current_user.id not in ADMINS:
            abort(403)
        return f"reports {year}"

    @app.get("/calls")
    def calls_view() -> Any:
        return jsonify(dict(calls))

    return app


app = create_app()
