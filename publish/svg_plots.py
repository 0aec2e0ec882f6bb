"""Small inline-SVG charts for the HTML report (no plotting library, no JavaScript).

Every function returns one ``<svg class="plot">`` element as a string.  Every
label, title and legend text goes through :func:`html.escape`; numbers are
formatted here.  The charts are deliberately plain: horizontal bars for
labelled counts, columns for small integer distributions, and an overlaid
two-series histogram for chosen vs rejected lengths.
"""
from __future__ import annotations

import math
from html import escape
from typing import Callable, Sequence

import numpy as np

FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"
AXIS = "#6b7280"
GRID = "#e5e7eb"
COLORS = ("#2f855a", "#c53030", "#2b6cb0", "#b7791f", "#6b46c1", "#2c7a7b")
CHAR_W = 6.2  # approximate width of one 11px character, for label layout


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _num(v: float) -> str:
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"


def _short(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: max(limit - 1, 1)] + "\u2026"


def _nice_max(v: float) -> float:
    """The smallest 1/2/5 x 10^k at or above ``v`` (axis end)."""
    if v <= 0:
        return 1.0
    k = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if m * k >= v:
            return float(m * k)
    return float(10 * k)


def _open(width: int, height: int, title: str) -> list[str]:
    return [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" style="{FONT}">',
            f"<title>{_e(title)}</title>",
            f'<text x="4" y="14" font-size="12" font-weight="600" fill="#111827">{_e(title)}</text>']


def empty(title: str, message: str = "no data", width: int = 360, height: int = 60) -> str:
    out = _open(width, height, title)
    out.append(f'<text x="4" y="40" font-size="11" fill="{AXIS}">{_e(message)}</text></svg>')
    return "".join(out)


def bar_chart(items: Sequence[tuple[str, float]], title: str, *, width: int = 420,
              value_fmt: Callable[[float], str] = _num, max_value: float | None = None,
              color: str = COLORS[2], label_chars: int = 30) -> str:
    """Horizontal bars, one per (label, value), in the given order."""
    if not items:
        return empty(title, width=width)
    label_w = min(max(len(_short(str(k), label_chars)) for k, _ in items) * CHAR_W + 8, width * 0.45)
    bar_h, gap, top = 16, 5, 24
    height = top + len(items) * (bar_h + gap) + 6
    vmax = max_value if max_value is not None else max(v for _, v in items) or 1.0
    span = width - label_w - 56
    out = _open(width, height, title)
    for i, (label, value) in enumerate(items):
        y = top + i * (bar_h + gap)
        w = 0 if vmax <= 0 else max(0.0, min(value / vmax, 1.0)) * span
        out.append(f'<g><title>{_e(label)}: {_e(value_fmt(value))}</title>'
                   f'<text x="{label_w - 6:.1f}" y="{y + bar_h - 4}" font-size="11" text-anchor="end" '
                   f'fill="#374151">{_e(_short(str(label), label_chars))}</text>'
                   f'<rect x="{label_w:.1f}" y="{y}" width="{span:.1f}" height="{bar_h}" fill="{GRID}" opacity="0.45"/>'
                   f'<rect x="{label_w:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{_e(color)}"/>'
                   f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 4}" font-size="11" fill="#111827">'
                   f"{_e(value_fmt(value))}</text></g>")
    out.append("</svg>")
    return "".join(out)


def column_chart(items: Sequence[tuple[str, float]], title: str, *, xlabel: str = "", ylabel: str = "",
                 width: int = 360, height: int = 200, color: str = COLORS[2],
                 colors: Sequence[str] | None = None) -> str:
    """Vertical columns, one per (category, value), e.g. a distribution over small integers
    (``colors``: one per column, e.g. to mark a band; default ``color``)."""
    if not items:
        return empty(title, width=width)
    vmax = _nice_max(max(v for _, v in items))
    left, right, top, bottom = _left(vmax, ylabel), 8, 30, 34
    pw, ph = width - left - right, height - top - bottom
    n = len(items)
    slot = pw / n
    bw = min(max(slot * 0.8, 1.0), 48.0)
    out = _open(width, height, title)
    out += _y_axis(left, top, pw, ph, vmax)
    step = max(1, math.ceil(n / max(int(pw // 26), 1)))  # thin out x labels that would collide
    for i, (label, value) in enumerate(items):
        x = left + i * slot + (slot - bw) / 2
        h = value / vmax * ph
        out.append(f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" '
                   f'fill="{_e(colors[i] if colors else color)}"><title>{_e(label)}: {_e(_num(value))}</title></rect>')
        if i % step == 0:
            out.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph + 13}" font-size="10" text-anchor="middle" '
                       f'fill="{AXIS}">{_e(_short(str(label), 6))}</text>')
    out += _axis_labels(width, height, left, top, ph, xlabel, ylabel)
    out.append("</svg>")
    return "".join(out)


def histogram(series: Sequence[tuple[str, Sequence[float]]], title: str, *, bins: int = 24,
              xlabel: str = "", width: int = 360, height: int = 210,
              colors: Sequence[str] = COLORS) -> str:
    """Overlaid histograms of several series on shared bins (step outlines over light fills)."""
    arrays = [(name, np.asarray(v, dtype=np.float64)) for name, v in series]
    arrays = [(name, a[np.isfinite(a)]) for name, a in arrays]
    if not any(len(a) for _, a in arrays):
        return empty(title, width=width)
    lo = min(float(a.min()) for _, a in arrays if len(a))
    hi = max(float(a.max()) for _, a in arrays if len(a))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(a, bins=edges)[0] for _, a in arrays]
    vmax = _nice_max(max(int(c.max()) for c in counts))
    left, right, top, bottom = _left(vmax, ""), 8, 38, 34
    pw, ph = width - left - right, height - top - bottom
    out = _open(width, height, title)
    out += _y_axis(left, top, pw, ph, vmax)
    bw = pw / bins
    for k, ((name, a), c) in enumerate(zip(arrays, counts)):
        color = colors[k % len(colors)]
        pts = [f"{left:.1f},{top + ph:.1f}"]
        for i, v in enumerate(c):
            y = top + ph - v / vmax * ph
            pts.append(f"{left + i * bw:.1f},{y:.1f}")
            pts.append(f"{left + (i + 1) * bw:.1f},{y:.1f}")
        pts.append(f"{left + pw:.1f},{top + ph:.1f}")
        out.append(f'<polygon points="{" ".join(pts)}" fill="{_e(color)}" fill-opacity="0.18" stroke="none"/>')
        out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{_e(color)}" stroke-width="1.5"/>')
        mean = float(a.mean()) if len(a) else float("nan")
        lx = left + k * (pw / max(len(arrays), 1))
        out.append(f'<rect x="{lx:.1f}" y="21" width="10" height="10" fill="{_e(color)}"/>'
                   f'<text x="{lx + 14:.1f}" y="30" font-size="11" fill="#374151">{_e(name)} '
                   f'\u00b7 mean {_e(_num(round(mean, 1)) if len(a) else "-")}</text>')
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        x = left + frac * pw
        anchor = "start" if frac == 0 else ("end" if frac == 1 else "middle")
        out.append(f'<text x="{x:.1f}" y="{top + ph + 13}" font-size="10" text-anchor="{anchor}" '
                   f'fill="{AXIS}">{_e(_num(round(v, 1)))}</text>')
    out += _axis_labels(width, height, left, top, ph, xlabel, "")
    out.append("</svg>")
    return "".join(out)


def _left(vmax: float, ylabel: str) -> int:
    """Left margin: room for the widest y tick label, and the rotated axis label."""
    return int(len(_num(vmax)) * CHAR_W * 0.95 + 10 + (16 if ylabel else 0))


def _y_axis(left: float, top: float, pw: float, ph: float, vmax: float) -> list[str]:
    out = []
    for frac in (0.0, 0.5, 1.0):
        y = top + ph - frac * ph
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
                   f'<text x="{left - 4}" y="{y + 3.5:.1f}" font-size="10" text-anchor="end" fill="{AXIS}">'
                   f"{_e(_num(vmax * frac))}</text>")
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph:.1f}" stroke="{AXIS}"/>')
    return out


def _axis_labels(width: float, height: float, left: float, top: float, ph: float,
                 xlabel: str, ylabel: str) -> list[str]:
    out = []
    if xlabel:
        out.append(f'<text x="{left + (width - left) / 2:.1f}" y="{height - 4}" font-size="10" '
                   f'text-anchor="middle" fill="{AXIS}">{_e(xlabel)}</text>')
    if ylabel:
        cy = top + ph / 2
        out.append(f'<text x="10" y="{cy:.1f}" font-size="10" text-anchor="middle" fill="{AXIS}" '
                   f'transform="rotate(-90 10 {cy:.1f})">{_e(ylabel)}</text>')
    return out
