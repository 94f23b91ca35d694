"""``otel-secaudit report PATH --html FILE``: one self-contained page, checked in a real headless
Chromium with JavaScript on (DOM counts, evidence trace timelines, hostile values as text,
a screenshot)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_secaudit.cli import main
from otel_secaudit.demo.html_report import Links, render_html, violation_chart
from otel_secaudit.demo.report import ReportError, load, summarize

from .browser import DOM, Browser, dump_dom, screenshot
from .conftest import otlp_json_attributes
from .test_report import _hostile_archive

HOSTILE_UA = '<script>document.documentElement.dataset.pwned="ua"</script>'
HOSTILE_USER = '"><img src=x onerror="document.title=\'pwned\'">[/]'
HOSTILE_ADDRESS = "</td></tr></table><script>alert(1)</script>"
BASE_NS = 1_764_043_200_000_000_000  # 2025-11-25T04:00:00Z
ATTACKER = "203.0.113.7"


def _trace_id(n: int) -> str:
    return f"{n + 1:032x}"


def _archive(folder: Path) -> dict[str, Any]:
    """Ten failed logins from one address over ten minutes (one trace each, the hostile
    User-Agent on every one), two from a hostile address, the abuse.host signal with its
    evidence (one trace ID sampled out), a block started and ended."""
    logs, spans = [], []
    failure = {"security.event.outcome": "failure", "security.event.category": "authentication"}
    for n in range(10):
        t = BASE_NS + n * 60_000_000_000
        attributes = {
            **failure,
            "client.address": ATTACKER,
            "user_agent.original": HOSTILE_UA,
            "user.id": HOSTILE_USER,
            "security.reason": "invalid_credentials",
        }
        logs.append(
            {
                "timeUnixNano": str(t + 1_000_000),
                "eventName": "auth.login.failed",
                "severityText": "WARN",
                "traceId": _trace_id(n),
                "spanId": "a" * 16,
                "attributes": otlp_json_attributes(attributes),
            }
        )
        spans.append(
            {
                "traceId": _trace_id(n),
                "spanId": "a" * 16,
                "name": "POST /auth/login",
                "startTimeUnixNano": str(t),
                "endTimeUnixNano": str(t + 5_000_000),
                "attributes": otlp_json_attributes(
                    {"http.route": "/auth/login", "http.response.status_code": 401}
                ),
                "events": [
                    {
                        "timeUnixNano": str(t + 1_000_000),
                        "name": "auth.login.failed",
                        "attributes": otlp_json_attributes(attributes),
                    }
                ],
            }
        )
    for n in range(2):
        logs.append(
            {
                "timeUnixNano": str(BASE_NS + n * 1_000_000_000),
                "eventName": "authz.permission_denied",
                "attributes": otlp_json_attributes({**failure, "client.address": HOSTILE_ADDRESS}),
            }
        )
    evidence = [_trace_id(n) for n in range(9)] + ["f" * 32, HOSTILE_USER]
    end = BASE_NS + 10 * 60_000_000_000
    logs.append(
        {
            "timeUnixNano": str(end),
            "eventName": "abuse.host",
            "traceId": _trace_id(9),
            "spanId": "a" * 16,
            "attributes": otlp_json_attributes(
                {
                    **failure,
                    "security.event.category": "abuse",
                    "security.abuse.scope": "host",
                    "security.abuse.key": ATTACKER,
                    "security.abuse.count": 10,
                    "security.abuse.threshold": 10,
                    "security.abuse.window_s": 3600,
                    "security.abuse.trace_ids": evidence,
                }
            ),
            "body": {"kvlistValue": {"values": otlp_json_attributes({"auth.login.failed": 10})}},
        }
    )
    for name, offset in (("abuse.block.started", 0), ("abuse.block.ended", 300)):
        logs.append(
            {
                "timeUnixNano": str(end + offset * 1_000_000_000),
                "eventName": name,
                "attributes": otlp_json_attributes(
                    {
                        "security.event.outcome": "success",
                        "client.address": ATTACKER,
                        "security.block.seconds": 300,
                    }
                ),
            }
        )
    folder.mkdir(parents=True)
    scope = {"name": "otel_secaudit"}
    lines = [
        {"resourceLogs": [{"scopeLogs": [{"scope": scope, "logRecords": logs}]}]},
        {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "fastapi"}, "spans": spans}]}]},
    ]
    (folder / "archive.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "[[[\n")
    return {"evidence": evidence}


@pytest.fixture
def page(tmp_path: Path, capsys: Any) -> Path:
    _archive(tmp_path / "in")
    target = tmp_path / "incident.html"
    argv = ["report", str(tmp_path / "in"), "--html", str(target)]
    argv += ["--jaeger-url", "http://jaeger.example:16686/", "--grafana-url", "http://g.example"]
    assert main(argv) == 0
    assert "wrote the HTML report" in capsys.readouterr().err
    return target


def test_page_is_self_contained_and_escapes_every_value(page: Path) -> None:
    text = page.read_text()
    # Nothing is fetched: no external script, style, image or font.
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", text)
    assert "@import" not in text and "url(" not in text
    assert text.count("<script") == 1  # the page's own, with its CSP nonce
    for hostile in (HOSTILE_UA, HOSTILE_USER, HOSTILE_ADDRESS):
        assert hostile not in text
    assert "&lt;script&gt;document.documentElement.dataset.pwned=&quot;ua&quot;" in text


def test_in_chromium_counts_evidence_links_and_hostile_values(page: Path, tmp_path: Path) -> None:
    trace_id = _trace_id(3)
    dom = DOM(dump_dom(page.as_uri() + f"#trace-{trace_id}", tmp_path / "profile"))
    (html_element,) = dom.find("html")
    assert html_element.attrs.get("data-js") == "on"  # the page's script ran
    assert "data-pwned" not in html_element.attrs  # and no injected one did
    assert dom.find("title")[0].text == "otel-secaudit incident report"  # then the SVG's
    assert len(dom.find("script")) == 1 and not dom.find("img")

    def count(name: str) -> str:
        (card,) = dom.find("div", class_="card", data_count=name)
        return card.text.split()[0]

    assert count("violations") == "12"
    assert count("abuse-signals") == "1"
    assert count("blocks") == "1"
    assert count("skipped-lines") == "1"  # the truncated "[[[" line
    # The chart: 12 violations in per-minute bar segments (10 logins + 2 denials).
    bars = [int(rect.attrs["data-count"]) for rect in dom.find("rect")]
    assert sum(bars) == 12 and sorted(bars) == [1] * 10 + [2]

    (signal,) = dom.find("li", class_="signal")
    assert signal.attrs["data-event"] == "abuse.host" and ATTACKER in signal.text
    evidence = dom.find("details", class_="evidence")
    assert len(evidence) == 11
    (opened,) = [d for d in evidence if "open" in d.attrs]  # #trace-<id> opened it (script)
    assert opened.attrs["data-trace-id"] == trace_id
    assert "POST /auth/login" in opened.text and "span event" in opened.text
    assert "log WARN" in opened.text and "auth.login.failed" in opened.text
    assert HOSTILE_UA in opened.text  # shown as text, exactly as sent
    (missing,) = dom.find("details", class_="evidence", data_trace_id="f" * 32)
    assert "not in this recording" in missing.text
    (not_an_id,) = dom.find("details", class_="evidence", data_trace_id="")
    assert HOSTILE_USER in not_an_id.text and "Jaeger" not in not_an_id.text

    links = [a.attrs["href"] for a in dom.find("a")]
    assert f"http://jaeger.example:16686/trace/{trace_id}" in links
    explore = [link for link in links if link.startswith("http://g.example/explore?")]
    panes = [json.loads(parse_qs(urlsplit(link).query)["panes"][0]) for link in explore]
    assert {"refId": "A", "datasource": {"type": "jaeger", "uid": "jaeger"}, "query": trace_id} in [
        pane["a"]["queries"][0] for pane in panes
    ]
    loki = [p["a"]["queries"][0]["expr"] for p in panes if p["a"]["datasource"] == "loki"]
    assert any(json.dumps(HOSTILE_ADDRESS) in unquote(expr) for expr in loki)

    (addresses,) = dom.find("table", id="top-addresses")
    assert HOSTILE_ADDRESS in addresses.text and ATTACKER in addresses.text
    (blocks,) = dom.find("table", id="blocks")
    assert "abuse.block.started" in blocks.text and "300" in blocks.text

    shot = screenshot(page.as_uri(), tmp_path / "incident.png", tmp_path / "profile")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_buckets(tmp_path: Path) -> None:
    _archive(tmp_path / "in")
    chart = violation_chart(load(tmp_path / "in"))
    # ten violations a minute apart: 5 s buckets fill the width, the first and last bars hold
    # the first and last violation (no fixed half hour with the incident at its right edge)
    assert chart.bucket_s == 5 and 100 <= chart.buckets <= 120
    logins = chart.counts["auth.login.failed"]
    assert sum(logins) == 10 and logins[0] == 1 and logins[-1] == 1
    assert sum(chart.counts["authz.permission_denied"]) == 2


def test_links_refuse_other_schemes() -> None:
    with pytest.raises(ReportError, match="expected http"):
        Links(jaeger_url="javascript:alert(1)//")
    assert Links(jaeger_url="http://j/").trace("not-hex") == []


def test_render_without_links_or_signals(tmp_path: Path) -> None:
    folder = tmp_path / "quiet"
    folder.mkdir()
    (folder / "x.jsonl").write_text(json.dumps({"resourceSpans": []}) + "\n")
    recording = load(folder)
    page = render_html(recording, summarize(recording))
    assert "No abuse signals." in page and "No violations." in page and "/trace/" not in page


# -- fuzz: whatever telemetry holds, the page's structure is the page's own --------------------

_OWN_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p", "section",
    "div", "span", "svg", "line", "text", "g", "rect", "label", "input", "ol", "li", "details",
    "summary", "code", "a", "table", "caption", "thead", "tbody", "tr", "th", "td", "button",
    "strong", "ul", "script",
}  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hostile=st.one_of(
        st.sampled_from(
            [
                HOSTILE_UA,
                HOSTILE_USER,
                HOSTILE_ADDRESS,
                "<svg onload=alert(1)>",
                "javascript:alert(1)",
                '" onmouseover="alert(1)',
                "</textarea><iframe src=//evil.example>",
                "]]><!--",
                "\u202e<b>x</b>",
            ]
        ),
        st.text(alphabet="<>\"'&/=; :[]()abcdefhijklmnoprstvx\u202e\x00\x1b", min_size=1),
        st.text(min_size=1, max_size=60),
    )
)
def test_fuzz_hostile_values_never_add_markup(tmp_path: Path, hostile: str) -> None:
    folder = tmp_path / f"in{abs(hash(hostile))}"
    _hostile_archive(folder, hostile)
    recording = load(folder)
    page = render_html(
        recording, summarize(recording), Links("http://j.example", "http://g.example")
    )
    dom = DOM(page)
    assert {e.tag for e in dom.elements} <= _OWN_TAGS
    assert len(dom.find("script")) == 1
    for element in dom.elements:
        assert not any(name.startswith("on") for name in element.attrs), element.attrs
        href = element.attrs.get("href")
        if href is not None:
            assert href.startswith(("http://j.example/", "http://g.example/")), href


def test_chart_widens_buckets_for_long_recordings(tmp_path: Path) -> None:
    """Two days of violations: half-hour buckets, at most 120 bars, nothing lost."""
    from otel_secaudit.demo.report import LogEntry, Recording

    recording = Recording()
    two_days_s = 2 * 24 * 3600
    for second in range(0, two_days_s, 600):
        recording.logs.append(
            LogEntry(
                (1_764_000_000 + second) * 1_000_000_000,
                "auth.login.failed",
                "WARN",
                "",
                "",
                "otel_secaudit",
                {"security.event.outcome": "failure"},
                None,
            )
        )
    chart = violation_chart(recording)
    assert chart.bucket_s == 1800  # 2,870 minutes from first to last: 15-minute bars are 192
    assert chart.buckets <= 120 and chart.total == two_days_s // 600


def test_page_interactions_in_chromium(page: Path, tmp_path: Path) -> None:
    """Clicked as a user would (DevTools protocol): the legend hides and shows an event's bars,
    the buttons expand and collapse every evidence trace, a trace opens on its own."""
    with Browser(tmp_path / "profile") as browser:
        browser.open(page.as_uri())
        assert browser.evaluate("document.documentElement.dataset.js") == "on"
        opened = "document.querySelectorAll('details.evidence[open]').length"
        assert browser.evaluate(opened) == 0
        browser.evaluate("document.getElementById('expand-all').click()")
        assert browser.evaluate(opened) == 11
        assert browser.evaluate("document.getElementById('evidence-count').textContent") == "11"
        browser.evaluate("document.getElementById('collapse-all').click()")
        assert browser.evaluate(opened) == 0
        first = (
            "document.querySelector('details.evidence[data-trace-id]:not([data-trace-id=\"\"])')"
        )
        browser.evaluate(f"{first}.querySelector('summary').click()")
        assert browser.evaluate(f"{first}.open") is True
        assert "POST /auth/login" in browser.evaluate(f"{first}.innerText")

        group = "document.querySelector('#chart g[data-series=\"0\"]')"
        box = "document.querySelector('#legend input[data-series=\"0\"]')"
        assert browser.evaluate(f"getComputedStyle({group}).display") != "none"
        browser.evaluate(f"{box}.click()")
        assert browser.evaluate(f"getComputedStyle({group}).display") == "none"
        browser.evaluate(f"{box}.click()")
        assert browser.evaluate(f"getComputedStyle({group}).display") != "none"
        # The hostile values are text nodes, exactly as sent.
        assert HOSTILE_ADDRESS in browser.evaluate(
            "document.getElementById('top-addresses').innerText"
        )
        shot = browser.screenshot(tmp_path / "interactive.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
