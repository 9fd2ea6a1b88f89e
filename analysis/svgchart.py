"""Charts as standalone SVG images for the HTML report: metric vs nbits (a line per method) and
metric vs model size (a point per method and bit width, the Pareto front dashed). No plotting
library, nothing fetched when the report is opened."""

from __future__ import annotations

import base64
import math
from xml.sax.saxutils import escape

from analysis.summary import TaskSummary

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
WIDTH, HEIGHT = 720, 380
LEFT, RIGHT, TOP, BOTTOM = 70, 230, 40, 55


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not hi > lo or not math.isfinite(hi - lo):  # no range (or NaN, or one too wide)
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / count
    if raw <= 0:  # a range too small for a float step
        return [lo]
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if step * factor >= raw:
            step *= factor
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(min(int((hi - first) / step + 1e-9) + 1, 50))]


PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


def _value_range(values: list[float]) -> tuple[float, float]:
    """The y range: the values' with 8 % padding (a flat series gets some room)."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 0.01)
    return lo - pad, hi + pad


def _frame(summary: TaskSummary, against: str, lo: float, hi: float) -> list[str]:
    """The image, its title, the plot's frame and the y axis' grid and tick labels."""
    label = escape(summary.chart_label or "")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
           f'<text x="{LEFT}" y="22" font-size="15" font-weight="bold">'
           f'{escape(summary.display)}: {label} vs {against}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" '
           f'stroke="#444"/>']
    digits = 1 if hi - lo > 5 else 3
    for t in _ticks(lo, hi):
        ty = TOP + PLOT_H * (1 - (t - lo) / (hi - lo))
        out.append(f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{ty:.1f}" y2="{ty:.1f}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">{t:.{digits}f}</text>')
    return out


def line_chart_svg(summary: TaskSummary) -> str:
    lo, hi = _value_range([v for s in summary.series for v in s.values if v is not None])
    plot_w, plot_h = PLOT_W, PLOT_H
    n = len(summary.chart_bits)

    def x(i: int) -> float:
        return LEFT + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - (v - lo) / (hi - lo))

    label = escape(summary.chart_label or "")
    out = _frame(summary, "bits", lo, hi)
    for i, bits in enumerate(summary.chart_bits):
        out.append(f'<text x="{x(i):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">'
                   f'{bits}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 12}" text-anchor="middle">'
               'bits</text>')
    out.append(f'<text transform="translate(16 {TOP + plot_h / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{label}</text>')
    for k, series in enumerate(summary.series):
        colour = PALETTE[k % len(PALETTE)]
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, v in enumerate(series.values):
            if v is None:  # a gap where no run gave a result
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{x(i):.1f},{y(v):.1f}")
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{colour}"/>')
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) > 1:
                out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{colour}" '
                           'stroke-width="2.5"/>')
        ly = TOP + 8 + 18 * k
        lx = LEFT + plot_w + 14
        out.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly}" y2="{ly}" stroke="{colour}" '
                   'stroke-width="3"/>')
        out.append(f'<text x="{lx + 28}" y="{ly + 4}">{escape(series.name[:30])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _marker(cx: float, cy: float, colour: str, square: bool, extra: str = "",
            tip: str = "") -> str:
    if square:
        return (f'<rect x="{cx - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8" fill="{colour}"'
                f'{extra}>{tip}</rect>')
    return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{colour}"{extra}>{tip}</circle>'


def scatter_chart_svg(summary: TaskSummary) -> str:
    """The metric against the model's size (MB, log scale when the sizes span more than 4×)."""
    pts = summary.points
    xs, ys = [p.size_mb for p in pts], [p.value for p in pts]
    log = max(xs) / min(xs) > 4
    fx = math.log10 if log else (lambda v: v)
    x_lo, x_hi = fx(min(xs)), fx(max(xs))
    x_pad = (x_hi - x_lo) * 0.08 or 0.1
    x_lo, x_hi = x_lo - x_pad, x_hi + x_pad
    lo, hi = _value_range(ys)
    plot_w, plot_h = PLOT_W, PLOT_H

    def x(v: float) -> float:
        return LEFT + plot_w * (fx(v) - x_lo) / (x_hi - x_lo)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - (v - lo) / (hi - lo))

    label = escape(summary.chart_label or "")
    out = _frame(summary, "model size", lo, hi)
    if log:
        ticks = [10 ** e for e in range(math.floor(x_lo), math.ceil(x_hi) + 1)]
        ticks = [t * m for t in ticks for m in (1, 2, 5) if x_lo <= math.log10(t * m) <= x_hi]
    else:
        ticks = [t for t in _ticks(x_lo, x_hi) if t > 0]
    for t in ticks:
        out.append(f'<text x="{x(t):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">'
                   f'{t:g}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 12}" text-anchor="middle">'
               f'model size (MB{", log scale" if log else ""})</text>')
    out.append(f'<text transform="translate(16 {TOP + plot_h / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{label}</text>')
    front = sorted((p for p in pts if p.on_front), key=lambda p: p.size_mb)
    if len(front) > 1:
        points = " ".join(f"{x(p.size_mb):.1f},{y(p.value):.1f}" for p in front)
        out.append(f'<polyline points="{points}" fill="none" stroke="#444" '
                   'stroke-dasharray="6 4" stroke-width="1.5"/>')
    names = list(dict.fromkeys(p.series for p in pts))
    for k, name in enumerate(names):
        colour = PALETTE[k % len(PALETTE)]
        square = (k // len(PALETTE)) % 2 == 1  # past the palette: squares, not circles
        for p in pts:
            if p.series == name:
                ring = ' stroke="#000" stroke-width="1.5"' if p.on_front else ""
                tip = (f'<title>{escape(name)}, {p.bits} bits: {p.value:.4g} at '
                       f'{p.size_mb:.3g} MB</title>')
                out.append(_marker(x(p.size_mb), y(p.value), colour, square, ring, tip))
        ly, lx = TOP + 8 + 18 * k, LEFT + plot_w + 14
        out.append(_marker(lx + 11, ly, colour, square))
        out.append(f'<text x="{lx + 28}" y="{ly + 4}">{escape(name[:30])}</text>')
    ly = TOP + 8 + 18 * len(names)
    out.append(f'<line x1="{LEFT + plot_w + 14}" x2="{LEFT + plot_w + 36}" y1="{ly}" y2="{ly}" '
               'stroke="#444" stroke-dasharray="6 4" stroke-width="1.5"/>')
    out.append(f'<text x="{LEFT + plot_w + 42}" y="{ly + 4}">Pareto front</text>')
    out.append("</svg>")
    return "\n".join(out)


def data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
