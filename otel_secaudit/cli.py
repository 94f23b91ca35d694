"""The ``otel-secaudit`` command.

``otel-secaudit demo [--framework {fastapi,django}]``
    Serves the bundled demo FastAPI app (or, with ``--framework django``, the bundled Django
    project, :mod:`otel_secaudit.demo.django_site`) on loopback (instrumented as
    ``opentelemetry-instrument`` would), plays an attack scenario against it with real HTTP
    requests and prints the security report. Telemetry goes to OTLP/JSON lines files in
    ``--out`` (``logs.jsonl``, ``traces.jsonl``, ``metrics.jsonl``) and, when a collector is
    configured (``--otlp-endpoint`` or ``OTEL_EXPORTER_OTLP_*ENDPOINT``), to the collector as
    well. The report is read back from the files, exactly as ``otel-secaudit report`` would
    read them (:mod:`otel_secaudit.commands.demo`).

``otel-secaudit report PATH [filters] [--format text|json|html] [--html FILE]``
    Summarizes an output folder (``otlp_json_dir`` exporters, ``otel-secaudit demo``), a
    collector ``file`` exporter archive, or a folder of ``.json`` / ``.jsonl`` OTLP/JSON files,
    filtered by ``--event`` (``auth.*``), ``--since``/``--until``, ``--user-id``,
    ``--user-hash``, ``--user-name``, ``--address``, ``--trace``; ``--trace`` alone prints the
    timeline of one trace; ``--html`` writes the incident report as one self-contained page
    (links to Jaeger / Grafana with ``--jaeger-url`` / ``--grafana-url``). Corrupt lines are
    skipped with a warning naming file and line (``--strict``: fail instead)
    (:mod:`otel_secaudit.commands.report`).

``otel-secaudit blocks list | release ADDRESS [--store URI]``
    The active blocks of a shared store, and releasing one early
    (:mod:`otel_secaudit.commands.blocks`).

Exit codes: 0 success, 1 the demo's self-check failed (events recorded but missing from the
files), 2 bad usage, bad path, unusable input or an unreachable store (a one-line message, no
traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import DEMO_EXTRA_HINT, UsageProblem
from .commands import blocks as blocks_command
from .commands import demo as demo_command
from .commands import report as report_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-secaudit",
        description="Security telemetry for OpenTelemetry: demo, report and blocks.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_command.add_parser(commands)
    report_command.add_parser(commands)
    blocks_command.add_parser(commands)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return demo_command.run(args)
    if args.command == "blocks":
        return blocks_command.run(args)
    return report_command.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otel-secaudit`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        from .demo.records import ReportError
    except ImportError as exc:  # pragma: no cover - the records module has no dependency
        print(f"otel-secaudit: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except (ReportError, UsageProblem) as exc:
        print(f"otel-secaudit: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # rich, fastapi, ... live in the demo extra
        print(f"otel-secaudit: error: {exc}; {DEMO_EXTRA_HINT}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
