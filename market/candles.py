"""Exact resampling of klines to a coarser interval (1m -> 5m, 1h, 1d, ...).

A target candle covers ``[start, start + interval)`` where ``start`` is a
multiple of the interval counted from the Unix epoch in UTC, as Binance aligns
them (so 1d candles start at 00:00 UTC and 4h ones at 00, 04, ... 20 UTC). Its
open is the first source candle's open, close the last one's close, high/low
the extremes, and volume, quote_volume, trades and both taker-buy volumes are
sums. ``close_time`` follows Binance: ``start + interval - 1 ms``.

The still-forming last bucket is included with whatever source candles it has,
as are buckets with gaps (minutes without trades can be missing on the exchange
too); ``source_count`` tells a caller how many source candles a full bucket
holds, to spot them.
"""

from __future__ import annotations

import polars as pl

from market.schema import KLINE_SCHEMA, TIME, conform, empty, interval_ms

_SUMMED = ("volume", "quote_volume", "trades", "taker_buy_volume", "taker_buy_quote_volume")


def source_count(source: str, target: str) -> int:
    """Source candles in one full target candle; ValueError unless a whole multiple.

    ``source_count("1m", "1h") == 60``. A target finer than the source, or not a
    multiple of it (3m -> 5m), cannot be built exactly and is refused.
    """
    src, dst = interval_ms(source), interval_ms(target)
    if dst < src or dst % src:
        raise ValueError(
            f"cannot resample {source} candles to {target}: the target must be a "
            f"whole multiple of the source interval"
        )
    return dst // src


def _source_interval(frame: pl.DataFrame) -> str:
    intervals = frame.get_column("interval").unique().to_list()
    if len(intervals) != 1 or intervals[0] is None:
        found = sorted(map(str, intervals))
        raise ValueError(f"resample needs candles of one interval, got {found}")
    return intervals[0]


def resample(frame: pl.DataFrame | pl.LazyFrame, interval: str) -> pl.DataFrame:
    """Aggregate KLINE_SCHEMA candles of one finer interval into ``interval`` ones.

    Any symbols and row order in (one row per symbol and open_time expected:
    duplicates would be summed twice); KLINE_SCHEMA rows out, sorted by symbol,
    open_time, with ``interval`` set to the target. Same-interval input comes
    back unchanged but sorted; empty input gives an empty KLINE_SCHEMA frame. A
    target that is unknown, finer than the source, or not a multiple of it is a
    ValueError, as is input mixing several intervals.
    """
    target_ms = interval_ms(interval)
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect(engine="in-memory")
    frame = conform(frame, KLINE_SCHEMA)
    if frame.is_empty():
        return empty(KLINE_SCHEMA)
    source = _source_interval(frame)
    source_count(source, interval)
    if source == interval:
        return frame.sort("symbol", "open_time")

    step = target_ms * 1000  # TIME is microseconds
    start = (pl.col("open_time").cast(pl.Int64) // step * step).cast(TIME)
    # open/close picked by arg_min/arg_max of the time rather than first/last
    # after a sort: any input order works and no 2M-row sort is needed (measured
    # 130 ms against 210 ms sorted, 490 ms against 1.4 s shuffled).
    first, last = pl.col("open_time").arg_min(), pl.col("open_time").arg_max()
    buckets = (
        frame.lazy()
        .group_by("symbol", start.alias("open_time"))
        .agg(
            pl.col("open").get(first),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").get(last),
            *(pl.col(c).sum() for c in _SUMMED),
        )
        .sort("symbol", "open_time")
        .with_columns(
            interval=pl.lit(interval, dtype=pl.String),
            close_time=pl.col("open_time") + pl.duration(milliseconds=target_ms - 1),
        )
        .select(list(KLINE_SCHEMA))
        .collect(engine="in-memory")
    )
    return conform(buckets, KLINE_SCHEMA)
