"""Server-side cost of one first page, in CPU ms of the building thread: the dashboard against the bare page.

Builds what ``panel serve`` builds per session, in process and without a browser:
the page object (``construct``), the document (``server_doc``: the template adds its
roots) and the PULL-DOC reply the browser receives (``pull_doc``: Bokeh's JSON of the
whole document). The dashboard reads a SharedFeed on a ``--demo`` store (an in-process
local exchange, 1,000 candles per symbol in memory) whose pipeline runs on its own
thread; thread CPU time keeps the figures apart from the feed and from other processes
on a loaded box. ``--cprofile`` prints the top functions.

    .venv/bin/python benchmarks/profile_session.py [--runs 5] [--cprofile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import panel as pn  # noqa: E402
from bokeh.document import Document  # noqa: E402
from bokeh.protocol import Protocol  # noqa: E402
from panel.io.state import set_curdoc  # noqa: E402


def measure(make, freeze: bool = True) -> dict[str, float]:
    """CPU ms of building one page with ``make()`` (returns a servable) into a fresh document."""
    doc = Document()
    with set_curdoc(doc):
        t0 = time.thread_time()
        page = make()
        t1 = time.thread_time()
        with doc.models.freeze() if freeze else _nothing():  # what Dashboard.servable does
            pn.panel(page).server_doc(doc)
        t2 = time.thread_time()
        msg = Protocol().create("PULL-DOC-REPLY", "x", doc)
        t3 = time.thread_time()
    size = len(msg.content_json) + sum(len(b.data) for b in msg.buffers)
    return {"construct": (t1 - t0) * 1000, "server_doc": (t2 - t1) * 1000, "pull_doc": (t3 - t2) * 1000,
            "total": (t3 - t0) * 1000, "kb": size / 1024, "models": len(list(doc.models))}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def bare_page():
    """The bench's bare page (bench_dashboard.BASELINE_APP) as an object."""
    from benchmarks.bench_dashboard import BASELINE_APP

    ns: dict = {}
    exec(BASELINE_APP.replace(".servable()", "").replace("pn.template.BootstrapTemplate(",
                                                         "page = pn.template.BootstrapTemplate(", 1), ns)
    return ns["page"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cprofile", action="store_true")
    a = p.parse_args()
    pn.extension("tabulator", notifications=True, design="bootstrap")
    from dashboard.config import AppConfig
    from dashboard.live import SharedFeed
    from dashboard.view import Dashboard

    config = AppConfig.from_args(["--demo", "--db", f"{tempfile.mkdtemp()}/demo.duckdb"])
    feed = SharedFeed(config)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    loop.call_soon_threadsafe(lambda: feed.start(loop, "server start"))
    while not (min(feed.state.candles(s).height for s in config.symbols) >= 500
               and "rsi" in (snap := feed.snapshot()).columns and snap["rsi"].null_count() == 0):
        time.sleep(0.5)

    def dashboard():
        return Dashboard(feed)

    rows = {"bare page": [], "dashboard": []}
    for run in range(a.runs + 1):  # the first of each is a warm-up, dropped
        rows["bare page"].append(measure(bare_page, freeze=False))  # as served: no freeze
        rows["dashboard"].append(measure(dashboard))
    print(f"CPU ms of the building thread, median of {a.runs} (load average {os.getloadavg()[0]:.1f})\n")
    print("| page | construct | server_doc | pull_doc | total | reply KB | models |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rs in rows.items():
        m = {k: statistics.median(r[k] for r in rs[1:]) for k in rs[0]}
        print(f"| {name} | {m['construct']:.0f} | {m['server_doc']:.0f} | {m['pull_doc']:.0f} | "
              f"{m['total']:.0f} | {m['kb']:.0f} | {m['models']:.0f} |")
    if a.cprofile:
        prof = cProfile.Profile(time.thread_time)
        prof.enable()
        measure(dashboard)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    os._exit(0)  # the feed's thread and exchange: no orderly shutdown needed for a measurement


if __name__ == "__main__":
    sys.exit(main())
