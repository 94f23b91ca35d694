"""Kept so that branches written against it still import: the app launchers moved to the
``harness`` package (``harness.serve_django``, ``serve_flask``, ``serve_uvicorn``...). New code
imports ``harness``; this module goes once nothing imports it."""

from harness import *  # noqa: F403
from harness import __all__  # noqa: F401
