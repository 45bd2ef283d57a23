"""A small chart drawn on the server: one bar per recent run, its height the run's
duration, its colour its outcome. Plain SVG with the status classes of the stylesheet,
so it needs no script and no library, and every value in it is escaped."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT, GAP = 600, 80, 2


def runs_chart(recent: list[dict[str, Any]]) -> Markup | None:
    """`recent`: [{id, status, created_at, duration_s}] oldest first (stats' `recent`)."""
    if not recent:
        return None
    longest = max((r["duration_s"] or 0 for r in recent), default=0) or 1
    bar = max(2.0, (WIDTH - GAP * len(recent)) / len(recent))
    parts = [f'<svg class="runs-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="duration and outcome of the last {len(recent)} runs">']
    for i, run in enumerate(recent):
        seconds = run["duration_s"] or 0
        h = max(2.0, HEIGHT * seconds / longest)
        x = i * (bar + GAP)
        title = f"{run['id']}: {run['status']}" + (f", {seconds:g} s" if run["duration_s"] is not None else "")
        parts.append(
            f'<a href="/runs/{escape(run["id"])}"><rect class="s-{escape(run["status"])}" x="{x:.1f}" '
            f'y="{HEIGHT - h:.1f}" width="{bar:.1f}" height="{h:.1f}"><title>{escape(title)}</title></rect></a>')
    parts.append("</svg>")
    return Markup("".join(parts))
