"""Dependency-free figures for the HTML report: SVG heatmaps and line charts, and thumbnails
embedded as base64 data URIs (JPEG photos, palette-PNG masks).

Every SVG is returned as a string ready to inline in HTML; all text in it is escaped.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from tagseg.errors import TagsegError

# ColorBrewer "Blues" (9 classes), light to dark.
BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")
SERIES_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def hex_color(palette: Sequence[int], index: int) -> str:
    """'#rrggbb' of entry ``index`` of a flat [r, g, b, r, g, b, ...] palette."""
    r, g, b = palette[3 * index: 3 * index + 3]
    return f"#{r:02x}{g:02x}{b:02x}"


def text_color_on(fill: str) -> str:
    """Black or white, whichever reads better on the '#rrggbb' ``fill``."""
    r, g, b = (int(fill[i: i + 2], 16) for i in (1, 3, 5))
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def sequential_color(value: float) -> str:
    """Colour of ``value`` in [0, 1] (clipped) on the Blues scale, linear between its stops."""
    v = min(1.0, max(0.0, float(value))) * (len(BLUES) - 1)
    i = min(int(v), len(BLUES) - 2)
    t = v - i
    a = [int(BLUES[i][j: j + 2], 16) for j in (1, 3, 5)]
    b = [int(BLUES[i + 1][j: j + 2], 16) for j in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps 1, 2, 2.5 or 5 × 10^n) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise TagsegError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9 or len(ticks) < 2:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi - step * 1e-9:
        ticks.append(round(v, 12))
    return ticks


def format_number(v: float) -> str:
    """Compact label for an axis tick or tooltip: 0.0001 -> '1e-4', 0.00075 -> '7.5e-4', 12.5 -> '12.5'."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        mantissa, exponent = f"{v:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{v:.4g}"


def _svg_open(width: float, height: float, svg_id: Optional[str], label: str, cls: str) -> str:
    ident = f' id="{escape(svg_id)}"' if svg_id else ""
    return (f'<svg{ident} class="{cls}" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
            f'aria-label="{escape(label)}">')


def heatmap_svg(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                svg_id: Optional[str] = None, title: str = "") -> str:
    """Confusion matrix (R, C) of pixel counts as an SVG heatmap, rows normalised to fractions.

    Cell colour encodes sqrt(row fraction) on the Blues scale (so small confusions stay
    visible; the colour bar is labelled in plain fractions); cells show the percentage
    (rounded, when >= 1 %) if they are large enough, and every cell has a tooltip with the raw
    pixel count. Rows without pixels are drawn hatched grey.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape != (len(row_labels), len(col_labels)):
        raise TagsegError(f"heatmap: matrix shape {m.shape} does not match {len(row_labels)} row and "
                          f"{len(col_labels)} column labels")
    rows, cols = m.shape
    cell = max(8, min(24, 640 // max(rows, cols)))
    label_w = 12 + 6.6 * max(len(s) for s in [*row_labels, *col_labels, "x"])
    left, top = label_w + 18, label_w + 18
    bar_w = 90
    width = left + cols * cell + 24 + bar_w
    height = max(top + rows * cell + 12, top + 220)
    totals = m.sum(axis=1)
    frac = np.divide(m, totals[:, None], out=np.zeros_like(m), where=totals[:, None] > 0)
    font = max(7, min(10, cell * 0.42))
    out = [_svg_open(width, height, svg_id, title or "confusion matrix", "heatmap")]
    if title:
        out.append(f"<title>{escape(title)}</title>")
    out.append(f'<text x="{left + cols * cell / 2:.1f}" y="11" text-anchor="middle" class="axis-title">'
               f'predicted class</text>')
    out.append(f'<text transform="translate(11,{top + rows * cell / 2:.1f}) rotate(-90)" text-anchor="middle" '
               f'class="axis-title">ground truth class</text>')
    for j, name in enumerate(col_labels):
        x = left + j * cell + cell / 2 + 3.5
        out.append(f'<text transform="translate({x:.1f},{top - 4:.1f}) rotate(-90)" class="tick">{escape(name)}</text>')
    for i, name in enumerate(row_labels):
        y = top + i * cell + cell / 2 + 3.5
        cls = "tick" if totals[i] > 0 else "tick muted"
        out.append(f'<text x="{left - 4:.1f}" y="{y:.1f}" text-anchor="end" class="{cls}">{escape(name)}</text>')
        for j in range(cols):
            x0, y0 = left + j * cell, top + i * cell
            if totals[i] == 0:
                fill, tip = "#eeeeee", f"{row_labels[i]}: no ground-truth pixels"
            else:
                fill = sequential_color(math.sqrt(frac[i, j]))
                tip = (f"ground truth {row_labels[i]} → predicted {col_labels[j]}: {int(m[i, j]):,} px "
                       f"({100 * frac[i, j]:.1f}% of the {row_labels[i]} pixels)")
            out.append(f'<rect x="{x0}" y="{y0}" width="{cell}" height="{cell}" fill="{fill}"'
                       f'><title>{escape(tip)}</title></rect>')
            if cell >= 16 and totals[i] > 0 and frac[i, j] >= 0.01:
                out.append(f'<text x="{x0 + cell / 2:.1f}" y="{y0 + cell / 2 + font / 3:.1f}" text-anchor="middle" '
                           f'font-size="{font:.1f}" fill="{text_color_on(fill)}" class="cell">'
                           f'{round(100 * frac[i, j])}</text>')
    # diagonal outline for orientation (rows with pixels only)
    for i in range(min(rows, cols)):
        if totals[i] == 0:
            continue
        out.append(f'<rect x="{left + i * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" fill="none" '
                   f'stroke="#555" stroke-width="0.6"/>')
    # colour bar
    bx, by, bh = left + cols * cell + 24, top, 200
    steps = 40
    for s in range(steps):
        v0 = 1 - (s + 1) / steps
        out.append(f'<rect x="{bx}" y="{by + s * bh / steps:.2f}" width="14" height="{bh / steps + 0.3:.2f}" '
                   f'fill="{sequential_color(v0 + 0.5 / steps)}"/>')
    out.append(f'<rect x="{bx}" y="{by}" width="14" height="{bh}" fill="none" stroke="#999" stroke-width="0.5"/>')
    for f in (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0):
        y = by + bh * (1 - math.sqrt(f))
        out.append(f'<line x1="{bx + 14}" x2="{bx + 18}" y1="{y:.1f}" y2="{y:.1f}" stroke="#555"/>'
                   f'<text x="{bx + 21}" y="{y + 3.5:.1f}" class="tick">{100 * f:g}%</text>')
    out.append(f'<text x="{bx}" y="{by + bh + 16}" class="tick">share of the</text>'
               f'<text x="{bx}" y="{by + bh + 28}" class="tick">row&#39;s pixels</text>')
    out.append("</svg>")
    return "".join(out)


def line_chart_svg(x: Sequence[float], series: dict[str, Sequence[Optional[float]]], *, title: str,
                   svg_id: Optional[str] = None, markers: Sequence[tuple[float, str]] = (),
                   x_label: str = "epoch", width: int = 340, height: int = 210) -> str:
    """Line chart of one or more series over shared x values (None = no value: the line breaks).

    markers: (x, text) vertical dashed lines (e.g. where a training phase starts).
    Every point is a circle with a tooltip giving its exact value.
    """
    for name, ys in series.items():
        if len(ys) != len(x):
            raise TagsegError(f"line chart {title!r}: series {name!r} has {len(ys)} values for {len(x)} x values")
    left, right, top, bottom = 54, 12, 26, 34
    if len(series) > 1:
        bottom += 16 * math.ceil(len(series) / 3)
    pw, ph = width - left - right, height - top - bottom
    values = [v for ys in series.values() for v in ys if v is not None and math.isfinite(v)]
    xs = [float(v) for v in x]
    out = [_svg_open(width, height, svg_id, title, "chart"), f"<title>{escape(title)}</title>",
           f'<text x="{left}" y="15" class="chart-title">{escape(title)}</text>']
    if not values or not xs:
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" '
                   f'class="tick muted">no values</text>')
        out.append("</svg>")
        return "".join(out)
    yt = nice_ticks(min(values), max(values), 5)
    xt = nice_ticks(min(xs), max(xs), min(6, max(2, len(set(xs)))))
    if all(float(v).is_integer() for v in xs):
        xt = [t for t in xt if float(t).is_integer()] or xt
    y0, y1 = yt[0], yt[-1]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    else:  # a little room so the end points are not on the frame
        pad = 0.03 * (x1 - x0)
        x0, x1 = x0 - pad, x1 + pad

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                   f'<text x="{left - 5}" y="{py(t) + 3.5:.1f}" text-anchor="end" class="tick">'
                   f'{format_number(t)}</text>')
    for t in xt:
        if x0 <= t <= x1:
            out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#555"/>'
                       f'<text x="{px(t):.1f}" y="{top + ph + 15}" text-anchor="middle" class="tick">'
                       f'{format_number(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888" stroke-width="0.6"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 28}" text-anchor="middle" class="axis-title">'
               f'{escape(x_label)}</text>')
    for mx, text in markers:
        if x0 <= mx <= x1:
            out.append(f'<line x1="{px(mx):.1f}" x2="{px(mx):.1f}" y1="{top}" y2="{top + ph}" class="marker"/>'
                       f'<text x="{px(mx) + 3:.1f}" y="{top + 10}" class="tick muted">{escape(text)}</text>')
    for n, (name, ys) in enumerate(series.items()):
        color = SERIES_COLORS[n % len(SERIES_COLORS)]
        segments, current = [], []
        for xv, yv in zip(xs, ys):
            if yv is None or not math.isfinite(yv):
                if current:
                    segments.append(current)
                current = []
            else:
                current.append((px(xv), py(yv)))
        if current:
            segments.append(current)
        for seg in segments:
            if len(seg) > 1:
                pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in seg)
                out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        for xv, yv in zip(xs, ys):
            if yv is not None and math.isfinite(yv):
                out.append(f'<circle cx="{px(xv):.1f}" cy="{py(yv):.1f}" r="2.6" fill="{color}">'
                           f'<title>{escape(f"{name}, {x_label} {xv:g}: {yv:.6g}")}</title></circle>')
        if len(series) > 1:
            lx = left + (n % 3) * (pw / 3)
            ly = top + ph + 44 + 16 * (n // 3)
            out.append(f'<rect x="{lx:.1f}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                       f'<text x="{lx + 14:.1f}" y="{ly + 1}" class="tick">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def fit_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is ``max_side`` (aspect ratio kept, each side >= 1)."""
    if height < 1 or width < 1:
        raise TagsegError(f"image size must be positive, got {height}x{width}")
    if max_side < 1:
        raise TagsegError(f"thumbnail size must be >= 1 px, got {max_side}")
    s = max_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def image_thumbnail(image: np.ndarray, max_side: int = 200) -> np.ndarray:
    """uint8 (H, W, 3) photo -> (h, w, 3) with max(h, w) = max_side (bilinear; box filter when shrinking)."""
    h, w = fit_size(image.shape[0], image.shape[1], max_side)
    shrink = h < image.shape[0]
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    return np.asarray(im.resize((w, h), Image.BOX if shrink else Image.BILINEAR))


def mask_thumbnail(mask: np.ndarray, max_side: int = 200) -> np.ndarray:
    """uint8 (H, W) class-index mask -> (h, w) with max(h, w) = max_side, nearest neighbour (no new values)."""
    h, w = fit_size(mask.shape[0], mask.shape[1], max_side)
    return np.asarray(Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).resize((w, h), Image.NEAREST))


def jpeg_data_uri(image: np.ndarray, quality: int = 85) -> str:
    """uint8 (H, W, 3) -> 'data:image/jpeg;base64,...'."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mask_data_uri(mask: np.ndarray, palette: Sequence[int]) -> str:
    """uint8 (H, W) class indices -> 'data:image/png;base64,...' palette PNG coloured by ``palette``."""
    im = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))  # mode L
    im.putpalette(list(palette))  # L -> P, indices kept
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
