"""market.indicators against TA-Lib (RSI, STOCH) and hand-computed cases."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
import talib
from polars.testing import assert_frame_equal, assert_series_equal

from market.indicators import (
    FLAT_RSI_RANGE,
    WARMUP,
    add_indicators,
    add_signal,
    signal_expr,
    tail_indicators,
)

T0 = datetime(2024, 1, 1)
TOL = 1e-9
OUT = ("rsi", "stoch_k", "stoch_d")


def walk(n: int, seed: int, vol: float = 0.002, start: float = 100.0) -> np.ndarray:
    """A geometric random walk of ``n`` closes."""
    rng = np.random.default_rng(seed)
    return start * np.exp(np.cumsum(rng.normal(0.0, vol, n)))


def frame(series: dict[str, np.ndarray], interval: str | None = None) -> pl.DataFrame:
    parts = []
    for symbol, closes in series.items():
        times = [T0 + timedelta(minutes=i) for i in range(len(closes))]
        part = pl.DataFrame(
            {"symbol": symbol, "open_time": times, "close": closes},
            schema={"symbol": pl.String, "open_time": pl.Datetime("us"), "close": pl.Float64},
        )
        if interval is not None:
            part = part.with_columns(interval=pl.lit(interval))
        parts.append(part)
    return pl.concat(parts)


def talib_ref(closes: np.ndarray, p: int = 14, s: int = 14, k: int = 3, d: int = 3):
    rsi = talib.RSI(closes, timeperiod=p)
    slow_k, slow_d = talib.STOCH(
        rsi, rsi, rsi, fastk_period=s, slowk_period=k, slowk_matype=0,
        slowd_period=d, slowd_matype=0,
    )
    return {"rsi": rsi, "stoch_k": slow_k, "stoch_d": slow_d}


def assert_no_nan_inf(out: pl.DataFrame) -> None:
    for col in OUT:
        assert out.schema[col] == pl.Float64
        bad = out.select((pl.col(col).is_nan() | pl.col(col).is_infinite()).sum()).item()
        assert bad == 0, f"{col} holds NaN or inf"


def assert_matches_talib(out: pl.DataFrame, closes: np.ndarray, flat_ok: bool = False) -> None:
    """``out``: one group's rows in time order. TA-Lib NaN <=> our null, except
    that flat StochRSI windows are null for us (0 for TA-Lib) when ``flat_ok``."""
    ref = talib_ref(closes)
    p = 14
    rsi = out["rsi"].to_numpy()
    assert out["rsi"][:p].null_count() == min(p, len(closes))
    assert np.array_equal(np.isnan(rsi), np.isnan(ref["rsi"]))
    if len(closes) > p:
        assert np.max(np.abs(rsi[p:] - ref["rsi"][p:])) <= TOL
    for col in ("stoch_k", "stoch_d"):
        ours, theirs = out[col].to_numpy(), ref[col]
        both = ~np.isnan(ours) & ~np.isnan(theirs)
        if both.any():
            assert np.max(np.abs(ours[both] - theirs[both])) <= TOL, col
        if not flat_ok:
            # TA-Lib starts K where D starts; ours starts k_period - 1 rows earlier.
            assert not np.any(np.isnan(ours) & ~np.isnan(theirs)), col
    # Our documented warm-up: K from row 29, D from row 31 (default periods).
    if not flat_ok and len(closes) > 31:
        assert out["stoch_k"][:29].null_count() == 29 and out["stoch_k"][29] is not None
        assert out["stoch_d"][:31].null_count() == 31 and out["stoch_d"][31] is not None


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("vol", [0.0005, 0.01, 0.08])
def test_random_walks_match_talib(seed: int, vol: float) -> None:
    closes = walk(3000, seed, vol)
    out = add_indicators(frame({"BTCUSDT": closes}))
    assert_no_nan_inf(out)
    assert_matches_talib(out, closes)


def test_tiny_prices_match_talib() -> None:
    closes = walk(500, 7, 0.01, start=1e-7)
    out = add_indicators(frame({"PEPEUSDT": closes}))
    assert_matches_talib(out, closes)


def flat_series() -> np.ndarray:
    """Flat start (avg gain = avg loss = 0), a pure rise then flat (avg loss 0),
    a pure fall then flat, and flat stretches inside a walk."""
    rng = np.random.default_rng(11)
    return np.concatenate([
        np.full(40, 50.0),                        # flat start: RSI 0 as TA-Lib
        50.0 + np.arange(1, 31),                  # only gains: RSI 100
        np.full(35, 80.0),                        # ... then flat
        80.0 - np.arange(1, 21) * 0.5,            # only losses: RSI 0
        np.full(60, 70.0),
        70.0 * np.exp(np.cumsum(rng.normal(0, 0.01, 200))),
        np.full(100, 72.5),
        72.5 * np.exp(np.cumsum(rng.normal(0, 0.01, 200))),
        np.full(30, 71.0),
        71.0 + np.cumsum(rng.normal(0, 0.3, 100)),
    ])


def test_flat_stretches_match_talib() -> None:
    closes = flat_series()
    out = add_indicators(frame({"ETHUSDT": closes}))
    assert_no_nan_inf(out)
    assert_matches_talib(out, closes, flat_ok=True)
    rsi = out["rsi"].to_numpy()
    assert np.all(rsi[14:40] == 0.0)  # both averages 0, as TA-Lib says
    assert np.all(rsi[55:70] == 100.0)  # avg loss 0
    # Flat RSI windows: null StochRSI, where TA-Lib reports ~0.
    ref = talib_ref(closes)
    rsi_ref = ref["rsi"]
    windows = np.lib.stride_tricks.sliding_window_view(rsi_ref, 14)
    flat = np.r_[np.full(13, False), np.max(windows, 1) - np.min(windows, 1) <= FLAT_RSI_RANGE]
    k = out["stoch_k"].to_numpy()
    flat_k = np.convolve(flat, np.ones(3), "full")[: len(flat)] > 0
    assert flat.sum() > 100
    assert np.all(np.isnan(k[flat_k]))
    assert np.all(~np.isnan(k[~flat_k & ~np.isnan(ref["stoch_k"])]))


@pytest.mark.parametrize("n", [0, 1, 2, 13, 14, 15, 16, 27, 28, 29, 30, 31, 32])
def test_short_series(n: int) -> None:
    closes = walk(n, 5)
    out = add_indicators(frame({"BTCUSDT": closes}))
    assert out.height == n
    assert_no_nan_inf(out)
    if n:
        assert_matches_talib(out, closes)
    assert out["rsi"].null_count() == min(n, 14)
    assert out["stoch_k"].null_count() == min(n, 29)
    assert out["stoch_d"].null_count() == min(n, 31)


def test_hand_computed_period_2() -> None:
    # changes +1, -1, +1, 0: seed (row 2) gain 0.5 loss 0.5 -> 50;
    # row 3: gain (0.5 + 1) / 2 = 0.75, loss 0.25 -> 75;
    # row 4: gain 0.375, loss 0.125 -> 75.
    small = pl.DataFrame({
        "symbol": ["X"] * 5,
        "open_time": [T0 + timedelta(minutes=i) for i in range(5)],
        "close": [1.0, 2.0, 1.0, 2.0, 2.0],
    })
    out = add_indicators(small, rsi_period=2, stoch_period=2, k_period=1, d_period=1)
    expected = small.with_columns(
        rsi=pl.Series([None, None, 50.0, 75.0, 75.0], dtype=pl.Float64),
        # stoch over 2 RSI values: row 3 (75 in [50, 75]) -> 100; row 4 flat -> null
        stoch_k=pl.Series([None, None, None, 100.0, None], dtype=pl.Float64),
        stoch_d=pl.Series([None, None, None, 100.0, None], dtype=pl.Float64),
    )
    assert_frame_equal(out, expected)
    ref = talib.RSI(small["close"].to_numpy(), timeperiod=2)
    np.testing.assert_allclose(out["rsi"].to_numpy()[2:], ref[2:], atol=TOL)


def test_symbols_intervals_shuffled_and_lazy() -> None:
    series = {f"S{i}USDT": walk(700 + 37 * i, 20 + i, 0.003 * (i + 1)) for i in range(4)}
    ones = frame(series, "1m")
    # Same symbols, other data, under another interval: computed separately.
    fives = frame({s: walk(300, 90 + j) for j, s in enumerate(series)}, "5m")
    shuffled = pl.concat([ones, fives]).sample(fraction=1.0, shuffle=True, seed=4)
    out = add_indicators(shuffled)
    assert_no_nan_inf(out)
    assert out.columns == [*shuffled.columns, *OUT]
    assert out.height == shuffled.height
    assert_frame_equal(out.select("symbol", "interval", "open_time"),
                       shuffled.select("symbol", "interval", "open_time").sort(
                           "symbol", "interval", "open_time"))
    for (symbol, interval), group in out.group_by("symbol", "interval"):
        source = ones if interval == "1m" else fives
        closes = source.filter(pl.col("symbol") == symbol)["close"].to_numpy()
        assert_matches_talib(group.sort("open_time"), closes)

    lazy = add_indicators(shuffled.lazy())
    assert isinstance(lazy, pl.LazyFrame)
    assert_frame_equal(lazy.collect(), out, abs_tol=1e-11)

    # Without an interval column, the groups are per symbol only.
    no_interval = add_indicators(ones.drop("interval").sample(fraction=1.0, shuffle=True, seed=5))
    assert no_interval.columns == ["symbol", "open_time", "close", *OUT]
    assert_frame_equal(no_interval, out.filter(pl.col("interval") == "1m").drop("interval"),
                       abs_tol=1e-11)


def test_replaces_existing_columns_and_nan_close() -> None:
    closes = walk(200, 8)
    closes[100] = np.nan
    base = frame({"BTCUSDT": closes}).with_columns(rsi=pl.lit(1.0), stoch_k=pl.lit(2.0))
    out = add_indicators(base)
    assert out.columns == ["symbol", "open_time", "close", "rsi", "stoch_k", "stoch_d"]
    assert_no_nan_inf(out)
    # The missing close and the change after it are skipped.
    assert out["rsi"][100] is None and out["rsi"][101] is None
    assert out["rsi"][102] is not None


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="close"):
        add_indicators(pl.DataFrame({"symbol": ["X"], "open_time": [T0]}))
    with pytest.raises(ValueError, match="rsi_period"):
        add_indicators(frame({"X": walk(20, 1)}), rsi_period=0)


# ---- signal ------------------------------------------------------------------


def signal_frame(rows: list[tuple], interval: str | None = None) -> pl.DataFrame:
    out = pl.DataFrame(
        rows,
        schema={"symbol": pl.String, "minute": pl.Int64, "rsi": pl.Float64,
                "stoch_k": pl.Float64, "stoch_d": pl.Float64},
        orient="row",
    ).with_columns(open_time=pl.lit(T0) + pl.duration(minutes=pl.col("minute")))
    if interval:
        out = out.with_columns(interval=pl.lit(interval))
    return out.drop("minute")


SIGNAL_ROWS = [
    # symbol, minute, rsi, K, D        -> expected
    ("A", 0, 25.0, 10.0, 20.0),   # oversold (no previous row: no cross)
    ("A", 1, 25.0, 25.0, 20.0),   # cross_up beats oversold (K 25 < 50)
    ("A", 2, 50.0, 30.0, 20.0),   # nothing
    ("A", 3, 75.0, 60.0, 70.0),   # cross_down (K 60 > 50) beats overbought
    ("A", 4, 75.0, 80.0, 70.0),   # K over D but K > 50: overbought
    ("A", 5, 60.0, 65.0, 70.0),   # cross_down
    ("A", 6, None, 40.0, 40.0),   # K == D: no cross; no RSI: null
    ("A", 7, 45.0, 45.0, 42.0),   # prev K <= prev D (equal) and K > D: cross_up
    ("A", 8, 45.0, None, None),   # no K: null
    ("A", 9, 45.0, 30.0, 40.0),   # previous K null: no cross
    ("B", 0, 50.0, 30.0, 20.0),   # would cross vs A's last row: per symbol, no
    ("B", 1, 71.0, 30.0, 20.0),   # overbought
    ("B", 2, 29.0, 10.0, 20.0),   # K under D but K < 50: oversold
]
SIGNAL_EXPECTED = {
    ("A", 0): "oversold", ("A", 1): "cross_up", ("A", 2): None, ("A", 3): "cross_down",
    ("A", 4): "overbought", ("A", 5): "cross_down", ("A", 6): None, ("A", 7): "cross_up",
    ("A", 8): None, ("A", 9): None, ("B", 0): None, ("B", 1): "overbought",
    ("B", 2): "oversold",
}


def expected_signals(rows) -> list[str | None]:
    return [SIGNAL_EXPECTED[(r[0], r[1])] for r in rows]


def test_signal_labels() -> None:
    # B's rows first and A's shuffled: add_signal orders them.
    rows = SIGNAL_ROWS[10:] + SIGNAL_ROWS[5:10] + SIGNAL_ROWS[:5]
    out = add_signal(signal_frame(rows))
    assert out["symbol"].to_list() == ["A"] * 10 + ["B"] * 3
    assert_series_equal(
        out["signal"], pl.Series("signal", expected_signals(SIGNAL_ROWS), dtype=pl.String)
    )
    lazy = add_signal(signal_frame(rows).lazy())
    assert isinstance(lazy, pl.LazyFrame)
    assert_frame_equal(lazy.collect(), out)


def test_signal_per_interval_and_thresholds() -> None:
    one = signal_frame(SIGNAL_ROWS, "1m")
    # The same rows shifted by one under 5m: A's first 5m row follows a 1m row.
    five = signal_frame(SIGNAL_ROWS, "5m")
    out = add_signal(pl.concat([five, one]))
    got = out.filter(pl.col("interval") == "5m")["signal"].to_list()
    assert got == expected_signals(SIGNAL_ROWS)

    # rsi 50 is oversold below 55; the cross at K 45 is above mid (10 + 50) / 2 = 30.
    tiny = signal_frame([("A", 0, 50.0, 40.0, 45.0), ("A", 1, 50.0, 45.0, 42.0)])
    labels = add_signal(tiny, rsi_low=55.0, stoch_low=10.0, stoch_high=50.0)
    assert labels["signal"].to_list() == ["oversold", "oversold"]
    assert add_signal(tiny)["signal"].to_list() == [None, "cross_up"]
    # signal_expr alone, with its by= groups.
    assert tiny.with_columns(signal_expr(by=["symbol"]))["signal"].to_list() == [None, "cross_up"]


def test_rounding_noise_is_not_a_cross() -> None:
    # StochRSI pinned at 0: K and D equal up to 1e-14 either way, then K really rises.
    rows = [("A", 0, 25.0, 0.0, 1e-14), ("A", 1, 25.0, 1e-14, 0.0), ("A", 2, 25.0, 0.0, 2e-14),
            ("A", 3, 25.0, 10.0, 3.0)]
    assert add_signal(signal_frame(rows))["signal"].to_list() == ["oversold", "oversold", "oversold", "cross_up"]


def test_signal_needs_indicators() -> None:
    with pytest.raises(ValueError, match="rsi"):
        add_signal(frame({"X": walk(5, 1)}))


def test_signal_after_add_indicators() -> None:
    out = add_signal(add_indicators(frame({"X": walk(3000, 3, 0.01), "Y": walk(3000, 4)})))
    counts = dict(out["signal"].value_counts().iter_rows())
    assert set(counts) == {None, "cross_up", "cross_down", "oversold", "overbought"}
    assert out.filter(pl.col("rsi").is_null())["signal"].null_count() == 28


# ---- tail recompute -------------------------------------------------------------


def test_tail_matches_full_history() -> None:
    series = {f"S{i}": walk(5000, 40 + i, 0.002 * (i + 1)) for i in range(3)}
    base = frame(series, "1m")
    full = add_signal(add_indicators(base))
    shuffled = base.sample(fraction=1.0, shuffle=True, seed=9)
    for last_n in (1, 40):
        tail = tail_indicators(shuffled, last_n)
        expected = full.group_by("symbol", "interval", maintain_order=True).tail(last_n)
        expected = expected.select(full.columns)
        assert tail.columns == full.columns
        assert tail.height == 3 * last_n
        assert_frame_equal(tail.drop(*OUT), expected.drop(*OUT))
        for col in OUT:
            diff = (tail[col] - expected[col]).abs().max()
            assert diff is not None and diff <= TOL, col
    lazy_tail = tail_indicators(shuffled.lazy(), 5)
    assert_frame_equal(lazy_tail, tail_indicators(base, 5))


def test_tail_short_history_is_exact() -> None:
    base = frame({"A": walk(100, 1), "B": walk(WARMUP + 3, 2)})
    full = add_indicators(base)
    tail = tail_indicators(base, 2)
    expected = full.group_by("symbol", maintain_order=True).tail(2)
    assert_frame_equal(tail.drop("signal"), expected.select(full.columns), abs_tol=1e-12)
    with pytest.raises(ValueError):
        tail_indicators(base, 0)
