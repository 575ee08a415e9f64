"""How fast the Data page answers on the 1-year, 50-symbol store (26M candles).

Each figure is the server-side time of one page action (open the file in the
sandbox, run the statements, close), median of ``--repeat`` runs, next to the
floor: a bare read-only ``duckdb.connect`` + the same first-page SELECT + close.

    python benchmarks/bench_explorer.py [--repeat 5] [--db PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bigstore  # noqa: E402
from store import browse, sandbox  # noqa: E402
from store.browse import Filter  # noqa: E402


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bare(db: Path) -> None:
    con = duckdb.connect(str(db), read_only=True)
    con.sql("SELECT * FROM klines LIMIT 100").pl()
    con.sql("SELECT count(*) FROM klines").fetchall()
    con.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--db", type=Path, help="store to use (default: benchmarks/bigstore.cached())")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error("--repeat must be >= 1")
    db = a.db or bigstore.cached()
    floor = timed(lambda: bare(db), a.repeat)
    eth = [Filter("symbol", "=", "ETHUSDT")]
    cases = {
        "first page of klines (100 rows + count)": lambda: browse.page("klines", limit=100, db=db),
        "klines, newest first (top-N over 26M)": lambda: browse.page("klines", order_by="open_time",
                                                                       descending=True, db=db),
        "klines of one symbol, newest first": lambda: browse.page("klines", filters=eth, order_by="open_time",
                                                                   descending=True, db=db),
        "page 1000 of one symbol": lambda: browse.page("klines", filters=eth, offset=100_000, db=db),
        "find candles: 1 day of 1m": lambda: browse.candles("BTCUSDT", "1m", *_last_day(db), db=db),
        "coverage (50 symbols)": lambda: browse.coverage(db=db),
        "gaps of one symbol": lambda: browse.gaps("ETHUSDT", "1m", db=db),
        "SQL: top movers": lambda: sandbox.run("SELECT * FROM tickers ORDER BY abs(price_change_pct) DESC "
                                               "LIMIT 20", db=db),
    }
    print(f"store: {db} ({db.stat().st_size / 1e9:.2f} GB); median of {a.repeat}")
    print(f"{'bare connect + first page + count':45s} {floor:8.0f} ms   1.00x")
    for name, fn in cases.items():
        ms = timed(fn, a.repeat)
        print(f"{name:45s} {ms:8.0f} ms {ms / floor:6.2f}x")
    return 0


def _last_day(db: Path):
    last = sandbox.run("SELECT max(open_time) FROM klines WHERE symbol = 'BTCUSDT'", db=db).frame.item()
    import datetime as dt

    return last - dt.timedelta(days=1), last


if __name__ == "__main__":
    raise SystemExit(main())
