"""Instrumenting imports nothing the application does not use: a framework or library is patched
when the application imports it (otel_secaudit.imports). Each case runs in a fresh interpreter,
since this test process has imported every library already."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from otel_secaudit.imports import cancel_pending, installed, when_imported


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_instrumenting_imports_no_framework_nor_library() -> None:
    out = _run(
        """
        import sys
        from otel_secaudit import SecAuditInstrumentor
        SecAuditInstrumentor().instrument()
        unused = ["django", "flask", "starlette", "fastapi", "werkzeug", "jwt", "jose",
                  "authlib", "passlib", "pwdlib", "argon2", "bcrypt", "itsdangerous"]
        print(sorted(name for name in unused if name in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_libraries_imported_later_are_patched_then() -> None:
    out = _run(
        """
        from otel_secaudit import SecAuditInstrumentor
        from otel_secaudit.auth.patching import ObjectProxy
        instrumentor = SecAuditInstrumentor()
        instrumentor.instrument()
        from werkzeug.security import check_password_hash     # imported after instrument()
        import jwt, argon2, starlette.applications, flask
        import django.contrib.auth.hashers as hashers
        checks = {
            "werkzeug": isinstance(check_password_hash, ObjectProxy),
            "jwt": isinstance(vars(jwt.api_jwt.PyJWT)["decode_complete"], ObjectProxy),
            "argon2": isinstance(vars(argon2.PasswordHasher)["verify"], ObjectProxy),
            "starlette": isinstance(
                vars(starlette.applications.Starlette)["__call__"], ObjectProxy),
            "flask": isinstance(vars(flask.Flask)["preprocess_request"], ObjectProxy),
            "django": isinstance(hashers.verify_password, ObjectProxy),
        }
        print(sorted(name for name, ok in checks.items() if not ok))
        instrumentor.uninstrument()
        import werkzeug.security
        print(isinstance(werkzeug.security.check_password_hash, ObjectProxy),
              isinstance(vars(jwt.api_jwt.PyJWT)["decode_complete"], ObjectProxy))
        """
    )
    assert out.split("\n")[:2] == ["[]", "False False"]


def test_a_library_imported_after_uninstrument_stays_as_it_is() -> None:
    out = _run(
        """
        from otel_secaudit import SecAuditInstrumentor
        from otel_secaudit.auth.patching import ObjectProxy
        instrumentor = SecAuditInstrumentor()
        instrumentor.instrument()
        instrumentor.uninstrument()
        import jwt, starlette.applications
        print(isinstance(vars(jwt.api_jwt.PyJWT)["decode_complete"], ObjectProxy),
              isinstance(vars(starlette.applications.Starlette)["__call__"], ObjectProxy))
        """
    )
    assert out.strip() == "False False"


def test_when_imported_runs_now_for_an_imported_module_and_never_raises() -> None:
    seen: list[str] = []
    assert when_imported("json", lambda module: seen.append(module.__name__))
    assert seen == ["json"]

    def broken(module: object) -> None:
        raise RuntimeError("hook failed")

    assert when_imported("json", broken)  # logged, not raised
    assert not when_imported("no_such_package_here.sub", lambda module: seen.append("x"))
    assert not installed("no_such_package_here")


@pytest.mark.parametrize("cancel", [False, True])
def test_a_pending_hook_fires_on_import_unless_cancelled(cancel: bool) -> None:
    out = _run(
        f"""
        from otel_secaudit.imports import cancel_pending, when_imported
        seen = []
        when_imported("colorsys", lambda module: seen.append(module.__name__))
        if {cancel}:
            cancel_pending()
        import colorsys
        print(seen)
        """
    )
    assert out.strip() == ("[]" if cancel else "['colorsys']")
    assert cancel_pending is not None


def test_flask_login_is_observed_when_the_application_imports_it() -> None:
    """Importing Flask does not import Flask-Login on the application's behalf; its signals
    are connected when the application imports it, and disconnected by uninstrument()."""
    out = _run(
        """
        import sys
        from otel_secaudit import SecAuditInstrumentor
        from otel_secaudit.auth.patching import ObjectProxy
        from otel_secaudit.web import flask as adapter
        instrumentor = SecAuditInstrumentor()
        instrumentor.instrument()
        import flask
        print("flask_login" in sys.modules,
              isinstance(vars(flask.Flask)["__call__"], ObjectProxy))
        from flask_login import signals
        print(adapter._on_logged_in in signals.user_logged_in.receivers.values())
        instrumentor.uninstrument()
        print(adapter._on_logged_in in signals.user_logged_in.receivers.values())
        """
    )
    assert out.split("\n")[:3] == ["False True", "True", "False"]


def test_djangos_gates_come_with_the_handler_the_application_imports() -> None:
    """Instrumenting Django loads neither of its handlers; each one is gated when the
    application imports it (a WSGI site never loads the ASGI handler, and back), and
    uninstrument() takes both gates out."""
    out = _run(
        """
        import sys
        from otel_secaudit import SecAuditInstrumentor
        from otel_secaudit.auth.patching import ObjectProxy
        instrumentor = SecAuditInstrumentor()
        instrumentor.instrument()
        import django
        from django.core.handlers import base
        handlers = ("django.core.handlers.wsgi", "django.core.handlers.asgi")
        print(*(name in sys.modules for name in handlers))
        from django.core.handlers.wsgi import WSGIHandler
        print(isinstance(vars(WSGIHandler)["__call__"], ObjectProxy),
              "django.core.handlers.asgi" in sys.modules)
        from django.core.handlers.asgi import ASGIHandler
        print(isinstance(vars(ASGIHandler)["__call__"], ObjectProxy))
        instrumentor.uninstrument()
        print(isinstance(vars(WSGIHandler)["__call__"], ObjectProxy),
              isinstance(vars(ASGIHandler)["__call__"], ObjectProxy))
        """
    )
    assert out.split("\n")[:4] == ["False False", "True False", "True", "False False"]
