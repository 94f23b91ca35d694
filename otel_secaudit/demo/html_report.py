"""The incident report as one self-contained HTML page (``otel-secaudit report PATH --html FILE``,
and ``/report`` on ``otel-secaudit demo --serve``).

One file, nothing fetched: inline CSS, an inline SVG chart, a few lines of inline script (the
page works without it: evidence traces are ``<details>`` elements). Sections: summary counts,
violations per minute by event, abuse signals with every evidence trace expandable into that
trace's timeline (spans, span events, log records), blocks, top offending addresses and users,
events by name, skipped input lines. With ``jaeger_url`` / ``grafana_url`` every evidence trace
links to Jaeger (``/trace/<id>``) and Grafana Explore.

Every value from telemetry is an attacker's choice: it goes through
:func:`~otel_secaudit.demo.report.printable` (control and bidi characters escaped) and
:func:`html.escape` (quotes included) before it reaches the page, a trace ID becomes part of a
link only when it is 32 hex characters, and the page's Content-Security-Policy runs only its own
script (a per-page nonce) and loads nothing.
"""

from __future__ import annotations

import html
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final
from urllib.parse import quote, urlsplit

from .. import attributes as attr
from .html_chart import ViolationChart, chart_svg, violation_chart
from .report import (
    AbuseSignal,
    Recording,
    ReportError,
    Summary,
    TimelineRow,
    format_time,
    printable,
    timeline,
)

__all__ = ["Links", "ViolationChart", "render_html", "violation_chart"]

_TRACE_ID: Final = re.compile(r"^[0-9a-f]{32}$")
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
_DETECTOR_EVENTS: Final = frozenset(
    {"abuse.host", "abuse.user", "abuse.scan", "abuse.block.started", "abuse.block.ended"}
)
#: Evidence timelines rendered in full; past this, the trace ID and its links only.
MAX_TIMELINES: Final = 300


def _e(value: Any, limit: int = 300) -> str:
    """Telemetry value -> HTML text (or a quoted attribute value)."""
    return html.escape(printable(value, limit), quote=True)


# -- links ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Links:
    """Base URLs of the viewing stack; a link is only made to a checked trace ID.

    Raises:
        ReportError: a base URL that is not http(s).
    """

    jaeger_url: str | None = None
    grafana_url: str | None = None
    #: Grafana data source UIDs (deploy/grafana/provisioning/datasources/datasources.yaml).
    jaeger_uid: str = "jaeger"
    loki_uid: str = "loki"

    def __post_init__(self) -> None:
        for name in ("jaeger_url", "grafana_url"):
            value = getattr(self, name)
            if value is None:
                continue
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ReportError(f"--{name.replace('_', '-')} {value!r}: expected http(s)://host")
            object.__setattr__(self, name, value.rstrip("/"))

    def trace(self, trace_id: str) -> list[tuple[str, str]]:
        """(label, URL) pairs for one trace."""
        if not _TRACE_ID.match(trace_id):
            return []
        links = []
        if self.jaeger_url:
            links.append(("Jaeger", f"{self.jaeger_url}/trace/{trace_id}"))
        if self.grafana_url:
            query = {"refId": "A", "datasource": {"type": "jaeger", "uid": self.jaeger_uid}}
            links.append(("Grafana", self._explore(self.jaeger_uid, {**query, "query": trace_id})))
        return links

    def logs_of_address(self, address: str) -> str | None:
        """Grafana Explore on Loki: the security log records from one client address."""
        if not self.grafana_url:
            return None
        quoted = json.dumps(address)  # a LogQL string literal: quotes and backslashes escaped
        expr = f'{{service_name=~".+"}} | scope_name="otel_secaudit" | client_address={quoted}'
        query = {"refId": "A", "datasource": {"type": "loki", "uid": self.loki_uid}, "expr": expr}
        return self._explore(self.loki_uid, query)

    def _explore(self, uid: str, query: dict[str, Any]) -> str:
        panes = {
            "a": {"datasource": uid, "queries": [query], "range": {"from": "now-24h", "to": "now"}}
        }
        encoded = quote(json.dumps(panes, separators=(",", ":")), safe="")
        return f"{self.grafana_url}/explore?schemaVersion=1&orgId=1&panes={encoded}"


def _link_list(links: Iterable[tuple[str, str]]) -> str:
    return " ".join(
        f'<a class="ext" href="{html.escape(url, quote=True)}" target="_blank" '
        f'rel="noopener noreferrer">{html.escape(label)}</a>'
        for label, url in links
    )


# -- sections -------------------------------------------------------------------------------


def _cards(summary: Summary) -> str:
    cards = [
        ("violations", summary.violations),
        ("abuse-signals", len(summary.abuse_signals)),
        ("blocks", sum(1 for b in summary.blocks if b.event == "abuse.block.started")),
        ("log-records", summary.log_records),
        ("spans", summary.spans),
        ("export-requests", summary.requests),
        ("skipped-lines", summary.skipped_lines),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card" data-count="{name}"><span class="n">{value}</span> '
            f'<span class="l">{name.replace("-", " ")}</span></div>'
            for name, value in cards
        )
        + "</div>"
    )


def _who(signal: AbuseSignal) -> str:
    if signal.scope in ("host", "scan"):
        return f"client.address={signal.key}"
    if _HEX64.match(signal.key):
        return f"user.hash={signal.key[:16]}…"
    return f"user.id={signal.key}"


def _timeline_table(rows: Sequence[TimelineRow]) -> str:
    start = rows[0].time_ns
    body = "".join(
        f'<tr class="row-{_e(row.kind.split()[0])}"><td class="num">'
        f"{(row.time_ns - start) / 1e6:.1f}</td><td>{_e(row.kind)}</td>"
        f'<td>{_e(row.name)}</td><td class="detail">{_e(row.detail, 2400)}</td></tr>'
        for row in rows
    )
    return (
        f'<table class="timeline"><caption>from {_e(format_time(start))}</caption>'
        "<thead><tr><th>+ms</th><th>kind</th><th>name</th><th>details</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


class _Evidence:
    """Renders evidence traces, each timeline computed once and reused across signals."""

    def __init__(self, recording: Recording, links: Links, budget: int) -> None:
        self.recording, self.links, self.budget = recording, links, budget
        self.cache: dict[str, str] = {}
        self._by_trace: dict[str, Recording] | None = None

    def _of(self, trace_id: str) -> Recording:
        """The spans and logs of one trace (indexed once: an archive may hold millions)."""
        if self._by_trace is None:
            self._by_trace = {}
            for span in self.recording.spans:
                self._by_trace.setdefault(span.trace_id, Recording()).spans.append(span)
            for log in self.recording.logs:
                if log.trace_id:
                    self._by_trace.setdefault(log.trace_id, Recording()).logs.append(log)
        return self._by_trace.get(trace_id) or Recording()

    def trace(self, trace_id: str) -> str:
        checked = trace_id if _TRACE_ID.match(trace_id) else ""
        links = _link_list(self.links.trace(checked)) if checked else ""
        head = f'<summary><code class="trace-id">{_e(trace_id, 64)}</code> {links}</summary>'
        body = self._body(checked)
        return f'<details class="evidence" data-trace-id="{_e(checked, 64)}">{head}{body}</details>'

    def _body(self, trace_id: str) -> str:
        if not trace_id:
            return '<p class="missing">not a trace ID</p>'
        if trace_id in self.cache:
            return self.cache[trace_id]
        if self.budget <= 0:
            return '<p class="missing">timeline not rendered (page size limit)</p>'
        self.budget -= 1
        try:
            body = _timeline_table(timeline(self._of(trace_id), trace_id))
        except ReportError:
            body = (
                '<p class="missing">not in this recording: the trace may have been sampled '
                "out (keep evidence with the collector's tail_sampling policy)</p>"
            )
        self.cache[trace_id] = body
        return body


def _signals(summary: Summary, evidence: _Evidence) -> str:
    if not summary.abuse_signals:
        return '<p class="empty">No abuse signals.</p>'
    items = []
    for signal in summary.abuse_signals:
        breakdown = ", ".join(f"{name} ×{count}" for name, count in signal.breakdown.items())
        traces = "".join(evidence.trace(trace_id) for trace_id in signal.trace_ids)
        items.append(
            f'<li class="signal" data-event="{_e(signal.event)}" data-scope="{_e(signal.scope)}">'
            f'<div class="sig-head"><span class="time">{_e(signal.time[11:23])}</span> '
            f'<strong class="bad">{_e(signal.event)}</strong> <span class="who">'
            f"{_e(_who(signal))}</span> {signal.count}/{signal.threshold} in "
            f"{signal.window_s:g} s</div>"
            f'<div class="breakdown">violations: {_e(breakdown or "-")}</div>'
            f'<div class="evidence-list">evidence ({len(signal.trace_ids)} traces):'
            f"{traces}</div></li>"
        )
    return '<ol class="signals">' + "".join(items) + "</ol>"


def _table(table_id: str, headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """``rows`` hold HTML already escaped by the caller."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="empty">none</td></tr>'
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _blocks(summary: Summary, links: Links) -> str:
    rows = []
    for block in summary.blocks:
        trace = _link_list(links.trace(block.trace_id)) if block.trace_id else ""
        rows.append(
            [
                _e(block.time),
                _e(block.event),
                _e(block.address),
                f"{block.block_s:g}",
                f"<code>{_e(block.trace_id, 64)}</code> {trace}",
            ]
        )
    return _table("blocks", ["time (UTC)", "event", "client.address", "seconds", "trace"], rows)


def _offenders(summary: Summary, links: Links) -> str:
    address_rows = []
    for address, count in summary.top_addresses:
        logs = links.logs_of_address(address)
        link = _link_list([("logs in Grafana", logs)]) if logs else ""
        address_rows.append([f"<code>{_e(address)}</code> {link}", str(count)])
    user_rows = [[f"<code>{_e(user)}</code>", str(count)] for user, count in summary.top_users]
    return (
        '<div class="two"><div><h3>Client addresses</h3>'
        + _table("top-addresses", ["client.address", "violations"], address_rows)
        + "</div><div><h3>Users</h3>"
        + _table("top-users", ["user", "violations"], user_rows)
        + "</div></div>"
    )


def _events(summary: Summary) -> str:
    counted = {
        str(attributes.get(attr.EVENT_NAME)): value
        for attributes, value in summary.counters.get(attr.METRIC_EVENTS, [])
    }
    rows = [
        [
            _e(name),
            f'<span class="{"bad" if summary.outcomes.get(name) == "failure" else ""}">'
            f"{_e(summary.outcomes.get(name, ''))}</span>",
            str(count),
            _e(counted.get(name, 0)),
        ]
        for name, count in summary.events.items()
    ]
    return _table("events", ["event", "outcome", "log records", attr.METRIC_EVENTS], rows)


def _filters(summary: Summary) -> str:
    """The filters the page was made with, so a reader knows what it leaves out."""
    if not summary.filters:
        return '<p class="meta" id="filters">All records (no filters).</p>'
    rows = "".join(
        f"<tr><th>{_e(name)}</th><td>{_e(', '.join(map(str, values)), 2000)}</td></tr>"
        if isinstance(values, list)
        else f"<tr><th>{_e(name)}</th><td>{_e(values)}</td></tr>"
        for name, values in summary.filters.items()
    )
    return (
        '<section id="filters"><h2>Filters applied</h2><table id="filters-table">'
        f'<tbody>{rows}</tbody></table><p class="meta">Only the security log records '
        "matching every filter (and the spans of their traces) are counted below; counters "
        "are not filtered and not shown.</p></section>"
    )


def _problems(recording: Recording) -> str:
    if not recording.skipped_lines:
        return ""
    items = "".join(f"<li><code>{_e(problem, 600)}</code></li>" for problem in recording.problems)
    hidden = recording.skipped_lines - len(recording.problems)
    more = f"<li>{hidden} more</li>" if hidden > 0 else ""
    return (
        f'<section id="problems"><h2>Skipped input lines ({recording.skipped_lines})</h2>'
        f"<ul>{items}{more}</ul></section>"
    )


# -- the page -------------------------------------------------------------------------------

_CSS: Final = """
:root{--fg:#1d2430;--muted:#5b6573;--line:#d9dee5;--bad:#b3261e;--bg:#fff;--soft:#f4f6f9}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;
color:var(--fg);background:var(--bg);margin:0 auto;max-width:1200px;padding:16px 24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
var(--line);padding-bottom:4px}h3{font-size:14px;margin:8px 0}.meta{color:var(--muted)}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}.card{border:1px solid var(--line);
border-radius:8px;padding:8px 14px;min-width:120px;background:var(--soft)}.card .n{display:block;
font-size:22px;font-weight:600}.card .l{color:var(--muted)}table{border-collapse:collapse;
width:100%;margin:6px 0}th,td{border-bottom:1px solid var(--line);padding:3px 8px;
text-align:left;vertical-align:top}th{background:var(--soft)}td.num{text-align:right;
white-space:nowrap}code{font:12px ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.bad{color:var(--bad)}.empty,.missing{color:var(--muted);font-style:italic}
.signals{padding-left:22px}.signal{margin:10px 0}.breakdown,.evidence-list{margin-left:4px}
details.evidence{margin:2px 0 2px 14px}details.evidence>summary{cursor:pointer}
.timeline{font-size:12px}
.timeline td:nth-child(2),.timeline td:nth-child(3){white-space:nowrap}
.timeline .detail{word-break:break-all}.row-log td{background:#fff8e6}
.row-span td:nth-child(2){color:var(--muted)}#chart .grid{stroke:var(--line)}
#chart .axis{font-size:11px;fill:var(--muted)}.legend{margin-right:14px;white-space:nowrap}
.swatch{display:inline-block;width:10px;height:10px;margin:0 4px 0 2px;border-radius:2px}
.two{display:grid;grid-template-columns:1fr 1fr;gap:20px}a.ext{font-size:12px}
.tools button{margin-right:8px}
"""

_SCRIPT: Final = """
document.documentElement.dataset.js = "on";
for (const box of document.querySelectorAll("#legend input")) {
  box.addEventListener("change", () => {
    const group = document.querySelector('#chart g[data-series="' + box.dataset.series + '"]');
    if (group) group.style.display = box.checked ? "" : "none";
  });
}
function setEvidence(open) {
  for (const d of document.querySelectorAll("details.evidence")) d.open = open;
}
document.getElementById("expand-all").addEventListener("click", () => setEvidence(true));
document.getElementById("collapse-all").addEventListener("click", () => setEvidence(false));
function openHash() {
  const id = location.hash.replace(/^#trace-/, "");
  if (!/^[0-9a-f]{32}$/.test(id)) return;
  const d = document.querySelector('details.evidence[data-trace-id="' + id + '"]');
  if (d) { d.open = true; d.scrollIntoView(); }
}
window.addEventListener("hashchange", openHash);
openHash();
const shown = document.querySelectorAll("details.evidence").length;
document.getElementById("evidence-count").textContent = String(shown);
"""


def render_html(
    recording: Recording,
    summary: Summary,
    links: Links | None = None,
    *,
    title: str = "otel-secaudit incident report",
    generated_at: datetime | None = None,
    max_timelines: int = MAX_TIMELINES,
) -> str:
    """The whole page as a string (UTF-8 when written)."""
    links = links or Links()
    nonce = secrets.token_urlsafe(16)
    moment = (generated_at or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S UTC")
    evidence = _Evidence(recording, links, max_timelines)
    chart = violation_chart(recording)
    files = ", ".join(summary.files[:5]) + (" …" if len(summary.files) > 5 else "")
    evidence_total = sum(len(signal.trace_ids) for signal in summary.abuse_signals)
    csp = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<header><h1>{_e(title)}</h1>
<p class="meta">Generated {moment} from {_e(files, 2000)}.</p></header>
{_filters(summary)}
<section id="summary"><h2>Summary</h2>{_cards(summary)}</section>
<section id="timeline"><h2>Violations per {chart.unit} by event ({chart.total})</h2>
{chart_svg(chart)}</section>
<section id="signals"><h2>Abuse signals ({len(summary.abuse_signals)})</h2>
<p class="tools"><button type="button" id="expand-all">Expand all evidence</button>
<button type="button" id="collapse-all">Collapse all</button>
<span class="meta"><span id="evidence-count">{evidence_total}</span>
evidence traces; each opens that trace's spans, span events and log records.</span></p>
{_signals(summary, evidence)}</section>
<section id="blocks-section"><h2>Blocks ({len(summary.blocks)})</h2>
{_blocks(summary, links)}</section>
<section id="offenders"><h2>Top offenders</h2>{_offenders(summary, links)}</section>
<section id="events-section"><h2>Security events by name</h2>{_events(summary)}</section>
{_problems(recording)}
<script nonce="{nonce}">{_SCRIPT}</script>
</body></html>
"""
