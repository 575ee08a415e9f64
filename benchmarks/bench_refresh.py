"""What the backfill's check for candles without indicators costs on a year of 50 symbols.

    .venv/bin/python benchmarks/bench_refresh.py [--repeat 3]

Every ``python -m store.backfill`` run asks ``store.refresh.unindexed`` about each
series it looks at (so a run killed between candles and indicators is finished by
the next). Compared, in the same run on the same file, with what planning a run
already costs: ``store.ranges.missing`` over the same series (the holes query).
The file is benchmarks/bigstore.py's cached 50 x 365 days store (26M candles, every
one with its indicator row), opened read-only; best of ``--repeat`` runs each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import store  # noqa: E402
from benchmarks.bigstore import cached  # noqa: E402
from store import ranges, refresh  # noqa: E402


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    db = cached()
    symbols = store.query("SELECT DISTINCT symbol FROM klines ORDER BY symbol", db=db)["symbol"].to_list()
    n = store.query("SELECT count(*) AS n FROM klines", db=db)["n"][0]
    check, stale = best(lambda: refresh.unindexed(symbols, "1m", db=db), args.repeat)
    plan, _ = best(lambda: ranges.missing(symbols, "1m", db=db), args.repeat)
    print(f"store: {db.name}, {len(symbols)} symbols, {n:,} candles")
    print(f"refresh.unindexed (the check, nothing stale: {len(stale)} found): {check:.3f} s")
    print(f"ranges.missing (the planning query, baseline): {plan:.3f} s")
    print(f"ratio check / planning: {check / plan:.2f}")


if __name__ == "__main__":
    main()
