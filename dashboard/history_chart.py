"""The main chart as plain Bokeh: candles, volume, RSI and StochRSI on one time axis.

Four figures share one ``Range1d`` x range and three ``ColumnDataSource``s:
``closed`` (the loaded candles), ``forming`` (the live candle, replaced in place)
and ``tail`` (the last closed plus the forming row: the dotted indicator stub).
No HoloViews: building the four panes is ~10x cheaper and every update is one
``source.stream`` / ``source.data =`` of numpy arrays (sent as binary buffers).

Columns come straight from polars (:func:`columns`): times as float ms since the
epoch, which is what Bokeh's datetime axis reads, so nothing goes through pandas.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from bokeh.layouts import gridplot
from bokeh.models import (
    BoxAnnotation,
    ColumnDataSource,
    CrosshairTool,
    CustomJS,
    CustomJSTickFormatter,
    DatetimeTicker,
    FixedTicker,
    Grid,
    HoverTool,
    Line,
    LinearColorMapper,
    NumeralTickFormatter,
    Quad,
    Range1d,
    Segment,
    Span,
)
from bokeh.plotting import figure

from market.schema import interval_ms

UP = "#26a69a"
DOWN = "#ef5350"
RSI_COLOR = "#7e57c2"
K_COLOR = "#2962ff"
D_COLOR = "#ff9800"
BAND_COLOR = "#7e57c2"
GUIDE_COLOR = "#787b86"

#: Columns of every chart source (tests/browser.py reads them by these names).
COLUMNS = ("time", "open", "high", "low", "close", "volume", "rsi", "stoch_k", "stoch_d",
           "left", "right", "body_bottom", "body_top", "up", "zero")
#: (name, share of the height, y column pairs the y range fits, fixed y range)
PANES = (("Price", 0.5), ("Volume", 0.14), ("RSI", 0.17), ("StochRSI", 0.19))
_FIT = {"Price": ("low", "high", (0.05, 0.05)), "Volume": ("zero", "volume", (0.0, 0.1))}

_TIME = ("Time", "@time{%F %H:%M}")
_FMT = {"@time": "datetime"}
_PRICE_TIPS = [_TIME, ("Open", "@open{0,0.[0000]}"), ("High", "@high{0,0.[0000]}"),
               ("Low", "@low{0,0.[0000]}"), ("Close", "@close{0,0.[0000]}"),
               ("Volume", "@volume{0,0.[00]}"), ("RSI", "@rsi{0.0}"),
               ("K / D", "@stoch_k{0.0} / @stoch_d{0.0}")]
_TIPS = {"Price": _PRICE_TIPS, "Volume": [_TIME, ("Volume", "@volume{0,0.[00]}")],
         "RSI": [_TIME, ("RSI", "@rsi{0.0}")],
         "StochRSI": [_TIME, ("K", "@stoch_k{0.0}"), ("D", "@stoch_d{0.0}")]}


def columns(candles: pl.DataFrame, timeframe: str) -> dict[str, np.ndarray]:
    """Source columns from candles in time order (KLINE_SCHEMA, plus rsi/stoch_k/stoch_d if known)."""
    half = interval_ms(timeframe) * 0.4
    t = candles["open_time"].dt.epoch("ms").cast(pl.Float64).to_numpy()
    out = {"time": t, "left": t - half, "right": t + half}
    for c in ("open", "high", "low", "close", "volume", "rsi", "stoch_k", "stoch_d"):
        col = candles[c] if c in candles.columns else pl.Series(c, [None] * candles.height)
        out[c] = col.cast(pl.Float64).fill_null(np.nan).to_numpy()
    out["body_bottom"] = np.fmin(out["open"], out["close"])
    out["body_top"] = np.fmax(out["open"], out["close"])
    out["up"] = (~(out["close"] < out["open"])).astype("float64")
    out["zero"] = np.zeros(candles.height)
    return out


def empty_columns() -> dict[str, np.ndarray]:
    return {c: np.zeros(0) for c in COLUMNS}


def tail_columns(closed: dict[str, np.ndarray], forming: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Last closed row + the forming row: the dotted stub from the last closed value to the live one."""
    if not len(forming["time"]) or not len(closed["time"]):
        return {c: forming[c][-1:] for c in COLUMNS}
    return {c: np.concatenate([closed[c][-1:], forming[c][-1:]]) for c in COLUMNS}


def y_fit(data: dict[str, np.ndarray], x0: float, x1: float, pane: str) -> tuple[float, float] | None:
    """The y range of ``pane`` fitting the bars overlapping [x0, x1], padded."""
    lo, hi, pad = _FIT[pane]
    seen = (data["right"] >= x0) & (data["left"] <= x1)
    if not seen.any():
        return None
    y0, y1 = np.nanmin(data[lo][seen]), np.nanmax(data[hi][seen])
    if not (np.isfinite(y0) and np.isfinite(y1)):
        return None
    span = (y1 - y0) or abs(y1) or 1.0
    return float(y0 - pad[0] * span), float(y1 + pad[1] * span)


# Fit price and volume to the bars in view whenever the x range moves, in the browser
# (no round trip): the server fits them too when it loads or scrolls.
AUTORANGE_JS = """
let lo = Infinity, hi = -Infinity
for (const s of sources) {
  const L = s.data.left, R = s.data.right, A = s.data[lo_col], B = s.data[hi_col]
  if (L == null || R == null || A == null || B == null) continue
  for (let i = 0; i < L.length; i++) {
    if (R[i] >= xr.start && L[i] <= xr.end) {
      if (A[i] < lo) lo = A[i]
      if (B[i] > hi) hi = B[i]
    }
  }
}
if (isFinite(lo) && isFinite(hi)) {
  const span = (hi - lo) || Math.abs(hi) || 1
  yr.setv({start: lo - pad[0] * span, end: hi + pad[1] * span})
}
"""

# Bokeh 3.9 makes a pointer held still for 300 ms a "press" (UIGestures.press_threshold),
# after which moving it pans nothing: press, pause, drag did not pan, nor did a drag whose
# first move reached a busy page late (a held click on a heatmap tile was no tap either).
# No tool here uses presses; set on the first pointer entering a chart, before any press.
HOLD_THEN_DRAG_JS = "Bokeh.require('core/ui_gestures').UIGestures.press_threshold = 2000"

# Price ticks all with the decimals of the tick step, as trading charts label them
# (Bokeh's default printed "46.5" beside "47", and "0.0101" beside "0.01").
PRICE_TICKS_JS = """
const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : (Math.abs(tick) || 1)
const d = Math.min(10, Math.max(0, Math.ceil(-Math.log10(step) - 1e-9)))
return tick.toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d})
"""
#: The oscillator panes label their bands only (a 0..100 scale every 20 crowded ~80 px panes).
_LEVELS = {"RSI": [30, 50, 70], "StochRSI": [20, 50, 80]}


class CandleChart:
    """The four panes of one session's chart, their sources and shared x range."""

    def __init__(self, height: int = 720) -> None:
        self.x_range = Range1d(0, 1)
        self.closed = ColumnDataSource(empty_columns())
        self.forming = ColumnDataSource(empty_columns())
        self.tail = ColumnDataSource(empty_columns())
        updown = LinearColorMapper(palette=[DOWN, UP], low=0, high=1)
        color = {"field": "up", "transform": updown}
        self.figures: dict[str, figure] = {}
        # One time axis (the bottom pane's); the panes above draw their vertical grid lines
        # from its ticker. Three hidden datetime axes cost ~60 Bokeh models a session (each
        # axis brings ~15 tickers and formatters), built, sent and rendered for nothing.
        xticks = DatetimeTicker()
        for name, share in PANES:
            bottom = name == PANES[-1][0]
            fig = figure(
                x_range=self.x_range, y_range=Range1d(0, 100) if name in ("RSI", "StochRSI") else Range1d(0, 1),
                x_axis_type="datetime" if bottom else None, height=int(height * share), sizing_mode="stretch_width",
                tools="xpan,xwheel_zoom,xbox_zoom,reset,save", active_drag="xpan", active_scroll="xwheel_zoom",
                min_border_left=70, y_axis_label=name, toolbar_location=None,
            )
            if bottom:
                fig.xaxis.ticker = fig.xgrid.ticker = xticks
            else:
                fig.add_layout(Grid(dimension=0, ticker=xticks))
            if name == "Price":
                fig.yaxis.formatter = CustomJSTickFormatter(code=PRICE_TICKS_JS)
            elif name == "Volume":
                fig.yaxis.ticker.desired_num_ticks = 3
                fig.yaxis.formatter = NumeralTickFormatter(format="0.[0]a")
            else:
                fig.yaxis.ticker = FixedTicker(ticks=_LEVELS[name])
            fig.add_tools(CrosshairTool(dimensions="height", line_color=GUIDE_COLOR, line_alpha=0.5))
            fig.js_on_event("mouseenter", CustomJS(code=HOLD_THEN_DRAG_JS))
            hover = []
            if name == "Price":
                for src in (self.closed, self.forming):
                    fig.add_glyph(src, Segment(x0="time", y0="low", x1="time", y1="high", line_color=color))
                    hover.append(fig.add_glyph(src, Quad(left="left", right="right", bottom="body_bottom",
                                                         top="body_top", fill_color=color, line_color=color)))
            elif name == "Volume":
                for src in (self.closed, self.forming):
                    hover.append(fig.add_glyph(src, Quad(left="left", right="right", bottom="zero", top="volume",
                                                         fill_color=color, fill_alpha=0.55, line_alpha=0)))
            else:
                low, high = (30, 70) if name == "RSI" else (20, 80)
                fig.add_layout(BoxAnnotation(bottom=low, top=high, fill_color=BAND_COLOR, fill_alpha=0.07,
                                             line_alpha=0))
                for level in (low, high):
                    fig.add_layout(Span(location=level, dimension="width", line_color=GUIDE_COLOR,
                                        line_dash="dashed", line_width=1))
                specs = [("rsi", RSI_COLOR)] if name == "RSI" else [("stoch_k", K_COLOR), ("stoch_d", D_COLOR)]
                for src, dash in ((self.closed, "solid"), (self.tail, "dotted")):
                    for n, (col, c) in enumerate(specs):
                        line = fig.add_glyph(src, Line(x="time", y=col, line_color=c, line_width=1.5,
                                                       line_dash=dash))
                        if n == 0:
                            hover.append(line)
            fig.add_tools(HoverTool(renderers=hover, tooltips=_TIPS[name], formatters=_FMT,
                                    mode="vline" if name in ("RSI", "StochRSI") else "mouse"))
            if name in _FIT:
                lo, hi, pad = _FIT[name]
                cb = CustomJS(args=dict(sources=[self.closed, self.forming], xr=self.x_range, yr=fig.y_range,
                                        lo_col=lo, hi_col=hi, pad=list(pad)), code=AUTORANGE_JS)
                self.x_range.js_on_change("start", cb)
                self.x_range.js_on_change("end", cb)
            self.figures[name] = fig
        self.layout = gridplot([[f] for f in self.figures.values()], merge_tools=True,
                               toolbar_location="right", sizing_mode="stretch_width")

    # -- data ----------------------------------------------------------------------
    def show(self, closed: dict[str, np.ndarray], forming: dict[str, np.ndarray]) -> None:
        """Replace everything drawn (a new window, timeframe or symbol)."""
        self.closed.data = closed
        self._forming(closed, forming)

    def append(self, new: dict[str, np.ndarray], forming: dict[str, np.ndarray] | None,
               rollover: int | None = None) -> None:
        """New closed candles at the right (streamed: only they are sent) and the forming one."""
        if len(new["time"]):
            self.closed.stream(new, rollover=rollover)
        if forming is not None or len(new["time"]):
            self._forming(self.closed.data, forming if forming is not None else self.forming.data)

    def _forming(self, closed, forming) -> None:
        # One or two rows, replaced every tick: as lists they go inline in the patch's JSON.
        # Bokeh sends each numpy array as its own buffer (two websocket frames), 64 frames
        # a tick per session for these two sources: a quarter of the server's CPU at 10 sessions.
        self.forming.data = {c: np.asarray(v).tolist() for c, v in forming.items()}
        self.tail.data = {c: v.tolist() for c, v in tail_columns(closed, forming).items()}

    # -- view ----------------------------------------------------------------------
    def view(self) -> tuple[float, float]:
        return float(self.x_range.start), float(self.x_range.end)

    def set_view(self, x0: float, x1: float) -> None:
        """Show [x0, x1] ms and fit the price and volume axes to it."""
        self.x_range.update(start=x0, end=x1)
        self.fit_y(x0, x1)

    def fit_y(self, x0: float, x1: float, grow_only: bool = False) -> None:
        data = {c: np.concatenate([np.asarray(self.closed.data[c]), np.asarray(self.forming.data[c])])
                for c in ("left", "right", "low", "high", "volume", "zero")}
        for pane in _FIT:
            y = y_fit(data, x0, x1, pane)
            if y is None:
                continue
            yr = self.figures[pane].y_range
            if grow_only and yr.start <= y[0] and y[1] <= yr.end:
                continue
            yr.update(start=y[0], end=y[1])

    def on_ranges(self, callback) -> None:
        """``callback(x0, x1)`` when the user finished a pan or zoom (Bokeh's RangesUpdate)."""
        from bokeh.events import RangesUpdate

        for fig in self.figures.values():
            fig.on_event(RangesUpdate, lambda e: callback(e.x0, e.x1))
