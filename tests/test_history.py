"""store/history.py: the typed reads the pipeline, dashboard and notebooks share."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import store
from market.indicators import add_indicators, add_signal
from store import history
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
