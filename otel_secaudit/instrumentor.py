"""Zero-code security telemetry for Starlette and FastAPI applications.

Usage
-----

Install the package and run the application under ``opentelemetry-instrument``::

    pip install otel-secaudit
    opentelemetry-instrument uvicorn app:app

The ``otel_secaudit`` entry point (group ``opentelemetry_instrumentor``) loads
:class:`SecAuditInstrumentor`, which

* installs the process-wide :class:`otel_secaudit.SecurityRecorder` (settings from the
  arguments of :meth:`~SecAuditInstrumentor.instrument`, then ``OTEL_SECAUDIT_*``);
* enables abuse detection (the abuse span processor on the global SDK TracerProvider, and
  blocks when OTEL_SECAUDIT_BLOCK_SECONDS > 0);
* patches ``Starlette.build_middleware_stack`` and ``FastAPI.build_middleware_stack`` so that
  every application runs :class:`otel_secaudit.asgi.SecAuditMiddleware` as its outermost user
  middleware: inside the server span of FastAPI's own telemetry or of the contrib
  ``FastAPIInstrumentor`` / ``OpenTelemetryMiddleware`` (either load order). The middleware
  also scrubs secret query parameters (``?token=...``) from the URL attributes those put on
  the server span.

Explicit use, without ``opentelemetry-instrument``::

    from otel_secaudit import SecAuditInstrumentor

    SecAuditInstrumentor().instrument(host_threshold=20, block_seconds=300)   # every app
    SecAuditInstrumentor().instrument_app(app, user_id_resolver=my_resolver)  # one app

or add the middleware by hand: ``app.add_middleware(SecAuditMiddleware)``.

Configuration
-------------

Every ``OTEL_SECAUDIT_*`` variable (see :class:`otel_secaudit.Settings`) has a keyword argument
of the same name in lower case without the prefix; arguments win over the environment. Under
auto-instrumentation a bad environment value is logged and its default used: instrumenting
never raises, because a raising instrumentor stops all later ones.

``OTEL_SECAUDIT_STATUS_EVENTS``
    responses recorded automatically (default
    ``401:auth.unauthenticated,403:authz.permission_denied,429:request.rate_limited``).
``OTEL_SECAUDIT_TRUSTED_PROXIES``
    CIDRs whose ``X-Forwarded-For`` / ``Forwarded`` is believed.
``OTEL_SECAUDIT_BLOCK_SECONDS``, ``OTEL_SECAUDIT_STORE``, thresholds and window
    abuse detection and blocking.

Hooks
-----

``user_id_resolver``
    ``callable(scope) -> str | None``, tried before ``scope["user"]`` (Starlette
    ``AuthenticationMiddleware``: its ``id``, else ``identity``, when authenticated) and
    ``request.state.user_id``. Called lazily, only when an event is recorded.
``tracer_provider``
    the SDK TracerProvider to register the span processors on (default: the global one).
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .asgi import SecAuditMiddleware, set_default_detector
from .config import _PARSERS, Settings
from .package import _instruments
from .recorder import SecurityRecorder

__all__ = ["SecAuditInstrumentor"]

_log = logging.getLogger(__name__)

_PATCHED_FLAG = "_otel_secaudit_patched"


def _has_secaudit(middleware: Any) -> bool:
    return any(getattr(item, "cls", None) is SecAuditMiddleware for item in middleware or ())


class SecAuditInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments every Starlette and FastAPI application; see the module documentation."""

    _originals: dict[type, Any] = {}
    _apps: weakref.WeakSet[Any] = weakref.WeakSet()
    _middleware_options: dict[str, Any] = {}
    _detector: Any = None
    _recorder: SecurityRecorder | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    # -- BaseInstrumentor -----------------------------------------------------------------

    def _instrument(self, **kwargs: Any) -> None:
        try:
            self._instrument_unsafe(**kwargs)
        except Exception:  # rule 1: never stop the application (or later instrumentors)
            _log.exception("otel_secaudit: instrumentation failed; the application runs without it")

    def _uninstrument(self, **kwargs: Any) -> None:
        cls = type(self)
        for klass, original in list(cls._originals.items()):
            try:
                if original is None:
                    delattr(klass, "build_middleware_stack")
                else:
                    klass.build_middleware_stack = original
            except Exception:
                _log.exception("otel_secaudit: could not restore %s", klass.__qualname__)
        cls._originals = {}
        # Apps that already built their stack with our middleware rebuild it without.
        for app in list(cls._apps):
            try:
                app.middleware_stack = None
            except Exception:
                pass
        cls._apps = weakref.WeakSet()
        set_default_detector(None)
        detector, cls._detector = cls._detector, None
        if detector is not None and cls._recorder is not None:
            try:
                from .detection import disable_detection

                disable_detection(cls._recorder, detector)
            except Exception:
                _log.exception("otel_secaudit: could not disable abuse detection")
        cls._recorder = None

    # -- explicit use ---------------------------------------------------------------------

    def instrument_app(
        self, app: Any, *, user_id_resolver: Callable[[Any], Any] | None = None, **settings: Any
    ) -> None:
        """Add :class:`SecAuditMiddleware` to one Starlette/FastAPI ``app``.

        ``settings`` (``host_threshold=...``) configure the process-wide recorder and detection
        as for :meth:`instrument`, when the instrumentor is not already active.

        Example::

            app = FastAPI()
            SecAuditInstrumentor().instrument_app(app, block_seconds=300)
        """
        try:
            if not self.is_instrumented_by_opentelemetry or settings:
                self._setup_recorder(settings, kwargs={})
            if _has_secaudit(app.user_middleware):
                return
            options = {"user_id_resolver": user_id_resolver} if user_id_resolver else {}
            from starlette.middleware import Middleware

            app.user_middleware.insert(0, Middleware(SecAuditMiddleware, **options))
            app.middleware_stack = None  # rebuilt on the next request, with the middleware
        except Exception:
            _log.exception("otel_secaudit: instrument_app failed; the application runs without it")

    @staticmethod
    def uninstrument_app(app: Any) -> None:
        """Remove what :meth:`instrument_app` added to ``app``."""
        app.user_middleware[:] = [
            item
            for item in app.user_middleware
            if getattr(item, "cls", None) is not SecAuditMiddleware
        ]
        app.middleware_stack = None

    # -- internals ------------------------------------------------------------------------

    def _instrument_unsafe(self, **kwargs: Any) -> None:
        cls = type(self)
        settings = {name: kwargs[name] for name in _PARSERS if name in kwargs}
        recorder = self._setup_recorder(settings, kwargs)
        resolver = kwargs.get("user_id_resolver")
        cls._middleware_options = {"user_id_resolver": resolver} if resolver else {}
        self._patch_classes()
        _log.debug("otel_secaudit: instrumented (recorder %r)", recorder)

    def _setup_recorder(self, settings: dict[str, Any], kwargs: dict[str, Any]) -> SecurityRecorder:
        import otel_secaudit

        cls = type(self)
        current = otel_secaudit.runtime._current  # transitional, until web/ uses the runtime
        recorder = current.recorder if current is not None else None
        if recorder is None or settings:
            try:
                loaded = Settings.load(lenient=True, **settings)
            except Exception:
                _log.exception("otel_secaudit: bad instrumentation arguments; using the env")
                loaded = Settings.load(lenient=True)
            recorder = otel_secaudit.configure(recorder=SecurityRecorder(loaded))
        cls._recorder = recorder

        if cls._detector is None:
            try:
                from .detection import enable_detection
            except ImportError:
                _log.warning("otel_secaudit: abuse detection is not available")
            else:
                try:
                    cls._detector = enable_detection(recorder, kwargs.get("tracer_provider"))
                except Exception:
                    _log.exception("otel_secaudit: abuse detection could not start")
            set_default_detector(cls._detector)
        return recorder

    def _patch_classes(self) -> None:
        cls = type(self)
        classes: list[type] = []
        try:
            from starlette.applications import Starlette

            classes.append(Starlette)
        except ImportError:
            return
        try:
            # fastapi.applications.FastAPI is the real class even when the contrib
            # FastAPIInstrumentor has replaced the name ``fastapi.FastAPI`` by its subclass.
            from fastapi.applications import FastAPI

            classes.append(FastAPI)
        except ImportError:
            pass
        for klass in classes:
            current = klass.__dict__.get("build_middleware_stack")
            if current is None or getattr(current, _PATCHED_FLAG, False) or klass in cls._originals:
                continue
            cls._originals[klass] = current
            klass.build_middleware_stack = _patched_build(current)


def _patched_build(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def build_middleware_stack(self: Any) -> Any:
        saved = None
        try:
            # An app built by a stale reference (the contrib FastAPIInstrumentor keeps the bound
            # method it wrapped) after uninstrument() gets no middleware.
            if SecAuditInstrumentor._originals and not _has_secaudit(self.user_middleware):
                from starlette.middleware import Middleware

                saved = self.user_middleware
                # Outermost user middleware: blocks are enforced before any app code runs, and
                # the final status (after user middleware) is what we see. Server spans (FastAPI
                # telemetry, contrib OpenTelemetryMiddleware) wrap the whole stack, so we run
                # inside them.
                self.user_middleware = [
                    Middleware(SecAuditMiddleware, **SecAuditInstrumentor._middleware_options),
                    *saved,
                ]
                SecAuditInstrumentor._apps.add(self)
        except Exception:
            _log.exception("otel_secaudit: could not add the middleware to %r", self)
            if saved is not None:
                self.user_middleware = saved
                saved = None
        try:
            return original(self)
        finally:
            if saved is not None:
                self.user_middleware = saved

    setattr(build_middleware_stack, _PATCHED_FLAG, True)
    return build_middleware_stack
