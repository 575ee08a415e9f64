"""Dump import speed against a bare DuckDB ``read_csv`` of the same files, in one run.

    .venv/bin/python benchmarks/bench_import.py [--symbols 2] [--months 6] [--repeat 3]

Writes ``--symbols`` x ``--months`` monthly 1m futures dumps (zip + CHECKSUM,
header row, as data.binance.vision publishes them) and their extracted CSVs to a
temporary folder, then times, best of ``--repeat``, each into a fresh file:

1. baseline: DuckDB ``CREATE TABLE AS SELECT * FROM read_csv([...csv files])``;
2. ``store.import_dumps`` candles only: checksum, unzip, parse, check every row,
   write (one transaction per file, the key rule);
3. the same plus indicators (RSI/StochRSI/signal over each series' history);

then one more daily file on top of the last store (what a daily top-up costs).

Prints rows/s of each and the ratios to the baseline, by wall time and by CPU
time (all threads of this process: steadier when other work shares the box).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from market.dumps import COLUMNS, Dump  # noqa: E402
from market.presets import get_preset  # noqa: E402
from store.import_dumps import import_files  # noqa: E402


def write_month(root: Path, symbol: str, year: int, month: int, rng: np.random.Generator,
                day: int | None = None) -> tuple[Path, Path, int]:
    dump = Dump(symbol, "1m", year, month, day)
    start = int(dump.start.replace(tzinfo=dt.UTC).timestamp() * 1000)
    n = int((dump.end - dump.start).total_seconds() // 60)
    t = start + np.arange(n, dtype=np.int64) * 60_000
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.001, n))), 2)
    vol = np.round(rng.uniform(1, 500, n), 3)
    frame = pl.DataFrame({
        "open_time": t, "open": np.round(close * (1 + rng.normal(0, 0.0005, n)), 2),
        "high": np.round(close * 1.001, 2), "low": np.round(close * 0.999, 2), "close": close,
        "volume": vol, "close_time": t + 59_999, "quote_volume": np.round(vol * close, 5),
        "count": rng.integers(1, 5000, n), "taker_buy_volume": np.round(vol / 2, 3),
        "taker_buy_quote_volume": np.round(vol * close / 2, 5), "ignore": 0,
    })
    csv = (",".join(COLUMNS) + "\n").encode() + frame.write_csv(include_header=False).encode()
    target = root / "zips" / dump.relpath("futures/um")
    target.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(dump.stem + ".csv", csv)
    target.write_bytes(buf.getvalue())
    target.with_name(target.name + ".CHECKSUM").write_text(
        f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {target.name}\n")
    plain = root / "csv" / f"{dump.stem}.csv"
    plain.parent.mkdir(parents=True, exist_ok=True)
    plain.write_bytes(csv)
    return target, plain, n


def baseline(csvs: list[Path], db: Path) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t AS SELECT * FROM read_csv(?, header = true)", [[str(p) for p in csvs]])
    con.close()
    return time.perf_counter() - t, time.process_time() - c


def ours(zips: list[Path], db: Path, indicators: bool) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    reports = import_files(zips, db, get_preset("binance-futures"), progress=False, indicators=indicators).reports
    assert all(r.error is None for r in reports), [r.error for r in reports if r.error]
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--symbols", type=int, default=2)
    p.add_argument("--months", type=int, default=6)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made = [write_month(root, f"SYM{s}USDT", 2024, m, rng)
                for s in range(a.symbols) for m in range(1, a.months + 1)]
        zips, csvs, rows = [z for z, _, _ in made], [c for _, c, _ in made], sum(n for _, _, n in made)
        mb = sum(z.stat().st_size for z in zips) / 1e6
        print(f"{len(zips)} files, {rows:,} rows, {mb:.1f} MB zipped; {platform.processor() or platform.machine()}, "
              f"duckdb {duckdb.__version__}, polars {pl.__version__}")
        best = {"baseline": [], "candles": [], "with indicators": []}
        for i in range(a.repeat):
            best["baseline"].append(baseline(csvs, root / f"b{i}.duckdb"))
            best["candles"].append(ours(zips, root / f"c{i}.duckdb", False))
            best["with indicators"].append(ours(zips, root / f"i{i}.duckdb", True))
        # Wall time is what a user waits for; CPU time (all threads of this process) is
        # steadier on a shared box, where other sessions' load stretches wall time.
        base_wall, base_cpu = (min(x[i] for x in best["baseline"]) for i in (0, 1))
        for name, times in best.items():
            wall, cpu = min(x[0] for x in times), min(x[1] for x in times)
            print(f"{name:>16}: wall {wall:6.2f} s  {rows / wall / 1e6:5.2f} M rows/s  ratio {wall / base_wall:4.2f}"
                  f"  | cpu {cpu:6.2f} s  ratio {cpu / base_cpu:4.2f}"
                  f"  (wall runs: {', '.join(f'{x[0]:.2f}' for x in times)})")
        # the daily case: one more day of one symbol on top of everything just imported
        nxt = Dump("SYM0USDT", "1m", 2024, a.months).end
        day, _, n = write_month(root / "day", "SYM0USDT", nxt.year, nxt.month, rng, day=1)
        wall, cpu = ours([day], root / f"i{a.repeat - 1}.duckdb", True)
        print(f"one day ({n:,} rows) on top, with indicators: wall {wall:.2f} s, cpu {cpu:.2f} s")


if __name__ == "__main__":
    main()
