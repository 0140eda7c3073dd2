"""Small inline SVG charts for the HTML reports: a line chart over x (steps, positions) and a bar
chart over labelled bins. Self-contained text, no plotting library, nothing fetched.

Log axes take positive values only; a value ≤ 0 on a log axis is drawn on the axis floor and
said in the chart's note (an exact 0 is the best news a mismatch chart can give).
"""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 30, 46  # margins: axis labels left and below, legend right
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def fmt(v: float, digits: int = 4) -> str:
    """A number in `digits` significant digits, exponents short (1e-7, not 1e-07)."""
    if v == 0:
        return "0"
    return f"{v:.{digits}g}".replace("e-0", "e-").replace("e+0", "e")


def ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    if hi == lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / 4))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 6:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


class Axis:
    """Maps data values onto pixels, linear or log10."""

    def __init__(self, lo: float, hi: float, px_lo: float, px_hi: float, log: bool):
        self.log = log
        if log:
            lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        if hi == lo:
            lo, hi = (lo - 1, hi + 1) if not log else (lo / 10, hi * 10)
        self.lo, self.hi, self.px_lo, self.px_hi = lo, hi, px_lo, px_hi

    def __call__(self, v: float) -> float:
        f = (lambda x: math.log10(x)) if self.log else (lambda x: x)
        v = max(v, self.lo) if self.log else v
        return self.px_lo + (f(v) - f(self.lo)) / (f(self.hi) - f(self.lo)) * (self.px_hi - self.px_lo)


def frame(title: str, x_label: str, y_label: str, body: list[str], note: str = "") -> str:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
             *body,
             f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" font-size="12" text-anchor="middle">'
             f'{escape(x_label)}</text>',
             f'<text x="14" y="{(TOP + HEIGHT - BOTTOM) / 2}" font-size="12" text-anchor="middle" '
             f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(y_label)}</text>']
    if note:
        parts.append(f'<text x="{WIDTH - RIGHT + 8}" y="{HEIGHT - BOTTOM}" font-size="10" fill="#555">'
                     f'{escape(note)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def y_grid(axis: Axis, log: bool) -> list[str]:
    out = []
    for t in ticks(axis.lo, axis.hi, log):
        y = axis(t)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{fmt(t)}</text>')
    return out


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
               log_y: bool = False, log_x: bool = False, y_range: tuple[float, float] | None = None) -> str:
    """One polyline with dots per series; [(x, y)] points, sorted by x; `y_range` fixes the
    y axis (a fraction: (0, 1)) instead of fitting the data."""
    points = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(y)]
    if not points:
        return frame(title, x_label, y_label, [f'<text x="{LEFT + 10}" y="{HEIGHT / 2}" font-size="12">'
                                               'no data</text>'])
    floored = log_y and any(y <= 0 for _, y in points)
    ys = [y for _, y in points if y > 0] if log_y else [y for _, y in points]
    ys = ys or [1.0]
    xs = [x for x, _ in points]
    x_axis = Axis(max(min(xs), 1) if log_x else min(xs), max(xs), LEFT + 10, WIDTH - RIGHT - 10, log_x)
    lo, hi = y_range or (min(ys) if log_y else min(0.0, min(ys)), max(ys))
    y_axis = Axis(lo, hi, HEIGHT - BOTTOM, TOP, log_y)
    body = y_grid(y_axis, log_y)
    whole = all(float(x).is_integer() for x in xs)  # steps: no tick at 1.5
    for t in ticks(x_axis.lo, x_axis.hi, log_x):
        if x_axis.lo <= t <= x_axis.hi and (not whole or float(t).is_integer()):
            body.append(f'<text x="{x_axis(t):.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="11" '
                        f'text-anchor="middle">{fmt(t)}</text>')
    for k, (name, pts) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        xy = [(x_axis(x), y_axis(y if not log_y or y > 0 else y_axis.lo)) for x, y in pts if math.isfinite(y)]
        if len(xy) > 1:
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="'
                        + " ".join(f"{px:.1f},{py:.1f}" for px, py in xy) + '"/>')
        body += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}"/>' for px, py in xy]
        ly = TOP + 14 + 16 * k
        body.append(f'<rect x="{WIDTH - RIGHT + 8}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>')
        body.append(f'<text x="{WIDTH - RIGHT + 22}" y="{ly}" font-size="11">{escape(name)}</text>')
    body.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" stroke="#333"/>')
    return frame(title, x_label, y_label, body, "values ≤ 0 drawn on the floor" if floored else "")


def bar_chart(title: str, labels: list[str], values: list[float], x_label: str, y_label: str,
              highlight: set[int] | None = None) -> str:
    """One bar per label (rotated labels below); bars in `highlight` drawn in the second colour."""
    n = max(len(values), 1)
    top = max(values, default=0) or 1.0
    y_axis = Axis(0.0, top, HEIGHT - BOTTOM - 40, TOP, False)
    slot = (WIDTH - RIGHT - LEFT) / n
    body = y_grid(y_axis, False)
    for i, (label, v) in enumerate(zip(labels, values)):
        x = LEFT + i * slot
        y = y_axis(v)
        colour = COLOURS[1] if highlight and i in highlight else COLOURS[0]
        body.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(slot - 2, 1):.1f}" '
                    f'height="{HEIGHT - BOTTOM - 40 - y:.1f}" fill="{colour}"><title>{escape(label)}: {fmt(v)}'
                    f'</title></rect>')
        lx, ly = x + slot / 2, HEIGHT - BOTTOM - 36
        body.append(f'<text x="{lx:.1f}" y="{ly}" font-size="9" text-anchor="end" '
                    f'transform="rotate(-50 {lx:.1f} {ly})">{escape(label)}</text>')
    return frame(title, x_label, y_label, body)
