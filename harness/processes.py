"""Processes the tests and benchmarks start: a free loopback port, waiting for a condition,
a subprocess serving HTTP, and the real binaries they need (``redis-server``, ``openssl``...).

A missing binary raises :class:`MissingBinary`. What that means is the caller's policy: the
test suite (tests/conftest.py) reports it as a skip on a developer machine and as a failure
under ``CI=true``; a benchmark just stops with the message.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: True under ``CI=true`` (or 1/yes): a missing server is a failure there, never a skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class MissingBinary(RuntimeError):
    """A program the harness needs is not installed (the message says how to get it)."""


#: The Debian package that ships a program, where the names differ (.ci/run installs them).
PACKAGE_OF = {
    "amtool": "prometheus-alertmanager",
    "promtool": "prometheus",
    "redis-cli": "redis-tools",
}


def require_binary(name: str) -> str:
    """The path of the program ``name``; :class:`MissingBinary` when it is not installed (the
    message names the Debian package that ships it)."""
    path = shutil.which(name) or (
        f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None
    )
    if path is None:
        package = PACKAGE_OF.get(name, name)
        raise MissingBinary(
            f"{name} is not installed (.ci/run installs it: apt-get install -y {package})"
        )
    return path


# Not the module-level generator: hypothesis and tests seed it, and parallel processes would
# then try the same ports in the same order.
_random = random.SystemRandom()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, chosen below the kernel's ephemeral
    range: a server that goes down and comes back on its port (a collector outage) cannot
    find it taken by an outgoing connection, nor by a client's reconnect attempt that TCP
    connected to itself (both take ephemeral ports)."""
    low, _ = _ephemeral_range()
    ceiling = max(low, 12000)
    for _ in range(200):
        port = _random.randrange(10000, ceiling)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; AssertionError
    on timeout (in a test, the test fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


@dataclass
class Served:
    """A subprocess serving HTTP on a loopback port (see :func:`serve_subprocess`)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` and wait for the process to exit (SIGKILL after 15 s)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def serve_subprocess(
    args: list[str], port: int, env: dict[str, str], cwd: str | None = None, timeout: float = 30
) -> Served:
    """Start ``args`` (e.g. ``opentelemetry-instrument uvicorn app:app --port N``) and wait
    until it accepts connections on ``port``. Output goes to a temp file for diagnosis."""
    log = tempfile.NamedTemporaryFile(prefix="secaudit-app-", suffix=".log", delete=False)
    process = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    served = Served(process, port, log.name)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{args} exited early:\n{served.output()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_for(up, timeout=timeout)
    return served
