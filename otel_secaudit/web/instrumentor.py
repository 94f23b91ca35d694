"""Zero-code security telemetry for web applications: the ``otel_secaudit`` instrumentor.

Usage
-----

Install the package and run the application under ``opentelemetry-instrument``::

    pip install otel-secaudit
    opentelemetry-instrument uvicorn app:app

The ``otel_secaudit`` entry point (group ``opentelemetry_instrumentor``) loads
:class:`SecAuditInstrumentor`, which builds the process-wide runtime (recorder, abuse detector;
:mod:`otel_secaudit.runtime`) from its arguments and ``OTEL_SECAUDIT_*``, and puts
:class:`~otel_secaudit.web.asgi.SecAuditMiddleware` into every Starlette/FastAPI application,
inside the server span whoever opens it (FastAPI's own telemetry, contrib's
``FastAPIInstrumentor`` or ``StarletteInstrumentor``, an ``OpenTelemetryMiddleware`` the app
added itself; see :mod:`otel_secaudit.web.starlette`). Django, Flask and other WSGI apps get
their adapters (:mod:`otel_secaudit.web.django`, :mod:`~otel_secaudit.web.flask`,
:mod:`~otel_secaudit.web.wsgi`); a framework that is not installed is left alone.
Password checks and token decodes of the installed libraries (werkzeug, pwdlib, passlib,
bcrypt, argon2-cffi, Django's hashers; PyJWT, python-jose, authlib, itsdangerous) are observed
(:mod:`otel_secaudit.auth`), so logins and token failures are recorded where the application
checks them; ``uninstrument()`` restores each library exactly. A framework or library is
patched when the application imports it (at once when it is imported already): nothing the
application does not use is imported (:mod:`otel_secaudit.imports`).

Explicit use, without ``opentelemetry-instrument``::

    from otel_secaudit import SecAuditInstrumentor

    SecAuditInstrumentor().instrument(host_threshold=20, block_seconds=300)   # every app
    SecAuditInstrumentor().instrument_app(app, host_threshold=3)              # one app

Configuration
-------------

Every ``OTEL_SECAUDIT_*`` variable has a keyword argument of the same name in lower case without
the prefix; arguments win over the environment. Instrumenting never raises (a raising
instrumentor stops all later ones): a bad environment value is logged and its default used, a
bad argument is logged and left out while the other arguments are kept.

Hooks and providers
-------------------

``user_id_resolver``
    ``callable(scope) -> str | None``, tried before ``scope["user"]`` (Starlette
    ``AuthenticationMiddleware``) and ``request.state.user_id``; called lazily.
``tracer_provider``, ``meter_provider``, ``logger_provider``
    the providers the security signals go to (default: the global ones), as contrib's
    instrumentors take them. The tracer provider (an SDK one) gets a
    :class:`~otel_secaudit.detection.processor.SecAuditSpanProcessor`: abuse escalation
    counts a span's violations when the span ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import runtime
from ..auth import instrument_auth, uninstrument_auth
from ..config import SETTINGS, ConfigError, Settings
from ..detection.processor import ensure_processor
from ..imports import cancel_pending
from ..package import _instruments
from . import django as django_adapter
from . import flask as flask_adapter
from . import starlette as starlette_adapter
from . import wsgi as wsgi_adapter

__all__ = ["SecAuditInstrumentor"]

_log = logging.getLogger(__name__)

_PROVIDERS = ("tracer_provider", "meter_provider", "logger_provider")


def _settings(arguments: dict[str, Any]) -> Settings:
    """Settings from the arguments that are good, then the environment (lenient). A bad
    argument is logged and left out; the others are kept."""
    good: dict[str, Any] = {}
    for name, value in arguments.items():
        try:
            Settings.load(environ={}, **{name: value})
        except ConfigError as exc:
            _log.warning("otel_secaudit: ignoring argument %s", exc)
        else:
            good[name] = value
    return Settings.load(lenient=True, **good)


class SecAuditInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments every Starlette/FastAPI, Django, Flask and WSGI application whose framework
    is installed; see the module documentation."""

    #: What :func:`~otel_secaudit.auth.instrument_auth` patched, for ``_uninstrument``.
    _auth_patches: list[Any] = []

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        try:
            self._install_runtime(kwargs, always=True)
            resolver = kwargs.get("user_id_resolver")
            starlette_adapter.patch(**({"user_id_resolver": resolver} if resolver else {}))
            wsgi_adapter.instrument_wsgi()  # each: nothing when the framework is not installed
            django_adapter.instrument_django()
            flask_adapter.instrument_flask()
            # Password checks and token decodes of the installed libraries (each optional).
            self._auth_patches = instrument_auth()
        except Exception:  # never stop the application (or later instrumentors)
            _log.exception("otel_secaudit: instrumentation failed; the application runs without it")

    def _uninstrument(self, **kwargs: Any) -> None:
        cancel_pending()  # libraries not imported yet stay as they are when they are
        uninstrument_auth(getattr(self, "_auth_patches", []))
        self._auth_patches = []
        starlette_adapter.unpatch()
        wsgi_adapter.uninstrument_wsgi()
        django_adapter.uninstrument_django()
        flask_adapter.uninstrument_flask()
        try:
            # Detection stops; recording goes on through a runtime built from the environment.
            rt = runtime.current()
            runtime.install(
                runtime.build(
                    rt.settings,
                    tracer_provider=rt.tracer_provider,
                    meter_provider=rt.meter_provider,
                    logger_provider=rt.logger_provider,
                    detection=False,
                )
            )
        except Exception:
            _log.exception("otel_secaudit: could not stop abuse detection")

    def instrument_app(
        self, app: Any, *, user_id_resolver: Callable[[Any], Any] | None = None, **kwargs: Any
    ) -> None:
        """Add the security middleware to one Starlette/FastAPI ``app``.

        ``kwargs`` (``host_threshold=3``, providers) build and install the process-wide runtime
        as for :meth:`instrument`; without them the current runtime is kept (detection is
        turned on if it is off).
        """
        try:
            self._install_runtime(kwargs, always=False)
            options = {"user_id_resolver": user_id_resolver} if user_id_resolver else {}
            starlette_adapter.add_to_app(app, **options)
        except Exception:
            _log.exception("otel_secaudit: instrument_app failed; the application runs without it")

    @staticmethod
    def uninstrument_app(app: Any) -> None:
        """Remove what :meth:`instrument_app` added to ``app``."""
        starlette_adapter.remove_from_app(app)

    @staticmethod
    def _install_runtime(kwargs: dict[str, Any], *, always: bool) -> runtime.Runtime:
        """Build and install the runtime with detection on: from the settings arguments and
        the environment when some are given, else with the current runtime's settings."""
        settings = {name: kwargs[name] for name in SETTINGS if kwargs.get(name) is not None}
        providers = {name: kwargs[name] for name in _PROVIDERS if kwargs.get(name) is not None}
        current = runtime.peek()  # never build a throwaway runtime (and spool) first
        if current is not None and not (
            always or settings or providers or current.detector is None
        ):
            return current
        if settings or current is None:
            loaded = _settings(settings)
        else:
            loaded = current.settings

        def provider(name: str) -> Any:
            return providers.get(name, getattr(current, name, None))

        installed = runtime.install(
            runtime.build(
                loaded,
                tracer_provider=provider("tracer_provider"),
                meter_provider=provider("meter_provider"),
                logger_provider=provider("logger_provider"),
            )
        )
        # Escalation is computed when a span with violations ends (SecAuditSpanProcessor);
        # a provider without add_span_processor (API proxy) leaves detection fed directly.
        ensure_processor(provider("tracer_provider") or trace.get_tracer_provider())
        return installed
