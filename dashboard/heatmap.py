"""The all-symbols overview: a heatmap of tiles and the signal table.

The heatmap is a plain Bokeh figure, not HoloViews: a tile grid redrawn through
HoloViews costs ~33 ms per update per session, a ``ColumnDataSource.patch`` of the
same 50 values ~1 ms. Tiles sit on a fixed grid in the order the symbols were given,
so a tile never moves while values change; ``update`` patches colours and labels in
place. Build one ``Heatmap`` per browser session (a Bokeh model lives in one
document) and show ``heatmap.figure`` with ``pn.pane.Bokeh``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import polars as pl
from bokeh.models import (
    CategoricalColorMapper, ColorBar, ColumnDataSource, HoverTool, LinearColorMapper,
    NumberFormatter, StringFormatter, TapTool,
)
from bokeh.plotting import figure
from bokeh.transform import transform

log = logging.getLogger(__name__)

#: Saturated ends and a mid grey: white text reads on all of them, and the grey
#: stands out from both a white and a near-black page.
GREEN = "#089981"
RED = "#f23645"
NEUTRAL = "#5d6673"
MISSING = "#9aa0a6"
TEXT = "#ffffff"
SELECTED = "#ffb300"

#: Heatmap modes: the column each reads and how a value is labelled.
MODES = {"change": "price_change_pct", "rsi": "rsi"}


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
    """Fixed grid of symbol tiles coloured by 24h change or RSI, patched in place.

    ``symbols`` fixes the grid (row by row, ``columns`` wide); ``on_select``
    callbacks receive the symbol of a clicked tile (server only: it needs the
    Python side of the Bokeh document).
    """

    def __init__(self, symbols: Sequence[str], columns: int = 10, *, height: int = 300,
                 change_limit: float = 5.0, mode: str = "change") -> None:
        if not symbols or len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be a non-empty list without duplicates")
        if mode not in MODES:
            raise ValueError(f"unknown heatmap mode {mode!r}; use one of {list(MODES)}")
        self.symbols = list(symbols)
        self.mode = mode
        self.change_limit = change_limit
        self.skipped = 0  # rows for symbols not on the grid, counted not drawn
        self._row = {s: i for i, s in enumerate(self.symbols)}
        self._values = {c: np.full(len(symbols), np.nan) for c in
                        ("price_change_pct", "rsi", "last_price")}
        self._callbacks: list[Callable[[str], None]] = []
        self._silent = False

        n, rows = len(symbols), math.ceil(len(symbols) / columns)
        x = [i % columns for i in range(n)]
        y = [rows - 1 - i // columns for i in range(n)]  # first symbol top left
        self.source = ColumnDataSource({
            "symbol": self.symbols,
            "name": [s.removesuffix("USDT") or s for s in self.symbols],
            "x": x, "y": y,
            "name_y": [v + 0.14 for v in y], "label_y": [v - 0.2 for v in y],
            "color": [MISSING] * n, "label": ["—"] * n,
            "change": [np.nan] * n, "rsi": [np.nan] * n, "price": [np.nan] * n,
        })
        fig = figure(
            x_range=(-0.5, columns - 0.5), y_range=(-0.5, rows - 0.5), height=height,
            sizing_mode="stretch_width", toolbar_location=None, tools="",
            min_border=0, background_fill_alpha=0, border_fill_alpha=0,
            outline_line_color=None,
        )
        fig.axis.visible = False
        fig.grid.visible = False
        tiles = fig.rect(
            "x", "y", width=0.96, height=0.92, source=self.source, fill_color="color",
            line_color=None, nonselection_fill_alpha=1.0, nonselection_line_color=None,
            selection_fill_color="color", selection_line_color=SELECTED,
            selection_line_width=3,
        )
        for col, ycol, size, style in (("name", "name_y", "13px", "bold"),
                                       ("label", "label_y", "11px", "normal")):
            fig.text("x", ycol, text=col, source=self.source, text_color=TEXT,
                     text_align="center", text_baseline="middle", text_font_size=size,
                     text_font_style=style, nonselection_text_alpha=1.0)
        fig.add_tools(
            TapTool(renderers=[tiles], mode="replace"),
            HoverTool(renderers=[tiles], tooltips=[
                ("", "@symbol"), ("Price", "@price{0,0.[00000000]}"),
                ("24h", "@change{+0.00}%"), ("RSI", "@rsi{0.0}")]),
        )
        self._mapper = LinearColorMapper()
        self._bar = ColorBar(color_mapper=self._mapper, location=(0, 0), width=10,
                             background_fill_alpha=0, major_label_text_color=MISSING,
                             title_text_color=MISSING, title_text_font_size="11px")
        fig.add_layout(self._bar, "right")
        self._set_scale()
        self.source.selected.on_change("indices", self._on_indices)
        self.figure = fig

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
        ``last_price`` (a tickers frame with indicators). Symbols absent from it keep
        their last values; symbols not on the grid are counted in ``skipped``.
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
        self.source.patch({
            "color": [(slice(0, n), tile_colors(shown, self.mode, self.change_limit))],
            "label": [(slice(0, n), tile_labels(shown, self.mode))],
            "change": [(slice(0, n), self._values["price_change_pct"].tolist())],
            "rsi": [(slice(0, n), self._values["rsi"].tolist())],
            "price": [(slice(0, n), self._values["last_price"].tolist())],
        })

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


# --- signal table -------------------------------------------------------------------

#: Signal text colours (market.indicators.SIGNALS): bullish green, bearish red; none grey.
SIGNAL_COLORS = {"cross_up": GREEN, "oversold": GREEN, "cross_down": RED, "overbought": RED}

TABLE_COLUMNS = ("symbol", "price", "change_pct", "quote_volume", "rsi", "stoch_k",
                 "stoch_d", "signal")


def signal_table_frame(tickers: pl.DataFrame | pd.DataFrame,
                       order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per symbol for :func:`signal_table`, from tickers with indicators.

    ``tickers`` has market.schema.TICKER_SCHEMA columns plus ``rsi``, ``stoch_k``,
    ``stoch_d``, ``signal`` (any may be missing or null). With ``order`` the rows
    follow it, one per symbol, so the frame's index is stable between updates (what
    ``Tabulator.patch`` relies on); otherwise they keep the input order.
    """
    frame = tickers if isinstance(tickers, pl.DataFrame) else pl.from_pandas(tickers)
    if "symbol" not in frame.columns:
        raise ValueError("tickers need a 'symbol' column")

    def num(col: str) -> pl.Expr:
        return (pl.col(col).cast(pl.Float64) if col in frame.columns
                else pl.lit(None, pl.Float64).alias(col))

    out = frame.select(
        pl.col("symbol").cast(pl.String),
        num("last_price").alias("price"), num("price_change_pct").alias("change_pct"),
        num("quote_volume"), num("rsi"), num("stoch_k"), num("stoch_d"),
        (pl.col("signal").cast(pl.String) if "signal" in frame.columns
         else pl.lit(None, pl.String)).fill_null("").alias("signal"),
    )
    if order is not None:
        out = (pl.DataFrame({"symbol": list(order)}, schema={"symbol": pl.String})
               .join(out.unique("symbol", keep="last"), on="symbol", how="left")
               .with_columns(pl.col("signal").fill_null("")))
    df = out.to_pandas()
    for col in ("symbol", "signal"):  # plain objects: Panel's filters test dtype.kind
        df[col] = df[col].astype(object)
    return df


def signal_table(df: pd.DataFrame, *, height: int = 420):
    """A sortable, filterable Panel Tabulator of :func:`signal_table_frame` rows.

    Update it in place with ``table.patch(new_frame)`` (same index, from
    ``signal_table_frame(..., order=symbols)``): Panel sends only the cells when no
    sort or filter is active and falls back to a full refresh when one is; in both
    cases, as with ``table.value = new_frame``, the user's sorters (synced back to
    Python) and header filters (applied in the browser) stay.
    """
    import panel as pn  # only the table needs Panel; the charts are Bokeh/HoloViews

    split = LinearColorMapper(palette=[RED, MISSING, GREEN], low=-1e-9, high=1e-9)
    signals = CategoricalColorMapper(factors=list(SIGNAL_COLORS),
                                     palette=list(SIGNAL_COLORS.values()), nan_color=MISSING)
    number = NumberFormatter(format="0,0.[00000000]")
    osc = NumberFormatter(format="0.0")
    return pn.widgets.Tabulator(
        df, show_index=False, disabled=True, selectable=1, height=height,
        sizing_mode="stretch_width", layout="fit_columns", frozen_columns=["symbol"],
        titles={"symbol": "Symbol", "price": "Last", "change_pct": "24h %",
                "quote_volume": "Quote vol", "rsi": "RSI", "stoch_k": "K", "stoch_d": "D",
                "signal": "Signal"},
        formatters={
            "price": number,
            "change_pct": NumberFormatter(format="+0.00", text_color=transform(
                "change_pct", split), font_style="bold"),
            "quote_volume": NumberFormatter(format="0.00a"),
            "rsi": osc, "stoch_k": osc, "stoch_d": osc,
            "signal": StringFormatter(text_color=transform("signal", signals),
                                      font_style="bold"),
        },
        header_filters={
            "symbol": {"type": "input", "func": "like", "placeholder": "filter"},
            "change_pct": {"type": "number", "func": ">=", "placeholder": "≥"},
            "quote_volume": {"type": "number", "func": ">=", "placeholder": "≥"},
            "rsi": {"type": "number", "func": ">=", "placeholder": "≥"},
            "signal": {"type": "list", "valuesLookup": True, "func": "in",
                       "multiselect": True},
        },
        text_align={c: "right" for c in TABLE_COLUMNS[1:-1]},
        sorters=[{"field": "quote_volume", "dir": "desc"}],
    )
