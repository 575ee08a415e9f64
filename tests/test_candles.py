"""market.candles.resample: hand-computed cases and a pure-Python reference."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from market.candles import resample, source_count
from market.schema import KLINE_SCHEMA, empty, interval_ms

MS = timedelta(milliseconds=1)


def kline(symbol: str, open_time: datetime, o: float, h: float, lo: float, c: float,
          v: float, trades: int, interval: str = "1m") -> dict:
    length = timedelta(milliseconds=interval_ms(interval))
    return {
        "symbol": symbol, "interval": interval, "open_time": open_time,
        "close_time": open_time + length - MS, "open": o, "high": h, "low": lo,
        "close": c, "volume": v, "quote_volume": v * 10, "trades": trades,
        "taker_buy_volume": v / 2, "taker_buy_quote_volume": v * 5,
    }


def klines(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=KLINE_SCHEMA)


def test_hand_computed_5m_two_symbols() -> None:
    t = datetime(2024, 5, 1, 0, 3)
    minute = timedelta(minutes=1)
    rows = [
        # BTC 00:03-00:09: buckets 00:00 (03, 04) and 00:05 (05..09)
        kline("BTCUSDT", t + 0 * minute, 10, 12, 9, 11, 1.0, 3),
        kline("BTCUSDT", t + 1 * minute, 11, 13, 10, 12, 2.0, 4),
        kline("BTCUSDT", t + 2 * minute, 12, 15, 11, 14, 3.0, 5),
        kline("BTCUSDT", t + 3 * minute, 14, 14, 8, 9, 4.0, 6),
        kline("BTCUSDT", t + 4 * minute, 9, 10, 7, 10, 5.0, 7),
        kline("BTCUSDT", t + 5 * minute, 10, 11, 9, 10.5, 6.0, 8),
        kline("BTCUSDT", t + 6 * minute, 10.5, 16, 10, 15, 7.0, 9),
        # ETH 00:04-00:05: buckets 00:00 (04) and 00:05 (05)
        kline("ETHUSDT", t + 1 * minute, 100, 101, 99, 100.5, 0.5, 1),
        kline("ETHUSDT", t + 2 * minute, 100.5, 102, 100, 101, 1.5, 2),
    ]
    shuffled = klines(rows).sample(fraction=1.0, shuffle=True, seed=3)
    out = resample(shuffled, "5m")
    b0, b1 = datetime(2024, 5, 1, 0, 0), datetime(2024, 5, 1, 0, 5)
    expected = klines([
        {"symbol": "BTCUSDT", "interval": "5m", "open_time": b0,
         "close_time": datetime(2024, 5, 1, 0, 4, 59, 999000), "open": 10, "high": 13,
         "low": 9, "close": 12, "volume": 3.0, "quote_volume": 30.0, "trades": 7,
         "taker_buy_volume": 1.5, "taker_buy_quote_volume": 15.0},
        {"symbol": "BTCUSDT", "interval": "5m", "open_time": b1,
         "close_time": datetime(2024, 5, 1, 0, 9, 59, 999000), "open": 12, "high": 16,
         "low": 7, "close": 15, "volume": 25.0, "quote_volume": 250.0, "trades": 35,
         "taker_buy_volume": 12.5, "taker_buy_quote_volume": 125.0},
        {"symbol": "ETHUSDT", "interval": "5m", "open_time": b0,
         "close_time": datetime(2024, 5, 1, 0, 4, 59, 999000), "open": 100, "high": 101,
         "low": 99, "close": 100.5, "volume": 0.5, "quote_volume": 5.0, "trades": 1,
         "taker_buy_volume": 0.25, "taker_buy_quote_volume": 2.5},
        {"symbol": "ETHUSDT", "interval": "5m", "open_time": b1,
         "close_time": datetime(2024, 5, 1, 0, 9, 59, 999000), "open": 100.5, "high": 102,
         "low": 100, "close": 101, "volume": 1.5, "quote_volume": 15.0, "trades": 2,
         "taker_buy_volume": 0.75, "taker_buy_quote_volume": 7.5},
    ])
    assert_frame_equal(out, expected)


def minutes(symbol: str, start: datetime, count: int, interval: str = "1m") -> pl.DataFrame:
    step = timedelta(milliseconds=interval_ms(interval))
    return klines([
        kline(symbol, start + i * step, 100 + i, 101 + i, 99 + i, 100.5 + i, 1.0, 1, interval)
        for i in range(count)
    ])


@pytest.mark.parametrize(
    ("target", "starts"),
    [
        ("1h", [datetime(2024, 3, 9, 22), datetime(2024, 3, 9, 23), datetime(2024, 3, 10, 0),
                datetime(2024, 3, 10, 1)]),
        ("4h", [datetime(2024, 3, 9, 20), datetime(2024, 3, 10, 0)]),
        ("1d", [datetime(2024, 3, 9), datetime(2024, 3, 10)]),
    ],
)
def test_utc_alignment_across_midnight(target: str, starts: list[datetime]) -> None:
    # 22:30 to 01:59 UTC; US DST starts that night, which UTC ignores.
    src = minutes("BTCUSDT", datetime(2024, 3, 9, 22, 30), 210)
    out = resample(src, target)
    assert out["open_time"].to_list() == starts
    length = timedelta(milliseconds=interval_ms(target))
    assert out["close_time"].to_list() == [s + length - MS for s in starts]
    assert out["volume"].sum() == 210.0
    assert out["interval"].to_list() == [target] * len(starts)
    # First bucket opens with the 22:30 candle; the last closes with 01:59's.
    assert out["open"][0] == 100.0 and out["close"][-1] == 100.5 + 209


def test_partial_last_bucket() -> None:
    src = minutes("BTCUSDT", datetime(2024, 1, 1, 0, 0), 8)  # 00:00 .. 00:07
    out = resample(src, "5m")
    assert out.height == 2
    last = out.row(1, named=True)
    assert last["open_time"] == datetime(2024, 1, 1, 0, 5)
    assert last["close_time"] == datetime(2024, 1, 1, 0, 9, 59, 999000)
    assert (last["open"], last["high"], last["low"], last["close"]) == (105, 108, 104, 107.5)
    assert (last["volume"], last["trades"]) == (3.0, 3)


def test_coarser_source_and_lazy_input() -> None:
    src = minutes("ETHUSDT", datetime(2024, 1, 1, 0, 0), 10, "3m")  # 00:00 .. 00:27
    out = resample(src.lazy(), "15m")
    assert out["open_time"].to_list() == [datetime(2024, 1, 1, 0, 0), datetime(2024, 1, 1, 0, 15)]
    assert out["volume"].to_list() == [5.0, 5.0]
    assert source_count("3m", "15m") == 5 and source_count("1m", "1d") == 1440


def test_same_interval_returns_sorted_input() -> None:
    src = pl.concat([minutes("ETHUSDT", datetime(2024, 1, 1), 5),
                     minutes("BTCUSDT", datetime(2024, 1, 1), 5)])
    out = resample(src.reverse(), "1m")
    assert_frame_equal(out, src.sort("symbol", "open_time"))


def test_refusals() -> None:
    src = minutes("BTCUSDT", datetime(2024, 1, 1), 10, "5m")
    with pytest.raises(ValueError, match="multiple"):
        resample(src, "3m")  # finer
    with pytest.raises(ValueError, match="multiple"):
        resample(minutes("BTCUSDT", datetime(2024, 1, 1), 10, "3m"), "5m")  # not a multiple
    with pytest.raises(ValueError, match="unknown interval"):
        resample(src, "7m")
    with pytest.raises(ValueError, match="one interval"):
        resample(pl.concat([src, minutes("BTCUSDT", datetime(2024, 2, 1), 3)]), "1h")
    with pytest.raises(ValueError, match="missing columns"):
        resample(src.drop("trades"), "1h")


def test_empty_input() -> None:
    out = resample(empty(KLINE_SCHEMA), "1h")
    assert out.is_empty() and out.schema == pl.Schema(KLINE_SCHEMA)


def reference(rows: list[dict], target: str) -> list[dict]:
    """Straightforward per-bucket aggregation in pure Python."""
    step = interval_ms(target)
    epoch = datetime(1970, 1, 1)
    buckets: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        ms = (row["open_time"] - epoch) // MS
        buckets.setdefault((row["symbol"], ms - ms % step), []).append(row)
    out = []
    for (symbol, start_ms), members in sorted(buckets.items()):
        members.sort(key=lambda r: r["open_time"])
        start = epoch + start_ms * MS
        out.append({
            "symbol": symbol, "interval": target, "open_time": start,
            "close_time": start + (step - 1) * MS, "open": members[0]["open"],
            "high": max(r["high"] for r in members), "low": min(r["low"] for r in members),
            "close": members[-1]["close"],
            **{c: sum(r[c] for r in members) for c in
               ("volume", "quote_volume", "trades", "taker_buy_volume", "taker_buy_quote_volume")},
        })
    return out


@pytest.mark.parametrize("target", ["3m", "5m", "15m", "30m", "1h", "2h", "4h", "1d"])
def test_random_case_matches_reference(target: str) -> None:
    rng = random.Random(7)
    rows = []
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        price = rng.uniform(10, 1000)
        t = datetime(2024, 2, 27, 17, rng.randrange(60))
        for _ in range(3 * 1440):
            t += timedelta(minutes=1)
            if rng.random() < 0.1:  # a minute without a candle
                continue
            close = price * (1 + rng.gauss(0, 0.002))
            volume = rng.uniform(0, 50)
            rows.append({
                "symbol": symbol, "interval": "1m", "open_time": t,
                "close_time": t + timedelta(minutes=1) - MS, "open": price,
                "high": max(price, close) * (1 + rng.uniform(0, 1e-3)),
                "low": min(price, close) * (1 - rng.uniform(0, 1e-3)), "close": close,
                "volume": volume, "quote_volume": volume * close,
                "trades": rng.randrange(500), "taker_buy_volume": volume * rng.random(),
                "taker_buy_quote_volume": volume * close * rng.random(),
            })
            price = close
    rng.shuffle(rows)
    out = resample(klines(rows), target)
    expected = klines(reference(rows, target))
    # Float sums may add in another order: compare them with a relative tolerance.
    assert_frame_equal(out, expected, check_exact=False, rel_tol=1e-12, abs_tol=0.0)
    assert_frame_equal(out.drop("volume", "quote_volume", "taker_buy_volume",
                                "taker_buy_quote_volume"),
                       expected.drop("volume", "quote_volume", "taker_buy_volume",
                                     "taker_buy_quote_volume"), check_exact=True)
