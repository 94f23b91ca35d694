"""A real headless browser for the HTML report tests: Debian's ``chromium`` (``.ci/run``
installs it). Without it the tests skip locally; under ``CI=true`` they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

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
    """The browser binary; skips the test (fails it under CI=true) when there is none."""
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    message = "chromium is not installed (.ci/run installs it: apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


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
