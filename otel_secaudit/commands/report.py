"""``otel-secaudit report PATH``: the security report of OTLP/JSON files, filtered.

Filters (see :mod:`otel_secaudit.demo.filters`): ``--event`` (repeatable, ``auth.*``),
``--since`` / ``--until`` (``24h`` or ISO 8601), ``--user-id``, ``--user-hash``,
``--user-name`` (hashed with OTEL_SECAUDIT_HASH_KEY, never printed back), ``--address`` (an
address or a network), ``--trace``. ``--format text|json|html``: tables, JSON for scripts, or
the self-contained HTML page on stdout (``--html FILE`` writes the page beside the tables). The
archive is streamed: with filters, memory follows what matched; a progress bar is drawn on
stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import UsageProblem, consoles

__all__ = ["add_parser", "link_arguments", "links", "run", "show"]


def add_parser(commands: Any) -> None:
    """The ``report`` subcommand's arguments."""
    report = commands.add_parser(
        "report",
        help="summarize OTLP/JSON files (a demo folder or a collector file-exporter archive)",
        description="Summarize OTLP/JSON lines: events by name, abuse signals with their "
        "evidence trace IDs, blocks, counters, top offending addresses and users; filter them "
        "to answer an incident's questions (failed logins in the last 24 hours: --event "
        "'auth.login.failed' --since 24h; every denial of one user: --event 'authz.*' "
        "--user-id 123).",
    )
    report.add_argument("path", type=Path, help="a folder or a file of OTLP/JSON lines")
    filters = report.add_argument_group("filters (several values of one filter: any of them)")
    filters.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="NAME",
        help="an event name or a prefix such as 'auth.*' (repeatable)",
    )
    filters.add_argument(
        "--since", metavar="WHEN", help="a duration before now (24h, 90m, 7d) or an ISO 8601 time"
    )
    filters.add_argument("--until", metavar="WHEN", help="same forms as --since")
    filters.add_argument("--user-id", action="append", default=[], metavar="ID", help="user.id")
    filters.add_argument(
        "--user-hash",
        action="append",
        default=[],
        metavar="HEX",
        help="user.hash, or its first 8+ hex characters (as the report shows it)",
    )
    filters.add_argument(
        "--user-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a user name, hashed with OTEL_SECAUDIT_HASH_KEY into its user.hash (the name is "
        "never printed)",
    )
    filters.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="client address or network (203.0.113.7, 10.0.0.0/8, 2001:db8:1:2::/64)",
    )
    filters.add_argument(
        "--trace",
        metavar="TRACE_ID",
        help="one trace (32 hex characters); alone with the text format: its timeline",
    )
    report.add_argument(
        "--format",
        choices=("text", "json", "html"),
        default=None,
        help="text tables (default), JSON for scripts, or the HTML page on stdout",
    )
    report.add_argument("--json", action="store_true", help="same as --format json")
    report.add_argument(
        "--html",
        metavar="FILE",
        type=Path,
        help="also write the incident report as one self-contained HTML page",
    )
    report.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first corrupt line instead of skipping it",
    )
    report.add_argument("--top", type=int, default=5, help="rows in the top-N tables")
    report.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    link_arguments(report)


def link_arguments(parser: argparse.ArgumentParser) -> None:
    """``--jaeger-url`` and ``--grafana-url`` (report and demo)."""
    parser.add_argument(
        "--jaeger-url",
        metavar="URL",
        help="Jaeger UI base URL: evidence traces link to URL/trace/<id> in the HTML report"
        " (the compose stack: http://localhost:16686)",
    )
    parser.add_argument(
        "--grafana-url",
        metavar="URL",
        help="Grafana base URL: evidence traces and offenders link to Grafana Explore in the"
        " HTML report (the compose stack: http://localhost:3000)",
    )


def links(args: argparse.Namespace) -> Any:
    """The HTML report's links from ``--jaeger-url`` / ``--grafana-url``."""
    from ..demo.html_report import Links

    return Links(jaeger_url=args.jaeger_url, grafana_url=args.grafana_url)


def print_problems(recording: Any) -> None:
    """The skipped lines, one plain line each (no wrapping: file:line stays greppable)."""
    for problem in recording.problems:
        print(f"warning: skipped corrupt line {problem}", file=sys.stderr)
    hidden = recording.skipped_lines - len(recording.problems)
    if hidden > 0:
        print(f"warning: {hidden} more corrupt line(s) skipped", file=sys.stderr)


def _html_page(recording: Any, summary: Any, link_set: Any) -> str:
    from ..demo.html_report import render_html

    return render_html(recording, summary, link_set)


def _write_html(page: str, target: Path) -> None:
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"--html {target}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote the HTML report to {target}", file=sys.stderr)


class _Bar:
    """A rich progress bar on stderr, for :func:`otel_secaudit.demo.otlp_json.load`."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None

    def start(self, description: str, total_bytes: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=max(total_bytes, 1))

    def advance(self, done_bytes: int) -> None:
        self.progress.advance(self.task, done_bytes)


def _hash_name() -> Any:
    """user name -> user.hash, with the instances' OTEL_SECAUDIT_HASH_KEY."""
    from ..config import ConfigError, Settings
    from ..redaction.pipeline import hash_identity

    raw = os.environ.get("OTEL_SECAUDIT_HASH_KEY", "")
    if not raw.strip():
        raise UsageProblem(
            "--user-name needs OTEL_SECAUDIT_HASH_KEY, the key the instances hash user names "
            "with (or pass the user.hash with --user-hash)"
        )
    try:
        key = Settings.load(environ={"OTEL_SECAUDIT_HASH_KEY": raw}).hash_key
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None
    assert key is not None
    return lambda name: hash_identity(key, name)


def _query(args: argparse.Namespace) -> Any:
    from ..demo.filters import Query

    return Query.build(
        events=args.event,
        since=args.since,
        until=args.until,
        user_ids=args.user_id,
        user_hashes=args.user_hash,
        user_names=args.user_name,
        hash_name=_hash_name() if args.user_name else None,
        addresses=args.address,
        trace_ids=[args.trace] if args.trace else [],
    )


def show(
    path: Path,
    *,
    strict: bool,
    top: int,
    output: str = "text",
    html: Path | None = None,
    link_set: Any = None,
    query: Any = None,
    progress: bool = False,
) -> Any:
    """Load, summarize and print; returns the summary (the demo checks it)."""
    from ..demo.otlp_json import load
    from ..demo.render import render_summary
    from ..demo.summary import summarize

    out, err = consoles()
    bar = _Bar(err) if progress else None
    if bar is not None:
        with bar.progress:
            recording = load(path, strict=strict, query=query, progress=bar)
    else:
        recording = load(path, strict=strict, query=query)
    print_problems(recording)
    summary = summarize(recording, top=top)
    if output == "json":
        print(json.dumps(summary.to_dict(), indent=2, default=str))
    elif output == "html":
        sys.stdout.write(_html_page(recording, summary, link_set))
    else:
        render_summary(summary, out)
    if html is not None:
        _write_html(_html_page(recording, summary, link_set), html)
    return summary


def _timeline(args: argparse.Namespace) -> None:
    from ..demo.otlp_json import load
    from ..demo.render import render_timeline
    from ..demo.report import timeline

    out, err = consoles()
    query = _query(args)  # the trace alone: its records and spans, streamed
    if not args.no_progress and sys.stderr.isatty():
        bar = _Bar(err)
        with bar.progress:
            recording = load(args.path, strict=args.strict, query=query, progress=bar)
    else:
        recording = load(args.path, strict=args.strict, query=query)
    print_problems(recording)
    rows = timeline(recording, args.trace)
    render_timeline(args.trace.strip().lower(), rows, out)


def run(args: argparse.Namespace) -> int:
    """``otel-secaudit report``."""
    if args.top < 1:
        raise UsageProblem("--top must be at least 1")
    if args.json and args.format not in (None, "json"):
        raise UsageProblem("--json is --format json; give one of them")
    output = "json" if args.json else (args.format or "text")
    query = _query(args)
    others = (args.event, args.since, args.until, args.user_id, args.user_hash, args.user_name)
    alone = not any(others) and not args.address
    if args.trace and output == "text" and alone and args.html is None:
        _timeline(args)
        return 0
    try:
        show(
            args.path,
            strict=args.strict,
            top=args.top,
            output=output,
            html=args.html,
            link_set=links(args),
            query=query,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    finally:
        print_dead_letter()
    return 0


def print_dead_letter() -> None:
    """Records the spool of ``OTEL_SECAUDIT_SPOOL_DIR`` could never deliver (to stderr, so a
    JSON report stays one document)."""
    from ..delivery.deadletter import dead_letter_lines

    for line in dead_letter_lines(os.environ.get("OTEL_SECAUDIT_SPOOL_DIR")):
        print(line, file=sys.stderr)
