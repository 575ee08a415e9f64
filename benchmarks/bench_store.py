"""Writer throughput and file size, in one run.

    .venv/bin/python benchmarks/bench_store.py [--rows 5000000]

1. Builds a file of ``--rows`` 1m candles (50 symbols) with one bulk load.
2. Appends 100-row and 10,000-row batches through ``store.Writer`` (each flush
   opens the file, deletes the batch's keys in its time range, inserts, commits,
   closes) and reports rows/s, next to a plain ``INSERT ... SELECT`` of the same
   batch on an already-open connection (the floor: no open/close, no dedupe).
3. Bytes per candle on disk: after the bulk load, and after 1,000 minute-sized
   flushes of 50 rows each (what the live app does once a minute per symbol),
   with realistic tick-rounded prices, against a bulk load of the same rows,
   with the writer's compaction (the default) and without.
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
from benchmarks.bigstore import specs, symbol_frame  # noqa: E402
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


def realistic_minutes(n_minutes: int) -> list[pl.DataFrame]:
    """n_minutes one-minute batches of 50 symbols, prices as benchmarks/bigstore.py rounds them."""
    start = dt.datetime(2021, 1, 1)
    t0 = int(start.replace(tzinfo=dt.UTC).timestamp()) * 1_000_000
    factor = np.random.default_rng(0).standard_normal(n_minutes)
    rows = pl.concat([symbol_frame(s, factor, t0, 0, []) for s in specs(len(SYMBOLS))])
    return rows.sort("open_time", "symbol").partition_by("open_time", maintain_order=True)


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in [path, Path(str(path) + ".wal")] if p.exists())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--flushes", type=int, default=20)
    ap.add_argument("--preload", type=int, default=20_000,
                    help="minutes bulk-loaded before 1,000 live flushes in the last section (0: skip it)")
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

    # Live-like: 1,000 flushes of one minute for 50 symbols into a fresh file, with
    # realistic prices (tick- and lot-rounded, as benchmarks/bigstore.py makes them),
    # against a bulk load of the same rows; with the writer's compaction and without.
    real = realistic_minutes(1000)
    bulk_db = tmp / "bulk_same_rows.duckdb"
    bw = store.Writer(bulk_db)
    bw.add_klines(pl.concat(real))
    bw.flush()
    same_bpr = file_bytes(bulk_db) / (1000 * len(SYMBOLS))
    live = {}
    for label, every in (("compaction off", 0), ("compaction on (default)", None)):
        live_db = tmp / f"live-{every}.duckdb"
        lw = store.Writer(live_db) if every is None else store.Writer(live_db, compact_every=every)
        t = time.perf_counter()
        samples = []  # mid-way between the writer's checks, once the file is past a few blocks
        for m, frame in enumerate(real):
            lw.add_klines(frame)
            lw.flush(force=True)
            if m + 1 >= 250 and (m + 1) % 50 == 25:
                samples.append(file_bytes(live_db) / ((m + 1) * len(SYMBOLS)))
        live[label] = (file_bytes(live_db) / (1000 * len(SYMBOLS)), float(np.median(samples)), max(samples),
                       (time.perf_counter() - t) / 1000 * 1000, lw.compactions)
    # The same 1,000 minute flushes on top of a file already holding --preload minutes
    # (bulk-loaded), compaction off: is the waste per candle or a constant?
    preloaded = None
    if args.preload:
        rows = pl.concat(realistic_minutes(args.preload + 1000))
        cut = rows["open_time"].unique().sort()[args.preload]
        old, new = rows.filter(pl.col("open_time") < cut), rows.filter(pl.col("open_time") >= cut)
        sizes = {}
        for label in ("bulk", "live"):
            pdb = tmp / f"pre-{label}.duckdb"
            pw = store.Writer(pdb, compact_every=0)
            pw.add_klines(old)
            pw.flush()
            if label == "bulk":
                pw.add_klines(new)
                pw.flush()
            else:
                for frame in new.partition_by("open_time", maintain_order=True):
                    pw.add_klines(frame)
                    pw.flush(force=True)
            sizes[label] = file_bytes(pdb) / rows.height
        preloaded = (rows.height, sizes["bulk"], sizes["live"])

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
    print(f"bytes per candle: bulk load of {base_rows:,} random-price rows {bulk_bpr:.1f}")
    print()
    print("1,000 flushes of one minute x 50 symbols (realistic tick/lot-rounded prices), fresh file:")
    print()
    print("| writer | bytes/candle after 1,000 | median / max from flush 275 on (every 50) | median vs bulk | ms/flush | compactions |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| bulk load of the same rows, one flush | {same_bpr:.1f} | | 1.00 | | |")
    for label, (bpr, med, worst, ms, n) in live.items():
        print(f"| {label} | {bpr:.1f} | {med:.1f} / {worst:.1f} | {med / same_bpr:.2f} | {ms:.0f} | {n} |")
    if preloaded:
        n, b, lv = preloaded
        print(f"\n{n:,} candles, the last 50,000 by 1,000 minute flushes (compaction off): {lv:.1f} bytes/candle "
              f"against {b:.1f} all bulk-loaded ({lv / b:.2f}x)")
    print(f"duplicate keys after the run: {dup}")


if __name__ == "__main__":
    main()
