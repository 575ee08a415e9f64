"""The queries users run, timed on the 50-symbol x 1-year store (26.3M 1m candles).

    .venv/bin/python benchmarks/bench_queries.py [--days 365] [--symbols 50] [--repeats 7]

Each query runs in this process through store.history (so every figure includes
opening the file read-only and closing it, as the app and notebooks pay it),
``--repeats`` times after one warm-up run; the median is reported next to its
target. The store is ``benchmarks.bigstore.cached()`` (built on first use).
The floor in the last rows: opening and closing the file with a trivial query,
which every call pays.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import store  # noqa: E402
from benchmarks.bigstore import cached, specs  # noqa: E402
from market.candles import resample  # noqa: E402
from market.schema import KLINE_SCHEMA  # noqa: E402
from store import history  # noqa: E402


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` runs after one warm-up; returns the last result too."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--db", type=Path, help="a store to query instead of the cached big one")
    ap.add_argument("--no-before", action="store_true", help="skip the replaced query shapes (slow)")
    args = ap.parse_args()
    db = args.db or cached(args.days, args.symbols)
    cov0 = history.coverage(db=db)
    last = cov0["last"].max()
    sym = "ETHUSDT" if "ETHUSDT" in cov0["symbol"].to_list() else cov0["symbol"][0]
    symbols = [s.symbol for s in specs(args.symbols)]
    month = (last - dt.timedelta(days=30), last + dt.timedelta(minutes=1))
    year = (last - dt.timedelta(days=365), last + dt.timedelta(minutes=1))

    rows: list[tuple[str, float, float | None, str]] = []

    def bench(name: str, fn: Callable[[], object], target: float | None) -> None:
        sec, out = timed(fn, args.repeats)
        shape = f"{out.height:,} rows" if isinstance(out, pl.DataFrame) else str(out)
        rows.append((name, sec, target, shape))
        print(f"  {name}: {sec * 1000:,.0f} ms ({shape})", file=sys.stderr, flush=True)

    bench("open + `SELECT 1` + close (floor every call pays)", lambda: store.query("SELECT 1", db=db), None)
    bench(f"last 1,000 candles of {sym}: recent_klines([S], 1m, 1000)",
          lambda: history.recent_klines([sym], "1m", 1000, db=db), 0.05)
    bench(f"last 1,000 candles + indicators of {sym}: with_indicators(limit=1000)",
          lambda: history.with_indicators(sym, db=db, limit=1000), 0.05)
    if hasattr(history, "candles"):
        bench(f"1h candles of {sym}, 30 days: candles(S, 1h, a, b)",
              lambda: history.candles(sym, "1h", *month, db=db), 0.2)
        bench(f"1d candles of {sym}, 1 year: candles(S, 1d, a, b)",
              lambda: history.candles(sym, "1d", *year, db=db), 0.3)
        bench(f"4h candles of {sym}, whole history, at most 2,000: candles(S, 4h, limit=2000)",
              lambda: history.candles(sym, "4h", None, None, limit=2000, db=db), 0.3)
        bench(f"1m candles of {sym}, 1 year, at most 5,000 (newest): candles(S, 1m, a, b, 5000)",
              lambda: history.candles(sym, "1m", *year, limit=5000, db=db), 0.3)
    bench(f"1h resample of 30 days of {sym} in polars: resample(klines(S, 1m, a, b), 1h)",
          lambda: resample(history.klines(sym, "1m", *month, db=db), "1h"), 0.2)
    bench(f"one symbol's year of 1m: klines({sym})", lambda: history.klines(sym, db=db), None)
    bench("coverage()", lambda: history.coverage(db=db), 0.5)
    bench("gaps()", lambda: history.gaps(db=db), 2.0)
    for n in (500, 2000):
        bench(f"start-up load: recent_klines({len(symbols)} symbols, 1m, {n})",
              lambda n=n: history.recent_klines(symbols, "1m", n, db=db), None)

    # The query shapes these functions replaced, for the before/after ratio in the same run.
    if not args.no_before:
        cols = ", ".join(KLINE_SCHEMA)
        before = [
            ("before: recent_klines as a window over all rows, 50 x 2000", lambda: store.query(
                f"""SELECT {cols} FROM klines WHERE interval = ? AND symbol IN (SELECT unnest(?::VARCHAR[]))
                    QUALIFY row_number() OVER (PARTITION BY symbol ORDER BY open_time DESC) <= ?
                    ORDER BY symbol, open_time""", ["1m", symbols, 2000], db=db)),
            ("before: gaps() as lead() over all rows", lambda: store.query(
                """SELECT symbol, open_time + to_milliseconds(60000) AS gap_start, next_open AS gap_end,
                          (epoch_ms(next_open) - epoch_ms(open_time)) // 60000 - 1 AS missing
                   FROM (SELECT symbol, open_time, lead(open_time) OVER (PARTITION BY symbol ORDER BY open_time)
                         AS next_open FROM klines WHERE interval = '1m')
                   WHERE epoch_ms(next_open) - epoch_ms(open_time) > 60000 ORDER BY symbol, gap_start""", db=db)),
        ]
        keep = args.repeats
        args.repeats = 2
        for name, fn in before:
            bench(name, fn, None)
        args.repeats = keep

    size = db.stat().st_size
    candles = int(cov0["candles"].sum())
    print()
    print(f"store: {db.name}, {candles:,} 1m candles, {size / 1e9:.2f} GB ({size / candles:.1f} bytes/candle)")
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, duckdb {duckdb.__version__}, "
          f"polars {pl.__version__}; median of {args.repeats}")
    print()
    print("| query | median ms | target ms | result |")
    print("| --- | ---: | ---: | --- |")
    for name, sec, target, shape in rows:
        goal = "" if target is None else f"{target * 1000:,.0f}"
        flag = "" if target is None or sec <= target else " **over**"
        print(f"| {name} | {sec * 1000:,.0f}{flag} | {goal} | {shape} |")


if __name__ == "__main__":
    main()
