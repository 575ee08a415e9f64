"""Shared test helpers: real files in tmp_path, real subprocesses, no mocks."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from market.schema import KLINE_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
# Real Binance recordings, copied into the repository with their licence notice
# (tests/fixtures/README.md) so a bare clone is self-contained.
FIXTURES = ROOT / "tests" / "fixtures"


def random_klines(
    symbols: list[str],
    n: int,
    *,
    start: dt.datetime = dt.datetime(2026, 1, 1),
    interval_s: int = 60,
    seed: int = 0,
    interval: str = "1m",
) -> pl.DataFrame:
    """n consecutive candles per symbol of a geometric random walk, KLINE_SCHEMA."""
    rng = np.random.default_rng(seed)
    frames = []
    for sym in symbols:
        closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
        opens = np.concatenate([[100.0], closes[:-1]])
        spread = np.abs(rng.normal(0, 0.001, n)) * closes
        times = [start + dt.timedelta(seconds=interval_s * i) for i in range(n)]
        vol = rng.uniform(1, 100, n)
        frames.append(
            pl.DataFrame(
                {
                    "symbol": sym,
                    "interval": interval,
                    "open_time": times,
                    "close_time": [t + dt.timedelta(seconds=interval_s, milliseconds=-1) for t in times],
                    "open": opens,
                    "high": np.maximum(opens, closes) + spread,
                    "low": np.minimum(opens, closes) - spread,
                    "close": closes,
                    "volume": vol,
                    "quote_volume": vol * closes,
                    "trades": rng.integers(1, 500, n),
                    "taker_buy_volume": vol / 2,
                    "taker_buy_quote_volume": vol * closes / 2,
                },
                schema_overrides=KLINE_SCHEMA,
            ).select(list(KLINE_SCHEMA))
        )
    return pl.concat(frames)


async def wait_for(cond, timeout: float = 30.0, every: float = 0.01, what: str = "condition") -> None:
    """Poll ``cond()`` until true; fail with ``what`` after ``timeout`` s (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(every)


class Holder:
    """Another process that holds the DuckDB file open read-write until released."""

    def __init__(self, path: Path) -> None:
        code = textwrap.dedent(
            f"""
            import duckdb, sys
            con = duckdb.connect({str(path)!r})
            print("ready", flush=True)
            sys.stdin.readline()
            con.close()
            """
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)


@pytest.fixture
def hold_file() -> Iterator[type[Holder]]:
    holders: list[Holder] = []

    def make(path: Path) -> Holder:
        holders.append(Holder(path))
        return holders[-1]

    yield make
    for h in holders:
        h.release()


def talib_indicators(closes) -> dict[str, object]:
    """The reference for stored indicators: TA-Lib's RSI(14), StochRSI(14, 3, 3) K and D,
    and the README's signal rule applied to those values (first match wins; K and D
    within 1e-9 count as equal, as in market.indicators)."""
    import talib

    closes = np.asarray(closes, dtype=float)
    rsi = talib.RSI(closes, 14)
    # STOCH(rsi, rsi, rsi, 14, 3, SMA, 3, SMA) gives K only from where D starts (2 rows
    # later than K is defined); STOCHF's fast D is the same K from its first row on.
    k = talib.STOCHF(rsi, rsi, rsi, 14, 3, 0)[1]
    d = talib.SMA(k, 3)
    slow_k, slow_d = talib.STOCH(rsi, rsi, rsi, 14, 3, 0, 3, 0)
    ok = ~np.isnan(slow_k)
    np.testing.assert_allclose(k[ok], slow_k[ok], rtol=0, atol=1e-9)
    np.testing.assert_allclose(d[ok], slow_d[ok], rtol=0, atol=1e-9)
    assert np.array_equal(np.isnan(d), np.isnan(slow_d))
    signal: list[str | None] = []
    for i in range(len(closes)):
        s = None
        if i:
            was, now = k[i - 1] - d[i - 1], k[i] - d[i]  # NaN while warming up: no comparison holds
            if was <= 1e-9 and now > 1e-9 and k[i] < 50:
                s = "cross_up"
            elif was >= -1e-9 and now < -1e-9 and k[i] > 50:
                s = "cross_down"
        if s is None and rsi[i] < 30:
            s = "oversold"
        elif s is None and rsi[i] > 70:
            s = "overbought"
        signal.append(s)
    return {"rsi": rsi, "stoch_k": k, "stoch_d": d, "signal": signal}
