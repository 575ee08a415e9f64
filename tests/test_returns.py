"""market/returns.py: forward returns after RSI conditions, against a plain numpy loop."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from market.indicators import add_indicators
from market.returns import after_rsi, conditions, forward_returns
from tests.conftest import random_klines, talib_indicators


def test_forward_returns_look_ahead_within_each_symbol():
    frame = random_klines(["AAAUSDT", "BBBUSDT"], 50, seed=3).sample(fraction=1.0, shuffle=True, seed=1)
    got = forward_returns(frame, 5)
    for sym, g in got.group_by("symbol"):
        close = g["close"].to_numpy()
        want = np.r_[close[5:] / close[:-5] - 1, [np.nan] * 5]
        np.testing.assert_allclose(g["fwd_return"].fill_null(np.nan).to_numpy(), want, rtol=1e-12)
    with pytest.raises(ValueError, match="horizon"):
        forward_returns(frame, 0)


def test_after_rsi_matches_a_numpy_loop_with_talib_rsi():
    frame = random_klines(["AAAUSDT", "BBBUSDT"], 600, seed=5)
    table = after_rsi(add_indicators(frame), horizon=12, low=40, high=60)
    assert table.columns == ["symbol", "interval", "condition", "events", "mean_pct", "median_pct", "up_share"]
    for sym in ("AAAUSDT", "BBBUSDT"):
        close = frame.filter(pl.col("symbol") == sym).sort("open_time")["close"].to_numpy()
        rsi = talib_indicators(close)["rsi"]
        fwd = np.r_[close[12:] / close[:-12] - 1, [np.nan] * 12]
        known = ~np.isnan(fwd)
        labels = conditions(40, 60)
        assert labels == ("RSI < 40", "RSI > 60", "any candle")
        masks = {labels[0]: known & (rsi < 40), labels[1]: known & (rsi > 60), labels[2]: known}
        rows = table.filter(pl.col("symbol") == sym)
        assert rows["condition"].to_list() == list(labels)
        for row in rows.iter_rows(named=True):
            sel = fwd[masks[row["condition"]]]
            assert row["events"] == sel.size > 0
            assert row["mean_pct"] == pytest.approx(100 * sel.mean(), rel=1e-9)
            assert row["median_pct"] == pytest.approx(100 * np.median(sel), rel=1e-9)
            assert row["up_share"] == pytest.approx((sel > 0).mean())
