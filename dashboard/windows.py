"""The candles of one chart window, from the store and the live series, with exact indicators.

A window is a timeframe and a time range (``dashboard.lod.Window``). Stored candles
come aggregated by DuckDB (``store.history.candles``), with ``WARMUP`` more
candles before the window so RSI and StochRSI equal those of the whole history
(the seed's weight decays as (13/14)^n: 1e-13 after 500 candles). Where the
window reaches the live series' candles (memory, newer than the last flush),
those replace the stored ones.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from dashboard.lod import Window
from market.indicators import WARMUP, add_indicators
from market.schema import interval_ms
from store.history import Db
from store.history import candles as stored_candles
from store.history import klines as stored_klines

_EPOCH = dt.datetime(1970, 1, 1)


def _time(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ms)


def window_candles(symbol: str, window: Window, *, db: Db = None, recent: pl.DataFrame | None = None,
                   warmup: int = WARMUP) -> pl.DataFrame:
    """Closed candles of ``window`` (open_time in [start, end)) with rsi, stoch_k, stoch_d.

    ``recent``: the live series' closed candles with indicators (same timeframe),
    given when the window reaches the live end: from its first candle on they are
    used instead of the store's, all of them (the live end is past ``end``). Sorted
    by time.
    """
    step = interval_ms(window.timeframe)
    start = _time(window.start)
    cut = recent["open_time"][0] if recent is not None and recent.height else None
    stored_end = _time(window.end) if cut is None else min(cut, _time(window.end))
    parts = []
    if stored_end > start:
        # 1m needs no aggregation: the plain range read is ~2x cheaper
        read = stored_klines if window.timeframe == "1m" else stored_candles
        stored = read(symbol, window.timeframe, start - dt.timedelta(milliseconds=step * warmup), stored_end, db=db)
        if stored.height:
            parts.append(add_indicators(stored).filter(pl.col("open_time") >= start))
    if cut is not None:
        keep = recent.filter(pl.col("open_time") >= start)
        if keep.height:
            parts.append(keep)
    if not parts:
        return closed_empty()
    return pl.concat([p.select(list(_SCHEMA)).cast(_SCHEMA) for p in parts])


#: What a window holds: enough to draw and hover the candles and indicators.
_SCHEMA = {"symbol": pl.String, "interval": pl.String, "open_time": pl.Datetime("us"), "open": pl.Float64,
           "high": pl.Float64, "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64,
           "rsi": pl.Float64, "stoch_k": pl.Float64, "stoch_d": pl.Float64}


def closed_empty() -> pl.DataFrame:
    """A window with no candles."""
    return pl.DataFrame(schema=_SCHEMA)
