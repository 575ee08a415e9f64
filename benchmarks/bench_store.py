"""Writer throughput and file size, in one run.

    .venv/bin/python benchmarks/bench_store.py [--rows 5000000]

1. Builds a file of ``--rows`` 1m candles (50 symbols) with one bulk load.
2. Appends 100-row and 10,000-row batches through ``store.Writer`` (each flush
   opens the file, deletes the batch's keys in its time range, inserts, commits,
   closes) and reports rows/s, next to a plain ``INSERT ... SELECT`` of the same
   batch on an already-open connection (the floor: no open/close, no dedupe).
3. Bytes per candle on disk: after the bulk load, and after 1,000 minute-sized
   flushes of 50 rows each (what the live app does once a minute per symbol).
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from market.schema import KLINE_SCHEMA  # noqa: E402

SYMBOLS = [f"SYM{i:02d}USDT" for i in range(50)]


def candles(n_minutes: int, start: dt.datetime, seed: int) -> pl.DataFrame:
    """n_minutes x 50 symbols of random candles, ordered by time then symbol (arrival order)."""
    rng = np.random.default_rng(seed)
    n = n_minutes * len(SYMBOLS)
    t0 = int(start.timestamp() * 1e6)
    times = t0 + np.repeat(np.arange(n_minutes, dtype=np.int64) * 60_000_000, len(SYMBOLS))
    close = 100 * np.exp(rng.normal(0, 0.01, n))
    return pl.DataFrame(
        {
            "symbol": np.tile(SYMBOLS, n_minutes),
            "interval": "1m",
            "open_time": times,
            "close_time": times + 59_999_000,
            "open": close * (1 + rng.normal(0, 0.001, n)),
            "high": close * 1.002,
            "low": close * 0.998,
            "close": close,
            "volume": rng.uniform(0, 1000, n),
            "quote_volume": rng.uniform(0, 1e6, n),
            "trades": rng.integers(0, 5000, n),
            "taker_buy_volume": rng.uniform(0, 500, n),
            "taker_buy_quote_volume": rng.uniform(0, 5e5, n),
        }
    ).with_columns(pl.col("open_time", "close_time").cast(pl.Datetime("us"))).cast(KLINE_SCHEMA)


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in [path, Path(str(path) + ".wal")] if p.exists())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--flushes", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    db = tmp / "bench.duckdb"
    minutes = args.rows // len(SYMBOLS)
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)

    t = time.perf_counter()
    w = store.Writer(db)
    w.add_klines(candles(1, start - dt.timedelta(minutes=1), 0))
    w.flush()  # creates the schema
    con = duckdb.connect(str(db))
    chunk = 1_000_000 // len(SYMBOLS)
    for i in range(0, minutes, chunk):
        frame = candles(min(chunk, minutes - i), start + dt.timedelta(minutes=i), i)
        con.register("f", frame.to_arrow())
        con.execute("INSERT INTO klines SELECT * FROM f")
        con.unregister("f")
    con.close()
    load_s = time.perf_counter() - t
    base_rows = minutes * len(SYMBOLS) + len(SYMBOLS)
    bulk_bpr = file_bytes(db) / base_rows
    print(f"bulk load of {base_rows:,} rows: {load_s:.1f} s, {bulk_bpr:.1f} bytes/candle")

    results = []
    next_minute = minutes
    for size in (100, 10_000):
        # Writer: open + dedupe + insert + close per flush
        times = []
        for k in range(args.flushes):
            n_min = max(1, size // len(SYMBOLS))
            frame = candles(n_min, start + dt.timedelta(minutes=next_minute), 10_000 + k).head(size)
            next_minute += n_min
            w.add_klines(frame)
            t = time.perf_counter()
            w.flush(force=True)
            times.append(time.perf_counter() - t)
        writer_rps = size / float(np.median(times))
        # Floor: the same insert on an open connection, no dedupe, no open/close
        con = duckdb.connect(str(db))
        ftimes = []
        for k in range(args.flushes):
            n_min = max(1, size // len(SYMBOLS))
            frame = candles(n_min, start + dt.timedelta(minutes=next_minute), 20_000 + k).head(size)
            next_minute += n_min
            con.register("f", frame.to_arrow())
            t = time.perf_counter()
            con.execute("INSERT INTO klines SELECT * FROM f")
            ftimes.append(time.perf_counter() - t)
            con.unregister("f")
        con.close()
        floor_rps = size / float(np.median(ftimes))
        results.append((size, writer_rps, float(np.median(times)) * 1000, floor_rps))

    # Live-like: 1,000 flushes of one minute for 50 symbols into a fresh file
    live_db = tmp / "live.duckdb"
    lw = store.Writer(live_db)
    t = time.perf_counter()
    for m in range(1000):
        lw.add_klines(candles(1, start + dt.timedelta(minutes=m), m))
        lw.flush(force=True)
    live_s = time.perf_counter() - t
    live_bpr = file_bytes(live_db) / (1000 * len(SYMBOLS))
    dup = store.query("SELECT count(*) - count(DISTINCT (symbol, interval, open_time)) AS d FROM klines", db=db)["d"][0]

    print()
    print(f"machine: {os.cpu_count()} cores, duckdb {duckdb.__version__}, polars {pl.__version__}")
    print(f"file: {base_rows:,} candles before the appends; median of {args.flushes} flushes")
    print()
    print("| batch | Writer.flush (open, dedupe, insert, close) | ms/flush | plain INSERT on open connection | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for size, rps, ms, floor in results:
        print(f"| {size:,} rows | {rps:,.0f} rows/s | {ms:.0f} | {floor:,.0f} rows/s | {rps / floor:.2f} |")
    print()
    print(f"bytes per candle: bulk {bulk_bpr:.1f}; after 1,000 live flushes of 50 rows {live_bpr:.1f} "
          f"({live_s / 1000 * 1000:.0f} ms per flush)")
    print(f"duplicate keys after the run: {dup}")


if __name__ == "__main__":
    main()
