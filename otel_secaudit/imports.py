"""Instrument a library when the application imports it, not before.

The instrumentor covers many libraries (three web frameworks, eight password and token
libraries); an application uses a few of them. Importing every installed one at start to patch
it would load hundreds of modules the application never uses, whose objects every full garbage
collection then walks on the request path. :func:`when_imported` patches a library that is
imported already at once and any other installed one when (if) the application imports it,
through wrapt's post-import hooks (the mechanism wrapt's own ``when_imported`` uses).

Hooks cannot be removed from wrapt's registry: :func:`cancel_pending` (called by
``uninstrument()``) makes every hook registered until then do nothing when it fires.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from types import ModuleType

from wrapt import register_post_import_hook

__all__ = ["cancel_pending", "installed", "when_imported"]

_log = logging.getLogger(__name__)

#: Bumped by :func:`cancel_pending`: a hook registered under an older generation does nothing.
_generation = 0


def installed(module: str) -> bool:
    """Whether ``module``'s top-level package can be imported (found, not imported)."""
    top = module.partition(".")[0]
    for name in (module, top):
        if name in sys.modules:  # None there: importing it raises ImportError
            return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def when_imported(module: str, hook: Callable[[ModuleType], None], what: str = "") -> bool:
    """Call ``hook(module)`` now when ``module`` is imported already, else when the application
    imports it; False (nothing registered) when it is not installed. ``hook``'s errors are
    logged (``what`` names the instrumentation), never raised: into the importing application
    least of all."""
    if not installed(module):
        return False
    generation = _generation

    def on_import(loaded: ModuleType) -> None:
        if generation != _generation:
            return  # uninstrumented since
        try:
            hook(loaded)
        except Exception:
            _log.exception("otel_secaudit: %s instrumentation failed", what or module)

    loaded = sys.modules.get(module)
    if loaded is not None:
        on_import(loaded)
    else:
        register_post_import_hook(on_import, module)
    return True


def cancel_pending() -> None:
    """Make every hook registered so far do nothing when its module is imported."""
    global _generation
    _generation += 1
