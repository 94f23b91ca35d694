"""The Django variant of the demo (``otel-secaudit demo --framework django``): a small Django
project shipped in the package, served in this process by Django's own development WSGI
server (:mod:`django.core.servers.basehttp`, threaded) under the contrib
``DjangoInstrumentor`` and :class:`otel_secaudit.SecAuditInstrumentor`.

* :mod:`.settings`: ``django.contrib.auth`` + sessions, CSRF on, SQLite in a temporary folder
  (``OTEL_SECAUDIT_DEMO_DJANGO_DB``), fast demo-only password hashing;
* :mod:`.views` / :mod:`.urls`: ``LoginView`` at ``/accounts/login/``, ``LogoutView``, a page
  for signed-in users and a permission-protected page that answers 403;
* :func:`prepare`: migrates the database and creates the demo users;
* :class:`DjangoDemoServer`: the server thread.

Needs the ``django`` extra: ``pip install 'otel-secaudit[django]'``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from typing import Any, Final

__all__ = [
    "DJANGO_DEMO_PASSWORDS",
    "DJANGO_EXTRA_HINT",
    "SETTINGS_MODULE",
    "DjangoDemoServer",
    "prepare",
]

SETTINGS_MODULE: Final = "otel_secaudit.demo.django_site.settings"
DB_VARIABLE: Final = "OTEL_SECAUDIT_DEMO_DJANGO_DB"
DJANGO_EXTRA_HINT: Final = (
    "the Django demo needs the django extra: pip install 'otel-secaudit[django]'"
)
# Demo fixtures (printed nowhere but here); "root" has every permission.
DJANGO_DEMO_PASSWORDS: Final = {
    "alice": "alice-django-demo-password",
    "root": "root-django-demo-password",
}


def check_installed() -> None:
    """Raises ImportError naming the extra when Django or its instrumentation is missing."""
    try:
        import django  # noqa: F401
        from opentelemetry.instrumentation.django import DjangoInstrumentor  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{exc}; {DJANGO_EXTRA_HINT}") from None


def configure() -> str:
    """Point Django at the demo settings with a fresh SQLite file in a temporary folder;
    returns that folder (removed by :meth:`DjangoDemoServer.stop`). Call before
    ``django.setup()`` and before the instrumentors."""
    folder = tempfile.mkdtemp(prefix="otel-secaudit-django-demo-")
    os.environ[DB_VARIABLE] = os.path.join(folder, "demo.sqlite3")
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    return folder


def prepare() -> None:
    """``django.setup()``, the migrations and the demo users (alice; root, a superuser)."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    User.objects.create_user("alice", password=DJANGO_DEMO_PASSWORDS["alice"])
    User.objects.create_superuser("root", password=DJANGO_DEMO_PASSWORDS["root"])


class DjangoDemoServer:
    """Django's threaded development WSGI server on ``host:port`` in a background thread,
    serving the demo project (built after the instrumentors, so the middlewares are in)."""

    def __init__(self, host: str, port: int, folder: str | None = None) -> None:
        from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
        from django.core.wsgi import get_wsgi_application

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # no access log on the demo's console

        self.folder = folder
        try:
            self.httpd = ThreadedWSGIServer((host, port), QuietHandler, ipv6=":" in host)
        except OSError as exc:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            raise OSError(f"the demo server did not start: {exc.strerror or exc}") from None
        self.httpd.set_app(get_wsgi_application())
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="demo-django-server", daemon=True
        )

    def start(self) -> str:
        """Serve; returns the base URL the scenario uses."""
        self.thread.start()
        host, port = self.httpd.server_address[:2]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"  # the scenario's client; loopback is a trusted proxy
        elif ":" in str(host):
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop serving, close the socket, remove the temporary database."""
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(10)
        self.httpd.server_close()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
