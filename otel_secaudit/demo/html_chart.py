"""The HTML report's chart: violations per time bucket, stacked by event, as inline SVG.

The time axis is scaled to the data: the bucket is the shortest of 1 s, 2 s, 5 s, 10 s, 15 s,
30 s, 1, 2, 5, 10, 15, 30 minutes, 1, 2, 3, 6, 12 hours, whole days, that draws the recording
in at most :data:`MAX_BARS` bars, so a twenty-second incident fills the width with 1 s bars
and two days of attacks get 30-minute ones. A short incident is centred among at least
:data:`MIN_BARS` buckets. Tick labels carry seconds, dates or years as the span needs.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

from .. import attributes as attr
from .records import Recording, printable
from .summary import DETECTOR_EVENTS, security_logs

__all__ = ["MAX_BARS", "MIN_BARS", "PALETTE", "ViolationChart", "chart_svg", "violation_chart"]

#: Colour-blind-safe palette (Okabe-Ito, then Tol's muted); an event keeps its colour by rank.
PALETTE: Final = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
    "#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255",
)  # fmt: skip
MAX_BARS: Final = 120
MIN_BARS: Final = 12
_NICE_BUCKETS: Final = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip


def _e(value: Any, limit: int = 300) -> str:
    return html.escape(printable(value, limit), quote=True)


@dataclass
class ViolationChart:
    """Violations per bucket by event: ``counts[event][i]`` for the bucket starting at
    ``start_s + i * bucket_s`` (UTC seconds)."""

    start_s: int
    bucket_s: int
    buckets: int
    counts: dict[str, list[int]]

    @property
    def total(self) -> int:
        """Every violation counted."""
        return sum(sum(series) for series in self.counts.values())

    @property
    def unit(self) -> str:
        """The bucket as words: ``5 s``, ``minute``, ``30 minutes``, ``hour``, ``2 days``."""
        return bucket_words(self.bucket_s)


def bucket_words(seconds: int) -> str:
    """A bucket length for a title."""
    for size, word in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return word if count == 1 else f"{count} {word}s"
    return "second" if seconds == 1 else f"{seconds} s"


def bucket_for(span_s: int) -> int:
    """The shortest nice bucket that draws ``span_s`` seconds in at most :data:`MAX_BARS`."""
    for bucket in _NICE_BUCKETS:
        if span_s // bucket + 1 <= MAX_BARS:
            return bucket
    return 86400 * math.ceil((span_s // 86400 + 1) / MAX_BARS)


def violation_chart(recording: Recording) -> ViolationChart:
    """Violations of the security log records in buckets scaled to their time span."""
    times: list[tuple[int, str]] = []
    for log in security_logs(recording):
        outcome = log.attributes.get(attr.EVENT_OUTCOME)
        if outcome == "failure" and log.event_name not in DETECTOR_EVENTS and log.time_ns:
            times.append((log.time_ns // 1_000_000_000, log.event_name))
    if not times:
        return ViolationChart(0, 60, 0, {})
    low = min(t for t, _ in times)
    high = max(t for t, _ in times)
    bucket_s = bucket_for(high - low)
    first = low // bucket_s * bucket_s
    buckets = (high - first) // bucket_s + 1
    if buckets < MIN_BARS:  # a short incident: centred, quiet buckets on both sides
        first -= (MIN_BARS - buckets) // 2 * bucket_s
        buckets = MIN_BARS
    counts: dict[str, list[int]] = {}
    for second, name in times:
        counts.setdefault(name, [0] * buckets)[(second - first) // bucket_s] += 1
    ranked = sorted(counts, key=lambda name: (-sum(counts[name]), name))
    return ViolationChart(first, bucket_s, buckets, {name: counts[name] for name in ranked})


def tick_label(seconds: int, bucket_s: int, span_s: int) -> str:
    """A tick's time, as precise as the bucket and as long as the span need (UTC)."""
    try:
        moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):
        return "-"
    if bucket_s >= 86400:
        return moment.strftime("%Y-%m-%d")
    if span_s >= 86400:
        return moment.strftime("%m-%d %H:%M")
    return moment.strftime("%H:%M:%S" if bucket_s < 60 else "%H:%M")


def chart_svg(chart: ViolationChart) -> str:
    """Stacked bars, one colour per event, a ``<title>`` tooltip per bar segment, and the
    legend."""
    if not chart.buckets:
        return '<p class="empty">No violations.</p>'
    width, height, left, bottom, top = 960, 260, 44, 28, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    span_s = chart.buckets * chart.bucket_s
    totals = [sum(series[i] for series in chart.counts.values()) for i in range(chart.buckets)]
    peak = max(totals) or 1
    bar_w = plot_w / chart.buckets
    parts = [
        f'<svg id="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="violations per '
        f'{chart.unit} by event" data-bucket-s="{chart.bucket_s}">'
    ]
    for tick in sorted({0, peak // 2, peak}):
        y = top + plot_h - plot_h * tick / peak
        parts.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{tick}</text>'
        )
    base = [0] * chart.buckets
    for index, (name, series) in enumerate(chart.counts.items()):
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<g class="series" data-series="{index}" fill="{colour}">')
        for i, count in enumerate(series):
            if not count:
                continue
            y = top + plot_h - plot_h * (base[i] + count) / peak
            h = plot_h * count / peak
            when = tick_label(chart.start_s + i * chart.bucket_s, chart.bucket_s, span_s)
            parts.append(
                f'<rect x="{left + i * bar_w + 0.5:.1f}" y="{y:.1f}" '
                f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" data-count="{count}">'
                f"<title>{_e(f'{when} {name}: {count}')}</title></rect>"
            )
            base[i] += count
        parts.append("</g>")
    step = max(1, math.ceil(chart.buckets / 8))
    for i in range(0, chart.buckets, step):
        x = left + i * bar_w + bar_w / 2
        label = tick_label(chart.start_s + i * chart.bucket_s, chart.bucket_s, span_s)
        parts.append(
            f'<text x="{x:.1f}" y="{height - 8}" class="axis tick" text-anchor="middle">'
            f"{label}</text>"
        )
    parts.append("</svg>")
    legend = "".join(
        f'<label class="legend"><input type="checkbox" checked data-series="{i}">'
        f'<span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>'
        f"{_e(name)} ({sum(series)})</label>"
        for i, (name, series) in enumerate(chart.counts.items())
    )
    return "".join(parts) + f'<div id="legend">{legend}</div>'
