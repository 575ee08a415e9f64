"""Candlestick, volume, RSI and StochRSI charts for one symbol.

One conversion at the edge, :func:`chart_frame`, turns a polars candle frame into the
pandas frame every plot reads, with everything precomputed (bar edges, body
bottom/top, colours). The element builders then only pick columns, so they also
work as DynamicMap callbacks on a ``Buffer``: HoloViews streams only the new rows
when the element is built straight from the buffer's own frame (no ``.assign``).

:func:`price_layout` takes plain frames (notebooks) or a Buffer and a Pipe (the
live app, where it draws the candles with plain Bokeh glyphs for speed)::

    closed, forming = streams_for(chart_frame(history, "1m"))
    pn.pane.HoloViews(price_layout(closed, forming))   # once per session
    closed.send(chart_frame(new_closed_rows, "1m"))     # each tick, one send
    forming.send(chart_frame(live_candle, "1m"))        # one row

The heatmap and the signal table live in :mod:`dashboard.heatmap`.
"""

from __future__ import annotations

import weakref

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the backend the opts below need)
import numpy as np
import pandas as pd
import polars as pl
from bokeh.models import ColumnDataSource, CustomJS, GlyphRenderer, HoverTool

from market.schema import interval_ms

#: Up/down candle colours (TradingView's teal/red): readable on white and on near-black.
UP = "#26a69a"
DOWN = "#ef5350"
RSI_COLOR = "#7e57c2"
K_COLOR = "#2962ff"
D_COLOR = "#ff9800"
BAND_COLOR = "#7e57c2"
GUIDE_COLOR = "#787b86"  # mid grey: visible on both themes

#: Closed candles kept per chart; older ones roll off the Buffer.
BUFFER_LENGTH = 2000

#: The columns of a chart frame, in order. Every builder reads only these.
CHART_COLUMNS = (
    "time", "open", "high", "low", "close", "volume", "rsi", "stoch_k", "stoch_d",
    "left", "right", "body_bottom", "body_top", "up", "color", "zero",
)

# One label on every x dimension: HoloViews links axes whose first x dimension has
# the same (label, unit), so all four panels share one x range.
_T = "Time"
_TIME = hv.Dimension("time", label=_T)
_LEFT = hv.Dimension("left", label=_T)
# Other dimensions keep distinct labels: HoloViews merges ranges by label, so two
# y dimensions labelled alike (say "zero" and "volume") would clobber each other.
# Axis titles are set with ylabel instead.
_RIGHT = hv.Dimension("right")
_RSI = hv.Dimension("rsi", label="RSI", range=(0, 100))
_K = hv.Dimension("stoch_k", label="%K", range=(0, 100))
_D = hv.Dimension("stoch_d", label="%D", range=(0, 100))

_HOVER_TIME = ("Time", "@{time}{%F %H:%M}")
_HOVER_FMT = {"@{time}": "datetime"}
_OHLCV = [
    _HOVER_TIME,
    ("Open", "@{open}{0,0.[0000]}"),
    ("High", "@{high}{0,0.[0000]}"),
    ("Low", "@{low}{0,0.[0000]}"),
    ("Close", "@{close}{0,0.[0000]}"),
    ("Volume", "@{volume}{0,0.[00]}"),
    ("RSI", "@{rsi}{0.0}"),
    ("K / D", "@{stoch_k}{0.0} / @{stoch_d}{0.0}"),
]
# Colour by the numeric "up" column through a two-colour mapper. Mapping the string
# "color" column instead makes HoloViews' dtype fix re-send the whole column on every
# Buffer update (numpy "U" arrays -> lists), defeating the incremental path.
_UPDOWN = dict(color="up", line_color="up", cmap=[DOWN, UP], clim=(0, 1), colorbar=False)
_TOOLS = dict(
    tools=["xpan", "xwheel_zoom", "box_zoom", "crosshair"],
    default_tools=["reset", "save"],
    active_tools=["xpan", "xwheel_zoom"],
    responsive=True,
    show_grid=True,
)


def chart_frame(candles: pl.DataFrame | pd.DataFrame, interval: str) -> pd.DataFrame:
    """The pandas frame the plots read, from one symbol's candles in time order.

    ``candles`` has market.schema.KLINE_SCHEMA columns (``open_time`` is used as the
    candle's x) plus ``rsi``, ``stoch_k``, ``stoch_d`` (missing or null -> NaN).
    Bars span ``time +- 0.4 * interval``. Returns exactly :data:`CHART_COLUMNS`.
    """
    if isinstance(candles, pd.DataFrame):
        candles = pl.from_pandas(candles)
    missing = [c for c in ("open_time", "open", "high", "low", "close", "volume")
               if c not in candles.columns]
    if missing:
        raise ValueError(f"candles are missing columns {missing}")
    half = pl.duration(milliseconds=int(interval_ms(interval) * 0.4))
    num = {c: pl.col(c).cast(pl.Float64).fill_nan(None) for c in
           ("open", "high", "low", "close", "volume")}
    ind = {c: (pl.col(c).cast(pl.Float64) if c in candles.columns else pl.lit(None, pl.Float64))
           for c in ("rsi", "stoch_k", "stoch_d")}
    up = pl.col("close") >= pl.col("open")
    frame = candles.select(
        pl.col("open_time").cast(pl.Datetime("us")).alias("time"),
        **num, **ind,
    ).with_columns(
        left=pl.col("time") - half,
        right=pl.col("time") + half,
        body_bottom=pl.min_horizontal("open", "close"),
        body_top=pl.max_horizontal("open", "close"),
        up=up.fill_null(True).cast(pl.Int8),
        color=pl.when(up.fill_null(True)).then(pl.lit(UP)).otherwise(pl.lit(DOWN)),
        zero=pl.lit(0.0),
    ).select(CHART_COLUMNS)
    df = frame.to_pandas()
    # Plain object strings: Bokeh and HoloViews treat them as literal colours,
    # pandas 3's "str" dtype is not handled everywhere yet.
    df["color"] = df["color"].astype(object)
    for c in ("open", "high", "low", "close", "volume", "rsi", "stoch_k", "stoch_d"):
        df[c] = df[c].astype("float64")  # null -> NaN
    return df


def empty_chart_frame() -> pd.DataFrame:
    """A zero-row chart frame with the right dtypes (for streams with no history)."""
    return chart_frame(pl.DataFrame(schema={
        "open_time": pl.Datetime("us"), "open": pl.Float64, "high": pl.Float64,
        "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64,
    }), "1m")


def candles(data: pd.DataFrame) -> hv.Overlay:
    """Candlesticks: wicks (Segments low..high) under bodies (Rectangles open..close)."""
    wicks = hv.Segments(data, [_TIME, "low", _TIME, "high"], ["up"]).opts(**_UPDOWN)
    bodies = hv.Rectangles(
        data, [_LEFT, "body_bottom", _RIGHT, "body_top"],
        ["time", "open", "high", "low", "close", "volume", "rsi", "stoch_k", "stoch_d", "up"],
    ).opts(**_UPDOWN, tools=["hover"], hover_tooltips=_OHLCV, hover_formatters=_HOVER_FMT)
    return (wicks * bodies).opts(ylabel="Price")


def volume(data: pd.DataFrame) -> hv.Rectangles:
    """Volume bars from 0, coloured like their candle."""
    return hv.Rectangles(data, [_LEFT, "zero", _RIGHT, "volume"], ["time", "up"]).opts(
        **_UPDOWN, line_alpha=0, alpha=0.55, ylabel="Volume",
        tools=["hover"], hover_tooltips=[_HOVER_TIME, ("Volume", "@{volume}{0,0.[00]}")],
        hover_formatters=_HOVER_FMT,
    )


def bands(low: float, high: float) -> hv.Overlay:
    """A shaded band between two dashed guide lines (30/70 for RSI, 20/80 for StochRSI)."""
    return (
        hv.HSpan(low, high).opts(color=BAND_COLOR, alpha=0.07, line_alpha=0)
        * hv.HLine(low).opts(color=GUIDE_COLOR, line_dash="dashed", line_width=1)
        * hv.HLine(high).opts(color=GUIDE_COLOR, line_dash="dashed", line_width=1)
    )


def rsi_line(data: pd.DataFrame) -> hv.Curve:
    """The RSI curve alone, without bands."""
    return hv.Curve(data, _TIME, [_RSI]).opts(
        color=RSI_COLOR, line_width=1.5, tools=["hover"],
        hover_tooltips=[_HOVER_TIME, ("RSI", "@{rsi}{0.0}")], hover_formatters=_HOVER_FMT,
    )


def stoch_lines(data: pd.DataFrame) -> hv.Overlay:
    """StochRSI %K and %D curves alone, without bands."""
    tips = [_HOVER_TIME, ("K", "@{stoch_k}{0.0}"), ("D", "@{stoch_d}{0.0}")]
    k = hv.Curve(data, _TIME, [_K, _D]).opts(
        color=K_COLOR, line_width=1.5, tools=["hover"], hover_tooltips=tips,
        hover_formatters=_HOVER_FMT)
    d = hv.Curve(data, _TIME, [_D]).opts(color=D_COLOR, line_width=1.5)
    return k * d


def rsi(data: pd.DataFrame) -> hv.Overlay:
    """RSI with the 30/70 band."""
    return (rsi_line(data) * bands(30, 70)).opts(ylabel="RSI")


def stochrsi(data: pd.DataFrame) -> hv.Overlay:
    """StochRSI %K (blue) and %D (orange) with the 20/80 band."""
    return (stoch_lines(data) * bands(20, 80)).opts(ylabel="StochRSI")


def streams_for(
    history: pd.DataFrame | None = None, length: int = BUFFER_LENGTH,
) -> tuple[hv.streams.Buffer, hv.streams.Pipe]:
    """A (Buffer, Pipe) pair for :func:`price_layout`.

    ``history`` is a :func:`chart_frame` of closed candles (its last ``length`` rows
    are kept; None starts empty); the Pipe starts empty. Afterwards send chart
    frames: new closed rows to the Buffer (rows not newer than the last one shown
    are not drawn again), the forming candle as a one-row frame to the Pipe (an
    empty frame hides it). One Buffer send per tick is cheapest.
    """
    data = empty_chart_frame() if history is None else history
    if list(data.columns) != list(CHART_COLUMNS):
        raise ValueError(f"history must be a chart_frame, got columns {list(data.columns)}")
    return (
        hv.streams.Buffer(data.iloc[-length:].reset_index(drop=True), length=length,
                          index=False),
        hv.streams.Pipe(data=empty_chart_frame()),
    )


def _tail(closed: pd.DataFrame, forming: pd.DataFrame) -> pd.DataFrame:
    """Last closed row + forming row: the dotted indicator stub to the live value."""
    if forming.empty or closed.empty:
        return forming.iloc[-1:]
    return pd.concat([closed.iloc[-1:], forming.iloc[-1:]], ignore_index=True)


def price_layout(
    closed: pd.DataFrame | hv.streams.Buffer,
    forming: pd.DataFrame | hv.streams.Pipe | None = None,
    *,
    height: int = 720,
    window: int | None = 150,
) -> hv.Layout:
    """Candles + volume + RSI + StochRSI in one column on one shared time axis.

    Give plain chart frames (notebooks; ``forming`` optional) or the pair from
    :func:`streams_for` (the app). Returns a HoloViews Layout that Bokeh renders as
    one grid with one toolbar; width follows the container, ``height`` is the total.
    The view opens on the last ``window`` candles (None: all of them) and the reset
    tool returns to the live end; the price and volume axes fit the candles in view.

    With frames, the panels are the builders above. With streams, HoloViews draws
    only the frame of the chart (axes, bands, tools) and every candle is a plain
    Bokeh glyph fed by the streams: a Buffer send is one ``source.stream`` of the
    new rows (~3 ms; the same through HoloViews DynamicMaps took 0.2-0.5 s per send
    per session) and a Pipe send replaces a one-row source. The view scrolls with
    new candles while the live end is on screen, stays put when the user has
    panned away, and never stops updating (a zoomed HoloViews streaming plot
    freezes until reset). To show another symbol, ``buffer.clear()`` and send its
    history. Send from the session's own callbacks (they hold the document lock).
    """
    live = isinstance(closed, hv.streams.Buffer)
    if live:
        if forming is None:
            forming = hv.streams.Pipe(data=empty_chart_frame())
        if not isinstance(forming, hv.streams.Pipe) or isinstance(forming, hv.streams.Buffer):
            raise TypeError("with a Buffer of closed candles, forming must be a Pipe or None")
        ctl = _View(window, buffer=closed, pipe=forming)
        shown = empty_chart_frame()  # HoloViews draws the frame, _View the candles
    else:
        live_df = empty_chart_frame() if forming is None else forming
        if not isinstance(closed, pd.DataFrame) or not isinstance(live_df, pd.DataFrame):
            raise TypeError("closed and forming must be chart frames, or a Buffer and a Pipe")
        ctl = _View(window, frames=(closed, live_df))
        shown = closed

    common = dict(_TOOLS, xlabel="")
    panels = [
        (candles(shown), "price", 0.5, dict(ylabel="Price", xaxis=None)),
        (hv.Overlay([volume(shown)]), "volume", 0.14, dict(ylabel="Volume", xaxis=None)),
        (rsi_line(shown) * bands(30, 70), "rsi", 0.17,
         dict(ylabel="RSI", ylim=(0, 100), xaxis=None)),
        (stoch_lines(shown) * bands(20, 80), "stoch", 0.19,
         dict(ylabel="StochRSI", ylim=(0, 100))),
    ]
    return hv.Layout([
        obj.opts(height=int(height * share), hooks=[ctl.hook(kind)], **common, **extra)
        for obj, kind, share, extra in panels
    ]).cols(1).opts(shared_axes=True, merge_tools=True)


# --- candles as plain Bokeh glyphs, view control (per rendered layout) ---------------


def _ms(value) -> float:
    """A Bokeh datetime range value (ms float, datetime64 or datetime) as ms."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return (pd.Timestamp(value) - pd.Timestamp(0)) / pd.Timedelta(milliseconds=1)


def _col_ms(frame: pd.DataFrame, col: str) -> np.ndarray:
    return frame[col].to_numpy().astype("datetime64[us]").astype("int64") / 1000.0


def _bars(closed: pd.DataFrame, forming: pd.DataFrame) -> pd.DataFrame:
    if forming.empty or closed.empty:
        return forming if closed.empty else closed
    return pd.concat([closed, forming], ignore_index=True)


def _x_window(bars: pd.DataFrame, window: int | None) -> tuple[float, float] | None:
    """The live view: the last ``window`` bars plus a 3-bar margin on the right."""
    if bars.empty:
        return None
    left, right = _col_ms(bars, "left"), _col_ms(bars, "right")
    step = (right[-1] - left[-1]) / 0.8
    count = len(bars) if window is None else window
    start = max(right[-1] - count * step, left[0] - step)
    return start, right[-1] + 3 * step


def _y_fit(bars: pd.DataFrame, x0: float, x1: float, lo: str, hi: str,
           pad: tuple[float, float]) -> tuple[float, float] | None:
    """y range of the bars overlapping [x0, x1], padded by fractions of the span."""
    seen = (_col_ms(bars, "right") >= x0) & (_col_ms(bars, "left") <= x1)
    if not seen.any():
        return None
    y0, y1 = np.nanmin(bars[lo].to_numpy()[seen]), np.nanmax(bars[hi].to_numpy()[seen])
    if not (np.isfinite(y0) and np.isfinite(y1)):
        return None
    span = (y1 - y0) or abs(y1) or 1.0
    return y0 - pad[0] * span, y1 + pad[1] * span


_Y_FIT = {"price": ("low", "high", (0.05, 0.05)), "volume": ("zero", "volume", (0, 0.1))}


# Fit the y range to the bars in view whenever the x range moves (pan, zoom, scroll).
# HoloViews' own autorange="y" breaks here: it reads a spatial index that its empty
# glyphs (the live layout's scaffolding) do not have.
_AUTORANGE_JS = """
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


def _autorange_y(fig, lo: str, hi: str, pad: tuple[float, float]) -> None:
    """Client-side y fit of ``fig`` over every source holding the bar columns."""
    need = {"left", "right", lo, hi}
    sources = list({r.data_source.id: r.data_source for r in fig.select({"type": GlyphRenderer})
                    if need <= set(r.data_source.data)}.values())
    cb = CustomJS(args=dict(sources=sources, xr=fig.x_range, yr=fig.y_range, lo_col=lo,
                            hi_col=hi, pad=list(pad)), code=_AUTORANGE_JS)
    fig.x_range.js_on_change("start", cb)
    fig.x_range.js_on_change("end", cb)


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: frame[c].to_numpy() for c in CHART_COLUMNS}


class _View:
    """Per-layout glue between the streams and the Bokeh figures of each render.

    Adds plain glyphs on three sources per rendered layout (closed candles with
    streams only, the forming candle, the indicator stubs), shared by the four
    figures; sets the opening window; scrolls with the live end. Holds only weak
    references to Bokeh models, so a closed session's figures are not kept alive.
    """

    def __init__(self, window: int | None, *, buffer: hv.streams.Buffer | None = None,
                 pipe: hv.streams.Pipe | None = None,
                 frames: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> None:
        self.window, self.buffer, self.pipe, self.frames = window, buffer, pipe, frames
        self._renders: list[dict] = []  # per render: figs, sources (all weak)
        self._edge: float | None = None  # right edge of the newest bar, ms
        self._last: pd.Timestamp | None = None  # newest closed candle already streamed
        if buffer is not None:
            # Below HoloViews' own precedence: runs before any plot refresh.
            pipe.add_subscriber(self._on_forming, precedence=0.9)
            buffer.add_subscriber(self._on_closed, precedence=0.9)
            self._last = buffer.data["time"].iloc[-1] if len(buffer.data) else None

    def data(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        if self.buffer is not None:
            return self.buffer.data, self.pipe.data
        return self.frames

    def hook(self, kind: str):
        def hook(plot, element) -> None:
            if plot.handles.get("_view"):  # hooks also run on every update
                return
            plot.handles["_view"] = True
            self._decorate(kind, plot.state)
        return hook

    def _render_of(self, fig) -> dict:
        """The sources of the layout ``fig`` belongs to (its figures share x_range)."""
        for render in self._renders:
            if render["x_range"]() is fig.x_range:
                return render
        closed, forming = self.data()
        frames = {"forming": forming, "tail": _tail(closed, forming)}
        if self.buffer is not None:
            frames["closed"] = closed
        render = {"x_range": weakref.ref(fig.x_range), "figs": [], "closed": lambda: None}
        for name, frame in frames.items():
            src = ColumnDataSource(_columns(frame))
            render[name] = weakref.ref(src)
            render.setdefault("strong", []).append(src)  # until the figures hold them
        self._renders.append(render)
        return render

    def _decorate(self, kind: str, fig) -> None:
        render = self._render_of(fig)
        render["figs"].append((kind, weakref.ref(fig)))
        closed, candle, tail = render["closed"](), render["forming"](), render["tail"]()
        bars = [s for s in (closed, candle) if s is not None]
        lines = [(s, d) for s, d in ((closed, "solid"), (tail, "dotted")) if s is not None]
        hover_to = []
        if kind == "price":
            for src in bars:
                fig.segment("time", "low", "time", "high", color="color", source=src)
                hover_to.append(fig.quad(left="left", right="right", bottom="body_bottom",
                                         top="body_top", color="color", source=src))
        elif kind == "volume":
            for src in bars:
                hover_to.append(fig.quad(left="left", right="right", bottom="zero",
                                         top="volume", color="color", alpha=0.55,
                                         line_alpha=0, source=src))
        else:
            specs = ([("rsi", RSI_COLOR)] if kind == "rsi"
                     else [("stoch_k", K_COLOR), ("stoch_d", D_COLOR)])
            for src, dash in lines:
                for n, (col, color) in enumerate(specs):
                    line = fig.line("time", col, color=color, line_width=1.5, line_dash=dash,
                                    source=src)
                    if n == 0:
                        hover_to.append(line)
        # Reuse HoloViews' hover (same tooltips, one toolbar icon) for the new glyphs.
        for tool in fig.select({"type": HoverTool}):
            if isinstance(tool.renderers, list) and tool.renderers:
                tool.renderers = [*tool.renderers, *hover_to]
                break
        if len(render["figs"]) == 4:
            render.pop("strong", None)
        if kind in _Y_FIT:
            _autorange_y(fig, *_Y_FIT[kind])
        self._set_view(kind, fig)

    def _set_view(self, kind: str, fig) -> None:
        if self.window is None and self.buffer is None:
            return  # notebooks: HoloViews' full-range view
        bars = _bars(*self.data())
        x = _x_window(bars, self.window)
        if x is None:
            return
        self._edge = _col_ms(bars, "right")[-1]
        fig.x_range.update(start=x[0], end=x[1], reset_start=x[0], reset_end=x[1])
        if kind in _Y_FIT and (y := _y_fit(bars, *x, *_Y_FIT[kind])) is not None:
            fig.y_range.update(start=y[0], end=y[1], reset_start=y[0], reset_end=y[1])

    def _live(self) -> list[dict]:
        """Renders whose figures still exist (drops the rest)."""
        self._renders = [r for r in self._renders if r["x_range"]() is not None]
        return self._renders

    def _on_closed(self, data: pd.DataFrame, **_) -> None:
        if len(data) == 0 or self._last is None:
            new, self._last = data, None
            restart = True
        else:
            new = data[data["time"] > self._last]
            restart = False
        if len(new):
            self._last = new["time"].iloc[-1]
        for render in self._live():
            src = render["closed"]()
            if src is None:
                continue
            if restart:
                src.data = _columns(data)
            elif len(new):
                src.stream(_columns(new), rollover=self.buffer.length or None)
        self._on_forming(restart=restart)

    def _on_forming(self, restart: bool = False, **_) -> None:
        closed, forming = self.data()
        tail = _tail(closed, forming)
        for render in self._live():
            for name, frame in (("forming", forming), ("tail", tail)):
                if (src := render[name]()) is not None:
                    src.data = _columns(frame)
            for kind, ref in render["figs"]:
                if restart and (fig := ref()) is not None:
                    self._set_view(kind, fig)
        if not restart:
            self._follow(_bars(closed, forming))

    def _follow(self, bars: pd.DataFrame) -> None:
        """Scroll with new bars while the live end is on screen; keep reset current."""
        live = _x_window(bars, self.window)
        if live is None:
            return
        edge = _col_ms(bars, "right")[-1]
        old, self._edge = self._edge, edge
        step = edge - old if old is not None and edge > old else 0.0
        for render in self._live():
            figs = [(k, f) for k, r in render["figs"] if (f := r()) is not None]
            if not figs:
                continue
            xr = figs[0][1].x_range
            scroll = bool(step) and _ms(xr.end) >= old - 0.5 * step
            if scroll:
                xr.update(start=_ms(xr.start) + step, end=_ms(xr.end) + step)
            xr.update(reset_start=live[0], reset_end=live[1])
            for kind, fig in figs:
                if kind in _Y_FIT:
                    self._fit_y(fig.y_range, bars, live, (_ms(xr.start), _ms(xr.end)),
                                _Y_FIT[kind], scroll)

    @staticmethod
    def _fit_y(yr, bars, live, seen_x, spec, scroll: bool) -> None:
        if (y := _y_fit(bars, *live, *spec)) is not None:
            yr.update(reset_start=y[0], reset_end=y[1])
        seen = _y_fit(bars, *seen_x, *spec)
        if seen is None:
            return
        if scroll or yr.start is None or yr.end is None:
            yr.update(start=seen[0], end=seen[1])
        elif seen[0] < yr.start or seen[1] > yr.end:  # the live candle broke out
            yr.update(start=min(seen[0], yr.start), end=max(seen[1], yr.end))
