"""A real headless browser for the HTML report tests: Debian's ``chromium`` (``.ci/run``
installs it). Without it the tests skip locally; under ``CI=true`` they fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from harness import MissingBinary

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI containers
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--no-first-run",
    "--hide-scrollbars",
)


def chromium() -> str:
    """The browser binary; :class:`harness.MissingBinary` when there is none (the test
    suite skips the test, or fails it under CI=true)."""
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise MissingBinary("chromium is not installed (.ci/run installs it: apt-get install chromium)")


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    process = subprocess.run(
        [chromium(), *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    return process


def dump_dom(url: str, profile: Path) -> str:
    """The DOM after the page loaded and its scripts ran, serialized by the browser."""
    return _run(["--virtual-time-budget=2000", "--dump-dom", url], profile).stdout


def screenshot(url: str, target: Path, profile: Path, size: str = "1280,2400") -> Path:
    _run([f"--window-size={size}", f"--screenshot={target}", url], profile)
    assert target.exists() and target.stat().st_size > 10_000
    return target


class Element:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs, self.text = tag, attrs, ""


class DOM(HTMLParser):
    """Every element with its attributes and its text content (descendants included)."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(markup)

    _VOID = frozenset({"meta", "input", "br", "img", "link", "hr", "source", "wbr"})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in self._VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index].tag == tag:
                del self._open[index:]
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Elements by tag and exact attribute values (``class_`` for ``class``)."""
        wanted = {key.rstrip("_").replace("_", "-"): value for key, value in attrs.items()}
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag)
            and all(e.attrs.get(key) == value for key, value in wanted.items())
        ]


class Browser:
    """Chromium driven over the DevTools protocol through ``--remote-debugging-pipe`` (file
    descriptors 3 and 4, NUL-terminated JSON): clicks and reads a page the way a user would,
    with the standard library only.

    Usage: ``with Browser(profile) as browser: browser.open(url); browser.evaluate("...")``.
    """

    def __init__(self, profile: Path, timeout: float = 30.0) -> None:
        self.profile, self.timeout = profile, timeout
        self._buffer = b""
        self._id = 0
        self._session = ""

    def __enter__(self) -> Browser:
        commands_read, self._commands = os.pipe()
        self._results, results_write = os.pipe()

        def wire_pipes() -> None:  # in the child, before exec: fds 3 (in) and 4 (out)
            inbound, outbound = os.dup(commands_read), os.dup(results_write)
            os.dup2(inbound, 3)
            os.dup2(outbound, 4)

        self.process = subprocess.Popen(
            [chromium(), *_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}"],
            preexec_fn=wire_pipes,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(results_write)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._send("Browser.close", session=False)
        except (OSError, RuntimeError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        os.close(self._commands)
        os.close(self._results)

    def _message(self) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._results], [], [], self.timeout)
            if not ready:
                raise RuntimeError("chromium did not answer in time")
            chunk = os.read(self._results, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def _send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> int:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        return self._id

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> Any:
        wanted = self._send(method, params, session)
        while True:
            message = self._message()
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url: str) -> None:
        """A new tab on ``url``, returned from once its load event fired."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, False
        )
        self._session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})
        while self._message().get("method") != "Page.loadEventFired":
            pass

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page; its value (JSON-serializable)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, target: Path) -> Path:
        import base64

        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        target.write_bytes(base64.b64decode(data["data"]))
        return target
