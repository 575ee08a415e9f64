"""dashboard/windows.py: a chart window's candles from a real DuckDB file, indicators against TA-Lib.

Expected candles come from ``market.candles.resample`` of the whole 1m history,
expected indicators from TA-Lib on the whole series at that timeframe: a window
anywhere in the history must show exactly those (the warm-up makes them exact).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import talib

from dashboard.lod import Window, load_window
from dashboard.windows import window_candles
from market.candles import resample
from market.indicators import add_indicators
from store.writer import Writer
from tests.conftest import random_klines

BTC = "BTCUSDT"
T0 = dt.datetime(2026, 1, 1)
MIN = 60_000
EPOCH = dt.datetime(1970, 1, 1)


def ms(t: dt.datetime) -> int:
    return int((t - EPOCH) / dt.timedelta(milliseconds=1))


@pytest.fixture(scope="module")
def ten_days(tmp_path_factory):
    """A file with 10 days of 1m candles of BTC (and some ETH around it)."""
    db = tmp_path_factory.mktemp("ranges") / "ten.duckdb"
    full = random_klines([BTC, "ETHUSDT"], 14_400, start=T0, seed=3)
    w = Writer(db)
    w.add_klines(full)
    w.close()
    return db, full.filter(pl.col("symbol") == BTC)


def expected(full_1m: pl.DataFrame, tf: str) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    want = resample(full_1m, tf)
    closes = want["close"].to_numpy()
    rsi = talib.RSI(closes, 14)
    k, d = talib.STOCH(rsi, rsi, rsi, fastk_period=14, slowk_period=3, slowk_matype=0,
                       slowd_period=3, slowd_matype=0)
    return want, rsi, k, d


@pytest.mark.parametrize(("tf", "x0", "x1"), [
    ("1m", T0 + dt.timedelta(days=4), T0 + dt.timedelta(days=5)),
    ("5m", T0 + dt.timedelta(days=3, hours=5), T0 + dt.timedelta(days=6)),
    ("15m", T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=9)),
    ("1h", T0 + dt.timedelta(hours=30), T0 + dt.timedelta(days=10)),
])
def test_window_equals_the_full_history_at_that_timeframe(ten_days, tf, x0, x1):
    db, full = ten_days
    win = load_window(ms(x0), ms(x1), tf)
    got = window_candles(BTC, win, db=db)
    want, rsi, k, d = expected(full, tf)
    rows = (want["open_time"] >= EPOCH + dt.timedelta(milliseconds=win.start)) & \
           (want["open_time"] < EPOCH + dt.timedelta(milliseconds=win.end))
    idx = np.flatnonzero(rows.to_numpy())
    assert got.height == len(idx) > 0
    assert got["open_time"].equals(want["open_time"].filter(rows))
    for col in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy()[idx], err_msg=col)
    np.testing.assert_allclose(got["volume"].to_numpy(), want["volume"].to_numpy()[idx], rtol=1e-12)
    for col, ref in (("rsi", rsi), ("stoch_k", k), ("stoch_d", d)):
        exp = ref[idx]
        have = got[col].fill_null(np.nan).to_numpy()
        ok = ~np.isnan(exp)
        assert ok.sum() > 0
        np.testing.assert_allclose(have[ok], exp[ok], rtol=0, atol=1e-8, err_msg=col)
        if col == "rsi":  # null only where TA-Lib has no RSI yet (the very start of the history)
            assert np.isnan(have[~ok]).all()


def test_window_reaching_the_live_series_uses_its_candles(ten_days):
    db, full = ten_days
    recent = add_indicators(full).tail(300).with_columns(pl.lit("live").alias("symbol"))  # marked
    # a live window: the series' candles past its end are the live end, drawn too
    win = Window("1m", ms(T0 + dt.timedelta(days=9)), ms(T0 + dt.timedelta(days=9, hours=20)))
    got = window_candles(BTC, win, db=db, recent=recent)
    assert got["open_time"].is_sorted() and got["open_time"].n_unique() == got.height
    assert got.height == 1440  # the whole last day: stored rows, then the series' 300
    assert got["symbol"].tail(300).to_list() == ["live"] * 300 and (got["symbol"].head(1140) == BTC).all()
    np.testing.assert_allclose(got["rsi"].to_numpy(), add_indicators(full).tail(1440)["rsi"].to_numpy(),
                               rtol=0, atol=1e-8)


def test_empty_store_range_and_missing_file(ten_days, tmp_path):
    db, _ = ten_days
    before = Window("1h", ms(T0 - dt.timedelta(days=30)), ms(T0 - dt.timedelta(days=20)))
    assert window_candles(BTC, before, db=db).height == 0
    assert window_candles(BTC, before, db=tmp_path / "absent.duckdb").height == 0


def test_imported_hours_fill_in_where_no_minutes_were_kept(tmp_path):
    """1h candles imported for days 0-3, 1m candles kept for days 2-5: 1h and 4h charts show
    the whole range, from the minutes where they are complete and from the hours elsewhere."""
    db = tmp_path / "mixed.duckdb"
    minutes = random_klines([BTC], 4 * 1440, start=T0 + dt.timedelta(days=2), seed=5)
    hours = random_klines([BTC], 3 * 24, start=T0, interval_s=3600, interval="1h", seed=6)
    hours = hours.with_columns(pl.col("close") * 3)  # far from the minutes' prices: tells them apart
    w = Writer(db)
    w.add_klines(minutes)
    w.add_klines(hours)
    w.close()
    whole = Window("1h", ms(T0), ms(T0 + dt.timedelta(days=6)))
    got = window_candles(BTC, whole, db=db)
    assert got.height == 6 * 24 and got["open_time"].is_sorted()
    from_minutes = resample(minutes, "1h")
    split = T0 + dt.timedelta(days=2)
    older, newer = got.filter(pl.col("open_time") < split), got.filter(pl.col("open_time") >= split)
    assert older["close"].to_list() == hours.filter(pl.col("open_time") < split)["close"].to_list()
    assert newer["close"].to_list() == from_minutes["close"].to_list()  # minutes win where both exist
    assert got["rsi"].null_count() == 14 and got["interval"].unique().to_list() == ["1h"]

    four = window_candles(BTC, Window("4h", ms(T0), ms(T0 + dt.timedelta(days=2))), db=db)
    want = resample(hours.filter(pl.col("open_time") < split), "4h")
    assert four["open_time"].to_list() == want["open_time"].to_list()
    assert four["close"].to_list() == want["close"].to_list() and four["high"].to_list() == want["high"].to_list()

    # minutes cannot be made from hours: a 1m view of day 0 is empty, not wrong
    assert window_candles(BTC, Window("1m", ms(T0), ms(T0 + dt.timedelta(hours=5))), db=db).height == 0
