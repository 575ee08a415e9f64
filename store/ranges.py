"""What history is missing, and what the exchange confirmed it does not have.

Ranges are half-open ``[start, end)`` of open times in epoch milliseconds, the
shape REST requests are built from. ``missing()`` reads the holes between stored
candles (plus the head and tail of a wanted window) and subtracts the ranges in
``empty_ranges`` (minutes REST confirmed absent: no trades, maintenance, before a
listing); ``record_empty()`` adds to that table. The backfill, the live pipeline's
gap repair and ``history.gaps()`` all read the same table, and the backfill and
``history.gaps()`` find holes with the same ``stored_gaps()``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence

import duckdb
import polars as pl

from market.schema import interval_ms
from store.db import QueryError, query, reader, resolve_db, write

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
    with reader(db) as con:
        found = stored_gaps(con, interval, list(symbols), lo, hi)
    out: dict[str, list[Range]] = {}
    for s, t, nt in found.iter_rows():
        out.setdefault(s, []).append((t + step, nt))
    return out


#: Steps per block in stored_gaps()' first pass: a day of 1m candles.
_BLOCK = 1440
#: Above this many runs of candidate blocks, stored_gaps() reads them back with one join, not a range each.
_MAX_RANGES = 400

# open_time in [$lo, $hi) ms, either end open when NULL
_WINDOW = ("open_time >= coalesce(make_timestamp($lo::BIGINT * 1000), '-infinity'::TIMESTAMP) "
           "AND open_time < coalesce(make_timestamp($hi::BIGINT * 1000), 'infinity'::TIMESTAMP)")


def stored_gaps(con: duckdb.DuckDBPyConnection, interval: str, symbols: Sequence[str] | None = None,
                lo: int | None = None, hi: int | None = None) -> pl.DataFrame:
    """(symbol, t, nt) sorted: a stored candle's open time and the next one's (ms) where candles
    are missing between them, over the candles of ``symbols`` (all if None) with open time in [lo, hi).

    The one hole finder (``holes()`` and ``store.history.gaps()``). How it stays fast on
    tens of millions of rows: a first pass counts candles per symbol and block of
    ``_BLOCK`` steps (one hash aggregate, no sort). Only blocks that are short, or next
    to a short or a missing block, can hold a gap edge; the rows of those blocks alone
    are read back (a range per run of such blocks, which the zone maps answer from a
    few row groups) and compared with their successor. (A ``lead()`` window over every
    row sorted all 26M candles of the benchmark store: 7.4 s; over ``epoch_ms()``: 21-30 s.)
    """
    step = interval_ms(interval)
    block_us = step * 1000 * _BLOCK
    which, params = _which(symbols)
    runs = _frame(
        con,
        f"""WITH blocks AS (
             SELECT symbol, epoch_us(open_time) // $block_us AS b, count(*) AS n FROM klines
             WHERE interval = $iv AND {which} AND {_WINDOW} GROUP BY ALL),
           flagged AS (
             SELECT symbol, b, n < $block AS short, lag(b) OVER w AS pb, lead(b) OVER w AS nb,
                    lag(n) OVER w < $block AS pshort, lead(n) OVER w < $block AS nshort
             FROM blocks WINDOW w AS (PARTITION BY symbol ORDER BY b)),
           cand AS (
             SELECT symbol, b, coalesce(nb = b + 1, false) AS next_present,
                    b - row_number() OVER (PARTITION BY symbol ORDER BY b) AS island
             FROM flagged
             WHERE short OR pb <> b - 1 OR nb <> b + 1 OR (pb = b - 1 AND pshort) OR (nb = b + 1 AND nshort))
         SELECT symbol, min(b) AS lo, max(b) AS hi, arg_max(next_present, b) AS next_present
         FROM cand GROUP BY symbol, island ORDER BY symbol, lo""",
        {**params, "block_us": block_us, "iv": interval, "block": _BLOCK, "lo": lo, "hi": hi},
    ).with_row_index("run")
    rows = _candidate_rows(con, runs, interval, block_us, lo, hi)
    return _pairs(rows, runs, step)


def _which(symbols: Sequence[str] | None) -> tuple[str, dict[str, str]]:
    """A filter on symbol as a list of constants (DuckDB prunes row groups on those, not on a subquery)."""
    if symbols is None:
        return "true", {}
    names = {f"s{i}": s for i, s in enumerate(dict.fromkeys(symbols))}
    return f"symbol IN ({', '.join('$' + k for k in names)})" if names else "false", names


def _frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict) -> pl.DataFrame:
    try:
        return con.sql(sql, params=params).pl()
    except duckdb.Error as exc:
        raise QueryError(f"{type(exc).__name__}: {exc}") from exc


def _candidate_rows(con: duckdb.DuckDBPyConnection, runs: pl.DataFrame, interval: str, block_us: int,
                    lo: int | None, hi: int | None) -> pl.DataFrame:
    """(run, t) for every stored candle inside the candidate runs and [lo, hi); t = open_time in ms."""
    if runs.height == 0:
        return pl.DataFrame(schema={"run": pl.UInt32(), "t": pl.Int64()})
    window = {"lo": lo, "hi": hi, "iv": interval}
    if runs.height <= _MAX_RANGES:
        parts, params = [], {}
        for run, sym, b0, b1 in runs.select("run", "symbol", "lo", "hi").iter_rows():
            parts.append(f"SELECT $r{run}::UINTEGER AS run, epoch_ms(open_time) AS t FROM klines "
                         f"WHERE symbol = $s{run} AND interval = $iv AND open_time >= make_timestamp($a{run}) "
                         f"AND open_time < make_timestamp($b{run}) AND {_WINDOW}")
            params |= {f"r{run}": run, f"s{run}": sym, f"a{run}": b0 * block_us, f"b{run}": (b1 + 1) * block_us}
        return _frame(con, " UNION ALL ".join(parts), {**params, **window})
    con.register("runs", runs.select("run", "symbol", "lo", "hi").to_arrow())
    try:
        return _frame(
            con,
            f"""SELECT r.run, epoch_ms(k.open_time) AS t FROM klines k JOIN runs r
                  ON k.symbol = r.symbol AND epoch_us(k.open_time) // $block_us BETWEEN r.lo AND r.hi
                WHERE k.interval = $iv AND {_WINDOW.replace('open_time', 'k.open_time')}""",
            {**window, "block_us": block_us},
        )
    finally:
        con.unregister("runs")


def _pairs(rows: pl.DataFrame, runs: pl.DataFrame, step: int) -> pl.DataFrame:
    """(symbol, t, nt): a stored candle and the next one when steps are missing between them.

    Consecutive rows of one run are consecutive candles. The last row of a run
    and the first of the symbol's next run are too when the block after the run
    is missing; otherwise complete blocks (not read back) lie between them.
    """
    frame = (
        rows.join(runs.select("run", "symbol", "next_present"), on="run")
        .sort("symbol", "t")
        .with_columns(nt=pl.col("t").shift(-1).over("symbol"), next_run=pl.col("run").shift(-1).over("symbol"))
    )
    return frame.filter(
        (pl.col("nt") - pl.col("t") > step) & ((pl.col("next_run") == pl.col("run")) | ~pl.col("next_present"))
    ).select("symbol", "t", "nt")


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
