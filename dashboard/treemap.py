"""Tile geometry for the heatmap: a fixed grid, or a squarified treemap by weight.

Pure functions on numbers: rectangles are ``(left, bottom, right, top)`` in data
units, returned in the order the values were given, so a tile keeps its row in the
Bokeh source whatever its place. The treemap is Bruls, Huijsen and van Wijk's
squarified layout: rows of tiles laid along the shorter side, a tile added to the
current row while that keeps the row's worst aspect ratio from getting worse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Rect = tuple[float, float, float, float]

#: Every tile gets at least this share of the area, so a symbol with no volume yet
#: (or a tiny one) stays visible and clickable.
MIN_SHARE = 0.004


def grid(n: int, columns: int) -> list[Rect]:
    """``n`` unit cells centred on integer coordinates, row by row from the top left."""
    rows = math.ceil(n / columns)
    out = []
    for i in range(n):
        x, y = i % columns, rows - 1 - i // columns
        out.append((x - 0.5, y - 0.5, x + 0.5, y + 0.5))
    return out


def _worst(row: list[float], side: float) -> float:
    """The worst aspect ratio of ``row`` (areas) laid along a side of length ``side``."""
    total = sum(row)
    if total <= 0 or side <= 0:
        return math.inf
    return max(max(side * side * a / (total * total), (total * total) / (side * side * a)) for a in row)


def squarify(values: Sequence[float], box: Rect) -> list[Rect]:
    """Rectangles filling ``box`` with areas proportional to ``values`` (NaN/negative count as 0).

    Every value gets at least ``MIN_SHARE`` of the box. Ties keep input order, so the
    same values always give the same layout.
    """
    n = len(values)
    if n == 0:
        return []
    left, bottom, right, top = box
    width, height = right - left, top - bottom
    clean = [v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else 0.0 for v in values]
    total = sum(clean)
    if total > 0 and math.isfinite(total):  # shares first: no overflow or denormal scale
        weights = [max(v / total, MIN_SHARE) for v in clean]
    else:
        weights = [1.0] * n
    scale = width * height / sum(weights)
    order = sorted(range(n), key=lambda i: (-weights[i], i))
    areas = [weights[i] * scale for i in order]

    out: dict[int, Rect] = {}
    x, y, w, h = left, bottom, width, height
    start = 0
    while start < n:
        side = min(w, h)
        row = [areas[start]]
        end = start + 1
        while end < n and _worst(row + [areas[end]], side) <= _worst(row, side):
            row.append(areas[end])
            end += 1
        thickness = sum(row) / side if side > 0 else 0.0
        pos = 0.0
        for k, area in enumerate(row):
            length = area / thickness if thickness > 0 else 0.0
            i = order[start + k]
            if w >= h:  # lay the row along the left edge, top to bottom
                out[i] = (x, y + h - pos - length, x + thickness, y + h - pos)
            else:  # along the top edge, left to right
                out[i] = (x + pos, y + h - thickness, x + pos + length, y + h)
            pos += length
        if w >= h:
            x, w = x + thickness, w - thickness
        else:
            h = h - thickness
        start = end
    return [out[i] for i in range(n)]


def label_sizes(rects: Sequence[Rect], texts: Sequence[str], px_per_x: float, px_per_y: float,
                largest: float, *, char_width: float = 0.62, lines: float = 2.6,
                smallest: float = 7.0) -> list[float]:
    """Font sizes (px) at which each text fits its tile's width and a share of its height;
    0 when even ``smallest`` would not fit (the text is then not drawn)."""
    out = []
    for (l, b, r, t), text in zip(rects, texts):
        w_px, h_px = (r - l) * px_per_x * 0.9, (t - b) * px_per_y
        size = min(largest, w_px / max(1.0, char_width * len(text)), h_px / lines)
        out.append(math.floor(size * 10) / 10 if size >= smallest else 0.0)  # down: never past the edge
    return out
