"""The documentation lists what the code declares: every setting has a row in the README's
Configuration table with its default, and docs/reference.md lists the event catalogue and the
attribute keys as the code has them (a name added or changed in one place fails here)."""

from __future__ import annotations

import re
from pathlib import Path

from otel_secaudit import attributes as attr
from otel_secaudit.config import ENV_PREFIX, SETTINGS
from otel_secaudit.events import CATALOGUE

ROOT = Path(__file__).resolve().parent.parent


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + len(heading) + 2)
    return text[start : end if end != -1 else len(text)]


def _rows(section: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("|---")
    ]


def test_every_setting_has_a_readme_row_with_its_default() -> None:
    section = _section((ROOT / "README.md").read_text(encoding="utf-8"), "## Configuration")
    documented = {row[0].strip("`"): row[1].strip("`") for row in _rows(section)}
    for name, declared in SETTINGS.items():
        variable = ENV_PREFIX + name.upper()
        assert variable in documented, f"{variable} has no row in the README's Configuration"
        shown = documented[variable]
        expected = declared.default or "(none)"
        assert shown.lower() == expected.lower(), (variable, shown, expected)


def test_the_reference_lists_the_event_catalogue() -> None:
    section = _section(
        (ROOT / "docs" / "reference.md").read_text(encoding="utf-8"), "## Event catalogue"
    )
    listed = {row[0].strip("`"): tuple(row[1:4]) for row in _rows(section) if row[0] != "name"}
    assert listed == {
        spec.name: (spec.category, spec.outcome, spec.severity) for spec in CATALOGUE.values()
    }


def test_the_reference_names_every_attribute_and_instrument() -> None:
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", text))
    # `security.abuse.scope`, `.key`...: one row names the abuse keys by their common prefix
    named |= {"security.abuse." + tail for tail in re.findall(r"`\.([a-z_]+)`", text)}
    keys = {
        value
        for key, value in vars(attr).items()
        if key.isupper() and isinstance(value, str) and "." in value
    }
    assert keys - named == set()
