"""Candlestick, volume, RSI and StochRSI charts, and the signal table.

One conversion at the edge, :func:`chart_frame`, turns a polars candle frame into the
pandas frame every plot reads, with everything precomputed (bar edges, body
bottom/top, colours). The element builders then only pick columns: HoloViews takes
its incremental ``Buffer`` path (Bokeh ``source.stream`` of the new rows, not a
re-send of the whole history) only when the plotted element is built straight from
the buffer's own frame, so nothing here may ``.assign`` or copy inside a callback.

The same builders serve notebooks (plain frames) and the live app (streams)::

    closed, forming = streams_for(chart_frame(history, "1m"))
    pn.pane.HoloViews(price_layout(closed, forming))   # once per session
    closed.send(chart_frame(new_closed_rows, "1m"))     # each tick, one send
    forming.send(chart_frame(live_candle, "1m"))        # one row

The heatmap lives in :mod:`dashboard.heatmap`.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import polars as pl

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
        up=up.fill_null(True),
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
    wicks = hv.Segments(data, [_TIME, "low", _TIME, "high"], ["color"]).opts(
        color="color", line_width=1,
    )
    bodies = hv.Rectangles(
        data, [_LEFT, "body_bottom", _RIGHT, "body_top"],
        ["time", "open", "high", "low", "close", "volume", "rsi", "stoch_k", "stoch_d",
         "color"],
    ).opts(
        color="color", line_color="color", line_width=1,
        tools=["hover"], hover_tooltips=_OHLCV, hover_formatters=_HOVER_FMT,
    )
    return (wicks * bodies).opts(ylabel="Price")


def volume(data: pd.DataFrame) -> hv.Rectangles:
    """Volume bars from 0, coloured like their candle."""
    return hv.Rectangles(data, [_LEFT, "zero", _RIGHT, "volume"], ["time", "color"]).opts(
        color="color", line_alpha=0, alpha=0.55, ylabel="Volume",
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
    are kept); the Pipe starts empty. Send whole chart frames afterwards: new closed
    rows to the Buffer (one coalesced send per tick), the forming candle as a one-row
    frame to the Pipe (an empty frame hides it).
    """
    data = empty_chart_frame() if history is None else history
    if list(data.columns) != list(CHART_COLUMNS):
        raise ValueError(f"history must be a chart_frame, got columns {list(data.columns)}")
    data = data.iloc[-length:].reset_index(drop=True)
    return (
        hv.streams.Buffer(data, length=length, index=False),
        hv.streams.Pipe(data=empty_chart_frame()),
    )


def _tail(closed: pd.DataFrame, forming: pd.DataFrame) -> pd.DataFrame:
    """Last closed row + forming row: the dashed indicator stub to the live value."""
    return pd.concat([closed.iloc[-1:], forming.iloc[-1:]], ignore_index=True)


def _tail_rsi(closed: pd.DataFrame, forming: pd.DataFrame) -> hv.Curve:
    return hv.Curve(_tail(closed, forming), _TIME, [_RSI]).opts(
        color=RSI_COLOR, line_width=1.5, line_dash="dotted")


def _tail_stoch(closed: pd.DataFrame, forming: pd.DataFrame) -> hv.Overlay:
    tail = _tail(closed, forming)
    return (hv.Curve(tail, _TIME, [_K]).opts(color=K_COLOR, line_dash="dotted")
            * hv.Curve(tail, _TIME, [_D]).opts(color=D_COLOR, line_dash="dotted"))


def price_layout(
    closed: pd.DataFrame | hv.streams.Buffer,
    forming: pd.DataFrame | hv.streams.Pipe | None = None,
    *,
    height: int = 720,
) -> hv.Layout:
    """Candles + volume + RSI + StochRSI in one column on one shared, zoomable time axis.

    Give plain chart frames (a notebook; ``forming`` optional) or the pair from
    :func:`streams_for` (the app). Returns a HoloViews Layout: Bokeh renders it as
    one grid with one toolbar, and with streams each panel is a DynamicMap whose
    closed-candle part is updated incrementally (Bokeh ``source.stream``).
    ``height`` is the total; width follows the container.
    """
    if isinstance(closed, hv.streams.Buffer):
        pipe = forming if forming is not None else hv.streams.Pipe(data=empty_chart_frame())
        if not isinstance(pipe, hv.streams.Pipe) or isinstance(pipe, hv.streams.Buffer):
            raise TypeError("with a Buffer of closed candles, forming must be a Pipe or None")
        buffer = closed

        def closed_dm(fn):
            return hv.DynamicMap(fn, streams=[buffer])

        def forming_dm(fn):
            return hv.DynamicMap(fn, streams=[pipe])

        price = closed_dm(candles) * forming_dm(candles)
        vol = closed_dm(volume) * forming_dm(volume)
        osc = closed_dm(rsi_line) * forming_dm(lambda data: _tail_rsi(buffer.data, data))
        sto = closed_dm(stoch_lines) * forming_dm(lambda data: _tail_stoch(buffer.data, data))
    else:
        live = forming if forming is not None else empty_chart_frame()
        if not isinstance(live, pd.DataFrame):
            raise TypeError("with a frame of closed candles, forming must be a frame or None")
        price = candles(closed) * candles(live)
        vol = volume(closed) * volume(live)
        osc = rsi_line(closed) * _tail_rsi(closed, live)
        sto = stoch_lines(closed) * _tail_stoch(closed, live)

    common = dict(_TOOLS, xlabel="")
    h = height
    return hv.Layout([
        price.opts(hv.opts.Overlay(height=int(h * 0.5), ylabel="Price", xaxis=None, autorange="y", **common)),
        vol.opts(hv.opts.Overlay(height=int(h * 0.14), ylabel="Volume", xaxis=None, autorange="y", **common)),
        (osc * bands(30, 70)).opts(hv.opts.Overlay(
            height=int(h * 0.17), ylabel="RSI", ylim=(0, 100), xaxis=None, **common)),
        (sto * bands(20, 80)).opts(hv.opts.Overlay(
            height=int(h * 0.19), ylabel="StochRSI", ylim=(0, 100), **common)),
    ]).cols(1).opts(shared_axes=True, merge_tools=True)
