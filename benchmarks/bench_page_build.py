"""Server-side cost of one session's page: ``Dashboard(feed)`` plus building its Bokeh document.

    .venv/bin/python benchmarks/bench_page_build.py [--runs 7] [--symbols 5]

A real DuckDB file (random 1m candles, 20,000 minutes per symbol, in a temporary
folder) and the app's ``SharedFeed`` with its memory seeded as after a start (the
pipeline is not started). Each run builds the page object, then the document
Panel would send (``template.server_doc``); the first two runs warm up. To
compare with an older commit, run the same file from an export of that commit
(``git archive COMMIT | tar -x -C /tmp/old``, then ``PYTHONPATH=/tmp/old``).
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bigstore import Parser, positive  # noqa: E402




def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="bench_page_build", description="Time building one session's dashboard page on the server.")
    ap.add_argument("--runs", type=positive, default=7, help="timed builds after 2 warm-up ones (default 7)")
    ap.add_argument("--symbols", type=positive, default=5, help="symbols in the store (default 5)")
    args = ap.parse_args(argv)

    import polars as pl
    from bokeh.document import Document

    from dashboard.config import AppConfig
    from dashboard.live import SharedFeed
    from dashboard.view import Dashboard
    from store.writer import Writer
    from tests.conftest import random_klines

    symbols = [f"S{i:02d}USDT" for i in range(args.symbols)]
    t0 = dt.datetime(2026, 1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        feed = SharedFeed(AppConfig(db=str(Path(tmp) / "page.duckdb"), symbols=symbols))
        full = random_klines(symbols, 20_000, start=t0)
        w = Writer(feed.pipeline.db)
        w.add_klines(full)
        w.close()
        feed.state.seed(full.filter(pl.col("open_time") >= t0 + dt.timedelta(minutes=18_000)))
        feed.snapshot()
        builds, docs = [], []
        for i in range(args.runs + 2):
            started = time.perf_counter()
            page = Dashboard(feed)
            built = time.perf_counter()
            page.__panel__().server_doc(Document())
            done = time.perf_counter()
            page._callback.stop()
            if i >= 2:
                builds.append((built - started) * 1000)
                docs.append((done - built) * 1000)
    total = [a + b for a, b in zip(builds, docs)]
    print(f"{args.runs} page builds: Dashboard() median {statistics.median(builds):.0f} ms, "
          f"document median {statistics.median(docs):.0f} ms, total median {statistics.median(total):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
