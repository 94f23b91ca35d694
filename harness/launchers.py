"""How the test apps are served by the end-to-end tests and the benchmarks: in a subprocess
under ``opentelemetry-instrument``, exporting to an OTLP receiver.

- :func:`serve_uvicorn`: an ASGI app (``module:attribute``) under uvicorn;
- :func:`serve_django`: the Django project (harness/apps/django_project) under gunicorn or
  ``manage.py runserver --noreload``, on a database made by :func:`prepare_django_db`;
- :func:`serve_flask`: the Flask app (harness/apps/flask_app.py) under gunicorn.

:func:`telemetry_env` is the environment of an instrumented app. The WSGI apps export over
OTLP/HTTP rather than gRPC: gRPC channels do not survive gunicorn's fork of its workers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .processes import MissingBinary, Served, free_port, serve_subprocess

ROOT = Path(__file__).resolve().parents[1]
DJANGO_PROJECT = ROOT / "harness" / "apps" / "django_project"
DJANGO_USERS = {"alice": "correct horse battery staple", "bob": "tr0ub4dor&3-bob-password"}
#: Staff accounts of the Django project (the admin lets them in; alice and bob are staff-less).
DJANGO_STAFF = {"carol": "staff-carol-0ff1ce-passphrase"}


def instrument_command() -> str:
    """``opentelemetry-instrument`` of this Python environment."""
    found = shutil.which("opentelemetry-instrument") or shutil.which(
        "opentelemetry-instrument", path=os.path.dirname(sys.executable)
    )
    if found is None:
        raise MissingBinary("opentelemetry-instrument is not installed (opentelemetry-distro)")
    return found


def prepare_django_db(directory: str | None = None) -> str:
    """A fresh SQLite database with the test users (``secsite.prepare``); returns its path."""
    directory = directory or tempfile.mkdtemp(prefix="secsite-")
    path = os.path.join(directory, "secsite.db")
    env = {**os.environ, "SECSITE_DB": path, "PYTHONPATH": str(DJANGO_PROJECT)}
    subprocess.run(
        [sys.executable, "-m", "secsite.prepare"], cwd=DJANGO_PROJECT, env=env, check=True
    )
    return path


def telemetry_env(
    endpoint: str | None, *, protocol: str = "http/protobuf", **settings: str
) -> dict[str, str]:
    """The environment of an instrumented app: OTLP to ``endpoint`` over ``protocol``
    (``http/protobuf``, or ``grpc`` for an ASGI app that no server forks; None: no export),
    short export intervals, and ``OTEL_SECAUDIT_<NAME>`` for each of ``settings``."""
    env = {
        **os.environ,
        "OTEL_SERVICE_NAME": "secaudit-wsgi-e2e",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "sqlite3,dbapi,jinja2",
    }
    if endpoint is None:
        env.update(
            OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none"
        )
    else:
        env.update(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_LOGS_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        )
        if protocol == "grpc":
            env["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
    env.update({f"OTEL_SECAUDIT_{key.upper()}": value for key, value in settings.items()})
    return env


def serve_uvicorn(
    env: dict[str, str], app: str, *uvicorn_args: str, instrument: bool = True
) -> Served:
    """The ASGI ``app`` (``module:attribute``, importable from the repository root) under
    uvicorn on a free loopback port, under ``opentelemetry-instrument`` unless ``instrument``
    is false; ``uvicorn_args`` come after the defaults."""
    port = free_port()
    env = {**env, "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable, "-m", "uvicorn", app,
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", *uvicorn_args,
    ]  # fmt: skip
    if instrument:
        args = [instrument_command(), *args]
    return serve_subprocess(args, port, env, cwd=str(ROOT))


def serve_django(
    env: dict[str, str],
    db: str,
    *,
    server: str = "gunicorn",
    workers: int = 1,
    instrument: bool = True,
    gunicorn_args: tuple[str, ...] = (),
) -> Served:
    """The Django project under ``server`` (``gunicorn``, ``runserver``, or ``uvicorn``: its
    ASGI application); ``gunicorn_args`` come after the defaults (and so override them)."""
    port = free_port()
    env = {
        **env,
        "SECSITE_DB": db,
        "DJANGO_SETTINGS_MODULE": "secsite.settings",
        "PYTHONPATH": os.pathsep.join([str(DJANGO_PROJECT), str(ROOT)]),
    }
    if server == "runserver":
        args = [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    elif server == "uvicorn":  # Django's ASGIHandler
        args = [
            sys.executable, "-m", "uvicorn", "secsite.asgi:application",
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
        ]  # fmt: skip
    else:
        args = [*_gunicorn(port, workers), *gunicorn_args, "secsite.wsgi"]
    if instrument:
        args = [instrument_command(), *args]
    return serve_subprocess(args, port, env, cwd=str(DJANGO_PROJECT))


def serve_flask(
    env: dict[str, str],
    *,
    workers: int = 1,
    instrument: bool = True,
    gunicorn_args: tuple[str, ...] = (),
    app: str = "harness.apps.flask_app:app",
) -> Served:
    """A Flask app under gunicorn (``gunicorn_args`` as for :func:`serve_django`): by default
    harness/apps/flask_app.py (Flask-Login); ``app="harness.apps.flask_form_app:app"`` is the
    form login on werkzeug password hashes."""
    port = free_port()
    env = {**env, "PYTHONPATH": str(ROOT)}
    args = [*_gunicorn(port, workers), *gunicorn_args, app]
    if instrument:
        args = [instrument_command(), *args]
    return serve_subprocess(args, port, env, cwd=str(ROOT))


def _gunicorn(port: int, workers: int) -> list[str]:
    # The access log names the worker (pid) that answered: tests check both workers refused.
    return [
        sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
        "--access-logfile", "-", "--access-logformat", "access pid=%(p)s %(s)s %(U)s",
        "--graceful-timeout", "5",
    ]  # fmt: skip
