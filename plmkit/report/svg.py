"""Small, dependency-free SVG charts for the HTML report and the analysis views.

Every function is pure: data in, one SVG string out. The SVG has no scripts, no external
fonts or stylesheets (presentation attributes only) and escaped text, so it can be inlined
into an HTML file that works offline or saved as a standalone ``.svg``. Each root ``<svg>``
carries ``class="chart"`` and ``data-chart="<kind>"`` so tests can find the charts.
"""
from __future__ import annotations

import html
import math
from typing import Iterable

# Colour-blind-friendly categorical palette (Okabe-Ito, minus black and yellow, which read poorly).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#7f7f7f", "#8c564b"]
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
WIDTH, HEIGHT = 600, 340
MARGIN = {"left": 64, "right": 20, "top": 40, "bottom": 52}


def esc(text: object) -> str:
    """Text made safe for SVG/HTML content and attribute values."""
    return html.escape(str(text), quote=True)


def fmt(v: float) -> str:
    """A short, readable number for ticks and annotations."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        return f"{v:.1e}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def _open(kind: str, title: str, width: int, height: int) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{kind}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'font-family="{esc(FONT)}" font-size="12">',
        f"<title>{esc(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2:.1f}" y="22" text-anchor="middle" font-size="14" font-weight="600" '
        f'fill="#222">{esc(title)}</text>',
    ]


def _empty(kind: str, title: str, message: str = "no data") -> str:
    parts = _open(kind, title, WIDTH, 120)
    parts.append(f'<text x="{WIDTH / 2}" y="70" text-anchor="middle" fill="#888">{esc(message)}</text>')
    return "\n".join(parts + ["</svg>"])


def _widen(lo: float, hi: float) -> tuple[float, float]:
    """A range for the axis: a single value (one point, a flat series) gets room on both sides
    (10% of its size), so it sits mid-axis between round ticks instead of on the frame."""
    if hi > lo or not math.isfinite(lo):
        return lo, hi
    d = 0.1 * abs(lo) or 1.0
    return lo - d, hi + d


class _Axes:
    """Maps data coordinates into the plot area and draws grid, ticks and axis labels."""

    def __init__(self, xs: Iterable[float], ys: Iterable[float], *, pad_y: bool = True,
                 width: int = WIDTH, height: int = HEIGHT, y_from_zero: bool = False):
        xs, ys = list(xs), list(ys)
        self.x0, self.x1 = MARGIN["left"], width - MARGIN["right"]
        self.y0, self.y1 = height - MARGIN["bottom"], MARGIN["top"]
        lo, hi = min(ys), max(ys)
        if y_from_zero:
            lo = min(0.0, lo)
        if pad_y and hi > lo:
            lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
            if y_from_zero and min(ys) >= 0:
                lo = 0.0
        self.yticks = nice_ticks(*_widen(lo, hi))
        self.ylo, self.yhi = self.yticks[0], self.yticks[-1]
        self.xticks = nice_ticks(*_widen(min(xs), max(xs))) if xs else [0.0, 1.0]
        self.xlo, self.xhi = (min(xs), max(xs)) if xs and max(xs) > min(xs) else (self.xticks[0], self.xticks[-1])
        self.xticks = [t for t in self.xticks if self.xlo - 1e-12 <= t <= self.xhi + 1e-12] or [self.xlo]

    def px(self, x: float) -> float:
        span = (self.xhi - self.xlo) or 1.0
        return self.x0 + (x - self.xlo) / span * (self.x1 - self.x0)

    def py(self, y: float) -> float:
        span = (self.yhi - self.ylo) or 1.0
        return self.y0 - (y - self.ylo) / span * (self.y0 - self.y1)

    def draw(self, x_label: str, y_label: str, y_tick_text=fmt, x_ticks: bool = True) -> list[str]:
        out = []
        for t in self.yticks:
            y = self.py(t)
            out.append(f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x1}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            out.append(f'<text x="{self.x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">'
                       f'{esc(y_tick_text(t))}</text>')
        for t in self.xticks if x_ticks else []:
            x = self.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{self.y0}" x2="{x:.1f}" y2="{self.y0 + 4}" stroke="#888"/>')
            out.append(f'<text x="{x:.1f}" y="{self.y0 + 17}" text-anchor="middle" fill="#555">'
                       f'{esc(fmt(t))}</text>')
        out.append(f'<line x1="{self.x0}" y1="{self.y0}" x2="{self.x1}" y2="{self.y0}" stroke="#888"/>')
        out.append(f'<line x1="{self.x0}" y1="{self.y0}" x2="{self.x0}" y2="{self.y1}" stroke="#888"/>')
        out.append(f'<text x="{(self.x0 + self.x1) / 2:.1f}" y="{self.y0 + 38}" text-anchor="middle" '
                   f'fill="#333">{esc(x_label)}</text>')
        cy = (self.y0 + self.y1) / 2
        out.append(f'<text x="16" y="{cy:.1f}" text-anchor="middle" fill="#333" '
                   f'transform="rotate(-90 16 {cy:.1f})">{esc(y_label)}</text>')
        return out


def _legend(names: list[str], ax: "_Axes", occupied: list[tuple[float, float]] = ()) -> list[str]:
    """A legend box in the corner of the plot area that covers the fewest data points."""
    if not names:
        return []
    w, h = 24 + 7 * max(len(n) for n in names), 18 * len(names) + 6
    corners = [(ax.x1 - w - 6, ax.y1 + 4), (ax.x1 - w - 6, ax.y0 - h - 6), (ax.x0 + 6, ax.y1 + 4),
               (ax.x0 + 6, ax.y0 - h - 6)]
    x, y_top = min(corners, key=lambda c: sum(c[0] - 4 <= px <= c[0] + w + 4 and c[1] - 4 <= py <= c[1] + h + 4
                                                for px, py in occupied))
    out = [f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{w}" height="{h}" '
           f'fill="#ffffff" fill-opacity="0.85" stroke="#ddd"/>']
    for i, name in enumerate(names):
        y = y_top + 16 + 18 * i - 4
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{x + 6:.1f}" y="{y - 8:.1f}" width="12" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 22:.1f}" y="{y:.1f}" fill="#333">{esc(name)}</text>')
    return out


def line_chart(series: dict[str, list[tuple[float, float]]], *, title: str, x_label: str, y_label: str,
               log_y: bool = False) -> str:
    """One line per series; with ``log_y`` the y axis is log10 and non-positive values are dropped."""
    clean: dict[str, list[tuple[float, float]]] = {}
    for name, pts in series.items():
        keep = [(float(x), float(y)) for x, y in pts
                if y is not None and math.isfinite(float(y)) and math.isfinite(float(x)) and (not log_y or y > 0)]
        if keep:
            clean[name] = sorted(keep)
    if not clean:
        return _empty("line", title)
    tr = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    ax = _Axes([x for p in clean.values() for x, _ in p], [tr(y) for p in clean.values() for _, y in p])
    ytext = (lambda t: fmt(10 ** t)) if log_y else fmt
    parts = _open("line", title, WIDTH, HEIGHT) + ax.draw(x_label, y_label + (" (log)" if log_y else ""), ytext)
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{ax.px(x):.1f},{ax.py(tr(y)):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2" '
                     f'stroke-linejoin="round"><title>{esc(name)}</title></polyline>')
        if len(pts) <= 30:  # markers help read sparse series (eval points); they clutter dense ones
            for x, y in pts:
                parts.append(f'<circle cx="{ax.px(x):.1f}" cy="{ax.py(tr(y)):.1f}" r="3" fill="{color}">'
                             f'<title>{esc(name)}: {esc(fmt(x))}, {esc(fmt(y))}</title></circle>')
    if len(clean) > 1 or next(iter(clean)) != y_label:
        occupied = _sample_lines([[(ax.px(x), ax.py(tr(y))) for x, y in pts] for pts in clean.values()])
        parts += _legend(list(clean), ax, occupied)
    return "\n".join(parts + ["</svg>"])


def _sample_lines(lines: list[list[tuple[float, float]]], per_segment: int = 8) -> list[tuple[float, float]]:
    """Points along polylines (in pixels), so a legend can avoid the lines and not just their vertices."""
    out = []
    for pts in lines:
        out += pts
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            out += [(x0 + (x1 - x0) * k / per_segment, y0 + (y1 - y0) * k / per_segment) for k in range(1, per_segment)]
    return out


def _color_scale(v: float, lo: float, hi: float) -> str:
    """White -> blue for one-signed data; blue <- white -> red when the range crosses zero."""
    if not math.isfinite(v):
        return "#eeeeee"
    if lo < 0 < hi:
        t = max(-1.0, min(1.0, v / max(abs(lo), abs(hi))))
        end = (33, 102, 172) if t < 0 else (178, 24, 43)
        t = abs(t)
    else:
        t = 0.0 if hi == lo else max(0.0, min(1.0, (v - lo) / (hi - lo)))
        end = (8, 69, 148)
    r, g, b = (round(255 + (c - 255) * t) for c in end)
    return f"#{r:02x}{g:02x}{b:02x}"


def _is_dark(color: str) -> bool:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return 0.299 * r + 0.587 * g + 0.114 * b < 140


def heatmap(matrix: list[list[float]], *, row_labels: list[str], col_labels: list[str], title: str,
            vmin: float | None = None, vmax: float | None = None, annotate: bool = True) -> str:
    """A coloured grid; cells carry their value as a tooltip and, if they are large enough, as text."""
    if not matrix or not matrix[0]:
        return _empty("heatmap", title)
    n_rows, n_cols = len(matrix), len(matrix[0])
    values = [float(v) for row in matrix for v in row if v is not None and math.isfinite(float(v))]
    lo = vmin if vmin is not None else (min(values) if values else 0.0)
    hi = vmax if vmax is not None else (max(values) if values else 1.0)
    cell = max(10, min(48, 520 // max(n_cols, 1), 420 // max(n_rows, 1)))
    label_w = min(200, 12 + 7 * max((len(str(r)) for r in row_labels), default=1))
    col_label_h = min(140, 14 + 6 * max((len(str(c)) for c in col_labels), default=1))
    rotate = cell < 7 * max((len(str(c)) for c in col_labels), default=1)
    top = 36 + (col_label_h if rotate else 18)
    width = max(label_w + cell * n_cols + 90, 260, int(8 * len(title)) + 24)
    height = top + cell * n_rows + 20
    parts = _open("heatmap", title, width, height)
    for j, c in enumerate(col_labels[:n_cols]):
        x = label_w + cell * j + cell / 2
        if rotate:
            parts.append(f'<text x="{x:.1f}" y="{top - 6}" text-anchor="start" fill="#333" '
                         f'transform="rotate(-60 {x:.1f} {top - 6})">{esc(c)}</text>')
        else:
            parts.append(f'<text x="{x:.1f}" y="{top - 6}" text-anchor="middle" fill="#333">{esc(c)}</text>')
    show_text = annotate and cell >= 26
    for i, row in enumerate(matrix):
        y = top + cell * i
        label = row_labels[i] if i < len(row_labels) else str(i)
        parts.append(f'<text x="{label_w - 6}" y="{y + cell / 2 + 4:.1f}" text-anchor="end" fill="#333">'
                     f'{esc(label)}</text>')
        for j, v in enumerate(row):
            value = float("nan") if v is None else float(v)
            color = _color_scale(value, lo, hi)
            x = label_w + cell * j
            tip = f"{label} / {col_labels[j] if j < len(col_labels) else j}: {fmt(value)}"
            parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{color}" '
                         f'stroke="#ffffff"><title>{esc(tip)}</title></rect>')
            if show_text:
                ink = "#ffffff" if _is_dark(color) else "#222222"
                size = 11 if cell >= 34 else 9
                parts.append(f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" '
                             f'font-size="{size}" fill="{ink}">{esc(fmt(value))}</text>')
    parts += _colorbar(label_w + cell * n_cols + 16, top, cell * n_rows, lo, hi)
    return "\n".join(parts + ["</svg>"])


def _colorbar(x: float, y: float, h: float, lo: float, hi: float) -> list[str]:
    steps = 20
    out = []
    for k in range(steps):
        v = hi - (hi - lo) * (k + 0.5) / steps
        out.append(f'<rect x="{x:.1f}" y="{y + h * k / steps:.1f}" width="12" height="{h / steps + 0.5:.1f}" '
                   f'fill="{_color_scale(v, lo, hi)}"/>')
    out.append(f'<text x="{x + 16:.1f}" y="{y + 9:.1f}" font-size="10" fill="#555">{esc(fmt(hi))}</text>')
    out.append(f'<text x="{x + 16:.1f}" y="{y + h:.1f}" font-size="10" fill="#555">{esc(fmt(lo))}</text>')
    return out


def scatter(points: list[dict], *, title: str, x_label: str, y_label: str) -> str:
    """Labelled points; those with ``front: True`` are joined in x order (the Pareto front)."""
    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None
           and math.isfinite(float(p["x"])) and math.isfinite(float(p["y"]))]
    if not pts:
        return _empty("scatter", title)
    xs, ys = [float(p["x"]) for p in pts], [float(p["y"]) for p in pts]
    span = (max(xs) - min(xs)) or abs(max(xs)) or 1.0
    # Pad x so the end points and their labels do not sit on the frame.
    ax = _Axes([min(xs) - 0.08 * span, max(xs) + 0.08 * span], ys)
    parts = _open("scatter", title, WIDTH, HEIGHT) + ax.draw(x_label, y_label)
    front = sorted((p for p in pts if p.get("front")), key=lambda p: float(p["x"]))
    if len(front) > 1:
        coords = " ".join(f"{ax.px(float(p['x'])):.1f},{ax.py(float(p['y'])):.1f}" for p in front)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="#D55E00" stroke-width="2" '
                     f'stroke-dasharray="6 4"><title>Pareto front</title></polyline>')
    placed: list[tuple[float, float, float, float]] = []   # label boxes already drawn
    for p in pts:
        x, y = ax.px(float(p["x"])), ax.py(float(p["y"]))
        on_front = bool(p.get("front"))
        fill = "#D55E00" if on_front else "#0072B2"
        label = str(p.get("label", ""))
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{6 if on_front else 5}" fill="{fill}" '
                     f'stroke="#ffffff" stroke-width="1.5"><title>{esc(label)}: {esc(fmt(float(p["x"])))}, '
                     f'{esc(fmt(float(p["y"])))}</title></circle>')
        tx, ty, anchor = _label_spot(x, y, 6.2 * len(label), ax, placed)
        parts.append(f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" font-size="11" '
                     f'fill="#333">{esc(label)}</text>')
    if front:   # legend under the plot title, outside the data area
        lx, ly = ax.x1 - 120, ax.y1 - 16
        parts.append(f'<line x1="{lx}" y1="{ly + 8}" x2="{lx + 22}" y2="{ly + 8}" stroke="#D55E00" '
                     f'stroke-width="2" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{lx + 28}" y="{ly + 12}" fill="#333">Pareto front</text>')
    return "\n".join(parts + ["</svg>"])


def _label_spot(x: float, y: float, w: float, ax: _Axes,
                placed: list[tuple[float, float, float, float]]) -> tuple[float, float, str]:
    """Where a point's label goes: the first of eight spots around it that overlaps no earlier
    label and stays inside the plot; the box is recorded in ``placed``."""
    h = 12.0
    toward_left = x > (ax.x0 + ax.x1) / 2
    spots = []
    for dy in (-8, 16, -22, 30):
        for left in ((True, False) if toward_left else (False, True)):
            spots.append((x - 8 if left else x + 8, y + dy, "end" if left else "start"))
    for tx, ty, anchor in spots:
        box = (tx - w if anchor == "end" else tx, ty - h, tx if anchor == "end" else tx + w, ty + 2)
        inside = box[0] >= ax.x0 and box[2] <= ax.x1 + 10 and box[1] >= ax.y1 - 4 and box[3] <= ax.y0
        if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            placed.append(box)
            return tx, ty, anchor
    tx, ty, anchor = spots[0]
    return tx, ty, anchor


def bar_chart(groups: dict[str, list[float]], *, categories: list[str], title: str, y_label: str) -> str:
    """Grouped bars: one cluster per category, one bar per group in each cluster."""
    if not groups or not categories:
        return _empty("bar", title)
    values = [float(v) for vs in groups.values() for v in vs if v is not None and math.isfinite(float(v))]
    if not values:
        return _empty("bar", title)
    width = max(WIDTH, MARGIN["left"] + MARGIN["right"] + len(categories) * (12 * len(groups) + 14))
    ax = _Axes([0, 1], values + [0.0], width=width, y_from_zero=True)
    parts = _open("bar", title, width, HEIGHT)
    parts += ax.draw("", y_label, x_ticks=False)  # bars are placed by category, not on a numeric x axis
    slot = (ax.x1 - ax.x0) / len(categories)
    bar_w = max(2.0, min(28.0, slot * 0.8 / len(groups)))
    base = ax.py(max(0.0, ax.ylo))
    bar_tops: list[tuple[float, float]] = []      # points the legend should not cover
    for c, cat in enumerate(categories):
        cx = ax.x0 + slot * (c + 0.5)
        start = cx - bar_w * len(groups) / 2
        for g, (name, vs) in enumerate(groups.items()):
            v = vs[c] if c < len(vs) else None
            if v is None or not math.isfinite(float(v)):
                continue
            top = ax.py(float(v))
            y, h = min(top, base), abs(base - top)
            bar_tops += [(start + g * bar_w + bar_w / 2, yy) for yy in (y, y + h / 2, y + h)]
            parts.append(f'<rect x="{start + g * bar_w:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                         f'fill="{PALETTE[g % len(PALETTE)]}"><title>{esc(name)}, {esc(cat)}: {esc(fmt(float(v)))}'
                         f'</title></rect>')
        parts.append(f'<text x="{cx:.1f}" y="{ax.y0 + 17}" text-anchor="middle" fill="#555">{esc(cat)}</text>')
    if len(groups) > 1:
        parts += _legend(list(groups), ax, bar_tops)
    return "\n".join(parts + ["</svg>"])
