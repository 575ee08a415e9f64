"""Typed reads of the stored history, shared by the pipeline, the dashboard and notebooks.

Each function opens the file read-only for one query (``store.db.query``), so it
is safe to call while the app ingests.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

import duckdb
import polars as pl

from market.schema import INTERVAL_MS, KLINE_SCHEMA, empty, interval_ms
from store.db import QueryError, query, reader, resolve_db
from store.ranges import stored_gaps

Db = str | os.PathLike[str] | None


def recent_klines(symbols: Sequence[str], interval: str, per_symbol: int, *, db: Db = None,
                  timeout: float = 30.0) -> pl.DataFrame:
    """The newest ``per_symbol`` closed candles of each symbol, sorted by symbol, open_time.

    An absent database file gives an empty frame (a first start), not an error; a
    file another process holds for longer than ``timeout`` s raises StoreLocked.
    """
    if not resolve_db(db).exists() or not symbols or per_symbol < 1:
        return empty(KLINE_SCHEMA)
    with reader(db, timeout=timeout) as con:
        frame = _tail(con, list(dict.fromkeys(symbols)), interval, per_symbol)
    return frame.select(list(KLINE_SCHEMA))


def _tail(con: duckdb.DuckDBPyConnection, symbols: list[str], interval: str, n: int) -> pl.DataFrame:
    """The newest ``n`` klines of each symbol, sorted by symbol, open_time.

    Per symbol, first the rows of the last ``n`` steps before its newest candle:
    a range on (symbol, open_time) that DuckDB's zone maps answer by reading a
    row group or two, in whichever order the rows were stored. Only symbols with
    holes in that span (fewer than ``n`` rows) pay a top-n over their whole history.
    (The window-function form, ``QUALIFY row_number() ... <= n``, sorted all of
    every symbol's rows: 5 s for 50 symbols x 2,000 on a 26M-row file.)
    """
    span = (n - 1) * interval_ms(interval)
    cols = ", ".join(KLINE_SCHEMA)
    parts, params = [], []
    for sym in symbols:
        parts.append(
            f"""(SELECT {cols} FROM klines
                 WHERE symbol = ? AND interval = ? AND open_time >= (
                   SELECT max(open_time) FROM klines WHERE symbol = ? AND interval = ?) - to_milliseconds(?))"""
        )
        params += [sym, interval, sym, interval, span]
    frame = _run(con, " UNION ALL ".join(parts), params)
    counts = dict(frame.group_by("symbol").len().iter_rows()) if frame.height else {}
    short = [s for s in symbols if 0 < counts.get(s, 0) < n]
    if short:
        # holes inside the span: these symbols' newest n rows reach further back
        rest = " UNION ALL ".join(
            f"(SELECT {cols} FROM klines WHERE symbol = ? AND interval = ? ORDER BY open_time DESC LIMIT ?)"
            for _ in short
        )
        more = _run(con, rest, [v for s in short for v in (s, interval, n)])
        frame = pl.concat([frame.filter(~pl.col("symbol").is_in(short)), more])
    return frame.sort("symbol", "open_time")


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> pl.DataFrame:
    try:
        return con.sql(sql, params=params).pl()
    except duckdb.Error as exc:
        raise QueryError(f"{type(exc).__name__}: {exc}") from exc


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
    """Closed candles joined with their stored indicators (newest ``limit`` rows if given), by open_time.

    Both tables are filtered on the symbol before the join, so DuckDB reads that
    symbol's row groups only (joining first made it hash the other table whole).
    """
    cols = ", ".join(KLINE_SCHEMA)
    ind = "open_time, rsi, stoch_k, stoch_d, signal"
    if limit is None:
        return query(
            f"""SELECT k.*, i.rsi, i.stoch_k, i.stoch_d, i.signal
                FROM (SELECT {cols} FROM klines WHERE symbol = $1 AND interval = $2) k
                LEFT JOIN (SELECT {ind} FROM indicators WHERE symbol = $1 AND interval = $2) i USING (open_time)
                ORDER BY open_time""",
            [symbol, interval],
            db=db,
        )
    if limit < 1:
        return empty({**KLINE_SCHEMA, **_IND_SCHEMA})
    with reader(db) as con:
        frame = _tail(con, [symbol], interval, limit)
        if frame.height == 0:
            return frame.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in _IND_SCHEMA.items())
        lo, hi = frame["open_time"].min(), frame["open_time"].max()
        values = _run(
            con,
            f"SELECT {ind} FROM indicators WHERE symbol = ? AND interval = ? AND open_time BETWEEN ? AND ?",
            [symbol, interval, lo, hi],
        )
    return frame.join(values.cast({"open_time": KLINE_SCHEMA["open_time"], **_IND_SCHEMA}), on="open_time",
                      how="left", maintain_order="left")


_IND_SCHEMA = {"rsi": pl.Float64(), "stoch_k": pl.Float64(), "stoch_d": pl.Float64(), "signal": pl.String()}


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
    """Holes in the stored history: one row per gap, in (symbol, gap_start) order.

    Columns: ``symbol``; ``gap_start`` (the first missing candle's open_time);
    ``gap_end`` (the open_time of the next stored candle); ``missing`` (candles
    missing); ``at_exchange``: true when every missing candle lies in ranges the
    exchange confirmed empty (table ``empty_ranges``, written by the backfill),
    so there is nothing to fetch; false for a hole to repair.

    The holes come from ``store.ranges.stored_gaps`` (the backfill plans from the
    same finder): a block-count pass, then only candidate blocks' rows.
    """
    step = interval_ms(interval)
    with reader(db) as con:
        pairs = stored_gaps(con, interval, None if symbol is None else [symbol])
        found = pairs.select("symbol", m=pl.col("t") // step, nm=pl.col("nt") // step).filter(
            pl.col("nm") - pl.col("m") > 1)
        con.register("found", found.to_arrow())
        try:
            return _run(con, _GAPS_SQL.format(confirmed=_confirmed(con)),
                        {"step_us": step * 1000, "iv": interval, "sym": symbol})
        finally:
            con.unregister("found")


_GAPS_SQL = """
    WITH er AS {confirmed}
    SELECT f.symbol, make_timestamp((f.m + 1) * $step_us) AS gap_start,
           make_timestamp(f.nm * $step_us) AS gap_end, f.nm - f.m - 1 AS missing,
           EXISTS (SELECT 1 FROM er WHERE er.symbol = f.symbol
                     AND er.s <= make_timestamp((f.m + 1) * $step_us)
                     AND er.e > make_timestamp((f.nm - 1) * $step_us)) AS at_exchange
    FROM found f ORDER BY f.symbol, gap_start"""


def _confirmed(con: duckdb.DuckDBPyConnection) -> str:
    """SQL for empty_ranges merged per symbol (overlapping or touching ranges joined) as (symbol, s, e)."""
    has = _run(con, "SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = 'empty_ranges'", [])["n"][0]
    if not has:  # a file written before the table existed, opened read-only
        return "(SELECT NULL::VARCHAR AS symbol, NULL::TIMESTAMP AS s, NULL::TIMESTAMP AS e WHERE false)"
    return """(SELECT symbol, min(start_time) AS s, max(end_time) AS e FROM (
                 SELECT *, sum(fresh) OVER (PARTITION BY symbol ORDER BY start_time, end_time) AS grp FROM (
                   SELECT symbol, start_time, end_time,
                          coalesce(start_time > max(end_time) OVER (
                            PARTITION BY symbol ORDER BY start_time, end_time
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), true)::INT AS fresh
                   FROM empty_ranges WHERE interval = $iv AND ($sym IS NULL OR symbol = $sym)))
               GROUP BY symbol, grp)"""


def _sources(interval: str) -> list[str]:
    """Stored intervals that build ``interval`` exactly, finest first (1h: 1m, 3m, ... 1h)."""
    step = interval_ms(interval)
    return [i for i, ms in sorted(INTERVAL_MS.items(), key=lambda kv: kv[1]) if ms <= step and step % ms == 0]


def candles(
    symbol: str,
    interval: str,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    limit: int | None = None,
    *,
    db: Db = None,
) -> pl.DataFrame:
    """Closed ``interval`` candles of one symbol in [start, end), aggregated in DuckDB.

    Each candle is built from the finest stored interval that fills it: the 1m
    candles where they are complete, else imported coarser ones (a 1h dump where
    no 1m was kept), else the finest partial one (a bucket with missing minutes).
    ``start`` is aligned down and ``end`` up to whole candles (Binance's epoch
    alignment, so 1d starts at 00:00 UTC). KLINE_SCHEMA rows sorted by open_time;
    an absent database file gives an empty frame. Only a few thousand rows leave
    DuckDB whatever the span, so a year at 1d costs one scan of the symbol's rows.

    ``limit``: at most that many candles, the newest ones of the range. Only the
    rows of the last ``limit`` candle spans before the newest stored one are
    aggregated (a range DuckDB's zone maps answer), and the whole range only when
    holes leave fewer candles there.
    """
    if not resolve_db(db).exists() or (limit is not None and limit < 1):
        return empty(KLINE_SCHEMA)
    step = interval_ms(interval)
    sources = _sources(interval)
    lo = None if start is None else _align(start, step, up=False)
    hi = None if end is None else _align(end, step, up=True)
    with reader(db) as con:
        if limit is None:
            return _candles(con, symbol, interval, sources, lo, hi)
        newest = _run(
            con,
            """SELECT max(open_time) AS t FROM klines WHERE symbol = ? AND interval IN (SELECT unnest(?::VARCHAR[]))
                 AND open_time < coalesce(?::TIMESTAMP, 'infinity'::TIMESTAMP)""",
            [symbol, sources, hi],
        )["t"][0]
        if newest is None:
            return empty(KLINE_SCHEMA)
        near = _align(newest, step, up=False) - dt.timedelta(milliseconds=step * (limit - 1))
        if lo is None or near > lo:
            got = _candles(con, symbol, interval, sources, near, hi)
            if got.height >= limit:
                return got.tail(limit)
        return _candles(con, symbol, interval, sources, lo, hi).tail(limit)


def _candles(con: duckdb.DuckDBPyConnection, symbol: str | list[str] | None, interval: str, sources: list[str],
             lo: dt.datetime | None, hi: dt.datetime | None) -> pl.DataFrame:
    """Buckets of one symbol (``symbol = ?``, which the zone maps prune on), a list, or all (None)."""
    step = interval_ms(interval)
    if isinstance(symbol, str):
        which, arg = "symbol = ?", [symbol]
    elif symbol is None:
        which, arg = "true", []
    else:
        which, arg = "symbol IN (SELECT unnest(?::VARCHAR[]))", [list(symbol)]
    return _run(
        con,
        f"""WITH b AS (
             SELECT symbol, make_timestamp(epoch_us(open_time) // ? * ?) AS bucket, interval AS src,
                    arg_min(open, open_time) AS open, max(high) AS high, min(low) AS low,
                    arg_max(close, open_time) AS close, sum(volume) AS volume,
                    sum(quote_volume) AS quote_volume, sum(trades)::BIGINT AS trades,
                    sum(taker_buy_volume) AS taker_buy_volume,
                    sum(taker_buy_quote_volume) AS taker_buy_quote_volume,
                    count(*) AS n
             FROM klines
             WHERE {which} AND interval IN (SELECT unnest(?::VARCHAR[]))
               AND open_time >= coalesce(?::TIMESTAMP, '-infinity'::TIMESTAMP)
               AND open_time <  coalesce(?::TIMESTAMP, 'infinity'::TIMESTAMP)
             GROUP BY symbol, bucket, src)
           SELECT symbol, ? AS interval, bucket AS open_time,
                  bucket + to_milliseconds(?) - INTERVAL 1 MILLISECOND AS close_time,
                  open, high, low, close, volume, quote_volume, trades,
                  taker_buy_volume, taker_buy_quote_volume
           FROM b
           QUALIFY row_number() OVER (
             PARTITION BY symbol, bucket
             -- complete candles first, then the finest source
             ORDER BY n * list_extract(?::BIGINT[], list_position(?::VARCHAR[], src)) >= ? DESC,
                      list_position(?::VARCHAR[], src)) = 1
           ORDER BY symbol, open_time""",
        [step * 1000, step * 1000, *arg, sources, lo, hi, interval, step,
         [INTERVAL_MS[s] for s in sources], sources, step, sources],
    ).select(list(KLINE_SCHEMA)).cast(KLINE_SCHEMA)


def candles_many(
    interval: str,
    symbols: Sequence[str] | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    *,
    db: Db = None,
) -> pl.DataFrame:
    """``candles`` for many symbols (all stored ones by default) in one scan, sorted by symbol, open_time.

    For notebooks that compare symbols (returns, correlations): a year of 50
    symbols' 1m candles becomes daily ones in DuckDB, and only those leave it.
    """
    if not resolve_db(db).exists():
        return empty(KLINE_SCHEMA)
    step = interval_ms(interval)
    lo = None if start is None else _align(start, step, up=False)
    hi = None if end is None else _align(end, step, up=True)
    with reader(db) as con:
        return _candles(con, None if symbols is None else list(symbols), interval, _sources(interval), lo, hi)


def span(symbol: str, *, db: Db = None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """open_time of the oldest and newest candle stored for ``symbol`` (any interval); Nones if none."""
    if not resolve_db(db).exists():
        return None, None
    row = query("SELECT min(open_time) AS first, max(open_time) AS last FROM klines WHERE symbol = ?",
                [symbol], db=db).row(0)
    return row[0], row[1]


def _align(t: dt.datetime, step_ms: int, *, up: bool) -> dt.datetime:
    """``t`` (naive UTC) rounded to a multiple of ``step_ms`` from the epoch."""
    ms = int((t - _EPOCH) / dt.timedelta(milliseconds=1))
    q = -(-ms // step_ms) if up else ms // step_ms
    return _EPOCH + dt.timedelta(milliseconds=q * step_ms)


_EPOCH = dt.datetime(1970, 1, 1)


__all__ = ["candles", "candles_many", "coverage", "gaps", "klines", "recent_klines", "span", "with_indicators"]
