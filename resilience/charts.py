"""Small charts for the status page, drawn on the server as inline SVG.

No script, no stylesheet and no network fetch: the page works behind any firewall and during the
outages it is meant for. Each chart is one ``<svg>`` with a ``<title>`` (read by screen readers,
shown as a tooltip) and a ``<title>`` per bar with its exact value, so nothing is only visual.
Every text that reaches the markup goes through ``format_html`` and is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

AXIS_COLOUR = "#888"


def bar_chart(
    values: Sequence[int],
    labels: Sequence[str],
    *,
    title: str,
    colour: str = "#c62828",
    width: int = 600,
    height: int = 120,
) -> SafeString:
    """One bar per value (say, per minute), scaled to the largest; ``labels`` name each bar."""
    if len(values) != len(labels):
        raise ValueError("bar_chart: values and labels must have the same length.")
    top, bottom, left = 14, 16, 4
    plot_height = height - top - bottom
    peak = max(values, default=0)
    slot = (width - left) / max(len(values), 1)
    bars = []
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        bar_height = 0.0 if peak == 0 else plot_height * value / peak
        if value and bar_height < 1:
            bar_height = 1.0  # a non-zero minute stays visible
        bars.append(
            (
                f"{left + index * slot:.1f}",
                f"{top + plot_height - bar_height:.1f}",
                f"{max(slot - 1, 1):.1f}",
                f"{bar_height:.1f}",
                colour,
                f"{label}: {value}",
            )
        )
    rects = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
        bars,
    )
    first = labels[0] if labels else ""
    last = labels[-1] if labels else ""
    return format_html(
        '<svg class="resilience-chart" role="img" width="100%" height="{h}" '
        'viewBox="0 0 {w} {h}" preserveAspectRatio="none">'
        "<title>{title}</title>"
        '<text x="{left}" y="10" font-size="10" fill="{axis}">max {peak}</text>'
        '<line x1="{left}" y1="{base}" x2="{w}" y2="{base}" stroke="{axis}" stroke-width="1"/>'
        "{rects}"
        '<text x="{left}" y="{label_y}" font-size="10" fill="{axis}">{first}</text>'
        '<text x="{w}" y="{label_y}" font-size="10" fill="{axis}" text-anchor="end">{last}</text>'
        "</svg>",
        h=height,
        w=width,
        title=title,
        left=left,
        axis=AXIS_COLOUR,
        peak=peak,
        base=f"{top + plot_height + 0.5:.1f}",
        rects=rects,
        label_y=height - 3,
        first=first,
        last=last,
    )


def sparkline(
    values: Sequence[int],
    *,
    title: str,
    colour: str = "#c62828",
    width: int = 120,
    height: int = 24,
) -> SafeString:
    """A line of ``values`` in a small box, scaled to the largest; flat at the bottom when all 0."""
    peak = max(values, default=0)
    count = len(values)
    if count == 0:
        return format_html("")
    step = width / max(count - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{height - 1 - (0 if peak == 0 else (height - 2) * v / peak):.1f}"
        for i, v in enumerate(values)
    )
    return format_html(
        '<svg class="resilience-sparkline" role="img" width="{w}" height="{h}" '
        'viewBox="0 0 {w} {h}"><title>{title}</title>'
        '<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/></svg>',
        w=width,
        h=height,
        title=title,
        points=points,
        colour=colour,
    )
