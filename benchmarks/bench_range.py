"""How fast the main chart answers a pan or zoom across a year of 1m candles.

    .venv/bin/python benchmarks/bench_range.py [--changes 200] [--symbol BTCUSDT] [--seed 1]

On the 50-symbol x 1-year store (``benchmarks/bigstore.cached()``, 26M candles)
one session's ``ChartPanel`` gets range changes as the browser sends them after a
pan or zoom (``on_range(x0, x1)``): half random jumps (a view 2 hours to a whole
year wide anywhere in the year, so every timeframe from 1m to 1d is picked),
half pans to the left by 60% of the view (the next older window). Each change is
timed from the call to the serialized Bokeh patch the server would send (query,
indicators with warm-up, source columns, ``PATCH-DOC`` message with its binary
buffers). The baseline in the same run is the floor of any store read: opening
the file read-only, ``SELECT 1``, closing it.
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bigstore import Parser, positive  # noqa: E402

from tqdm import tqdm  # noqa: E402

DAY = 86_400_000




def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="bench_range", description="Time the chart's answer to pans and zooms on a 1-year store.")
    ap.add_argument("--changes", type=positive, default=200, help="range changes to time (default 200)")
    ap.add_argument("--symbol", default="BTCUSDT", help="symbol to chart (default BTCUSDT)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random views (default 1)")
    args = ap.parse_args(argv)

    from bokeh.document import Document
    from bokeh.protocol import Protocol

    import store
    from benchmarks.bigstore import cached
    from dashboard.chart_panel import ChartPanel
    from dashboard.config import AppConfig
    from dashboard.live import SharedFeed
    from store import history

    db = cached()
    first, last = history.span(args.symbol, db=db)
    if first is None:
        ap.error(f"{args.symbol} is not in {db}; use one of its symbols (BTCUSDT, ETHUSDT, ...)")
    if True:  # noqa: SIM108 (kept as a block for the comment)
        # the app's feed, never started (nothing is written to the cached file), its
        # memory seeded with the newest candles as the pipeline does on start
        feed = SharedFeed(AppConfig(db=str(db), symbols=[args.symbol]))
        feed.state.seed(history.recent_klines([args.symbol], "1m", 2000, db=db))
        chart = ChartPanel(feed, args.symbol)
        doc = Document()
        doc.add_root(chart.chart.layout)
        events: list = []
        doc.on_change(events.append)
        protocol = Protocol()

        rng = random.Random(args.seed)
        lo, hi = (first - dt.datetime(1970, 1, 1)) / dt.timedelta(milliseconds=1), \
                 (last - dt.datetime(1970, 1, 1)) / dt.timedelta(milliseconds=1)
        times, cpus, floor, per_tf, candles = [], [], [], {}, []
        for i in tqdm(range(args.changes), desc="range changes", unit="change"):
            if i % 2 == 0:
                span = 10 ** rng.uniform(0, 1) * 2 * 3_600_000 if rng.random() < 0.3 else \
                    10 ** rng.uniform(0, 1) * 10 ** rng.uniform(0, 1) * 3.65 * DAY
                span = min(span, hi - lo)
                x0 = rng.uniform(lo, hi - span)
                x1 = x0 + span
            else:
                x0, x1 = chart.chart.view()
                shift = 0.6 * (x1 - x0)
                x0, x1 = max(lo, x0 - shift), max(lo, x0 - shift) + (x1 - x0)
            events.clear()
            started, cpu = time.perf_counter(), time.process_time()
            chart.on_range(x0, x1)
            msg = protocol.create("PATCH-DOC", list(events)) if events else None
            if msg is not None:
                msg.content  # noqa: B018  (serialized lazily: touch it)
            took = (time.perf_counter() - started) * 1000
            times.append(took)
            cpus.append((time.process_time() - cpu) * 1000)
            per_tf.setdefault(chart.timeframe, []).append(took)
            candles.append(len(chart.chart.closed.data["time"]))
            t = time.perf_counter()
            store.query("SELECT 1", db=db)
            floor.append((time.perf_counter() - t) * 1000)

    med, p95 = statistics.median(times), pct(times, 0.95)
    fmed = statistics.median(floor)
    print(f"store: {db.name} ({db.stat().st_size / 1e9:.2f} GB), symbol {args.symbol}, {args.changes} changes")
    print(f"range change (query + indicators + patch): median {med:.0f} ms, p95 {pct(times, 0.95):.0f} ms, "
          f"max {max(times):.0f} ms; candles drawn: median {statistics.median(candles):.0f}, max {max(candles)}")
    print(f"CPU time of this process per change (all threads; less sensitive to a busy box): "
          f"median {statistics.median(cpus):.0f} ms, p95 {pct(cpus, 0.95):.0f} ms")
    print(f"baseline (open read-only + SELECT 1 + close): median {fmed:.1f} ms; ratio median {med / fmed:.1f}x")
    for tf, vals in sorted(per_tf.items(), key=lambda kv: kv[1][0]):
        print(f"  {tf:>3}: {len(vals):3d} changes, median {statistics.median(vals):.0f} ms, p95 {pct(vals, 0.95):.0f} ms")
    print(f"under 300 ms: {sum(t < 300 for t in times)}/{len(times)} (p95 {p95:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
