"""Server-side browsing for the Data page: tables, filtered and sorted pages, candles.

Every query here is built from identifiers checked against the file's own catalog
and values bound as parameters, then run through the sandbox (store/sandbox.py)
like SQL typed by a user, so the page has one way into the file. Only a page of
rows ever leaves DuckDB: a 26M-row table is filtered, sorted and counted where it
lives.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import Sequence
from typing import Any

import polars as pl

from market.schema import INTERVAL_MS as _STEPS
from store.sandbox import DEFAULT_TIMEOUT, Session, run, session

Db = str | os.PathLike[str] | None

#: filter operators the page offers -> SQL with one bound value (or none)
OPERATORS: dict[str, str] = {
    "=": "{c} = ?",
    "!=": "{c} <> ?",
    "<": "{c} < ?",
    "<=": "{c} <= ?",
    ">": "{c} > ?",
    ">=": "{c} >= ?",
    "contains": "CAST({c} AS VARCHAR) ILIKE '%' || ? || '%'",
    "starts with": "CAST({c} AS VARCHAR) ILIKE ? || '%'",
    "is null": "{c} IS NULL",
    "is not null": "{c} IS NOT NULL",
}
NO_VALUE = {"is null", "is not null"}


@dataclasses.dataclass(frozen=True)
class Filter:
    column: str
    op: str
    value: Any = None


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of a table: the rows, how many match in all, and the time it took."""

    frame: pl.DataFrame
    total: int
    offset: int
    elapsed_ms: float


def tables(*, db: Db = None) -> pl.DataFrame:
    """Tables and views of the file with their (estimated) row counts, biggest first."""
    return run(
        """SELECT table_name AS name, 'table' AS kind, estimated_size AS rows, column_count AS columns
           FROM duckdb_tables() WHERE database_name = 'market' AND schema_name = 'main'
           UNION ALL
           SELECT view_name, 'view', NULL, column_count FROM duckdb_views()
           WHERE database_name = 'market' AND schema_name = 'main' AND NOT internal
           ORDER BY rows DESC NULLS LAST, name""",
        db=db,
    ).frame


_COLUMNS_SQL = """SELECT table_name, column_name, data_type FROM information_schema.columns
                  WHERE table_catalog = 'market' AND table_schema = 'main' ORDER BY ordinal_position"""


def columns(table: str, *, db: Db = None) -> dict[str, str]:
    """Column name -> DuckDB type of ``table``; a ValueError names the tables if unknown."""
    with session(db) as s:
        return _columns(s, table)


def _columns(s: Session, table: str) -> dict[str, str]:
    frame = s.run(_COLUMNS_SQL).frame
    if frame.height == 0 or table not in set(frame["table_name"]):
        known = sorted(set(frame["table_name"])) if frame.height else []
        raise ValueError(f"no table or view {table!r}; the file has {', '.join(known) or 'none'}")
    rows = frame.filter(pl.col("table_name") == table)
    return dict(zip(rows["column_name"], rows["data_type"], strict=True))


def _where(filters: Sequence[Filter], cols: dict[str, str]) -> tuple[str, list[Any]]:
    parts, params = [], []
    for f in filters:
        if f.column not in cols:
            raise ValueError(f"no column {f.column!r}; columns are {', '.join(cols)}")
        if f.op not in OPERATORS:
            raise ValueError(f"unknown operator {f.op!r}; use one of {', '.join(OPERATORS)}")
        parts.append(OPERATORS[f.op].format(c=_ident(f.column)))
        if f.op not in NO_VALUE:
            params.append(f.value)
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def page(
    table: str,
    *,
    filters: Sequence[Filter] = (),
    order_by: str | None = None,
    descending: bool = False,
    offset: int = 0,
    limit: int = 100,
    db: Db = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Page:
    """Rows ``offset``..``offset+limit`` of ``table`` under ``filters``, sorted on the server.

    One read-only open of the file for the three statements (columns, rows, count).
    """
    started = time.perf_counter()
    with session(db) as s:
        cols = _columns(s, table)
        where, params = _where(filters, cols)
        order = ""
        if order_by:
            if order_by not in cols:
                raise ValueError(f"no column {order_by!r} to sort by; columns are {', '.join(cols)}")
            order = f" ORDER BY {_ident(order_by)} {'DESC' if descending else 'ASC'} NULLS LAST"
        body = f"FROM {_ident(table)}{where}"
        rows = s.run(f"SELECT * {body}{order} LIMIT ? OFFSET ?", [*params, int(limit), max(0, int(offset))],
                     timeout=timeout, max_rows=limit)
        total = s.run(f"SELECT count(*) AS n {body}", params, timeout=timeout).frame.item()
    return Page(rows.frame, int(total), max(0, int(offset)), (time.perf_counter() - started) * 1000)


def export(
    table: str,
    *,
    filters: Sequence[Filter] = (),
    order_by: str | None = None,
    descending: bool = False,
    max_rows: int = 100_000,
    db: Db = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[pl.DataFrame, bool]:
    """Up to ``max_rows`` rows of the current view (for a CSV download), and whether more exist."""
    p = page(table, filters=filters, order_by=order_by, descending=descending,
             limit=max_rows + 1, db=db, timeout=timeout)
    return p.frame.head(max_rows), p.frame.height > max_rows


def candles(
    symbol: str,
    interval: str,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    *,
    limit: int = 5_000,
    db: Db = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Page:
    """Closed candles of one symbol and interval in [start, end) with their indicators."""
    sql = """SELECT k.*, i.rsi, i.stoch_k, i.stoch_d, i.signal
             FROM klines k LEFT JOIN indicators i USING (symbol, interval, open_time)
             WHERE k.symbol = ? AND k.interval = ?
               AND k.open_time >= coalesce(?::TIMESTAMP, '-infinity'::TIMESTAMP)
               AND k.open_time <  coalesce(?::TIMESTAMP, 'infinity'::TIMESTAMP)"""
    params = [symbol.upper(), interval, start, end]
    started = time.perf_counter()
    with session(db) as s:
        rows = s.run(sql + " ORDER BY k.open_time LIMIT ?", [*params, int(limit)], timeout=timeout, max_rows=limit)
        total = s.run(
            """SELECT count(*) FROM klines WHERE symbol = ? AND interval = ?
                 AND open_time >= coalesce(?::TIMESTAMP, '-infinity'::TIMESTAMP)
                 AND open_time <  coalesce(?::TIMESTAMP, 'infinity'::TIMESTAMP)""",
            params, timeout=timeout,
        ).frame.item()
    return Page(rows.frame, int(total), 0, (time.perf_counter() - started) * 1000)


__all__ = ["NO_VALUE", "OPERATORS", "Filter", "Page", "candles", "columns", "export", "page", "tables"]


def coverage(*, db: Db = None, timeout: float = DEFAULT_TIMEOUT) -> pl.DataFrame:
    """Per symbol and interval: first and last candle, candles stored, candles missing.

    One aggregate pass (no window over the whole table: 26M rows in well under the
    time limit); ``gaps()`` lists the holes of one series on demand.
    """
    return run(
        """SELECT symbol, k.interval, min(open_time) AS first, max(open_time) AS last, count(*) AS candles,
                  (epoch_ms(max(open_time)) - epoch_ms(min(open_time))) // any_value(s.step) + 1 - count(*)
                    AS missing
           FROM klines k JOIN (SELECT unnest(?::VARCHAR[]) AS interval, unnest(?::BIGINT[]) AS step) s
             USING (interval)
           GROUP BY symbol, k.interval ORDER BY symbol, k.interval""",
        [list(_STEPS), list(_STEPS.values())],
        db=db, timeout=timeout, max_rows=100_000,
    ).frame


def gaps(symbol: str, interval: str, *, db: Db = None, limit: int = 10_000,
         timeout: float = DEFAULT_TIMEOUT) -> pl.DataFrame:
    """Holes of one symbol and interval; ``at_exchange`` when REST confirmed them empty."""
    if interval not in _STEPS:
        raise ValueError(f"unknown interval {interval!r}; use one of {', '.join(_STEPS)}")
    step = _STEPS[interval]
    return run(
        """WITH g AS (
             SELECT open_time + to_milliseconds(?) AS gap_start, next_open AS gap_end,
                    (epoch_ms(next_open) - epoch_ms(open_time)) // ? - 1 AS missing
             FROM (SELECT open_time, lead(open_time) OVER (ORDER BY open_time) AS next_open
                   FROM klines WHERE symbol = ? AND interval = ?)
             WHERE epoch_ms(next_open) - epoch_ms(open_time) > ?)
           SELECT g.*, EXISTS (SELECT 1 FROM empty_ranges e
                               WHERE e.symbol = ? AND e.interval = ?
                                 AND e.start_time <= g.gap_start AND e.end_time >= g.gap_end) AS at_exchange
           FROM g ORDER BY gap_start LIMIT ?""",
        [step, step, symbol, interval, step, symbol, interval, limit],
        db=db, timeout=timeout, max_rows=limit,
    ).frame

__all__ += ["coverage", "gaps"]
