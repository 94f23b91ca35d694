"""Kept so that branches written against it still import: the real servers and the process
helpers moved to the ``harness`` package (tests and benchmarks both import it). New code
imports ``harness``; this module goes once nothing imports it."""

from harness import *  # noqa: F403
from harness import __all__  # noqa: F401
