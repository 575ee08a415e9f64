"""A realistic long-history store for benchmarks: 50 symbols x 1 year of 1m candles.

    .venv/bin/python benchmarks/bigstore.py [--days 365] [--symbols 50] [--out PATH]

    >>> from benchmarks.bigstore import cached
    >>> db = cached()          # benchmarks/.cache/bigstore-50x365d-s0-v1.duckdb, built once

What the file holds, so queries meet what a user's file would give them:

- ``klines``: per symbol a correlated random walk (a market factor plus the
  symbol's own noise, per-minute volatility and price level from
  ``market.synthetic.DEFAULT_SPECS``), open = previous close, prices rounded to
  the symbol's Binance-like tick (BTC 0.1, ETH 0.01, ... PEPE 1e-7), volumes to its
  lot, quote volumes to tick x lot. Rows are inserted sorted by (symbol,
  open_time), as a bulk import leaves them (DuckDB's zone maps then skip whole
  row groups on a symbol filter).
- Holes: two exchange-wide maintenance windows (recorded in ``empty_ranges``, as
  the backfill does when REST confirms them empty) and a few short unexplained
  holes per symbol (what ``history.gaps()`` must find).
- ``indicators`` computed exactly by ``market.indicators`` (per symbol, polars),
  ``tickers`` (24h aggregates of the last day), ``meta`` market binance-futures.

Everything is a pure function of (symbols, days, seed, end): the same arguments
give the same file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import store  # noqa: E402
from market.indicators import add_indicators, add_signal  # noqa: E402
from market.schema import INDICATOR_SCHEMA, KLINE_SCHEMA  # noqa: E402
from market.synthetic import DEFAULT_SPECS, SymbolSpec, spec_for  # noqa: E402

#: the last minute of every generated store ends here (exclusive), so files are reproducible
END = dt.datetime(2026, 11, 1)
CACHE = Path(__file__).resolve().parent / ".cache"
VERSION = 1  # bump when the generated content changes, so cached files are rebuilt
MARKET = "binance-futures"
MINUTE_US = 60_000_000


def specs(n: int) -> list[SymbolSpec]:
    """The first ``n`` symbols of the synthetic market's table, then made-up ones."""
    out = list(DEFAULT_SPECS[:n])
    out += [spec_for(f"X{i:03d}USDT") for i in range(n - len(out))]
    return out


def _holes(rng: np.random.Generator, minutes: int, k: int = 4) -> list[tuple[int, int]]:
    """``k`` short [start, end) minute ranges with no candle (unexplained holes)."""
    if minutes < 100:
        return []
    starts = rng.integers(10, minutes - 20, k)
    return [(int(s), int(s + rng.integers(1, 12))) for s in starts]


def maintenance(minutes: int) -> list[tuple[int, int]]:
    """Two exchange-wide maintenance windows (30 and 90 minutes), as minute ranges."""
    if minutes < 1000:
        return []
    return [(minutes // 3, minutes // 3 + 30), (2 * minutes // 3, 2 * minutes // 3 + 90)]


def symbol_frame(
    spec: SymbolSpec, factor: np.ndarray, t0_us: int, seed: int, drop: list[tuple[int, int]]
) -> pl.DataFrame:
    """One symbol's 1m candles (KLINE_SCHEMA), sorted by open_time, holes ``drop`` removed."""
    n = factor.size
    rng = np.random.default_rng([seed, *spec.symbol.encode()])
    rho = spec.rho
    ret = spec.sigma * (rho * factor + math.sqrt(1 - rho * rho) * rng.standard_normal(n))
    tick = 10.0 ** -spec.price_decimals
    lot = 10.0 ** -spec.qty_decimals
    close = np.round(spec.price * np.exp(np.cumsum(ret)) / tick) * tick
    close = np.maximum(close, tick)
    open_ = np.empty(n)
    open_[0] = np.round(spec.price / tick) * tick
    open_[1:] = close[:-1]
    wick = spec.sigma * 0.6 * np.abs(rng.standard_normal((2, n)))
    high = np.maximum(np.ceil(np.maximum(open_, close) * (1 + wick[0]) / tick) * tick, np.maximum(open_, close))
    low = np.minimum(np.floor(np.minimum(open_, close) * (1 - wick[1]) / tick) * tick, np.minimum(open_, close))
    low = np.maximum(low, tick)
    quote_per_min = spec.daily_quote / 1440
    volume = np.round(rng.lognormal(np.log(quote_per_min / close) - 0.32, 0.8) / lot) * lot
    vwap = (high + low + close) / 3
    qdec = spec.price_decimals + spec.qty_decimals
    taker = np.round(volume * rng.uniform(0.35, 0.65, n) / lot) * lot
    times = t0_us + np.arange(n, dtype=np.int64) * MINUTE_US
    keep = np.ones(n, dtype=bool)
    for a, b in drop:
        keep[a:b] = False
    frame = pl.DataFrame(
        {
            "symbol": spec.symbol,
            "interval": "1m",
            "open_time": times,
            "close_time": times + MINUTE_US - 1000,
            "open": open_.round(spec.price_decimals),
            "high": high.round(spec.price_decimals),
            "low": low.round(spec.price_decimals),
            "close": close.round(spec.price_decimals),
            "volume": volume.round(spec.qty_decimals),
            "quote_volume": (volume * vwap).round(qdec),
            "trades": np.maximum(1, (volume * vwap / rng.uniform(800, 3000, n)).astype(np.int64)),
            "taker_buy_volume": taker.round(spec.qty_decimals),
            "taker_buy_quote_volume": (taker * vwap).round(qdec),
        }
    ).filter(pl.Series(keep))
    return frame.with_columns(pl.col("open_time", "close_time").cast(pl.Datetime("us"))).cast(KLINE_SCHEMA)


def build(
    path: str | os.PathLike[str],
    symbols: int = 50,
    days: int = 365,
    seed: int = 0,
    indicators: bool = True,
    *,
    end: dt.datetime = END,
    progress: bool = False,
    order: str = "symbol",
) -> Path:
    """Write a ``symbols`` x ``days`` 1m store at ``path`` (replaced if present); returns the path.

    ``order="symbol"`` stores rows sorted by (symbol, open_time), as an import leaves
    them; ``"time"`` by (open_time, symbol), as a year of live appends would (to
    measure what the layout does to queries).
    """
    if symbols < 1 or days < 1:
        raise ValueError(f"need symbols >= 1 and days >= 1, got {symbols} and {days}")
    if order not in ("symbol", "time"):
        raise ValueError(f"order must be 'symbol' or 'time', got {order!r}")
    path = Path(path)
    for p in (path, Path(f"{path}.wal")):
        p.unlink(missing_ok=True)
    store.prepare(path, MARKET)
    minutes = days * 1440
    start = end - dt.timedelta(minutes=minutes)
    t0_us = int(start.replace(tzinfo=dt.UTC).timestamp()) * 1_000_000
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal(minutes)
    windows = maintenance(minutes)
    chosen = specs(symbols)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(chosen), unit="symbol", desc=f"building {path.name}")
    con = duckdb.connect(str(path))
    # time order: stage per symbol in temporary tables, then insert sorted by time
    target = {"klines": "klines", "indicators": "indicators"}
    if order == "time":
        for table in target:
            con.execute(f"CREATE TEMP TABLE stage_{table} AS SELECT * FROM {table} LIMIT 0")
            target[table] = f"stage_{table}"
    try:
        for i, spec in enumerate(chosen):
            drop = windows + _holes(np.random.default_rng([seed, 7, i]), minutes)
            frame = symbol_frame(spec, factor, t0_us, seed, drop)
            con.register("f", frame.to_arrow())
            con.execute(f"INSERT INTO {target['klines']} SELECT * FROM f")
            con.unregister("f")
            if indicators:
                ind = add_signal(add_indicators(frame.select("symbol", "interval", "open_time", "close")))
                con.register("f", ind.select(list(INDICATOR_SCHEMA)).to_arrow())
                con.execute(f"INSERT INTO {target['indicators']} SELECT * FROM f")
                con.unregister("f")
            if bar is not None:
                bar.update()
        if order == "time":
            for table, stage in target.items():
                con.execute(f"INSERT INTO {table} SELECT * FROM {stage} ORDER BY open_time, symbol")
                con.execute(f"DROP TABLE {stage}")
        checked = end.replace(tzinfo=None)
        for a, b in windows:
            lo, hi = start + dt.timedelta(minutes=a), start + dt.timedelta(minutes=b)
            con.execute(
                "INSERT INTO empty_ranges SELECT DISTINCT symbol, '1m', ?, ?, ? FROM klines",
                [lo, hi, checked],
            )
        con.execute(
            """INSERT OR REPLACE INTO tickers
               SELECT symbol, max(close_time), arg_max(close, open_time),
                      arg_max(close, open_time) - arg_min(open, open_time),
                      round(100 * (arg_max(close, open_time) / arg_min(open, open_time) - 1), 3),
                      arg_min(open, open_time), max(high), min(low), sum(volume), sum(quote_volume),
                      sum(trades)
               FROM klines WHERE open_time >= ? GROUP BY symbol""",
            [end - dt.timedelta(days=1)],
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()
        if bar is not None:
            bar.close()
    return path


def cache_path(days: int = 365, symbols: int = 50, seed: int = 0, indicators: bool = True) -> Path:
    tag = "" if indicators else "-noind"
    return CACHE / f"bigstore-{symbols}x{days}d-s{seed}{tag}-v{VERSION}.duckdb"


def cached(days: int = 365, symbols: int = 50, *, seed: int = 0, indicators: bool = True) -> Path:
    """The path of a built store of this size under benchmarks/.cache/, building it once.

    Safe to call from several processes at once: one builds (under a file lock)
    into a temporary name and renames it; the others wait and reuse it. Open it
    read-only (store.query / store.reader) or copy it before writing to it.
    """
    target = cache_path(days, symbols, seed, indicators)
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / (target.name + ".lock")).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            fd, tmp = tempfile.mkstemp(prefix=target.stem + "-", suffix=".building.duckdb", dir=CACHE)
            os.close(fd)
            tmp_path = Path(tmp)
            try:
                build(tmp_path, symbols, days, seed, indicators, progress=sys.stderr.isatty())
                tmp_path.replace(target)
            finally:
                for p in (tmp_path, Path(f"{tmp_path}.wal")):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
    return target


def positive(text: str) -> int:
    """``type=`` for the benchmarks' counts: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


class Parser(argparse.ArgumentParser):
    """The benchmarks' parser: a bad argument is one plain line (``prog: message``), exit 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: {message}\n")


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="bigstore", description="Build a realistic long-history 1m store for benchmarks.")
    ap.add_argument("--days", type=positive, default=365, help="days of 1m candles (default 365)")
    ap.add_argument("--symbols", type=positive, default=50, help="number of symbols (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-indicators", action="store_true", help="leave the indicators table empty")
    ap.add_argument("--order", choices=("symbol", "time"), default="symbol",
                    help="row order on disk: by symbol then time (an import), or by time (live appends); with --out")
    ap.add_argument("--out", type=Path, help="file to write (default: the cache file under benchmarks/.cache/)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    if args.out is None:
        path = cached(args.days, args.symbols, seed=args.seed, indicators=not args.no_indicators)
    else:
        if args.out.is_dir():
            ap.error(f"--out {args.out} is a folder; give a file path")
        path = build(args.out, args.symbols, args.days, args.seed, not args.no_indicators, progress=True,
                     order=args.order)
    size = path.stat().st_size
    rows = store.query("SELECT count(*) AS n FROM klines", db=path)["n"][0]
    print(f"{path}: {rows:,} candles, {size / 1e6:,.0f} MB, {size / max(rows, 1):.1f} bytes/candle, "
          f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
