"""Each threaded part restarts itself in a forked child (its own ``os.register_at_fork`` hook,
as the SDK's batch processors do): nobody has to call ``after_fork_in_child`` for it, a part
that was closed stays closed, and a part that was garbage-collected is skipped."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from otel_secaudit import runtime
from otel_secaudit.config import Settings
from otel_secaudit.events import Violation
from otel_secaudit.forks import restart_after_fork

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def _in_child(check: Any) -> int:
    """Fork; the child exits with ``check()``'s code (1 when it raised); returns that code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = check()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _threads() -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.is_alive()}


def test_a_runtimes_threads_restart_in_a_forked_child_by_themselves(tmp_path: Path) -> None:
    built = runtime.build(
        Settings.load(environ={}, spool_dir=str(tmp_path / "spool"), block_seconds=5)
    )
    try:
        spool = built.recorder.delivery.spool
        detector = built.detector
        assert spool is not None and detector is not None
        parent_dir = spool.spool.path

        def check() -> int:
            # Nothing was called: the hooks registered by the parts themselves ran.
            names = _threads()
            if "otel_secaudit-spool-sender" not in names:
                return 2
            if "otel-secaudit-detector" not in names:
                return 3
            if spool.spool.path == parent_dir:  # the child claimed a worker directory
                return 4
            detector.submit(Violation("auth.login.failed", "203.0.113.9", None, "", 0.0))
            return 0 if detector.flush(5) else 5

        assert _in_child(check) == 0
        assert spool.spool.path == parent_dir  # the parent kept its own
    finally:
        built.close(0)


def test_a_closed_runtime_stays_closed_in_a_forked_child(tmp_path: Path) -> None:
    built = runtime.build(
        Settings.load(environ={}, spool_dir=str(tmp_path / "spool"), block_seconds=5)
    )
    built.close(0)
    before = _threads()

    def check() -> int:
        return 0 if _threads() <= before else 2

    assert _in_child(check) == 0


class _Part:
    def __init__(self, marks: list[str], name: str) -> None:
        self.marks, self.name = marks, name
        restart_after_fork(self.after_fork_in_child)

    def after_fork_in_child(self) -> None:
        self.marks.append(self.name)


def test_the_fork_hook_holds_its_part_weakly() -> None:
    marks: list[str] = []
    kept = _Part(marks, "kept")
    collected = _Part(marks, "collected")
    del collected
    gc.collect()

    def check() -> int:
        return 0 if marks == ["kept"] else 2

    assert _in_child(check) == 0
    assert marks == [] and kept.name == "kept"  # the parent ran no hook
