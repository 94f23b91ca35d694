"""The subcommands of the ``otel-secaudit`` command (:mod:`otel_secaudit.cli` assembles them):
``demo`` (:mod:`.demo`), ``report`` (:mod:`.report`), ``blocks`` (:mod:`.blocks`). Each module
adds its own arguments and runs its own command; what they share is here."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["DEMO_EXTRA_HINT", "UsageProblem", "consoles"]

DEMO_EXTRA_HINT: Final = "install the demo extra: pip install 'otel-secaudit[demo]'"


class UsageProblem(Exception):
    """Reported as ``otel-secaudit: error: ...`` with exit code 2."""


def consoles() -> tuple[Any, Any]:
    """rich consoles for stdout and stderr."""
    from rich.console import Console

    return Console(), Console(stderr=True)
