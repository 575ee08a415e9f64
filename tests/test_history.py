"""store/history.py: the typed reads the pipeline, dashboard and notebooks share."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import store
from market.indicators import add_indicators, add_signal
from store import history, ranges
from tests.conftest import random_klines, talib_indicators

KEY = ["symbol", "interval", "open_time"]


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "m.duckdb"
    data = random_klines(["BTCUSDT", "ETHUSDT"], 100)
    # two holes in ETHUSDT: minutes 10-12 and 50
    holes = pl.col("open_time").is_in([dt.datetime(2026, 1, 1, 0, m) for m in (10, 11, 12, 50)])
    data = data.filter(~((pl.col("symbol") == "ETHUSDT") & holes))
    w = store.Writer(path)
    w.add_klines(data)
    w.add_indicators(add_signal(add_indicators(data)).select(list(store.writer.TABLES["indicators"])))
    w.flush()
    return path, data


def test_recent_klines_takes_the_newest_per_symbol(db):
    path, data = db
    got = history.recent_klines(["BTCUSDT", "ETHUSDT", "NOPE"], "1m", 5, db=path)
    assert got.height == 10
    expected = data.sort(KEY).group_by("symbol", maintain_order=True).tail(5)
    assert_frame_equal(got, expected)


def test_recent_klines_on_a_missing_file_is_empty(tmp_path):
    assert history.recent_klines(["BTCUSDT"], "1m", 5, db=tmp_path / "none.duckdb").height == 0


def test_klines_range_is_half_open(db):
    path, data = db
    got = history.klines("BTCUSDT", "1m", dt.datetime(2026, 1, 1, 0, 10), dt.datetime(2026, 1, 1, 0, 20), db=path)
    assert got["open_time"].to_list() == [dt.datetime(2026, 1, 1, 0, m) for m in range(10, 20)]
    assert history.klines("BTCUSDT", db=path).height == 100


def test_with_indicators_joins_and_limits(db):
    path, data = db
    got = history.with_indicators("BTCUSDT", db=path, limit=30)
    assert got.height == 30 and got["open_time"].is_sorted()
    btc = data.filter(pl.col("symbol") == "BTCUSDT").sort("open_time")
    assert_frame_equal(got.select(data.columns), btc.tail(30))  # the candles the indicators belong to
    ref = talib_indicators(btc["close"].to_numpy())  # the reference, not the code that filled the table
    for name in ("rsi", "stoch_k", "stoch_d"):
        np.testing.assert_allclose(got[name].to_numpy(), ref[name][-30:], rtol=0, atol=1e-9)
    assert got["signal"].to_list() == ref["signal"][-30:]


def test_coverage_and_gaps_find_the_holes(db):
    path, _ = db
    cov = history.coverage(db=path)
    assert cov.select("symbol", "candles", "missing").rows() == [("BTCUSDT", 100, 0), ("ETHUSDT", 96, 4)]
    gaps = history.gaps(db=path)
    assert gaps.select("symbol", "gap_start", "missing").rows() == [
        ("ETHUSDT", dt.datetime(2026, 1, 1, 0, 10), 3),
        ("ETHUSDT", dt.datetime(2026, 1, 1, 0, 50), 1),
    ]
    assert history.gaps(db=path, symbol="BTCUSDT").height == 0


# -- long-history paths (zone-map tails, two-pass gaps, at_exchange) --------------------

MIN = dt.timedelta(minutes=1)
T0 = dt.datetime(2026, 1, 1)


def _naive_gaps(data: pl.DataFrame) -> list[tuple]:
    """Gaps computed the obvious way, in polars: consecutive stored candles more than a minute apart."""
    ordered = data.sort("symbol", "open_time").with_columns(nxt=pl.col("open_time").shift(-1).over("symbol"))
    found = ordered.filter(pl.col("nxt") - pl.col("open_time") > pl.duration(minutes=1))
    return [(s, t + MIN, n, (n - t) // MIN - 1) for s, t, n in found.select("symbol", "open_time", "nxt").iter_rows()]


def test_recent_klines_reaches_past_holes_near_the_end(db):
    path, data = db  # ETHUSDT lacks minutes 10-12 and 50 of 100
    got = history.recent_klines(["ETHUSDT", "BTCUSDT"], "1m", 60, db=path)
    expected = data.sort(KEY).group_by("symbol", maintain_order=True).tail(60)
    assert_frame_equal(got, expected)
    assert got.filter(pl.col("symbol") == "ETHUSDT")["open_time"].min() == T0 + 39 * MIN
    # more than stored: everything, once
    assert history.recent_klines(["ETHUSDT"], "1m", 1000, db=path).height == 96
    assert history.recent_klines(["ETHUSDT", "ETHUSDT"], "1m", 3, db=path).height == 3


def test_with_indicators_limit_past_holes_matches_the_join(db):
    path, _ = db
    full = history.with_indicators("ETHUSDT", db=path)
    assert full.height == 96 and full["rsi"].null_count() == 14
    got = history.with_indicators("ETHUSDT", db=path, limit=60)
    assert_frame_equal(got, full.tail(60))
    assert history.with_indicators("ETHUSDT", db=path, limit=0).height == 0
    assert history.with_indicators("NOPE", db=path, limit=5).height == 0


@pytest.fixture
def long_db(tmp_path, monkeypatch):
    """Three days of two symbols with holes inside, across and over whole blocks of 60 minutes."""
    monkeypatch.setattr(ranges, "_BLOCK", 60)  # the hole finder gaps() uses
    data = random_klines(["AAAUSDT", "BBBUSDT"], 3 * 1440)
    minute = (pl.col("open_time") - T0).dt.total_minutes()
    holes = {
        "AAAUSDT": [*range(5, 8), *range(59, 61), *range(119, 300), 1439, 1440, *range(2000, 2100)],
        "BBBUSDT": [0, 1, 600, *range(660, 720), 4319],
    }
    cut = pl.lit(False)
    for sym, ms in holes.items():
        cut = cut | ((pl.col("symbol") == sym) & minute.is_in(ms))
    kept = data.filter(~cut)
    path = tmp_path / "long.duckdb"
    w = store.Writer(path)
    w.add_klines(kept)
    w.flush()
    return path, kept


def test_gaps_two_pass_agrees_with_a_naive_diff(long_db, monkeypatch):
    path, kept = long_db
    expected = _naive_gaps(kept)
    got = history.gaps(db=path)
    assert got.columns == ["symbol", "gap_start", "gap_end", "missing", "at_exchange"]
    assert got.select("symbol", "gap_start", "gap_end", "missing").rows() == expected
    assert got["at_exchange"].to_list() == [False] * len(expected)
    assert ("AAAUSDT", T0 + 119 * MIN, T0 + 300 * MIN, 181) in expected  # spans whole blocks
    # the one-join fallback for stores with many candidate runs gives the same answer
    monkeypatch.setattr(ranges, "_MAX_RANGES", 0)
    assert history.gaps(db=path).rows() == got.rows()
    assert history.gaps(db=path, symbol="BBBUSDT").rows() == got.filter(pl.col("symbol") == "BBBUSDT").rows()


def test_gaps_at_exchange_needs_the_whole_gap_confirmed(long_db):
    from store.ranges import record_empty

    path, _ = long_db

    def ms(minute: int) -> int:
        return int((T0 + minute * MIN).replace(tzinfo=dt.UTC).timestamp() * 1000)

    record_empty(
        [
            ("AAAUSDT", "1m", ms(5), ms(8)),  # exactly the 3-minute gap
            ("AAAUSDT", "1m", ms(119), ms(200)),  # two touching ranges cover 119..299
            ("AAAUSDT", "1m", ms(200), ms(300)),
            ("AAAUSDT", "1m", ms(2000), ms(2050)),  # only half of 2000..2099
            ("BBBUSDT", "5m", ms(600), ms(605)),  # another interval: not ours
            ("BBBUSDT", "1m", ms(0), ms(10_000)),  # but not AAAUSDT's
        ],
        db=path,
    )
    got = {(s, start): flag for s, start, flag in history.gaps(db=path).select("symbol", "gap_start", "at_exchange").iter_rows()}
    assert got[("AAAUSDT", T0 + 5 * MIN)] is True
    assert got[("AAAUSDT", T0 + 119 * MIN)] is True
    assert got[("AAAUSDT", T0 + 2000 * MIN)] is False
    assert got[("AAAUSDT", T0 + 59 * MIN)] is False
    assert all(flag for (s, _), flag in got.items() if s == "BBBUSDT")


def test_gaps_on_a_store_without_holes_or_rows(tmp_path):
    path = tmp_path / "e.duckdb"
    store.prepare(path)
    assert history.gaps(db=path).height == 0
    w = store.Writer(path)
    w.add_klines(random_klines(["AAAUSDT"], 50))
    w.flush()
    assert history.gaps(db=path).height == 0


def test_candles_equal_polars_resample_and_limit_takes_the_newest(long_db):
    from market.candles import resample

    path, kept = long_db
    a = kept.filter(pl.col("symbol") == "AAAUSDT")
    for interval in ("15m", "1h", "4h", "1d"):
        got = history.candles("AAAUSDT", interval, db=path)
        assert_frame_equal(got, resample(a, interval), check_exact=False, rel_tol=1e-12)
    start, end = T0 + 100 * MIN, T0 + 2200 * MIN  # aligned to whole hours: 01:00 .. 37:00
    ranged = history.candles("AAAUSDT", "1h", start, end, db=path)
    ref = resample(a.filter(pl.col("open_time").is_between(T0 + 60 * MIN, T0 + 2220 * MIN, closed="left")), "1h")
    assert_frame_equal(ranged, ref, check_exact=False, rel_tol=1e-12)
    full = history.candles("AAAUSDT", "1h", db=path)
    assert_frame_equal(history.candles("AAAUSDT", "1h", None, None, 5, db=path), full.tail(5))
    # hours 2-4 are empty (minutes 119-299 missing), inside the newest 35 spans: the whole range is read
    assert_frame_equal(history.candles("AAAUSDT", "1h", None, end, 35, db=path),
                       full.filter(pl.col("open_time") < end).tail(35))
    assert history.candles("AAAUSDT", "1h", None, None, 10_000, db=path).height == full.height
    assert history.candles("NOPE", "1h", None, None, 5, db=path).height == 0


def test_candles_use_stored_coarser_candles_where_no_1m_is_kept(tmp_path):
    path = tmp_path / "mixed.duckdb"
    hourly = random_klines(["AAAUSDT"], 48, interval_s=3600, interval="1h", seed=3)
    minutes = random_klines(["AAAUSDT"], 24 * 60, start=T0 + dt.timedelta(hours=24), seed=4)
    w = store.Writer(path)
    w.add_klines(pl.concat([hourly, minutes]))
    w.flush()
    got = history.candles("AAAUSDT", "1h", db=path)
    assert got.height == 48
    assert_frame_equal(got.head(24), hourly.head(24))  # no 1m there: the stored hours
    assert got["open"][24] == minutes["open"][0] and got["close"][24] == minutes["close"][59]


def test_candles_many_equals_candles_per_symbol(long_db):
    path, _ = long_db
    every = history.candles_many("4h", db=path)
    assert every["symbol"].unique().sort().to_list() == ["AAAUSDT", "BBBUSDT"]
    for sym in ("AAAUSDT", "BBBUSDT"):
        assert_frame_equal(every.filter(pl.col("symbol") == sym), history.candles(sym, "4h", db=path))
    some = history.candles_many("1h", ["BBBUSDT"], T0 + 600 * MIN, T0 + 1200 * MIN, db=path)
    assert_frame_equal(some, history.candles("BBBUSDT", "1h", T0 + 600 * MIN, T0 + 1200 * MIN, db=path))
