"""What the backfill's planning query costs on a year of 50 symbols: the holes between stored candles.

    .venv/bin/python benchmarks/bench_ranges.py [--repeat 3]

``store.ranges.holes`` (used by ``store.ranges.missing``, so by every
``python -m store.backfill`` run and ``--repair``) against, in the same run on the
same file, the form it replaced: one ``lead()`` window over every candle's
``epoch_ms(open_time)``, kept here verbatim as the baseline. Both answers are
compared (they must be equal), over the whole store and over a 30-day --since
window. The file is benchmarks/bigstore.py's cached 50 x 365 days store (26M
candles, holes and empty_ranges), opened read-only; best of ``--repeat`` runs each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import store  # noqa: E402
from benchmarks.bench_refresh import best  # noqa: E402
from benchmarks.bigstore import cached  # noqa: E402
from market.schema import interval_ms  # noqa: E402
from store import ranges  # noqa: E402

_OLD = """SELECT symbol, t + ? AS a, nxt AS b FROM (
            SELECT symbol, epoch_ms(open_time) AS t,
                   lead(epoch_ms(open_time)) OVER (PARTITION BY symbol ORDER BY open_time) AS nxt
            FROM klines
            WHERE interval = ? AND symbol IN (SELECT unnest(?::VARCHAR[]))
              AND open_time >= coalesce(make_timestamp((?)::BIGINT * 1000), '-infinity'::TIMESTAMP)
              AND open_time <  coalesce(make_timestamp((?)::BIGINT * 1000), 'infinity'::TIMESTAMP))
          WHERE nxt - t > ? ORDER BY symbol, a"""


def old_holes(symbols, interval, lo, hi, db) -> dict:
    """The lead() form ranges.holes used before (the baseline)."""
    step = interval_ms(interval)
    out: dict = {}
    for s, a, b in store.query(_OLD, [step, interval, symbols, lo, hi, step], db=db).iter_rows():
        out.setdefault(s, []).append((a, b))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each form; the best counts")
    repeat = parser.parse_args().repeat
    db = cached()
    symbols = [s for s, _ in ranges.series("1m", db=db)]  # what a --repair run plans for
    n, last = store.query("SELECT count(*) AS n, epoch_ms(max(open_time)) AS t FROM klines", db=db).row(0)
    print(f"store: {db.name}, {len(symbols)} symbols, {n:,} candles")
    for label, lo, hi in [("whole store", None, None), ("last 30 days", last - 30 * 86_400_000, last + 60_000)]:
        old_t, old = best(lambda: old_holes(symbols, "1m", lo, hi, db), repeat)
        new_t, new = best(lambda: ranges.holes(symbols, "1m", lo, hi, db=db), repeat)
        if new != old:
            raise SystemExit(f"{label}: the answers differ: {sum(map(len, old.values()))} holes before, "
                             f"{sum(map(len, new.values()))} now")
        print(f"{label}: {sum(map(len, new.values()))} holes; lead() baseline {old_t:.3f} s, "
              f"ranges.holes {new_t:.3f} s, ratio {old_t / new_t:.1f}x")


if __name__ == "__main__":
    main()
