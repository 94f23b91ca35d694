"""Patching helpers shared by the password and token modules: the observing wrapper, patching
with ``wrapt`` (undone with :func:`opentelemetry.instrumentation.utils.unwrap`, as contrib's
library instrumentations do) and the re-exports of patched functions.

**Re-exports.** A module that did ``from werkzeug.security import check_password_hash``
holds its own reference to the function: patching ``werkzeug.security`` afterwards does not
reach it. Under ``opentelemetry-instrument`` the instrumentors run before the application
module is imported, so the reference it takes is already the patched one. When the
instrumentor is called from code, after such imports, :func:`patch_references` finds the
modules whose globals hold an original function and patches them there too (one pass over
``sys.modules`` at instrument time). A reference kept anywhere else (a class attribute, a
closure, a default argument) taken before instrumenting is not reached: instrument first.
Methods are patched on their class, so every instance and bound method made later sees them.

Nothing here records anything: the wrappers hand what they saw to the request's
:class:`~otel_secaudit.auth.state.AuthObservation` and never raise their own errors.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

try:  # wrapt >= 2: the base of every proxy (its ObjectProxy is a subclass)
    from wrapt import BaseObjectProxy as ObjectProxy
except ImportError:  # wrapt 1
    from wrapt import ObjectProxy  # type: ignore[assignment]

from .. import runtime as _runtime
from ..context import RequestContext, current_request
from ..imports import when_imported
from .state import AuthObservation

__all__ = [
    "ObjectProxy",
    "Patched",
    "Wrapper",
    "is_own_module",
    "is_patched",
    "current_observation",
    "Target",
    "observation_of",
    "patch_targets",
    "defer",
    "patch",
    "patch_references",
    "unpatch",
]

#: ``wrapper(wrapped, instance, args, kwargs)``, wrapt's wrapper signature.
Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
#: Where a patch was put: (module or class, attribute name).
Patched = tuple[Any, str]


def observation_of(request: RequestContext) -> AuthObservation | None:
    """The request's observation, created on first use; None (counted) if that fails, so a
    wrapper never raises its own error."""
    try:
        observation = request.auth
        if observation is None:
            observation = request.auth = AuthObservation()
        return observation
    except Exception as exc:
        internal_error(exc, "auth.observe")
        return None


def current_observation() -> AuthObservation | None:
    """The observation of the request being served (created on first use), or None outside a
    request or when it cannot be made: what every library wrapper asks first."""
    request = current_request()
    if request is None:
        return None
    observation = request.auth
    return observation if observation is not None else observation_of(request)


#: One patch to make: module, attribute path, wrapper, and whether the function is imported by
#: name into applications' modules (its references there are patched too).
Target = tuple[str, str, Wrapper, bool]


def patch_targets(targets: Iterable[Target], patched: list[Patched] | None = None) -> list[Patched]:
    """Make every patch of ``targets`` whose library is installed: now when its module is
    imported already (then the references to exported functions that applications' modules
    imported by name are patched too), else when the application imports it
    (:func:`otel_secaudit.imports.when_imported`: an unused library is never imported). A
    missing library is skipped, any other failure counted. Returns ``patched`` (a new list by
    default), which the patches made later are appended to; never raises."""
    if patched is None:
        patched = []
    functions: list[Patched] = []
    for module, name, wrapper, exported in targets:
        if module not in sys.modules:
            defer(patched, module, _one_target((module, name, wrapper, False)))
            continue
        places = _patch_counted(module, name, wrapper)
        patched.extend(places)
        if exported:
            functions.extend(places)
    try:
        patched.extend(patch_references(functions, skip=is_own_module))
    except Exception as exc:
        internal_error(exc, "auth.instrument")
    return patched


def _one_target(target: Target) -> Callable[[], list[Target]]:
    return lambda: [target]


def defer(patched: list[Patched], module: str, targets: Callable[[], list[Target]]) -> None:
    """Make the patches ``targets()`` lists when ``module`` is imported (now if it is), adding
    them to ``patched``; nothing when the library is not installed. Never raises."""

    def on_import(_module: ModuleType) -> None:
        try:
            made = targets()
        except Exception as exc:
            internal_error(exc, "auth.instrument")
            return
        for target_module, name, wrapper, _exported in made:
            patched.extend(_patch_counted(target_module, name, wrapper))

    try:
        when_imported(module, on_import, "auth")
    except Exception as exc:
        internal_error(exc, "auth.instrument")


def _patch_counted(module: str, name: str, wrapper: Wrapper) -> list[Patched]:
    try:
        return patch(module, name, wrapper)
    except ImportError:
        return []
    except Exception as exc:
        internal_error(exc, "auth.instrument")
        return []


def internal_error(exc: BaseException, where: str) -> None:
    """Count an error of the observation itself; never raises."""
    try:
        _runtime.current().recorder.internal_error(exc, where)
    except Exception:  # the error path must not raise either
        pass


def is_own_module(name: str) -> bool:
    """Whether module ``name`` is otel_secaudit's own (never patched for re-exports)."""
    return name == "otel_secaudit" or name.startswith("otel_secaudit.")


def _resolve(module: ModuleType, dotted: str) -> tuple[Any, str]:
    owner: Any = module
    *path, name = dotted.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def patch(module_name: str, dotted: str, wrapper: Wrapper) -> list[Patched]:
    """Wrap ``module_name.dotted`` (``"PasswordHash.verify"`` for a method) with ``wrapper``.
    Returns where the patch was put (empty when the attribute is missing or already wrapped).

    Raises:
        ImportError: the library is not installed.
    """
    # authlib.jose, passlib: deprecations are the application's business (record=True: authlib
    # forces its own warning to "always", past any filter)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(module_name)
    try:
        owner, name = _resolve(module, dotted)
        current = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name)
    except AttributeError:
        return []  # another version of the library: nothing to patch there
    if current is None or isinstance(current, ObjectProxy):
        return []
    wrap_function_wrapper(module, dotted, wrapper)
    return [(owner, name)]


def is_patched(owner: Any, name: str) -> bool:
    """Whether ``owner.name`` (a class's own attribute, or a module's) is a ``wrapt`` wrapper
    now: the patch itself says whether an instrumentation is on, no flag beside it."""
    try:
        current = vars(owner).get(name)
    except TypeError:  # None, or an object without a namespace: nothing patched there
        return False
    return isinstance(current, ObjectProxy)


def patch_references(
    patched: Iterable[Patched], *, skip: Callable[[str], bool] | None = None
) -> list[Patched]:
    """Patch the other module globals that hold an original function of ``patched`` (a
    ``from x import f`` done before instrumenting); see the module documentation. One pass
    over ``sys.modules``; modules for which ``skip(name)`` is true are left alone."""
    originals: dict[int, Any] = {}
    for owner, name in patched:
        if isinstance(owner, ModuleType):
            proxy = owner.__dict__.get(name)
            wrapped = getattr(proxy, "__wrapped__", None)
            if isinstance(proxy, ObjectProxy) and wrapped is not None:
                originals[id(wrapped)] = proxy
    if not originals:
        return []
    found: list[Patched] = []
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or (skip is not None and skip(module_name)):
            continue
        try:
            items = list(namespace.items())
        except RuntimeError:  # a module mutating its globals right now: skip it
            continue
        for key, value in items:
            proxy = originals.get(id(value))
            if proxy is not None and value is proxy.__wrapped__:
                # The same wrapper around the same function: it behaves like the definition.
                wrap_function_wrapper(module, key, proxy._self_wrapper)
                found.append((module, key))
    return found


def unpatch(patched: Iterable[Patched]) -> None:
    """Undo patches made by :func:`patch` and :func:`patch_references`; never raises."""
    for owner, name in patched:
        try:
            unwrap(owner, name)
        except Exception:  # an attribute someone replaced since: leave theirs in place
            pass
