"""Bulk loads: whole files of candles in one statement each, and their indicators.

The live writer (store/writer.py) queues small batches and opens the file per
flush; an import has millions of rows ready at once, so it holds the file for
one symbol+interval at a time (others get in between series), writes each dump
file in its own transaction (all or nothing per file) with the writer's key
rule (delete the file's keys, insert; newest wins), and then brings the
``indicators`` of that series up to date.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl

from market.indicators import WARMUP, add_indicators, add_signal
from market.schema import INDICATOR_SCHEMA, KLINE_SCHEMA
from store.db import StoreError, StoreLocked, claim_market, gate, migrate, open_file, resolve_db, stored_market
from store.db import prepare as prepare_file

#: Indicator values within this many points (RSI and StochRSI run 0..100) of the
#: stored ones are left alone: recomputing with more history ahead of them moves
#: later values by (13/14)^n, which falls below this ~370 candles after the seam.
SAME = 1e-12


#: (file, market) pairs already migrated and claimed by this process: migrating
#: costs ~50-300 ms a time, and an import opens the file once per series.
_ready: set[tuple[Path, str | None]] = set()


def prepare(db: str | os.PathLike[str] | None, market: str | None) -> Path:
    """``store.prepare`` (checks, migrates, claims the market), remembered for ``session``."""
    path = prepare_file(db, market)
    _ready.add((path.resolve(), market))
    return path


@contextlib.contextmanager
def session(
    db: str | os.PathLike[str] | None, market: str | None, *, timeout: float = 30.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection held for one series' import; waits up to ``timeout`` s for the file."""
    path = resolve_db(db)
    g = gate(path)
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if g.try_write():
            try:
                con = open_file(path, read_only=False)
                break
            except StoreLocked:
                g.end_write()
                if time.monotonic() > deadline:
                    raise
            except BaseException:
                g.end_write()
                raise
        elif time.monotonic() > deadline:
            raise StoreLocked(f"{path} stayed busy in this process for {timeout:g} s")
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 0.5)
    try:
        key = (path.resolve(), market)
        # One query tells a file prepared earlier from one deleted and made anew since.
        if key not in _ready or stored_market(con) != market:
            try:
                migrate(con, str(path))
                if market is not None:
                    claim_market(con, market, path)
            except duckdb.Error as exc:
                raise StoreError(f"cannot use {path}: {exc}") from exc
            _ready.add(key)
        yield con
    finally:
        con.close()
        g.end_write()


def _replace(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, schema: dict, *,
             delete: bool = True) -> int:
    """Delete ``frame``'s keys from ``table`` and insert ``frame``; returns how many rows were deleted.

    ``frame`` holds one symbol and interval; the time range bound lets DuckDB skip
    row groups by their min/max instead of scanning the table. ``delete=False``
    when the caller knows none of the keys is stored.
    """
    symbol, interval = frame["symbol"][0], frame["interval"][0]
    lo, hi = frame["open_time"].min(), frame["open_time"].max()
    cols = ", ".join(f'"{c}"' for c in schema)
    con.register("batch", frame.select(list(schema)).to_arrow())
    try:
        deleted = 0 if not delete else con.execute(
            f"DELETE FROM {table} WHERE symbol = ? AND interval = ? AND open_time BETWEEN ? AND ? "
            "AND open_time IN (SELECT open_time FROM batch)",
            [symbol, interval, lo, hi],
        ).fetchall()[0][0]
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM batch")
    finally:
        con.unregister("batch")
    return int(deleted)


def load_klines(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame) -> tuple[int, int]:
    """Store one file's candles (one symbol+interval, unique open_time) in one transaction.

    Returns (replaced, changed): how many of its keys were already stored, and how
    many of those held other values. Stored rows equal to the file's are left as
    they are, so a re-import rewrites nothing. Nothing is kept on failure.
    """
    if frame.height == 0:
        return 0, 0
    symbol, interval = frame["symbol"][0], frame["interval"][0]
    try:
        con.execute("BEGIN")
        where = "WHERE symbol = ? AND interval = ? AND open_time BETWEEN ? AND ?"
        params = [symbol, interval, frame["open_time"].min(), frame["open_time"].max()]
        # The usual case (nothing stored there yet) costs one count, not a frame.
        if con.execute(f"SELECT count(*) FROM klines {where}", params).fetchall()[0][0]:
            stored = con.sql(f"SELECT * FROM klines {where}", params=params).pl()
        else:
            stored = pl.DataFrame()
        replaced = changed = 0
        if stored.height:
            stored = stored.select(list(KLINE_SCHEMA)).cast(KLINE_SCHEMA)
            replaced = frame.join(stored, on="open_time", how="semi").height
            frame = frame.join(stored, on=list(KLINE_SCHEMA), how="anti", nulls_equal=True)
            changed = frame.join(stored, on="open_time", how="semi").height
        if frame.height:
            _replace(con, "klines", frame, KLINE_SCHEMA, delete=changed > 0)
        con.execute("COMMIT")
        return replaced, changed
    except duckdb.Error as exc:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise StoreError(f"writing candles failed: {exc}") from exc


def refresh_indicators(
    con: duckdb.DuckDBPyConnection, symbol: str, interval: str, since: dt.datetime
) -> int:
    """Bring ``symbol``/``interval``'s indicators up to date from ``since`` (the first imported candle) on.

    Rows before ``since`` cannot change, since indicators only look back (but
    stored candles lacking indicators move ``since`` back to the first of them). From
    ``since`` on, everything stored is recomputed and rows that differ from the
    stored ones by more than ``SAME`` (or have none) are written: the imported
    candles, and the later ones whose RSI moves because older history now
    precedes them. The computation starts ``WARMUP`` candles before ``since``
    (or at the first candle), which equals the full-history values to ~1e-13
    (market.indicators.WARMUP) while keeping a day's import on top of years of
    history O(day). Returns how many indicator rows were written.
    """
    key = "WHERE symbol = ? AND interval = ?"
    try:
        # Candles stored earlier without indicators (an import killed between the two)
        # are caught up too, so every run leaves the series whole.
        lacking = con.execute(
            f"SELECT min(open_time) FROM klines k {key} AND open_time < ? AND NOT EXISTS ("
            "SELECT 1 FROM indicators i WHERE i.symbol = k.symbol AND i.interval = k.interval "
            "AND i.open_time = k.open_time)",
            [symbol, interval, since],
        ).fetchall()[0][0]
        since = min(since, lacking) if lacking is not None else since
        start = con.execute(
            f"SELECT open_time FROM klines {key} AND open_time < ? ORDER BY open_time DESC LIMIT 1 OFFSET ?",
            [symbol, interval, since, WARMUP - 1],
        ).fetchall()
        closes = con.sql(
            f"SELECT symbol, interval, open_time, close FROM klines {key} AND open_time >= ? ORDER BY open_time",
            params=[symbol, interval, start[0][0] if start else dt.datetime.min],
        ).pl()
        stored = con.sql(
            f"SELECT open_time, rsi, stoch_k, stoch_d, signal, true AS _stored FROM indicators {key} "
            "AND open_time >= ?",
            params=[symbol, interval, since],
        ).pl().unique("open_time", keep="last")
    except duckdb.Error as exc:
        raise StoreError(f"reading {symbol} {interval} for indicators failed: {exc}") from exc
    fresh = add_signal(add_indicators(closes)).filter(pl.col("open_time") >= since)
    if stored.height:
        both = fresh.join(stored.cast({"open_time": fresh.schema["open_time"]}), on="open_time",
                          how="left", suffix="_old")
        differs = pl.col("_stored").is_null() | pl.col("signal").ne_missing(pl.col("signal_old"))
        for col in ("rsi", "stoch_k", "stoch_d"):
            new, old = pl.col(col), pl.col(f"{col}_old")
            differs |= new.is_null().ne(old.is_null()) | ((new - old).abs() > SAME).fill_null(False)
        fresh = both.filter(differs)
    changed = fresh.select(list(INDICATOR_SCHEMA)).cast(INDICATOR_SCHEMA)
    if changed.height == 0:
        return 0
    try:
        con.execute("BEGIN")
        _replace(con, "indicators", changed, INDICATOR_SCHEMA, delete=stored.height > 0)
        con.execute("COMMIT")
    except duckdb.Error as exc:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise StoreError(f"writing indicators of {symbol} {interval} failed: {exc}") from exc
    return changed.height
