"""A server-rendered Flask login, the most common style on the web, for the end-to-end tests.

No Flask-Login, no Flask-WTF: the form at ``/auth/login`` is checked with
``werkzeug.security.check_password_hash``; a wrong password re-renders the form with **200**,
a right one stores ``session["user_id"]`` and redirects (**302**). Each request loads
``g.user`` (a mapping with ``id`` and ``username``) from the session, as Flask's tutorial app
does. ``POST /api/login`` is a JSON login
by e-mail address (``{"email": ..., "password": ...}``; 401 / 200). ``/admin`` answers 403 to a
signed-in account that is not an administrator, 401 to a visitor. ``POST /auth/token`` checks
the same form fields for scripts and answers 401 or 200.

Nothing in it mentions otel_secaudit. The field names are read as Werkzeug reads them:
``request.form["username"]`` is the *first* of duplicate fields.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, g, redirect, render_template_string, request, session
from werkzeug.security import check_password_hash, generate_password_hash

# A cheap hash method: the tests log in dozens of times.
_METHOD = "pbkdf2:sha256:1000"
USERS = {
    "alice": ("1", "correct horse battery staple"),
    "bob": ("2", "tr0ub4dor&3-bob-password"),
}
ADMINS = {"1"}
_ACCOUNTS = {
    name: (user_id, f"{name}@example.com", generate_password_hash(password, method=_METHOD))
    for name, (user_id, password) in USERS.items()
}
_BY_ID = {user_id: name for name, (user_id, _, _) in _ACCOUNTS.items()}
_BY_EMAIL = {email: name for name, (_, email, _) in _ACCOUNTS.items()}
# Checked for unknown names too, so an unknown name costs the same time as a wrong password.
_DUMMY_HASH = generate_password_hash("no such account", method=_METHOD)

_FORM = """<!doctype html><title>Sign in</title>
{% if error %}<p class="error">{{ error }}</p>{% endif %}
<form method="post"><input name="username" value="{{ name }}">
<input name="password" type="password"><button>Sign in</button></form>"""


def _password_ok(name: str, password: str) -> bool:
    account = _ACCOUNTS.get(name)
    stored = account[2] if account is not None else _DUMMY_HASH
    return check_password_hash(stored, password) and account is not None


def create_app() -> Flask:
    """A fresh app."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test-only-flask-form-secret-9876543210")

    @app.before_request
    def load_user() -> None:
        user_id = session.get("user_id")
        name = _BY_ID.get(user_id) if isinstance(user_id, str) else None
        g.user = {"id": user_id, "username": name} if name is not None else None

    @app.route("/auth/login", methods=["GET", "POST"])
    def login() -> Any:
        if request.method == "GET":
            return render_template_string(_FORM, error=None, name="")
        name = request.form.get("username", "")
        if _password_ok(name, request.form.get("password", "")):
            session.clear()
            session["user_id"] = _ACCOUNTS[name][0]
            return redirect("/")
        return render_template_string(_FORM, error="Incorrect user name or password.", name=name)

    @app.post("/auth/token")
    def token() -> Any:
        """The same form fields for a script: 401 or 200, no page."""
        name = request.form.get("username", "")
        if not _password_ok(name, request.form.get("password", "")):
            return {"error": "bad credentials"}, 401
        return {"token_type": "session", "user_id": _ACCOUNTS[name][0]}

    @app.post("/api/login")
    def api_login() -> Any:
        data = request.get_json(silent=True)
        email = data.get("email") if isinstance(data, dict) else None
        name = _BY_EMAIL.get(email, "") if isinstance(email, str) else ""
        password = data.get("password", "") if isinstance(data, dict) else ""
        if not isinstance(password, str) or not _password_ok(name, password):
            return {"error": "bad credentials"}, 401
        session.clear()
        session["user_id"] = _ACCOUNTS[name][0]
        return {"ok": True}

    @app.post("/auth/logout")
    def logout() -> Any:
        session.clear()
        return redirect("/auth/login")

    @app.get("/")
    def home() -> Any:
        return f"hello {g.user['username']}" if g.user else "hello"

    @app.get("/admin")
    def admin() -> Any:
        if g.user is None:
            abort(401)
        if session.get("user_id") not in ADMINS:
            abort(403)
        return "admin"

    return app


app = create_app()
