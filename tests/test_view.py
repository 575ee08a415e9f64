"""dashboard/series.py, dashboard/live.py and dashboard/view.py without a browser.

Series read a real ``LiveState`` (the pipeline's, through an unstarted SharedFeed)
seeded with random candles, and a real DuckDB file for derived timeframes. Expected
candles come from ``market.candles.resample`` of the whole 1m history and expected
indicators from TA-Lib. The status words come from a real pipeline against the
local exchange, pushed into each state with the exchange's fault switches and a
second process holding the database file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time

import numpy as np
import polars as pl
import pytest
import talib
from polars.testing import assert_frame_equal

from dashboard.config import AppConfig
from dashboard.live import SharedFeed
from dashboard.series import Series
from dashboard.view import Dashboard
from market.binance import Kline, Ticker, kline_frame
from market.candles import resample
from market.stream import Batch
from store.db import gate
from store.writer import Writer
from tests.conftest import random_klines

BTC, ETH = "BTCUSDT", "ETHUSDT"
T0 = dt.datetime(2026, 1, 1)
MIN = 60_000


def ms(t: dt.datetime) -> int:
    return int(t.replace(tzinfo=dt.UTC).timestamp() * 1000)


def kline(symbol: str, open_time: dt.datetime, close: float, *, closed: bool, open_: float | None = None,
          volume: float = 5.0) -> Kline:
    o = close if open_ is None else open_
    t = ms(open_time)
    return Kline(symbol, "1m", t, t + MIN - 1, o, max(o, close) + 1, min(o, close) - 1, close, volume,
                 volume * close, 7, volume / 2, volume * close / 2, closed, t + (MIN - 1 if closed else 1000))


def feed_for(tmp_path, symbols=(BTC, ETH)) -> SharedFeed:
    """The app's SharedFeed (pipeline, live state, database path), not started."""
    return SharedFeed(AppConfig(db=str(tmp_path / "view.duckdb"), symbols=list(symbols)))


def talib_indicators(closes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rsi = talib.RSI(closes, 14)
    k, d = talib.STOCH(rsi, rsi, rsi, fastk_period=14, slowk_period=3, slowk_matype=0,
                       slowd_period=3, slowd_matype=0)
    return rsi, k, d


def assert_indicators(frame: pl.DataFrame, closes: np.ndarray, rows: slice | None = None) -> None:
    """``frame``'s rsi/stoch_k/stoch_d equal TA-Lib's on ``closes`` (the full history)."""
    rsi, k, d = talib_indicators(np.asarray(closes, dtype="float64"))
    if rows is not None:
        rsi, k, d = rsi[rows], k[rows], d[rows]
    for col, want in (("rsi", rsi), ("stoch_k", k), ("stoch_d", d)):
        got = frame[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
        assert len(got) == len(want)
        ok = ~np.isnan(want)
        assert ok.sum() > 0
        np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=1e-8, err_msg=col)


OHLCV = ["open_time", "close_time", "open", "high", "low", "close", "volume", "quote_volume", "trades"]


# --- Series at the streamed interval ------------------------------------------------------

def test_series_1m_closed_forming_and_poll(tmp_path):
    feed = feed_for(tmp_path)
    hist = random_klines([BTC, ETH], 300, start=T0)
    feed.state.seed(hist)
    btc = hist.filter(pl.col("symbol") == BTC)
    closes = btc["close"].to_numpy()

    s = Series(feed, BTC, "1m")
    closed, forming = s.initial()
    assert closed.height == 300
    assert closed.select(OHLCV).equals(btc.select(OHLCV))
    assert_indicators(closed, closes)
    assert forming.height == 0  # nothing streamed yet
    assert s.poll()[0].height == 0  # first poll: nothing new

    # a forming candle: no new closed rows, the live candle with indicators through it
    t300 = T0 + dt.timedelta(minutes=300)
    feed.state.apply(Batch(forming={BTC: kline(BTC, t300, 123.0, closed=False)}))
    new, live = s.poll()
    assert new.height == 0
    assert live.height == 1 and live["close"][0] == 123.0 and live["open_time"][0] == t300
    assert live["rsi"][0] == pytest.approx(talib.RSI(np.append(closes, 123.0), 14)[-1], abs=1e-8)
    again, live = s.poll()
    assert again.height == 0 and live is None  # nothing moved: nothing to send

    # the candle closes, the next one forms: exactly one new closed row
    feed.state.apply(Batch(finals=[kline(BTC, t300, 124.0, closed=True)],
                           forming={BTC: kline(BTC, t300 + dt.timedelta(minutes=1), 125.0, closed=False)}))
    new, live = s.poll()
    assert new["open_time"].to_list() == [t300] and new["close"].to_list() == [124.0]
    full = np.append(closes, 124.0)
    assert_indicators(new, full, slice(-1, None))
    assert live["open_time"].to_list() == [t300 + dt.timedelta(minutes=1)]
    assert live["rsi"][0] == pytest.approx(talib.RSI(np.append(full, 125.0), 14)[-1], abs=1e-8)
    again, live = s.poll()
    assert again.height == 0 and live is None

    # another symbol moving bumps the version but brings BTC nothing new
    feed.state.apply(Batch(forming={ETH: kline(ETH, t300, 50.0, closed=False)}))
    new, live = s.poll()
    assert new.height == 0 and live["close"].to_list() == [125.0]


def test_series_reloads_after_a_backfill_behind_the_chart(tmp_path):
    feed = feed_for(tmp_path)
    hist = random_klines([BTC], 300, start=T0)
    feed.state.seed(hist[100:200])  # what was in memory when the chart opened
    s = Series(feed, BTC, "1m")
    assert s.initial()[0].height == 100 and not s.stale
    # the stream moves on after a reconnect: newer rows are simply polled
    feed.state.apply(Batch(finals=[kline(BTC, T0 + dt.timedelta(minutes=250), 99.0, closed=True)]))
    assert s.poll()[0]["open_time"].to_list() == [T0 + dt.timedelta(minutes=250)]
    assert not s.stale
    # the REST backfill fills the gap and the older history: the chart must reload
    feed.state.apply(Batch(rest=pl.concat([hist[:100], hist[200:250]])))
    assert s.stale
    closed, _ = s.initial()
    assert not s.stale
    assert closed["open_time"].to_list() == [T0 + dt.timedelta(minutes=i) for i in range(251)]


# --- derived timeframes -----------------------------------------------------------------

def test_series_5m_equals_resampled_1m_from_store_and_memory(tmp_path):
    feed = feed_for(tmp_path, [BTC])
    full = random_klines([BTC], 603, start=T0)  # 120 complete 5m buckets + 3 minutes of the next
    w = Writer(feed.pipeline.db)
    w.add_klines(full[:400])  # older history only in the database
    w.close()
    feed.state.seed(full[350:])  # the pipeline's memory overlaps the store

    s = Series(feed, BTC, "5m")
    closed, forming = s.initial()
    want = resample(full, "5m")
    assert want.height == 121
    # buckets before memory's come summed by DuckDB: volumes may differ in the last bit
    assert_frame_equal(closed.select(OHLCV), want[:120].select(OHLCV), check_exact=False, rel_tol=1e-12)
    assert (closed["interval"] == "5m").all()
    assert_indicators(closed, want["close"][:120].to_numpy())
    # the open bucket (3 closed minutes, no forming minute yet) is the live candle
    assert forming.select(OHLCV).equals(want[120:].select(OHLCV))

    # a forming minute joins the open bucket
    t603 = T0 + dt.timedelta(minutes=603)
    feed.state.apply(Batch(forming={BTC: kline(BTC, t603, 150.0, closed=False, open_=149.0)}))
    new, live = s.poll()
    assert new.height == 0
    with_forming = pl.concat([full, kline_frame([kline(BTC, t603, 150.0, closed=False, open_=149.0)])])
    want_live = resample(with_forming, "5m")[120:]
    assert live.select(OHLCV).equals(want_live.select(OHLCV))
    assert live["rsi"][0] == pytest.approx(
        talib.RSI(np.append(want["close"][:120].to_numpy(), 150.0), 14)[-1], abs=1e-8)

    # minutes 603 and 604 close the bucket: exactly one new 5m candle, then the next forms
    finals = [kline(BTC, t603, 151.0, closed=True, open_=149.0),
              kline(BTC, t603 + dt.timedelta(minutes=1), 152.0, closed=True)]
    feed.state.apply(Batch(finals=finals, forming={BTC: kline(BTC, T0 + dt.timedelta(minutes=605), 153.0,
                                                                    closed=False)}))
    new, live = s.poll()
    done = pl.concat([full, kline_frame(finals)])
    want = resample(done, "5m")
    assert want.height == 121
    assert new.select(OHLCV).equals(want[120:].select(OHLCV))
    assert_indicators(new, want["close"].to_numpy(), slice(-1, None))
    assert live["open_time"].to_list() == [T0 + dt.timedelta(minutes=605)]
    assert live["close"].to_list() == [153.0] and live["interval"].to_list() == ["5m"]
    assert s.poll()[0].height == 0 and s.poll()[1] is None


def test_series_1h_from_memory_only_when_the_store_is_missing(tmp_path):
    feed = feed_for(tmp_path, [BTC])  # the database file was never created
    full = random_klines([BTC], 240, start=T0)
    feed.state.seed(full)
    closed, forming = Series(feed, BTC, "1h").initial()
    want = resample(full, "1h")
    assert closed.select(OHLCV).equals(want.select(OHLCV)) and forming.height == 0


# --- the shared snapshot -------------------------------------------------------------------

def test_snapshot_is_computed_once_per_change_for_all_sessions(tmp_path):
    feed = feed_for(tmp_path)
    feed.state.seed(random_klines([BTC, ETH], 100, start=T0))
    first = feed.snapshot()
    assert first is feed.snapshot() and first is feed.snapshot(max_age=0)  # nothing changed
    assert first["symbol"].to_list() == [BTC, ETH]
    assert first.filter(pl.col("symbol") == BTC)["rsi"][0] is not None

    t = T0 + dt.timedelta(minutes=100)
    feed.state.apply(Batch(forming={BTC: kline(BTC, t, 321.0, closed=False)},
                           tickers={BTC: Ticker(BTC, ms(t), 321.0, 1.0, 2.5, 300.0, 330.0, 290.0, 10.0, 3e3, 9)}))
    # changed, but younger than max_age (an hour here, so a slow box cannot age it): every session reuses it
    assert feed.snapshot(max_age=3600) is first
    fresh = feed.snapshot(max_age=0)
    assert fresh is not first and fresh is feed.snapshot(max_age=3600)
    row = fresh.filter(pl.col("symbol") == BTC).to_dicts()[0]
    assert row["last_price"] == 321.0 and row["price_change_pct"] == 2.5


def test_snapshot_before_any_data_still_builds_a_page(tmp_path):
    feed = feed_for(tmp_path)
    d = Dashboard(feed)  # the first session of a fresh server: no candles, no tickers yet
    try:
        assert d._table.value["symbol"].tolist() == [BTC, ETH]
        assert d._table.value["price"].isna().all()
        assert feed.sessions == 1
        assert "connecting to the exchange" in d._status_html()
    finally:
        d._callback.stop()


def test_dashboard_wiring_without_a_browser(tmp_path):
    feed = feed_for(tmp_path)
    feed.state.seed(random_klines([BTC, ETH], 400, start=T0))
    d = Dashboard(feed)
    try:
        d._callback.stop()
        closed = d._chart.chart.closed.data  # what the chart's Bokeh source holds
        # the last 150 candles in view, half as many again loaded to the left
        assert d._chart.series.symbol == BTC and 220 <= len(closed["time"]) <= 240
        d._heatmap.source.selected.indices = [1]  # what a tile click syncs from the browser
        closed = d._chart.chart.closed.data
        assert d.symbol == ETH and d._chart.series.symbol == ETH
        assert closed["close"][-1] == feed.state.candles(ETH)["close"][-1]
        d._chart.buttons.value = "15m"  # a click on the 15m button pins 15m
        closed = d._chart.chart.closed.data
        assert d._chart.series.timeframe == "15m" and not d._chart.auto
        assert set(np.diff(closed["time"])) == {15 * MIN}
        assert len(closed["time"]) == 26  # 400 minutes: 26 closed quarters, the 27th still open
        d._tick()  # a tick with nothing new sends nothing
        assert len(d._chart.chart.closed.data["time"]) == 26
    finally:
        d._callback.stop()


# --- status words, from a real pipeline ---------------------------------------------------

async def until(check, timeout: float, every: float = 0.02):
    """Poll ``check()`` in this event loop (the pipeline runs in it) until it returns truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s")
        await asyncio.sleep(every)


async def test_status_words_live_reconnecting_offline_and_waiting_rows(tmp_path, hold_file):
    config = AppConfig(demo=True, db=str(tmp_path / "status.duckdb"), symbols=[BTC, ETH], speed=60,
                       refresh_ms=100)
    feed = SharedFeed(config)
    feed.start(asyncio.get_running_loop())
    d = Dashboard(feed)  # its periodic callback runs in this loop, as in a session
    try:
        html = await until(lambda: "live:" in d._status.object and d._status.object, 60)
        assert "#26a69a" in html and "1 session" in html and "msg/s" in html
        await until(lambda: feed.pipeline.writer.status().written_rows > 0, 60)

        feed.exchange.refuse(600, 503)  # until reset_faults below
        feed.exchange.drop_connections()
        seen = await until(lambda: next((h for h in [d._status_html()] if "reconnecting" in h), None), 10,
                           every=0.005)
        assert re.search(r"reconnecting( in \d+ s)?: ", seen), seen
        assert "#ffb300" in seen
        offline = await until(lambda: "offline" in d._status.object and d._status.object, 60)
        assert re.search(r"offline( in \d+ s)?: the exchange refused the connection \(HTTP 503\)", offline), offline
        assert "#ef5350" in offline

        feed.exchange.reset_faults()
        await until(lambda: "live:" in d._status.object, 60)

        # a notebook holding the file read-write; our own writer is kept out while it opens
        # the file (its open would fail if a flush held the file at that moment)
        g = gate(feed.pipeline.db)
        assert g.read(time.monotonic() + 60)
        try:
            holder = hold_file(feed.pipeline.db)
        finally:
            g.end_read()
        waiting = await until(lambda: "rows waiting for the database" in d._status.object and d._status.object, 60)
        assert re.search(r"[\d,]+ rows waiting for the database", waiting), waiting
        assert "live:" in waiting  # the feed itself is fine
        assert waiting.count("rows waiting") == 1, waiting
        holder.release()
        await until(lambda: "waiting" not in d._status.object, 60)
        assert feed.pipeline.writer.status().pending_rows < 100
    finally:
        d._callback.stop()
        await feed.stop()
    assert feed.task.done()


async def test_a_sessions_refresh_leaves_the_busy_flag_alone(tmp_path):
    """Panel wraps periodic callbacks in a busy event by default, and every change of
    ``pn.state.busy`` is sent to every open session's busy indicator: N sessions ticking
    made 4 N² messages a second. The refresh must tick without touching the flag."""
    import panel as pn

    feed = SharedFeed(AppConfig(db=str(tmp_path / "busy.duckdb"), symbols=[BTC, ETH], refresh_ms=100))
    feed.state.seed(random_klines([BTC, ETH], 50, start=T0))
    changes: list[bool] = []
    watcher = pn.state.param.watch(lambda e: changes.append(e.new), "busy")
    d = Dashboard(feed)  # its periodic callback runs in this loop, as in a session
    try:
        await until(lambda: d.ticks >= 5, 60)
        assert changes == [], f"pn.state.busy changed {len(changes)} times over {d.ticks} ticks"
    finally:
        d._callback.stop()
        pn.state.param.unwatch(watcher)


def test_a_ticks_forming_candle_goes_inline_not_as_binary_buffers(tmp_path):
    """Bokeh sends every numpy array of a patch as its own buffer, two websocket frames
    each: the forming candle and its dotted stub as arrays were 32 buffers a tick per
    session. The PATCH-DOC a tick sends must carry them inline, with the new close."""
    from bokeh.document import Document
    from bokeh.protocol import Protocol

    feed = feed_for(tmp_path)
    feed.state.seed(random_klines([BTC, ETH], 400, start=T0))
    d = Dashboard(feed)
    d._callback.stop()
    doc = Document()
    doc.add_root(d._chart.chart.layout)  # every chart source is in the document
    events: list = []
    doc.on_change(events.append)
    forming_at = T0 + dt.timedelta(minutes=400)
    feed.state.apply(Batch(forming={BTC: kline(BTC, forming_at, 4321.5, closed=False)}))
    d._chart.tick()
    assert events, "the tick changed nothing"
    msg = Protocol().create("PATCH-DOC", events)
    assert msg.buffers == []
    assert "4321.5" in msg.content_json
