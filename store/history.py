"""Typed reads of the stored history, shared by the pipeline, the dashboard and notebooks.

Each function opens the file read-only for one query (``store.db.query``), so it
is safe to call while the app ingests.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

import polars as pl

from market.schema import KLINE_SCHEMA, empty, interval_ms
from store.db import query, resolve_db

Db = str | os.PathLike[str] | None


def recent_klines(symbols: Sequence[str], interval: str, per_symbol: int, *, db: Db = None) -> pl.DataFrame:
    """The newest ``per_symbol`` closed candles of each symbol, sorted by symbol, open_time.

    An absent database file gives an empty frame (a first start), not an error.
    """
    if not resolve_db(db).exists() or not symbols:
        return empty(KLINE_SCHEMA)
    cols = ", ".join(KLINE_SCHEMA)
    return query(
        f"""SELECT {cols} FROM klines
            WHERE interval = ? AND symbol IN (SELECT unnest(?::VARCHAR[]))
            QUALIFY row_number() OVER (PARTITION BY symbol ORDER BY open_time DESC) <= ?
            ORDER BY symbol, open_time""",
        [interval, list(symbols), per_symbol],
        db=db,
    ).select(list(KLINE_SCHEMA))


def klines(
    symbol: str,
    interval: str = "1m",
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    *,
    db: Db = None,
) -> pl.DataFrame:
    """Closed candles of one symbol in [start, end) (UTC), sorted by open_time."""
    cols = ", ".join(KLINE_SCHEMA)
    return query(
        f"""SELECT {cols} FROM klines
            WHERE symbol = ? AND interval = ?
              AND open_time >= coalesce(?::TIMESTAMP, '-infinity'::TIMESTAMP)
              AND open_time <  coalesce(?::TIMESTAMP, 'infinity'::TIMESTAMP)
            ORDER BY open_time""",
        [symbol, interval, start, end],
        db=db,
    ).select(list(KLINE_SCHEMA))


def with_indicators(symbol: str, interval: str = "1m", *, db: Db = None, limit: int | None = None) -> pl.DataFrame:
    """Closed candles joined with their stored indicators (newest ``limit`` rows if given)."""
    cols = ", ".join(f"k.{c}" for c in KLINE_SCHEMA)
    return query(
        f"""SELECT * FROM (
              SELECT {cols}, i.rsi, i.stoch_k, i.stoch_d, i.signal
              FROM klines k LEFT JOIN indicators i USING (symbol, interval, open_time)
              WHERE k.symbol = ? AND k.interval = ?
              ORDER BY k.open_time DESC LIMIT coalesce(?, 9223372036854775807)
            ) ORDER BY open_time""",
        [symbol, interval, limit],
        db=db,
    )


def coverage(interval: str = "1m", *, db: Db = None) -> pl.DataFrame:
    """Per symbol: first and last candle, candles stored, candles missing inside that range."""
    step = interval_ms(interval)
    return query(
        """SELECT symbol, min(open_time) AS first, max(open_time) AS last, count(*) AS candles,
                  (epoch_ms(max(open_time)) - epoch_ms(min(open_time))) // ? + 1 - count(*) AS missing
           FROM klines WHERE interval = ? GROUP BY symbol ORDER BY symbol""",
        [step, interval],
        db=db,
    )


def gaps(interval: str = "1m", *, db: Db = None, symbol: str | None = None) -> pl.DataFrame:
    """Holes in the stored history: one row per gap with its first missing candle and size."""
    step = interval_ms(interval)
    return query(
        """SELECT symbol, open_time + to_milliseconds(?) AS gap_start, next_open AS gap_end,
                  (epoch_ms(next_open) - epoch_ms(open_time)) // ? - 1 AS missing
           FROM (SELECT symbol, open_time,
                        lead(open_time) OVER (PARTITION BY symbol ORDER BY open_time) AS next_open
                 FROM klines WHERE interval = ? AND (? IS NULL OR symbol = ?))
           WHERE epoch_ms(next_open) - epoch_ms(open_time) > ?
           ORDER BY symbol, gap_start""",
        [step, step, interval, symbol, symbol, step],
        db=db,
    )


__all__ = ["coverage", "gaps", "klines", "recent_klines", "with_indicators"]
