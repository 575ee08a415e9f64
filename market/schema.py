"""The columnar shapes that flow between market/, store/ and dashboard/.

Every batch handed from one layer to the next is a polars DataFrame with exactly
these columns and dtypes, in this order. Times are UTC, naive ``Datetime("us")``
(the same type DuckDB's ``TIMESTAMP`` reads back as), so stored history and live
frames concatenate without casts.
"""

from __future__ import annotations

import polars as pl

TIME = pl.Datetime("us")

KLINE_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "interval": pl.String(),
    "open_time": TIME,
    "close_time": TIME,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "quote_volume": pl.Float64(),
    "trades": pl.Int64(),
    "taker_buy_volume": pl.Float64(),
    "taker_buy_quote_volume": pl.Float64(),
}

TICKER_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "event_time": TIME,
    "last_price": pl.Float64(),
    "price_change": pl.Float64(),
    "price_change_pct": pl.Float64(),
    "open_price": pl.Float64(),
    "high_price": pl.Float64(),
    "low_price": pl.Float64(),
    "volume": pl.Float64(),
    "quote_volume": pl.Float64(),
    "trades": pl.Int64(),
}

INDICATOR_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "interval": pl.String(),
    "open_time": TIME,
    "rsi": pl.Float64(),
    "stoch_k": pl.Float64(),
    "stoch_d": pl.Float64(),
    "signal": pl.String(),
}

#: Candle intervals Binance streams, with their length in milliseconds.
INTERVAL_MS: dict[str, int] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
}


def interval_ms(interval: str) -> int:
    """Length of ``interval`` in milliseconds; a ValueError names the valid ones."""
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        raise ValueError(
            f"unknown interval {interval!r}; use one of {', '.join(INTERVAL_MS)}"
        ) from None


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A zero-row frame of ``schema``."""
    return pl.DataFrame(schema=schema)


def conform(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select and cast ``frame`` to ``schema``; a missing column is a ValueError."""
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise ValueError(f"batch is missing columns {missing}; expected {list(schema)}")
    return frame.select(pl.col(c).cast(t, strict=True) for c, t in schema.items())
