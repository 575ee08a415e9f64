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

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the backend the opts below need)
import pandas as pd
import polars as pl

from dashboard.chart_view import _col_ms, _ms, _View  # noqa: F401  (tests read _col_ms, _ms here)
# one palette for the app's chart and these builders (TradingView's teal/red, readable on both themes)
from dashboard.history_chart import BAND_COLOR, D_COLOR, DOWN, GUIDE_COLOR, K_COLOR, RSI_COLOR, UP  # noqa: F401
from market.schema import interval_ms


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
