"""Terminal rendering of a :class:`~otel_secaudit.demo.report.Summary` and of a trace timeline
(rich tables). Shared by ``otel-secaudit demo`` and ``otel-secaudit report``.

Every value that comes from telemetry is an attacker's choice (a user name, a User-Agent, an
attribute of another service in a collector archive), so it reaches rich only as
:class:`rich.text.Text` built by :func:`_t` (never as a markup string: ``[/]`` would raise
``MarkupError``, ``[link=...]`` would become a hyperlink), with control characters escaped by
:func:`~otel_secaudit.demo.report.printable` (no ANSI / OSC 8 sequences reach the terminal)."""

from __future__ import annotations

import re

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .. import attributes as attr
from .report import MAX_SHOWN, Summary, TimelineRow, format_time, printable

__all__ = ["render_summary", "render_timeline"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _t(value: object, style: str = "", limit: int = MAX_SHOWN) -> Text:
    """A value from telemetry as plain text (no markup, no control characters)."""
    return Text(printable(value, limit), style=style)


def _events_table(summary: Summary) -> Table:
    counted = {
        str(attributes.get(attr.EVENT_NAME)): value
        for attributes, value in summary.counters.get(attr.METRIC_EVENTS, [])
    }
    table = Table(title="Security events by name", title_justify="left")
    table.add_column("event")
    table.add_column("outcome")
    table.add_column("log records", justify="right")
    table.add_column(attr.METRIC_EVENTS, justify="right")
    for name, count in summary.events.items():
        outcome = summary.outcomes.get(name, "")
        table.add_row(
            _t(name),
            _t(outcome, style="red" if outcome == "failure" else ""),
            _t(count),
            _t(counted.get(name, 0)),
        )
    return table


def _signals(summary: Summary) -> list[RenderableType]:
    """One block per abuse signal: what crossed which threshold, the violations behind it
    and every evidence trace ID (``otel-secaudit report PATH --trace ID`` opens one)."""
    parts: list[RenderableType] = [
        Text("Abuse signals (evidence: trace IDs of the violations)", style="italic")
    ]
    for signal in summary.abuse_signals:
        if signal.scope in ("host", "scan"):
            who = f"client.address={signal.key}"
        elif _HEX64.match(signal.key):
            who = f"user.hash={signal.key[:16]}…"
        else:
            who = f"user.id={signal.key}"
        header = Text.assemble(
            _t(f"{signal.time[11:23]}  ", "dim"),
            _t(signal.event, "bold red"),
            _t(f"  {who}  {signal.count}/{signal.threshold} in {signal.window_s:g} s"),
        )
        breakdown = ", ".join(f"{name} x{count}" for name, count in signal.breakdown.items())
        lines = [header, _t(f"    violations: {breakdown or '-'}")]
        ids = signal.trace_ids
        lines.append(_t(f"    evidence ({len(ids)} traces):"))
        for i in range(0, len(ids), 2):
            lines.append(_t("      " + "  ".join(ids[i : i + 2])))
        parts.append(Group(*lines))
    return parts


def _blocks_table(summary: Summary) -> Table:
    table = Table(title="Blocks", title_justify="left")
    table.add_column("time (UTC)")
    table.add_column("event")
    table.add_column("client.address")
    table.add_column("seconds", justify="right")
    for block in summary.blocks:
        table.add_row(
            _t(block.time[11:23]), _t(block.event), _t(block.address), _t(f"{block.block_s:g}")
        )
    return table


def _counters_table(summary: Summary) -> Table:
    table = Table(title="Counters (last cumulative value per series)", title_justify="left")
    table.add_column("metric")
    table.add_column("attributes", overflow="fold")
    table.add_column("value", justify="right")
    for metric, series in summary.counters.items():
        if metric == attr.METRIC_EVENTS:
            continue  # shown beside the log record counts above
        for attributes, value in series:
            shown = ", ".join(
                f"{_short(k)}={v}"
                for k, v in sorted(attributes.items())
                if k != attr.EVENT_CATEGORY
            )
            table.add_row(_t(metric), _t(shown, limit=4 * MAX_SHOWN), _t(value))
    return table


def _short(key: str) -> str:
    return key.removeprefix("security.").removeprefix("event.").removeprefix("http.")


def _top_table(title: str, column: str, rows: list[tuple[str, int]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(column)
    table.add_column("violations", justify="right")
    for key, count in rows:
        table.add_row(_t(key), _t(count))
    return table


def render_summary(summary: Summary, console: Console) -> None:
    """Print the report."""
    console.print(
        f"[bold]otel-secaudit report[/bold]: {len(summary.files)} file(s), "
        f"{summary.requests} export requests, {summary.log_records} security log records, "
        f"{summary.spans} spans, {summary.violations} violations, "
        f"{len(summary.abuse_signals)} abuse signals"
    )
    if summary.filters:
        shown = "; ".join(
            f"{name}={', '.join(map(str, v)) if isinstance(v, list) else v}"
            for name, v in summary.filters.items()
        )
        console.print(_t(f"filters: {shown} (counters are not filtered: not shown)", "bold"))
    if summary.skipped_lines:
        console.print(
            f"[yellow]warning:[/yellow] {summary.skipped_lines} corrupt line(s) skipped "
            "(see the messages above)"
        )
    parts: list[RenderableType] = [_events_table(summary)]
    if summary.abuse_signals:
        parts.extend(_signals(summary))
    else:
        parts.append(Text("no abuse signals"))
    if summary.blocks:
        parts.append(_blocks_table(summary))
    if not summary.filters:  # counters cannot be filtered: not read then
        parts.append(_counters_table(summary))
    parts.append(
        _top_table("Top offending client addresses", "client.address", summary.top_addresses)
    )
    parts.append(_top_table("Top offending users", "user", summary.top_users))
    console.print(Group(*parts))


def render_timeline(trace_id: str, rows: list[TimelineRow], console: Console) -> None:
    """Print one trace's spans, span events and log records in time order."""
    start = rows[0].time_ns
    table = Table(title=_t(f"Trace {trace_id}, from {format_time(start)}"), title_justify="left")
    table.add_column("+ms", justify="right")
    table.add_column("kind")
    table.add_column("name")
    table.add_column("details", overflow="fold")
    for row in rows:
        table.add_row(
            _t(f"{(row.time_ns - start) / 1e6:.1f}"),
            _t(row.kind),
            _t(row.name),
            _t(row.detail, limit=8 * MAX_SHOWN),
        )
    console.print(table)
