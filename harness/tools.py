"""Real command-line tools the tests check configuration with (``promtool``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from .processes import require_binary


def promtool_check_queries(
    expressions: list[str], folder: Path
) -> subprocess.CompletedProcess[str]:
    """Have a real ``promtool`` parse PromQL ``expressions`` (as recording rules in ``folder``)."""
    rules = {
        "groups": [
            {
                "name": "parse-only",
                "rules": [
                    {"record": f"parse:check_{i}:sum", "expr": expr}
                    for i, expr in enumerate(expressions)
                ],
            }
        ]
    }
    path = folder / "queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    return subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
