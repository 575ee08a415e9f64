"""The all-symbols heatmap: tiles on a fixed grid, or sized by 24h quote volume.

A plain Bokeh figure, not HoloViews: a tile grid redrawn through HoloViews costs
~33 ms per update per session, a ``ColumnDataSource.patch`` of the same 50 values
~1 ms. On the grid (``layout="grid"``) tiles sit in the order the symbols were
given and never move; as a treemap (``layout="volume"``, squarified in Python by
dashboard/treemap.py) their areas follow 24h quote volume, recomputed on update
and patched only when a tile moved. Labels shrink to fit their tile (and vanish
on tiles too small for 7 px text). Build one ``Heatmap`` per browser session (a
Bokeh model lives in one document) and show ``heatmap.figure`` with ``pn.pane.Bokeh``.
The signal table lives in dashboard/table.py (re-exported here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import polars as pl
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper, TapTool
from bokeh.plotting import figure

from dashboard import treemap
from dashboard.table import (  # noqa: F401  (re-exported: the table used to live here)
    SIGNAL_COLORS, TABLE_COLUMNS, signal_table, signal_table_frame,
)
from dashboard.theme import GREEN, MISSING, NEUTRAL, RED, SELECTED, TEXT  # noqa: F401

log = logging.getLogger(__name__)

#: Heatmap modes: the column each reads and how a value is labelled.
MODES = {"change": "price_change_pct", "rsi": "rsi"}
#: Tile layouts: a fixed grid, or areas by 24h quote volume (a treemap).
LAYOUTS = ("grid", "volume")
#: Width assumed for the figure's frame when sizing labels (the page stretches it: ~900 px
#: stacked at 1366 px, ~500 px beside the table at 1920 px; sized for 480 px, labels fit both).
ASSUMED_WIDTH = 480
NAME_PX, LABEL_PX = 13.0, 11.0


def short_name(symbol: str) -> str:
    """Tile name: quote asset dropped, Binance's 1000x contracts abbreviated (1000SHIBUSDT -> 1kSHIB)."""
    name = symbol.removesuffix("USDT") or symbol
    for prefix, short in (("1000000", "1M"), ("1000", "1k")):
        if name.startswith(prefix) and len(name) > len(prefix):
            return short + name[len(prefix):]
    return name


def _mix(a: str, b: str, t: float) -> str:
    """Colour ``t`` of the way from hex ``a`` to hex ``b``."""
    ca = [int(a[i:i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(ca, cb))


def change_palette(n: int = 201) -> list[str]:
    """Diverging palette for -limit..+limit: red, through the mid grey, to green."""
    half = (n - 1) / 2
    return [_mix(NEUTRAL, RED if i < half else GREEN, abs(i - half) / half) for i in range(n)]


def rsi_palette() -> list[str]:
    """101 colours for RSI 0..100: grey between 30 and 70, a step into green below
    30 (oversold) and red above 70 (overbought), full colour at 10 and 90."""
    def color(v: int) -> str:
        if v < 30:
            return _mix(_mix(NEUTRAL, GREEN, 0.45), GREEN, min(1.0, (30 - v) / 20))
        if v > 70:
            return _mix(_mix(NEUTRAL, RED, 0.45), RED, min(1.0, (v - 70) / 20))
        return NEUTRAL
    return [color(v) for v in range(101)]


def tile_colors(values: np.ndarray, mode: str, change_limit: float = 5.0) -> list[str]:
    """The tile colour of each value (NaN -> MISSING), exactly as the colour bar shows."""
    if mode == "change":
        palette, low, high = change_palette(), -change_limit, change_limit
    elif mode == "rsi":
        palette, low, high = rsi_palette(), 0.0, 100.0
    else:
        raise ValueError(f"unknown heatmap mode {mode!r}; use one of {list(MODES)}")
    v = np.asarray(values, dtype="float64")
    idx = np.rint((np.clip(v, low, high) - low) / (high - low) * (len(palette) - 1))
    return [MISSING if not math.isfinite(x) else palette[int(i)] for x, i in zip(v, idx)]


def tile_labels(values: np.ndarray, mode: str) -> list[str]:
    """"+2.31%" or "RSI 64"; an em dash when the value is missing."""
    fmt = "{:+.2f}%" if mode == "change" else "RSI {:.0f}"
    return ["—" if not math.isfinite(x) else fmt.format(x) for x in np.asarray(values, float)]


class Heatmap:
    """Symbol tiles coloured by 24h change or RSI, on a grid or sized by volume, patched in place.

    ``symbols`` fixes each tile's row in the source (and, on the grid, its cell,
    row by row, ``columns`` wide); ``on_select`` callbacks receive the symbol of a
    clicked tile (server only: it needs the Python side of the Bokeh document).
    """

    def __init__(self, symbols: Sequence[str], columns: int = 10, *, height: int = 300,
                 change_limit: float = 5.0, mode: str = "change", layout: str = "grid") -> None:
        if not symbols or len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be a non-empty list without duplicates")
        if mode not in MODES:
            raise ValueError(f"unknown heatmap mode {mode!r}; use one of {list(MODES)}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown heatmap layout {layout!r}; use one of {list(LAYOUTS)}")
        self.symbols = list(symbols)
        self.mode = mode
        self.layout = layout
        self.change_limit = change_limit
        self.skipped = 0  # rows for symbols not on the grid, counted not drawn
        self._row = {s: i for i, s in enumerate(self.symbols)}
        self._values = {c: np.full(len(symbols), np.nan) for c in
                        ("price_change_pct", "rsi", "last_price", "quote_volume")}
        self._callbacks: list[Callable[[str], None]] = []
        self._silent = False

        n = len(symbols)
        self.columns, self.rows = columns, math.ceil(n / columns)
        self._box = (-0.5, -0.5, columns - 0.5, self.rows - 0.5)
        # pixels per data unit, for label sizes: the height is fixed, the width assumed
        self._px = (ASSUMED_WIDTH / columns, height / self.rows)
        names = [short_name(s) for s in self.symbols]
        self.source = ColumnDataSource({
            "symbol": self.symbols, "name": names,
            **self._geometry(self._rects(), names, ["—"] * n),
            "color": [MISSING] * n, "label": ["—"] * n,
            "change": [np.nan] * n, "rsi": [np.nan] * n, "price": [np.nan] * n, "volume": [np.nan] * n,
        })
        fig = figure(
            x_range=(self._box[0], self._box[2]), y_range=(self._box[1], self._box[3]), height=height,
            sizing_mode="stretch_width", toolbar_location=None, tools="",
            min_border=0, background_fill_alpha=0, border_fill_alpha=0,
            outline_line_color=None,
            # no axes or grid at all (hidden ones still cost ~20 models a session to build and draw)
            x_axis_type=None, y_axis_type=None,
        )
        tiles = fig.quad(
            left="left", right="right", bottom="bottom", top="top", source=self.source,
            fill_color="color", line_color=None, nonselection_fill_alpha=1.0,
            nonselection_line_color=None, selection_fill_color="color",
            selection_line_color=SELECTED, selection_line_width=3,
        )
        for col, ycol, size, style in (("name", "name_y", "name_size", "bold"),
                                       ("label", "label_y", "label_size", "normal")):
            fig.text("x", ycol, text=col, source=self.source, text_color=TEXT,
                     text_align="center", text_baseline="middle", text_font_size={"field": size},
                     text_font_style=style, nonselection_text_alpha=1.0)
        fig.add_tools(
            TapTool(renderers=[tiles], mode="replace"),
            HoverTool(renderers=[tiles], tooltips=[
                ("", "@symbol"), ("Price", "@price{0,0.[00000000]}"),
                ("24h", "@change{+0.00}%"), ("RSI", "@rsi{0.0}"), ("24h vol", "@volume{0.0a}")]),
        )
        self._mapper = LinearColorMapper()
        self._bar = ColorBar(color_mapper=self._mapper, location=(0, 0), width=10,
                             background_fill_alpha=0, major_label_text_color=MISSING,
                             title_text_color=MISSING, title_text_font_size="11px")
        fig.add_layout(self._bar, "right")
        self._set_scale()
        self.source.selected.on_change("indices", self._on_indices)
        self.figure = fig

    # -- geometry -------------------------------------------------------------------
    def _rects(self) -> list[treemap.Rect]:
        if self.layout == "grid":
            return treemap.grid(len(self.symbols), self.columns)
        # squarify in pixels (tiles look square on screen), then back to data units
        sx, sy = self._px
        l, b, r, t = self._box
        rects = treemap.squarify(self._values["quote_volume"].tolist(), (0, 0, (r - l) * sx, (t - b) * sy))
        return [(l + x0 / sx, b + y0 / sy, l + x1 / sx, b + y1 / sy) for x0, y0, x1, y1 in rects]

    def _geometry(self, rects: list[treemap.Rect], names: list[str], labels: list[str]) -> dict[str, list]:
        """Tile edges (a small gap inside each), text positions and sizes that fit."""
        gap_x, gap_y = 2 / self._px[0], 2 / self._px[1]
        inner = [(l + gap_x, b + gap_y, r - gap_x, t - gap_y) for l, b, r, t in rects]
        # bold capitals (W, M) run wider than the average glyph: size names for 0.72 em a letter
        name_px = treemap.label_sizes(inner, names, *self._px, NAME_PX, char_width=0.72)
        label_px = treemap.label_sizes(inner, labels, *self._px, LABEL_PX, char_width=0.56)
        label_px = [lp if np_ else 0.0 for lp, np_ in zip(label_px, name_px)]  # no value without a name
        mid_y = [(b + t) / 2 for _, b, _, t in inner]
        # name above the middle and value below, spaced by the name's size (in data units)
        up = [(sz * 0.6) / self._px[1] if lsz else 0.0 for sz, lsz in zip(name_px, label_px)]
        down = [(lsz * 0.75) / self._px[1] for lsz in label_px]
        return {
            "left": [r[0] for r in inner], "right": [r[2] for r in inner],
            "bottom": [r[1] for r in inner], "top": [r[3] for r in inner],
            "x": [(l + r) / 2 for l, _, r, _ in inner], "y": mid_y,
            "name_y": [m + u for m, u in zip(mid_y, up)], "label_y": [m - d for m, d in zip(mid_y, down)],
            "name_size": [f"{v:g}px" for v in name_px], "label_size": [f"{v:g}px" for v in label_px],
        }

    def set_layout(self, layout: str) -> None:
        """Switch between the fixed grid and tiles sized by 24h quote volume."""
        if layout not in LAYOUTS:
            raise ValueError(f"unknown heatmap layout {layout!r}; use one of {list(LAYOUTS)}")
        if layout != self.layout:
            self.layout = layout
            self.update()

    def _set_scale(self) -> None:
        if self.mode == "change":
            lim = self.change_limit
            self._mapper.update(palette=change_palette(), low=-lim, high=lim)
            self._bar.title = "24h %"
        else:
            self._mapper.update(palette=rsi_palette(), low=0, high=100)
            self._bar.title = "RSI"

    def update(self, values: pl.DataFrame | pd.DataFrame | None = None,
               mode: str | None = None) -> None:
        """Take new values per symbol and/or switch mode; patch the tiles in place.

        ``values`` has ``symbol`` and any of ``price_change_pct``, ``rsi``,
        ``last_price``, ``quote_volume`` (a tickers frame with indicators). Symbols
        absent from it keep their last values; symbols not on the grid are counted
        in ``skipped``.
        """
        if mode is not None and mode != self.mode:
            if mode not in MODES:
                raise ValueError(f"unknown heatmap mode {mode!r}; use one of {list(MODES)}")
            self.mode = mode
            self._set_scale()
        if values is not None:
            frame = values if isinstance(values, pl.DataFrame) else pl.from_pandas(values)
            if "symbol" not in frame.columns:
                raise ValueError("heatmap values need a 'symbol' column")
            rows = [self._row.get(s, -1) for s in frame["symbol"].to_list()]
            known = np.array([r >= 0 for r in rows], dtype=bool)
            if not known.all():
                self.skipped += int((~known).sum())
                log.debug("heatmap: %d rows for symbols not on the grid", (~known).sum())
            idx = np.array(rows, dtype=int)[known]
            for col, store in self._values.items():
                if col in frame.columns:
                    new = frame[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
                    store[idx] = new[known]
        shown = self._values[MODES[self.mode]]
        n = len(self.symbols)
        labels = tile_labels(shown, self.mode)
        patch = {
            "color": tile_colors(shown, self.mode, self.change_limit), "label": labels,
            "change": self._values["price_change_pct"].tolist(), "rsi": self._values["rsi"].tolist(),
            "price": self._values["last_price"].tolist(), "volume": self._values["quote_volume"].tolist(),
        }
        geometry = self._geometry(self._rects(), list(self.source.data["name"]), labels)
        for col, new in geometry.items():  # only what moved or resized: usually nothing
            old = self.source.data[col]
            if any(a != b for a, b in zip(old, new)):
                patch[col] = new
        self.source.patch({col: [(slice(0, n), v)] for col, v in patch.items()})

    def on_select(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(symbol)`` when the user clicks a tile."""
        self._callbacks.append(callback)

    def select(self, symbol: str | None) -> None:
        """Outline ``symbol``'s tile (or none) without calling the on_select callbacks."""
        self._silent = True
        try:
            self.source.selected.indices = [] if symbol is None else [self._row[symbol]]
        finally:
            self._silent = False

    def _on_indices(self, attr: str, old: list[int], new: list[int]) -> None:
        if self._silent or not new:
            return
        symbol = self.symbols[new[0]]
        for callback in self._callbacks:
            callback(symbol)
