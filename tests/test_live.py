"""market/live.py: LiveState on small hand-made batches, indicators checked with TA-Lib."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import talib

from market.binance import Kline, Ticker
from market.live import LiveState
from market.stream import Batch
from tests.conftest import random_klines, talib_indicators

MINUTE = 60_000
KEY = ["symbol", "interval", "open_time"]
START = dt.datetime(2026, 1, 1)
T0 = int(START.replace(tzinfo=dt.UTC).timestamp() * 1000)


def t(i: int) -> int:
    """open_time (ms) of the i-th candle of random_klines."""
    return T0 + i * MINUTE


def records(frame: pl.DataFrame, *, closed: bool = True) -> list[Kline]:
    """KLINE_SCHEMA rows as the stream's Kline records (event time: just after the close)."""
    ms = frame.with_columns(pl.col("open_time", "close_time").dt.epoch("ms"))
    return [Kline(*row, closed, row[3] + 1 if closed else row[2] + 30_000) for row in ms.iter_rows()]


def forming(symbol: str, i: int, close: float, event_ms: int) -> Kline:
    return Kline(symbol, "1m", t(i), t(i) + MINUTE - 1, close, close + 1, close - 1, close,
                 1.0, close, 1, 0.5, close / 2, False, event_ms)


def ticker(symbol: str, price: float, event_ms: int) -> Ticker:
    return Ticker(symbol, event_ms, price, 1.0, 1.0, price - 1, price + 1, price - 2, 10.0, 10 * price, 5)


def talib_check(state: LiveState, symbol: str, closes: np.ndarray | None = None, tol: float = 1e-9) -> None:
    """RSI, StochRSI K and D (and the signal) in the state equal TA-Lib's over ``closes``
    (default: the state's own), null exactly where TA-Lib's are.

    The state holds the last rows of ``closes``.
    """
    got = state.closed.filter(pl.col("symbol") == symbol).sort("open_time")
    closes = got["close"].to_numpy() if closes is None else closes
    offset = len(closes) - got.height
    ref = talib_indicators(closes)
    for name in ("rsi", "stoch_k", "stoch_d"):
        want = ref[name][offset:]
        have = got[name].cast(pl.Float64).to_numpy()  # nulls become NaN
        assert np.array_equal(np.isnan(have), np.isnan(want)), f"{name}: null where TA-Lib is not, or back"
        both = ~np.isnan(want)
        assert both.sum() > 0
        assert np.abs(have[both] - want[both]).max() <= tol, name
    if "signal" in got.columns:
        assert got["signal"].to_list() == ref["signal"][offset:]


# --------------------------------------------------------------------------- forming


def test_forming_keeps_the_latest_update_and_ignores_stale_ones():
    state = LiveState(["BTCUSDT"])
    state.seed(random_klines(["BTCUSDT"], 20))
    assert state.last_closed("BTCUSDT") == t(19)
    version, closed_version = state.version, state.closed_version
    state.apply(Batch(forming={"BTCUSDT": forming("BTCUSDT", 20, 101.0, t(20) + 1_000)}))
    state.apply(Batch(forming={"BTCUSDT": forming("BTCUSDT", 20, 103.0, t(20) + 3_000)}))
    # an older update of the same candle that arrives late (a slow batch) loses
    state.apply(Batch(forming={"BTCUSDT": forming("BTCUSDT", 20, 102.0, t(20) + 2_000)}))
    assert state.forming["BTCUSDT"].close == 103.0
    # an update of a candle already closed is ignored, however new its event time
    state.apply(Batch(forming={"BTCUSDT": forming("BTCUSDT", 19, 1.0, t(21))}))
    assert state.forming["BTCUSDT"].open_time == t(20) and state.forming["BTCUSDT"].close == 103.0
    assert state.version == version + 4 and state.closed_version == closed_version
    assert state.closed.height == 20  # forming updates never touch the closed history
    # the next candle replaces the current one ...
    state.apply(Batch(forming={"BTCUSDT": forming("BTCUSDT", 21, 104.0, t(21) + 500)}))
    assert state.forming["BTCUSDT"].open_time == t(21)
    # ... and the final of the candle being formed removes it from the live edge
    state.apply(Batch(finals=records(random_klines(["BTCUSDT"], 22)[21:])))
    assert "BTCUSDT" not in state.forming
    assert state.forming_frame().height == 0


def test_finals_merge_newest_wins_and_recompute_later_rows():
    hist = random_klines(["BTCUSDT"], 60)
    state = LiveState(["BTCUSDT"])
    state.seed(hist.head(50))
    new = records(hist[50:51])[0]
    fixed = new._replace(close=new.close * 1.01, high=max(new.high, new.close * 1.01))
    changes = state.apply(Batch(finals=[new, fixed]))  # the same candle twice in one batch
    assert changes.klines.height == 1 and changes.klines["close"][0] == fixed.close
    assert changes.symbols == {"BTCUSDT"}
    assert state.closed.height == 51 and state.closed["close"][-1] == fixed.close
    # a correction in a later batch replaces the stored row
    again = fixed._replace(close=new.close)
    state.apply(Batch(finals=[again]))
    assert state.closed.height == 51 and state.closed["close"][-1] == new.close
    # correcting an old candle recomputes every indicator after it
    old = records(hist[10:11])[0]
    old = old._replace(close=old.close * 0.99, low=min(old.low, old.close * 0.99))
    changes = state.apply(Batch(finals=[old]))
    assert changes.klines.height == 1
    assert changes.indicators["open_time"].dt.epoch("ms").to_list() == [t(i) for i in range(10, 51)]
    assert state.closed.select(KEY).is_duplicated().sum() == 0
    assert state.closed["close"][10] == old.close
    talib_check(state, "BTCUSDT")


# --------------------------------------------------------------------------- order


def test_stream_finals_before_the_backfill_end_with_talib_indicators():
    syms = ["BTCUSDT", "ETHUSDT"]
    hist = random_klines(syms, 300, seed=7)
    state = LiveState(syms)
    # the stream delivers the newest finals first (the backfill is still running) ...
    newest = hist.filter(pl.col("open_time") >= START + dt.timedelta(minutes=290))
    first = state.apply(Batch(finals=records(newest.filter(pl.col("open_time") < START + dt.timedelta(minutes=295)))))
    state.apply(Batch(finals=records(newest.filter(pl.col("open_time") >= START + dt.timedelta(minutes=295)))))
    assert first.indicators["rsi"].null_count() == first.indicators.height  # 5 candles: warming up
    assert state.last_closed("ETHUSDT") == t(299)
    # ... then REST brings the 290 older ones, overlapping the stream by 5
    backfill = hist.filter(pl.col("open_time") < START + dt.timedelta(minutes=295))
    changes = state.apply(Batch(rest=backfill))
    # the stored indicators of the stream's candles are rewritten too
    assert changes.indicators.height == 600
    assert changes.indicators.filter(pl.col("open_time") >= START + dt.timedelta(minutes=290))["rsi"].null_count() == 0
    assert state.closed.height == 600 and state.closed.select(KEY).is_duplicated().sum() == 0
    for sym in syms:
        closes = hist.filter(pl.col("symbol") == sym)["close"].to_numpy()
        assert np.array_equal(state.candles(sym)["close"].to_numpy(), closes)
        talib_check(state, sym, closes)


def test_a_gap_filled_later_gives_talib_indicators():
    hist = random_klines(["BTCUSDT"], 250, seed=3)
    state = LiveState(["BTCUSDT"])
    state.seed(hist.head(100))
    state.apply(Batch(finals=records(hist[150:])))  # the stream after an outage
    assert state.closed.height == 200
    changes = state.apply(Batch(rest=hist[100:150]))  # the repair
    assert changes.indicators.height == 150  # the hole and everything after it
    talib_check(state, "BTCUSDT", hist["close"].to_numpy())


def test_load_returns_talib_rows_from_since_even_past_keep():
    """Stored candles the state lacked (a deep spool behind a whole database): every row
    from ``since`` on comes back equal to TA-Lib over all of them, though the state
    keeps only 600; a database tail cut at ``keep`` gives no row with a cut window."""
    hist = random_klines(["BTCUSDT"], 1400, seed=9)
    closes = hist["close"].to_numpy()
    want = talib_indicators(closes)
    spool = hist[600:]
    state = LiveState(["BTCUSDT"], keep=600)
    state.seed(hist[:600])
    rows = state.load(spool, spool.select("symbol", "open_time"), whole=["BTCUSDT"])
    assert rows.height == 800 and rows["open_time"].to_list() == spool["open_time"].to_list()
    for name in ("rsi", "stoch_k", "stoch_d"):
        np.testing.assert_allclose(rows[name].to_numpy(), want[name][600:], rtol=0, atol=1e-9)
    assert rows["signal"].to_list() == want["signal"][600:]
    assert state.closed.height == 600 and state.last_closed("BTCUSDT") == t(1399)
    # not whole: the first WARMUP rows of what the state knows have a cut window
    cut = LiveState(["BTCUSDT"], keep=600)
    rows = cut.load(hist[:1000], hist[300:].select("symbol", "open_time"))
    assert rows["open_time"].min() == hist["open_time"][500] and rows.height == 500


# --------------------------------------------------------------------------- bookkeeping


def test_keep_trims_the_oldest_candles_per_symbol():
    assert LiveState(["BTCUSDT"], keep=10).keep == 501  # never fewer than the indicator warm-up
    hist = random_klines(["BTCUSDT", "ETHUSDT"], 702, seed=5)
    state = LiveState(["BTCUSDT", "ETHUSDT"], keep=600)
    state.seed(hist.filter(pl.col("open_time") < START + dt.timedelta(minutes=700)))
    for sym in ("BTCUSDT", "ETHUSDT"):
        kept = state.candles(sym)
        assert kept.height == 600
        assert kept["open_time"].dt.epoch("ms").to_list() == [t(i) for i in range(100, 700)]
    state.apply(Batch(finals=records(hist.filter(pl.col("open_time") >= START + dt.timedelta(minutes=700)))))
    for sym in ("BTCUSDT", "ETHUSDT"):
        kept = state.candles(sym)
        assert kept.height == 600 and kept["open_time"].dt.epoch("ms").min() == t(102)
        assert state.last_closed(sym) == t(701)
        # computed from the 600 kept rows only, still TA-Lib's value over all 702 closes
        talib_check(state, sym, hist.filter(pl.col("symbol") == sym)["close"].to_numpy())


def test_holes_find_a_skipped_final_and_gaps_inside_history():
    state = LiveState(["BTCUSDT", "ETHUSDT"])
    hist = random_klines(["BTCUSDT", "ETHUSDT"], 20)
    # BTCUSDT lost candle 7 while candle 8 arrived: a hole inside the history
    state.seed(hist.filter(~((pl.col("symbol") == "BTCUSDT") & (pl.col("open_time") == pl.lit(t(7) * 1000).cast(pl.Datetime("us"))))))
    assert state.holes(now_ms=t(20)) == [("BTCUSDT", t(6))]
    state.apply(Batch(forming={
        "BTCUSDT": forming("BTCUSDT", 20, 100.0, t(20) + 30_000),  # the next candle: fine
        "ETHUSDT": forming("ETHUSDT", 21, 100.0, t(21) + 1_000),  # candle 20 never got its final
    }))
    assert state.holes(now_ms=t(21) + 1_000) == [("BTCUSDT", t(6))]  # within the grace period
    assert state.holes(now_ms=t(21) + 6_000) == [("ETHUSDT", t(19)), ("BTCUSDT", t(6))]
    assert state.holes(now_ms=t(21) + 6_000, grace_ms=10_000) == [("BTCUSDT", t(6))]
    # the late final and the REST repair arrive
    state.apply(Batch(finals=records(random_klines(["ETHUSDT"], 21)[20:])))
    state.apply(Batch(rest=hist.filter((pl.col("symbol") == "BTCUSDT")).slice(7, 1)))
    assert state.holes(now_ms=t(21) + 30_000) == []


def test_snapshot_has_one_row_per_symbol_with_live_indicators():
    syms = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    hist = random_klines(["BTCUSDT", "ETHUSDT"], 100, seed=11)
    state = LiveState(syms)
    state.seed(hist)
    live_close = hist.filter(pl.col("symbol") == "BTCUSDT")["close"][-1] * 1.003
    state.apply(Batch(
        forming={"BTCUSDT": forming("BTCUSDT", 100, live_close, t(100) + 20_000)},
        tickers={"BTCUSDT": ticker("BTCUSDT", 1.0, t(100) + 19_000),
                 "SOLUSDT": ticker("SOLUSDT", 150.0, t(100) + 19_500)},
    ))
    snap = state.snapshot()
    assert snap.height == 3 and sorted(snap["symbol"].to_list()) == syms
    row = {r["symbol"]: r for r in snap.iter_rows(named=True)}
    # BTC: the forming candle is the live edge, its close the freshest price
    btc = np.append(hist.filter(pl.col("symbol") == "BTCUSDT")["close"].to_numpy(), live_close)
    assert row["BTCUSDT"]["last_price"] == live_close
    assert row["BTCUSDT"]["open_time"] == START + dt.timedelta(minutes=100)
    assert abs(row["BTCUSDT"]["rsi"] - talib.RSI(btc, 14)[-1]) <= 1e-9
    # ETH: no forming candle yet: the last closed one
    eth = hist.filter(pl.col("symbol") == "ETHUSDT")["close"].to_numpy()
    assert row["ETHUSDT"]["open_time"] == START + dt.timedelta(minutes=99)
    assert abs(row["ETHUSDT"]["rsi"] - talib.RSI(eth, 14)[-1]) <= 1e-9
    # SOL: only a ticker so far
    assert row["SOLUSDT"]["last_price"] == 150.0 and row["SOLUSDT"]["rsi"] is None
    assert row["SOLUSDT"]["quote_volume"] == 1500.0


@pytest.mark.parametrize("interval", ["5m"])
def test_other_intervals_are_kept_out(interval):
    state = LiveState(["BTCUSDT"], "1m")
    other = random_klines(["BTCUSDT"], 10, interval=interval, interval_s=300)
    changes = state.apply(Batch(rest=other))
    assert changes.klines.height == 0 and state.closed.height == 0


def test_revision_moves_only_when_older_history_really_changes():
    """A backfill that re-sends candles the stream gave changes nothing a chart must reload;
    a corrected or newly filled older candle does."""
    frame = random_klines(["BTCUSDT", "ETHUSDT"], 40)
    state = LiveState(["BTCUSDT", "ETHUSDT"], "1m")
    btc = frame.filter(pl.col("symbol") == "BTCUSDT")
    hole = btc[20]
    state.apply(Batch(finals=records(frame.filter(pl.col("open_time") != hole["open_time"][0]))))
    assert state.revisions.get("BTCUSDT", 0) == 0
    state.apply(Batch(rest=btc.slice(25, 10)))  # the same rows again, over REST
    assert state.revisions.get("BTCUSDT", 0) == 0
    state.apply(Batch(rest=hole))  # the hole filled
    assert state.revisions["BTCUSDT"] == 1 and state.revisions.get("ETHUSDT", 0) == 0
    state.apply(Batch(rest=btc.slice(30, 1).with_columns(pl.col("close") + 1.0)))  # a corrected close
    assert state.revisions["BTCUSDT"] == 2 and state.revisions.get("ETHUSDT", 0) == 0
    assert state.closed.filter(pl.col("symbol") == "BTCUSDT").height == 40
