"""dashboard/charts.py and dashboard/heatmap.py: frames, elements, rendering, streams.

Rendered with Bokeh in-process (no server, no browser); a bokeh Document records
which kind of update each change sends (stream vs. full re-send vs. patch).
"""

from __future__ import annotations

import datetime as dt
import gc

import holoviews as hv
import numpy as np
import pandas as pd
import polars as pl
import pytest
from bokeh.document import Document
from bokeh.document.events import ColumnDataChangedEvent, ColumnsPatchedEvent, ColumnsStreamedEvent
from bokeh.events import RangesUpdate
from bokeh.models import ColumnDataSource, DatetimeAxis, GlyphRenderer, Plot

from dashboard import charts
from dashboard.heatmap import (
    GREEN, MISSING, NEUTRAL, RED, Heatmap, signal_table, signal_table_frame, tile_colors,
)
from market.schema import KLINE_SCHEMA
from tests.conftest import random_klines

T0 = dt.datetime(2026, 1, 1)


def five() -> pl.DataFrame:
    """Five 1m candles: up, down, doji, up, down; indicators null while warming up."""
    return pl.DataFrame({
        "symbol": "BTCUSDT", "interval": "1m",
        "open_time": [T0 + dt.timedelta(minutes=i) for i in range(5)],
        "close_time": [T0 + dt.timedelta(minutes=i + 1, milliseconds=-1) for i in range(5)],
        "open": [10.0, 12.0, 11.0, 11.0, 13.0],
        "high": [12.5, 12.2, 11.5, 13.5, 13.1],
        "low": [9.5, 10.8, 10.5, 10.9, 12.0],
        "close": [12.0, 11.0, 11.0, 13.0, 12.5],
        "volume": [1.0, 2.0, 3.0, 4.0, 5.0],
        "quote_volume": 1.0, "trades": 1, "taker_buy_volume": 0.5,
        "taker_buy_quote_volume": 0.5,
        "rsi": [None, None, 55.0, 61.0, 48.0],
        "stoch_k": [None, None, None, 80.0, 20.0],
        "stoch_d": [None, None, None, None, 50.0],
    }, schema_overrides={**KLINE_SCHEMA, "rsi": pl.Float64, "stoch_k": pl.Float64,
                         "stoch_d": pl.Float64})


def history(n: int, seed: int = 0) -> pd.DataFrame:
    """A chart frame of n random 1m candles with made-up indicator values."""
    k = random_klines(["BTCUSDT"], n, seed=seed, start=T0)
    rng = np.random.default_rng(seed)
    k = k.with_columns(rsi=pl.Series(rng.uniform(0, 100, n)),
                       stoch_k=pl.Series(rng.uniform(0, 100, n)),
                       stoch_d=pl.Series(rng.uniform(0, 100, n)))
    return charts.chart_frame(k, "1m")


def render(obj):
    """Plot ``obj`` with Bokeh inside a Document, as a server session would."""
    doc = Document()
    plot = hv.renderer("bokeh").get_plot(obj, doc=doc)
    doc.add_root(plot.state)
    return plot, doc


def figures(plot) -> list:
    return list(plot.state.select({"type": Plot}))


def sources_by_size(root) -> list[ColumnDataSource]:
    """Every distinct data source under ``root``."""
    found = {r.data_source.id: r.data_source for r in root.select({"type": GlyphRenderer})}
    return list(found.values())


# --- chart_frame -----------------------------------------------------------------------

def test_chart_frame_columns_edges_bodies_and_nan():
    df = charts.chart_frame(five(), "1m")
    assert tuple(df.columns) == charts.CHART_COLUMNS
    assert len(df) == 5
    assert df["time"].iloc[0] == pd.Timestamp(T0)
    assert (df["right"] - df["time"] == pd.Timedelta(seconds=24)).all()
    assert (df["time"] - df["left"] == pd.Timedelta(seconds=24)).all()
    assert df["body_bottom"].tolist() == [10.0, 11.0, 11.0, 11.0, 12.5]
    assert df["body_top"].tolist() == [12.0, 12.0, 11.0, 13.0, 13.0]
    assert df["up"].tolist() == [1, 0, 1, 1, 0]  # a doji counts as up
    assert df["color"].tolist() == [charts.UP, charts.DOWN, charts.UP, charts.UP, charts.DOWN]
    assert (df["zero"] == 0).all()
    assert df["rsi"].dtype == np.float64
    assert np.isnan(df["rsi"].iloc[:2]).all() and df["rsi"].iloc[2] == 55.0
    assert np.isnan(df["stoch_d"].iloc[:4]).all() and df["stoch_d"].iloc[4] == 50.0


def test_chart_frame_interval_pandas_input_and_bad_input():
    df = charts.chart_frame(five().to_pandas(), "1h")
    assert (df["right"] - df["left"] == pd.Timedelta(minutes=48)).all()
    no_ind = charts.chart_frame(five().drop("rsi", "stoch_k", "stoch_d"), "1m")
    assert no_ind["rsi"].isna().all()
    with pytest.raises(ValueError, match="unknown interval"):
        charts.chart_frame(five(), "7m")
    with pytest.raises(ValueError, match="missing columns"):
        charts.chart_frame(five().drop("high"), "1m")
    assert tuple(charts.empty_chart_frame().columns) == charts.CHART_COLUMNS


# --- element builders ------------------------------------------------------------------

def test_candles_wicks_and_bodies_read_the_frame_itself():
    df = charts.chart_frame(five(), "1m")
    wicks, bodies = charts.candles(df)
    assert isinstance(wicks, hv.Segments) and isinstance(bodies, hv.Rectangles)
    # The Buffer's incremental path needs the element built on the very same frame.
    assert wicks.data is df and bodies.data is df
    assert list(wicks.dimension_values(1)) == df["low"].tolist()
    assert list(wicks.dimension_values(3)) == df["high"].tolist()
    assert list(wicks.dimension_values(0)) == list(wicks.dimension_values(2))
    assert list(bodies.dimension_values(1)) == df["body_bottom"].tolist()
    assert list(bodies.dimension_values(3)) == df["body_top"].tolist()
    assert list(bodies.dimension_values("up")) == [1, 0, 1, 1, 0]


def test_volume_bars_from_zero():
    df = charts.chart_frame(five(), "1m")
    bars = charts.volume(df)
    assert isinstance(bars, hv.Rectangles) and bars.data is df
    assert list(bars.dimension_values(1)) == [0.0] * 5
    assert list(bars.dimension_values(3)) == [1.0, 2.0, 3.0, 4.0, 5.0]


def _bands_of(overlay) -> tuple[tuple[float, float], list[float]]:
    span = [el for el in overlay if isinstance(el, hv.HSpan)][0]
    lines = sorted(el.data for el in overlay if isinstance(el, hv.HLine))
    return tuple(span.data), lines


def test_rsi_and_stochrsi_curves_and_bands():
    df = charts.chart_frame(five(), "1m")
    osc = charts.rsi(df)
    curve = [el for el in osc if isinstance(el, hv.Curve)]
    assert len(curve) == 1 and curve[0].data is df
    np.testing.assert_array_equal(curve[0].dimension_values("rsi"), df["rsi"].to_numpy())
    assert _bands_of(osc) == ((30, 70), [30, 70])

    sto = charts.stochrsi(df)
    k, d = [el for el in sto if isinstance(el, hv.Curve)]
    assert k.vdims[0].name == "stoch_k" and d.vdims[0].name == "stoch_d"
    np.testing.assert_array_equal(k.dimension_values("stoch_k"), df["stoch_k"].to_numpy())
    np.testing.assert_array_equal(d.dimension_values("stoch_d"), df["stoch_d"].to_numpy())
    assert _bands_of(sto) == ((20, 80), [20, 80])


# --- price_layout ----------------------------------------------------------------------

def test_static_layout_renders_four_panels_on_one_datetime_axis():
    df = history(300)
    layout = charts.price_layout(df.iloc[:-1], df.iloc[-1:], window=100)
    assert isinstance(layout, hv.Layout) and len(layout) == 4
    root = hv.render(layout, backend="bokeh")
    figs = list(root.select({"type": Plot}))
    assert len(figs) == 4
    assert len({id(f.x_range) for f in figs}) == 1
    assert all(isinstance(f.xaxis[0], DatetimeAxis) for f in figs)
    # Opens on the last 100 candles, up to the forming one plus a margin.
    xr = figs[0].x_range
    step = 60_000
    last_right = charts._col_ms(df, "right")[-1]
    assert xr.end == pytest.approx(last_right + 3 * step)
    assert xr.start == pytest.approx(last_right - 100 * step)
    # The forming candle is drawn: a one-row source holding the last row.
    one_row = [s for s in sources_by_size(root) if len(s.data.get("time", [])) == 1]
    assert any(s.data["close"][0] == df["close"].iloc[-1] for s in one_row)


def test_static_layout_window_none_shows_everything():
    df = history(50)
    root = hv.render(charts.price_layout(df, window=None), backend="bokeh")
    xr = list(root.select({"type": Plot}))[0].x_range
    lo = charts._ms(xr.start)
    assert lo <= charts._col_ms(df, "left")[0]


def streamed(n_history: int = 200, n_total: int = 210):
    df = history(n_total)
    buffer, pipe = charts.streams_for(df.iloc[:n_history])
    layout = charts.price_layout(buffer, pipe, window=50)
    plot, doc = render(layout)
    events: list = []
    doc.on_change(events.append)
    return df, buffer, pipe, plot, events


def sized(plot, n: int) -> list[ColumnDataSource]:
    return [s for s in sources_by_size(plot.state) if len(s.data.get("time", [])) == n]


def test_streams_for_caps_history_and_starts_with_an_empty_pipe():
    df = history(50)
    buffer, pipe = charts.streams_for(df, length=20)
    assert len(buffer.data) == 20 and buffer.length == 20
    assert buffer.data["time"].iloc[-1] == df["time"].iloc[-1]
    assert pipe.data.empty and tuple(pipe.data.columns) == charts.CHART_COLUMNS
    with pytest.raises(ValueError, match="chart_frame"):
        charts.streams_for(df[["time", "open"]])


def test_builders_as_dynamicmap_callbacks_take_the_incremental_buffer_path():
    """For notebooks or custom apps that plot the builders on a Buffer directly."""
    df = history(60)
    buffer, _ = charts.streams_for(df.iloc[:50])
    dmap = (hv.DynamicMap(charts.candles, streams=[buffer])
            * hv.DynamicMap(charts.volume, streams=[buffer])
            * hv.DynamicMap(charts.rsi_line, streams=[buffer]))
    plot, doc = render(dmap)
    events: list = []
    doc.on_change(events.append)
    closed = sized(plot, 50)
    assert len(closed) == 4  # wicks, bodies, volume, RSI

    buffer.send(df.iloc[50:53])

    assert [len(e.data) for e in plot.current_frame] == [53, 53, 53, 53]
    assert all(len(s.data["time"]) == 53 for s in closed)
    streamed_ids = {e.model.id for e in events if isinstance(e, ColumnsStreamedEvent)}
    resent_ids = {e.model.id for e in events if isinstance(e, ColumnDataChangedEvent)}
    assert {s.id for s in closed} <= streamed_ids
    assert not resent_ids & {s.id for s in closed}  # no full re-send of the history


def test_live_layout_shares_one_axis_and_one_source_of_closed_candles():
    df, buffer, pipe, plot, events = streamed()
    figs = figures(plot)
    assert len(figs) == 4 and len({id(f.x_range) for f in figs}) == 1
    assert all(isinstance(f.xaxis[0], DatetimeAxis) for f in figs)
    closed = sized(plot, 200)
    assert len(closed) == 1  # one source behind all four panels
    assert closed[0].data["close"].tolist() == df["close"].iloc[:200].tolist()
    users = {id(f) for f in figs for r in f.select({"type": GlyphRenderer})
             if r.data_source is closed[0]}
    assert len(users) == 4


def test_buffer_send_streams_only_the_new_rows():
    df, buffer, pipe, plot, events = streamed()
    closed = sized(plot, 200)[0]
    buffer.send(df.iloc[200:203])
    assert closed.data["time"][-1] == df["time"].iloc[202].to_datetime64()
    assert closed.data["close"].tolist() == df["close"].iloc[:203].tolist()
    mine = [e for e in events if getattr(e, "model", None) is closed]
    assert [type(e) for e in mine] == [ColumnsStreamedEvent]
    assert len(mine[0].data["time"]) == 3 and mine[0].rollover == charts.BUFFER_LENGTH
    # A row already shown (a late duplicate of a closed candle) is not drawn twice.
    buffer.send(df.iloc[202:203])
    assert len(closed.data["time"]) == 203


def test_pipe_send_updates_forming_glyphs_without_touching_history():
    df, buffer, pipe, plot, events = streamed()
    closed = sized(plot, 200)[0]
    live = df.iloc[200:201]
    pipe.send(live)
    forming = sized(plot, 1)
    assert len(forming) == 1 and forming[0].data["close"][0] == live["close"].iloc[0]
    stub = sized(plot, 2)
    assert len(stub) == 1  # RSI/StochRSI: last closed -> forming
    assert stub[0].data["rsi"].tolist() == [df["rsi"].iloc[199], df["rsi"].iloc[200]]
    assert not [e for e in events if getattr(e, "model", None) is closed]
    pipe.send(charts.empty_chart_frame())
    assert len(forming[0].data["time"]) == 0


def test_view_follows_the_live_end_and_stays_when_panned_away():
    df, buffer, pipe, plot, events = streamed()
    xr = figures(plot)[0].x_range
    step = 60_000.0
    pipe.send(df.iloc[200:201])
    start, end = charts._ms(xr.start), charts._ms(xr.end)
    # The candle closes and the next one starts: the view moves by one candle.
    buffer.send(df.iloc[200:201])
    pipe.send(df.iloc[201:202])
    assert charts._ms(xr.start) == pytest.approx(start + step)
    assert charts._ms(xr.end) == pytest.approx(end + step)
    # The user pans back in time: new candles no longer move the view...
    xr.update(start=start - 100 * step, end=end - 100 * step)
    buffer.send(df.iloc[201:202])
    pipe.send(df.iloc[202:203])
    assert charts._ms(xr.end) == pytest.approx(end - 100 * step)
    # ...but reset returns to the live end.
    assert xr.reset_end == pytest.approx(charts._col_ms(df, "right")[202] + 3 * step)


def test_price_range_fits_the_candles_in_view():
    df, buffer, pipe, plot, events = streamed()
    price = [f for f in figures(plot) if f.yaxis[0].axis_label == "Price"][0]
    shown = df.iloc[150:200]  # window=50
    lo, hi = shown["low"].min(), shown["high"].max()
    assert price.y_range.start < lo < hi < price.y_range.end
    assert price.y_range.end - price.y_range.start < (hi - lo) * 1.2
    spike = df.iloc[200:201].assign(high=hi + 10)  # the live candle breaks out
    pipe.send(spike)
    assert price.y_range.end >= hi + 10


def test_symbol_switch_by_clear_and_resend():
    df, buffer, pipe, plot, events = streamed()
    closed = sized(plot, 200)[0]
    other = history(120, seed=7)
    other = other.assign(**{c: other[c] + pd.Timedelta(days=3)
                            for c in ("time", "left", "right")})
    buffer.clear()
    assert len(closed.data["time"]) == 0
    buffer.send(other)
    assert closed.data["close"].tolist() == other["close"].tolist()
    xr = figures(plot)[0].x_range
    assert xr.end == pytest.approx(charts._col_ms(other, "right")[-1] + 3 * 60_000)


def test_live_layout_can_start_without_history():
    df = history(30)
    buffer, pipe = charts.streams_for()
    plot, doc = render(charts.price_layout(buffer, pipe))
    pipe.send(df.iloc[:1])  # a forming candle before any closed one
    buffer.send(df.iloc[:20])
    pipe.send(df.iloc[20:21])
    assert len(sized(plot, 20)) == 1
    xr = figures(plot)[0].x_range
    assert xr.end == pytest.approx(charts._col_ms(df, "right")[20] + 3 * 60_000)


def test_zooming_does_not_freeze_the_data():
    """A zoomed HoloViews streaming plot stops updating until reset; this one must not."""
    df, buffer, pipe, plot, events = streamed()
    fig = figures(plot)[0]
    fig._trigger_event(RangesUpdate(fig, x0=0, x1=1, y0=0, y1=1))
    buffer.send(df.iloc[200:201])
    assert len(sized(plot, 201)) == 1


def test_closed_session_figures_are_not_kept_alive():
    df = history(100)
    buffer, pipe = charts.streams_for(df.iloc[:90])
    plot, doc = render(charts.price_layout(buffer, pipe))
    view = next(sub.__self__ for _, sub in pipe._subscribers
                if isinstance(getattr(sub, "__self__", None), charts._View))
    assert len(view._live()) == 1
    plot.cleanup()  # what HoloViews does when the Bokeh server destroys the session
    del plot, doc
    gc.collect()
    assert view._live() == []
    buffer.send(df.iloc[90:91])  # streams outliving their session still accept sends
    pipe.send(df.iloc[91:92])


def test_price_layout_rejects_mixed_inputs():
    df = history(20)
    buffer, pipe = charts.streams_for(df)
    with pytest.raises(TypeError):
        charts.price_layout(buffer, df)
    with pytest.raises(TypeError):
        charts.price_layout(df, pipe)


# --- heatmap ---------------------------------------------------------------------------

SYMBOLS = [f"S{i:02d}USDT" for i in range(48)] + ["BTCUSDT", "ETHUSDT"]


def tickers(seed: int = 0, symbols: list[str] = SYMBOLS) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(symbols)
    return pl.DataFrame({
        "symbol": symbols, "last_price": rng.uniform(1, 1000, n),
        "price_change_pct": rng.normal(0, 3, n), "quote_volume": rng.uniform(1e6, 1e9, n),
        "rsi": rng.uniform(0, 100, n), "stoch_k": rng.uniform(0, 100, n),
        "stoch_d": rng.uniform(0, 100, n),
        "signal": rng.choice(["buy", "sell", ""], n).tolist(),
    })


def test_heatmap_grid_is_fixed_and_update_patches_in_place():
    hm = Heatmap(SYMBOLS, columns=10)
    doc = Document()
    doc.add_root(hm.figure)
    src = hm.source
    xy = list(zip(src.data["x"], src.data["y"]))
    assert xy[0] == (0, 4) and xy[9] == (9, 4) and xy[10] == (0, 3) and xy[49] == (9, 0)
    assert len(set(xy)) == 50
    assert src.data["name"][48] == "BTC"

    events: list = []
    doc.on_change(events.append)
    frame = tickers(1)
    hm.update(frame.sample(fraction=1.0, shuffle=True, seed=3))  # any row order
    assert hm.source is src
    assert list(zip(src.data["x"], src.data["y"])) == xy
    assert events and all(isinstance(e, ColumnsPatchedEvent) for e in events)
    i = SYMBOLS.index("ETHUSDT")
    pct = frame["price_change_pct"][i]
    assert src.data["label"][i] == f"{pct:+.2f}%"
    assert src.data["color"][i] == tile_colors(np.array([pct]), "change")[0]

    hm.update(mode="rsi")
    assert src.data["label"][i] == f"RSI {frame['rsi'][i]:.0f}"
    assert list(zip(src.data["x"], src.data["y"])) == xy
    # A partial update keeps the other symbols' values; unknown symbols are counted.
    hm.update(pl.DataFrame({"symbol": ["BTCUSDT", "XYZUSDT"], "rsi": [50.0, 1.0]}))
    assert src.data["label"][48] == "RSI 50" and src.data["label"][i].startswith("RSI ")
    assert hm.skipped == 1
    with pytest.raises(ValueError):
        hm.update(mode="volume")


def test_heatmap_colour_extremes():
    change = tile_colors(np.array([-50.0, -5.0, 0.0, 5.0, 50.0, np.nan]), "change", 5.0)
    assert change == [RED, RED, NEUTRAL, GREEN, GREEN, MISSING]
    mild = tile_colors(np.array([-1.0, 1.0]), "change", 5.0)
    assert mild[0] not in (RED, NEUTRAL) and mild[1] not in (GREEN, NEUTRAL)
    rsi = tile_colors(np.array([0.0, 10.0, 29.0, 30.0, 50.0, 70.0, 71.0, 90.0, 100.0]), "rsi")
    assert rsi[0] == rsi[1] == GREEN and rsi[7] == rsi[8] == RED
    assert rsi[3] == rsi[4] == rsi[5] == NEUTRAL
    assert rsi[2] not in (NEUTRAL, GREEN) and rsi[6] not in (NEUTRAL, RED)  # 30/70 step


def test_heatmap_on_select_reports_the_clicked_symbol():
    hm = Heatmap(SYMBOLS)
    got: list[str] = []
    hm.on_select(got.append)
    hm.source.selected.indices = [SYMBOLS.index("ETHUSDT")]
    assert got == ["ETHUSDT"]
    hm.source.selected.indices = []  # click on empty space: nothing to report
    hm.select("BTCUSDT")  # programmatic highlight does not echo back
    assert got == ["ETHUSDT"]
    assert hm.source.selected.indices == [SYMBOLS.index("BTCUSDT")]


def test_heatmap_rejects_bad_symbol_lists():
    with pytest.raises(ValueError):
        Heatmap([])
    with pytest.raises(ValueError):
        Heatmap(["A", "A"])


# --- signal table ----------------------------------------------------------------------

def test_signal_table_frame_columns_order_and_nulls():
    frame = tickers(2, SYMBOLS[:5]).with_columns(
        pl.Series("signal", ["buy", None, "sell", "", None]),
        pl.Series("rsi", [None, 40.0, 50.0, 60.0, 70.0]),
    )
    df = signal_table_frame(frame)
    assert list(df.columns) == ["symbol", "price", "change_pct", "quote_volume", "rsi",
                                "stoch_k", "stoch_d", "signal"]
    assert df["symbol"].tolist() == SYMBOLS[:5]
    assert df["signal"].tolist() == ["buy", "", "sell", "", ""]
    assert np.isnan(df["rsi"].iloc[0]) and df["rsi"].iloc[1] == 40.0
    assert df["price"].tolist() == frame["last_price"].to_list()
    assert df["change_pct"].tolist() == frame["price_change_pct"].to_list()

    order = list(reversed(SYMBOLS[:5])) + ["NEWUSDT"]
    stable = signal_table_frame(frame.reverse().slice(1), order=order)
    assert stable["symbol"].tolist() == order
    # the first symbol of the order is not in the (sliced) frame: a row without values
    assert np.isnan(stable["price"].iloc[0]) and stable["signal"].iloc[0] == ""
    assert stable["price"].iloc[1:5].tolist() == [frame["last_price"][i] for i in (3, 2, 1, 0)]
    assert np.isnan(stable["price"].iloc[-1]) and stable["signal"].iloc[-1] == ""
    assert isinstance(stable.index, pd.RangeIndex)


def test_signal_table_is_configured_and_patch_keeps_sorting():
    import panel as pn

    df = signal_table_frame(tickers(3), order=SYMBOLS)
    table = signal_table(df)
    assert isinstance(table, pn.widgets.Tabulator)
    assert table.selectable == 1 and table.disabled and not table.show_index
    assert set(table.header_filters) >= {"symbol", "change_pct", "signal"}
    assert {"price", "change_pct", "quote_volume", "rsi"} <= set(table.formatters)
    table.sorters = [{"field": "change_pct", "dir": "asc"}]
    new = signal_table_frame(tickers(4), order=SYMBOLS)
    table.patch(new)
    assert table.value["price"].tolist() == new["price"].tolist()
    assert table.sorters == [{"field": "change_pct", "dir": "asc"}]
