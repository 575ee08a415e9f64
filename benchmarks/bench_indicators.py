"""Speed of market.indicators and market.candles on synthetic random walks.

Run: ``.venv/bin/python benchmarks/bench_indicators.py [--symbols 50] [--candles 100000]``.
Prints a markdown table; every number is the best of several runs (wall time),
so a busy machine inflates them less.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import datetime

import numpy as np
import polars as pl
import talib

from market.candles import resample
from market.indicators import WARMUP, add_indicators, tail_indicators
from market.schema import KLINE_SCHEMA

T0 = datetime(2024, 1, 1)


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000.0


def walks(symbols: int, candles: int, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    """Geometric random walks, one per symbol, as a frame sorted by symbol, time."""
    rng = np.random.default_rng(seed)
    closes = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.002, (symbols, candles)), axis=1))
    times = np.datetime64(T0, "us") + np.arange(candles) * np.timedelta64(60, "s")
    frame = pl.DataFrame({
        "symbol": np.repeat([f"S{i:03d}USDT" for i in range(symbols)], candles),
        "open_time": np.tile(times, symbols),
        "close": closes.ravel(),
    })
    return frame, closes


def klines(symbols: int, candles: int, seed: int = 1) -> pl.DataFrame:
    """KLINE_SCHEMA 1m candles, sorted by symbol, open_time."""
    frame, closes = walks(symbols, candles, seed)
    opens = np.concatenate([closes[:, :1], closes[:, :-1]], axis=1).ravel()
    close = closes.ravel()
    volume = np.random.default_rng(seed).uniform(0, 10, close.size)
    return frame.with_columns(
        interval=pl.lit("1m"),
        close_time=pl.col("open_time") + pl.duration(milliseconds=59_999),
        open=opens,
        high=np.maximum(opens, close) * 1.0005,
        low=np.minimum(opens, close) * 0.9995,
        volume=volume,
        quote_volume=volume * close,
        trades=pl.lit(7, dtype=pl.Int64),
        taker_buy_volume=volume / 2,
        taker_buy_quote_volume=volume * close / 2,
    ).select(list(KLINE_SCHEMA))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--candles", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30, help="1m history for resample")
    args = parser.parse_args()
    n_sym, n = args.symbols, args.candles

    frame, closes = walks(n_sym, n)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)

    def talib_all() -> None:
        for series in closes:
            rsi = talib.RSI(series, timeperiod=14)
            talib.STOCH(rsi, rsi, rsi, fastk_period=14, slowk_period=3, slowk_matype=0,
                        slowd_period=3, slowd_matype=0)

    polars_ms = best_ms(lambda: add_indicators(frame), 3)
    talib_ms = best_ms(talib_all, 3)
    shuffled_ms = best_ms(lambda: add_indicators(shuffled), 3)
    lazy = add_indicators(frame.lazy())
    lazy_mem_ms = best_ms(lambda: lazy.collect(engine="in-memory"), 3)
    lazy_stream_ms = best_ms(lambda: lazy.collect(engine="streaming"), 3)

    tail_frame = walks(n_sym, WARMUP + 1, seed=2)[0]
    tail_ms = best_ms(lambda: tail_indicators(tail_frame, 1), 20)

    minutes = klines(n_sym, args.days * 1440)
    resample_ms = best_ms(lambda: resample(minutes, "1h"), 5)
    resample_shuffled_ms = best_ms(
        lambda: resample(minutes.sample(fraction=1.0, shuffle=True, seed=3), "1h"), 3
    )

    rows = [
        (f"add_indicators, {n_sym} x {n:,} sorted (DataFrame)", polars_ms),
        (f"TA-Lib RSI + STOCH looped per symbol, {n_sym} x {n:,} numpy", talib_ms),
        ("  ratio add_indicators / TA-Lib", None),
        (f"add_indicators, {n_sym} x {n:,} shuffled rows", shuffled_ms),
        ("add_indicators(LazyFrame).collect(engine='in-memory')", lazy_mem_ms),
        ("add_indicators(LazyFrame).collect(engine='streaming')", lazy_stream_ms),
        (f"tail_indicators(last_n=1), {n_sym} x {WARMUP + 1} rows", tail_ms),
        (f"resample 1m -> 1h, {n_sym} x {args.days} days ({minutes.height:,} rows)",
         resample_ms),
        ("resample 1m -> 1h, same rows shuffled (incl. shuffle)", resample_shuffled_ms),
    ]
    print("| measurement | best ms |")
    print("|---|---:|")
    for name, ms in rows:
        value = f"{polars_ms / talib_ms:.1f}x" if ms is None else f"{ms:.1f}"
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
