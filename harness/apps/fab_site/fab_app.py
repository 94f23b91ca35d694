"""A small site of ours on Flask-AppBuilder (a third-party framework with its own login view,
database authentication and Flask-WTF forms), for tests/test_flask_appbuilder.py, which
installs Flask-AppBuilder from the package index into a virtual environment of its own.

Flask-AppBuilder answers a login with a redirect whether the password was right (to ``/``) or
wrong (back to ``/login/``): nothing in the status says which. Nothing here knows otel_secaudit.
The SQLite database lives in ``FAB_SITE_DIR``; one account, ``admin``, is created at start.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_appbuilder import AppBuilder
from flask_appbuilder.models.sqla.base import SQLA

ADMIN_PASSWORD = "Correct-Horse-Appbuilder-42"

app = Flask(__name__)
app.config.update(
    SECRET_KEY="fab-site-session-signing-key-0123456789",
    SQLALCHEMY_DATABASE_URI="sqlite:///" + os.path.join(os.environ["FAB_SITE_DIR"], "fab.db"),
    AUTH_TYPE=1,  # flask_appbuilder.const.AUTH_DB: accounts and password hashes in the database
    WTF_CSRF_ENABLED=True,
    FAB_ADD_SECURITY_API=False,
)
db = SQLA()
db.init_app(app)
with app.app_context():
    appbuilder = AppBuilder(app, db.session)
    db.create_all()
    security = appbuilder.sm
    if not security.find_user(username="admin"):
        admin_role = security.find_role(security.auth_role_admin)
        security.add_user("admin", "Ada", "Min", "admin@example.org", admin_role, ADMIN_PASSWORD)
