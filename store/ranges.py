"""What history is missing, and what the exchange confirmed it does not have.

Ranges are half-open ``[start, end)`` of open times in epoch milliseconds, the
shape REST requests are built from. ``missing()`` reads the holes between stored
candles (plus the head and tail of a wanted window) and subtracts the ranges in
``empty_ranges`` (minutes REST confirmed absent: no trades, maintenance, before a
listing); ``record_empty()`` adds to that table. The backfill, the live pipeline's
gap repair and ``history.gaps()`` all read the same table.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence

import duckdb

from market.schema import interval_ms
from store.db import query, resolve_db, write

Range = tuple[int, int]
Db = str | os.PathLike[str] | None

# TIMESTAMP <-> epoch ms in SQL, so the ranges never go through Python datetimes
_MS = "epoch_ms({})"
_TS = "make_timestamp(({})::BIGINT * 1000)"


def series(interval: str | None = None, symbols: Sequence[str] | None = None, *, db: Db = None) -> list[tuple[str, str]]:
    """(symbol, interval) pairs the store holds candles for, optionally narrowed."""
    if not resolve_db(db).exists():
        return []
    rows = query(
        """SELECT DISTINCT symbol, interval FROM klines
           WHERE (?::VARCHAR IS NULL OR interval = ?)
             AND (?::VARCHAR[] IS NULL OR symbol IN (SELECT unnest(?::VARCHAR[])))
           ORDER BY symbol, interval""",
        [interval, interval, list(symbols) if symbols else None, list(symbols) if symbols else None], db=db)
    return list(rows.iter_rows())


def bounds(symbols: Sequence[str], interval: str, *, db: Db = None) -> dict[str, Range]:
    """Per symbol: (first, last) stored open time in ms, over the whole store."""
    if not symbols or not resolve_db(db).exists():
        return {}
    rows = query(
        f"""SELECT symbol, {_MS.format('min(open_time)')}, {_MS.format('max(open_time)')} FROM klines
            WHERE interval = ? AND symbol IN (SELECT unnest(?::VARCHAR[])) GROUP BY symbol""",
        [interval, list(symbols)], db=db)
    return {s: (a, b) for s, a, b in rows.iter_rows()}


def holes(symbols: Sequence[str], interval: str, lo: int | None = None, hi: int | None = None,
          *, db: Db = None) -> dict[str, list[Range]]:
    """Per symbol: the holes between stored candles with open time in [lo, hi)."""
    if not symbols or not resolve_db(db).exists():
        return {}
    step = interval_ms(interval)
    rows = query(
        f"""SELECT symbol, t + ? AS a, nxt AS b FROM (
              SELECT symbol, {_MS.format('open_time')} AS t,
                     lead({_MS.format('open_time')}) OVER (PARTITION BY symbol ORDER BY open_time) AS nxt
              FROM klines
              WHERE interval = ? AND symbol IN (SELECT unnest(?::VARCHAR[]))
                AND open_time >= coalesce({_TS.format('?')}, '-infinity'::TIMESTAMP)
                AND open_time <  coalesce({_TS.format('?')}, 'infinity'::TIMESTAMP))
            WHERE nxt - t > ? ORDER BY symbol, a""",
        [step, interval, list(symbols), lo, hi, step], db=db)
    out: dict[str, list[Range]] = {}
    for s, a, b in rows.iter_rows():
        out.setdefault(s, []).append((a, b))
    return out


def empty(symbols: Sequence[str], interval: str, *, db: Db = None) -> dict[str, list[Range]]:
    """Per symbol: the ranges confirmed absent at the exchange, merged and sorted."""
    if not symbols or not resolve_db(db).exists():
        return {}
    rows = query(
        f"""SELECT symbol, {_MS.format('start_time')}, {_MS.format('end_time')} FROM empty_ranges
            WHERE interval = ? AND symbol IN (SELECT unnest(?::VARCHAR[])) ORDER BY symbol, start_time""",
        [interval, list(symbols)], db=db)
    out: dict[str, list[Range]] = {}
    for s, a, b in rows.iter_rows():
        out.setdefault(s, []).append((a, b))
    return {s: merge(r) for s, r in out.items()}


def missing(symbols: Sequence[str], interval: str, lo: int | None = None, hi: int | None = None,
            *, db: Db = None) -> dict[str, list[Range]]:
    """Per symbol: what to fetch. Without ``lo``: only the holes between stored candles.
    With ``lo`` (and ``hi``, the end of closed history): all of [lo, hi) not stored.
    Ranges in ``empty_ranges`` are left out either way."""
    step = interval_ms(interval)
    if lo is not None:
        if hi is None:
            raise ValueError("missing(): a window start needs its end (the server's now)")
        lo += -lo % step  # the first candle opening at or after lo
        hi -= hi % step
    found = holes(symbols, interval, lo, hi, db=db)
    if lo is not None:
        ends = _window_bounds(symbols, interval, lo, hi, db=db)
        for s in symbols:
            first, last = ends.get(s, (None, None))
            extra = [(lo, hi)] if first is None else [(lo, first), (last + step, hi)]
            found[s] = merge([*found.get(s, []), *extra])
    skip = empty(list(found), interval, db=db)
    return {s: r for s in symbols if (r := subtract(found.get(s, []), skip.get(s, [])))}


def _window_bounds(symbols: Sequence[str], interval: str, lo: int, hi: int | None, *, db: Db) -> dict[str, Range]:
    if not resolve_db(db).exists():
        return {}
    rows = query(
        f"""SELECT symbol, {_MS.format('min(open_time)')}, {_MS.format('max(open_time)')} FROM klines
            WHERE interval = ? AND symbol IN (SELECT unnest(?::VARCHAR[]))
              AND open_time >= {_TS.format('?')}
              AND open_time < coalesce({_TS.format('?')}, 'infinity'::TIMESTAMP)
            GROUP BY symbol""",
        [interval, list(symbols), lo, hi], db=db)
    return {s: (a, b) for s, a, b in rows.iter_rows()}


def record_empty(rows: Iterable[tuple[str, str, int, int]], *, db: Db = None, timeout: float = 30.0) -> int:
    """Add (symbol, interval, start ms, end ms) ranges confirmed absent; returns rows added.

    A range already covered by a recorded one is not added again. Waits up to
    ``timeout`` s while another process or our own writer holds the file.
    """
    batch = [(s, i, a, b) for s, i, a, b in rows if b > a]
    if not batch:
        return 0
    path = resolve_db(db)
    checked = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return write(path, lambda con: _insert_empty(con, batch, checked),
                 failed=f"recording empty ranges in {path} failed", timeout=timeout)


def _insert_empty(con: duckdb.DuckDBPyConnection, batch: list, checked: dt.datetime) -> int:
    con.execute("CREATE TEMP TABLE new_empty (symbol VARCHAR, interval VARCHAR, a BIGINT, b BIGINT)")
    try:
        con.executemany("INSERT INTO new_empty VALUES (?, ?, ?, ?)", batch)
        before = con.execute("SELECT count(*) FROM empty_ranges").fetchone()[0]
        con.execute(
            f"""INSERT INTO empty_ranges (symbol, interval, start_time, end_time, checked_at)
                SELECT DISTINCT n.symbol, n.interval, {_TS.format('n.a')}, {_TS.format('n.b')}, ?
                FROM new_empty n
                WHERE NOT EXISTS (SELECT 1 FROM empty_ranges e
                                  WHERE e.symbol = n.symbol AND e.interval = n.interval
                                    AND e.start_time <= {_TS.format('n.a')} AND e.end_time >= {_TS.format('n.b')})""",
            [checked])
        return con.execute("SELECT count(*) FROM empty_ranges").fetchone()[0] - before
    finally:
        con.execute("DROP TABLE new_empty")


# -- range arithmetic (pure) ------------------------------------------------------------


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, overlapping or touching ranges joined."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def subtract(ranges: Iterable[Range], cut: Iterable[Range]) -> list[Range]:
    """``ranges`` minus ``cut``, both as half-open ranges."""
    cuts = merge(cut)
    out: list[Range] = []
    for a, b in merge(ranges):
        for c, d in cuts:
            if d <= a or c >= b:
                continue
            if c > a:
                out.append((a, c))
            a = max(a, d)
            if a >= b:
                break
        if a < b:
            out.append((a, b))
    return out
