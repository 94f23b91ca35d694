"""Fork hooks for the parts that run threads (the spool sender, the detector's workers).

``fork()`` copies only the calling thread. Under a pre-forking server (gunicorn) the plugin is
built in the master, so every part that owns a thread registers its own restart for the child,
as the SDK's ``BatchProcessor`` does: through :func:`os.register_at_fork` and a
:class:`weakref.WeakMethod`, so a hook never keeps its part alive, and a part that was
garbage-collected is simply skipped.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable

__all__ = ["restart_after_fork"]

_log = logging.getLogger("otel_secaudit")


def restart_after_fork(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every child forked from now on (while its object lives).
    An error in it is logged, never raised into the child."""
    if not hasattr(os, "register_at_fork"):  # not on this platform: no fork, nothing to do
        return
    weak = weakref.WeakMethod(method)  # type: ignore[arg-type]

    def after_in_child() -> None:
        bound = weak()
        if bound is None:
            return
        try:
            bound()
        except Exception:  # a fork hook must never break the child
            _log.exception("otel_secaudit: could not restart after fork")

    os.register_at_fork(after_in_child=after_in_child)
