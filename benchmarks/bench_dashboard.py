"""The dashboard measured in a real browser: start-up, tick-to-screen latency, server load, leaks.

Every server here is ``panel serve dashboard/app.py`` in a subprocess, the way users
start it, and every page is a headless Chromium (tests/browser.py) reading the Bokeh
models the page draws from.

1. start-up: a store of 50 symbols x 30 days of 1m candles (2.16M rows, built with
   the Writer in a temp dir); the time from spawning ``panel serve ... --args --demo
   --db STORE`` to the first complete page (price chart with candles, heatmap and
   table with values), counted from the process start and from the moment the
   server first answers HTTP (a request for ``/``, which builds no session).
2. tick-to-screen latency at Binance's real pace: a local exchange runs in its own
   process (``python -m market.exchange --speed 1``, 50 symbols); the app follows it
   with ``--ws-url/--rest-url``; this script subscribes its own client to the same
   BTCUSDT kline stream and logs when each (open time, close) arrived (on loopback
   that is when the exchange sent it to everyone). In each tab a 10 ms poll logs
   when the forming candle's (open time, close) changed in the page's Bokeh model.
   Latency = page time - arrival time of the same value (the earliest frame of a
   run carrying it), both wall clock on this machine. 1 tab; 10 tabs all drawing;
   10 tabs of which 9 are hidden (they apply every update but paint nothing); 1 tab
   plus 9 sessions synced to bokeh.client documents (no browser: the server does
   the same work per session, the client side costs far less than a tab).
3. server CPU and memory (psutil on the panel serve process) with 0, 1 and 10 tabs
   over the latency windows.
4. server memory over session open/close cycles: 200 page requests (each one runs
   app.py, builds the Dashboard and renders the page; no browser connects, so Bokeh
   destroys the session after --unused-session-lifetime, 3 s here), then 40
   sessions synced to a websocket client (bokeh.client.pull_session) and closed.
   RSS (psutil) before the first request and after 50, 100 and 200 requests and after
   the websocket ones, each 5 s after the last session closed; then the session count the status header
   shows to one new tab (1 = every earlier session is gone).

1b. first page (the issue's figure): request -> complete page in headless Chromium, the
   dashboard on the 1-year 50-symbol store (benchmarks/bigstore.py ``cached()``, copied;
   a local exchange process feeds it; ``--warm``, so history is loaded at server start)
   against a bare Panel page (Bootstrap template, five Bokeh plots of 2,000 points, a
   50-row Tabulator) served alongside, alternately, as a ratio of medians.

    .venv/bin/python benchmarks/bench_dashboard.py [--quick] [--only startup,firstpage,latency,cycles]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import psutil
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from market.presets import DEFAULT_SYMBOLS
from market.schema import KLINE_SCHEMA
from store.writer import Writer
from tests.browser import (
    VIEWPORT,
    Console,
    browser,
    complete,
    free_port,
    serve_app,
    sessions_shown,
    wait_state,
)

SMALL = {"width": 900, "height": 650}
REAP = ["--check-unused-sessions", "500", "--unused-session-lifetime", "3000"]


# --- helpers ---------------------------------------------------------------------------------

def build_store(path: Path, symbols: int = 50, days: int = 30, market: str = "demo") -> tuple[int, float]:
    """Random-walk 1m candles ending a minute ago, written with the app's Writer."""
    started = time.perf_counter()
    n = days * 1440
    end = dt.datetime.now(dt.UTC).replace(tzinfo=None, second=0, microsecond=0) - dt.timedelta(minutes=1)
    times = pl.datetime_range(end - dt.timedelta(minutes=n - 1), end, "1m", eager=True).cast(KLINE_SCHEMA["open_time"])
    rng = np.random.default_rng(0)
    frames = []
    for sym in DEFAULT_SYMBOLS[:symbols]:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
        open_ = np.concatenate([[close[0]], close[:-1]])
        spread = np.abs(rng.normal(0, 0.0005, n)) * close
        vol = rng.uniform(1, 100, n)
        frames.append(pl.DataFrame({
            "symbol": sym, "interval": "1m", "open_time": times,
            "close_time": times + dt.timedelta(milliseconds=59_999),
            "open": open_, "high": np.maximum(open_, close) + spread, "low": np.minimum(open_, close) - spread,
            "close": close, "volume": vol, "quote_volume": vol * close, "trades": rng.integers(1, 500, n),
            "taker_buy_volume": vol / 2, "taker_buy_quote_volume": vol * close / 2,
        }, schema_overrides=KLINE_SCHEMA).select(list(KLINE_SCHEMA)))
    w = Writer(path, max_pending_rows=100_000_000, market=market)
    for f in frames:
        w.add_klines(f)
    rows = w.close(timeout=600)
    return rows, time.perf_counter() - started


def server_answers(port: int) -> bool:
    """Does the server answer HTTP? ``GET /`` only redirects: it builds no session."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/")
        ok = c.getresponse().status < 500
        c.close()
        return ok
    except OSError:
        return False


def wait_answer(server, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while not server_answers(server.port):
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{server.output()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not answer")
        time.sleep(0.02)
    return time.monotonic()


def new_page(b, **kwargs):
    """A tab with generous timeouts: on a loaded 2-core box a page can take minutes to load."""
    page = b.new_page(**kwargs)
    page.set_default_timeout(300_000)
    page.set_default_navigation_timeout(300_000)
    return page


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --- 1. start-up -------------------------------------------------------------------------------

def bench_startup(store: Path, runs: int, tmp: Path) -> list[dict]:
    results = []
    with browser() as b:
        for run in range(runs):
            page = new_page(b, viewport=VIEWPORT)
            page.goto("about:blank")
            server = serve_app(["--demo", "--db", str(store)], tmp / f"startup{run}.log", serve_args=["--warm"])
            try:
                up = wait_answer(server)
                t0 = time.monotonic()
                page.goto(server.url)
                html = time.monotonic()
                nav = page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
                wait_state(page, lambda s: s is not None and s["closed_rows"] > 0, 60, every=0.02)
                chart = time.monotonic()
                wait_state(page, complete, 60, every=0.02)
                done = time.monotonic()
                results.append({
                    "run": run + 1, "spawn_to_http": up - server.spawned_at,
                    "ttfb": (nav["responseStart"] - nav["requestStart"]) / 1000,
                    "http_to_page_html": html - t0, "http_to_candles": chart - up,
                    "http_to_complete": done - up, "spawn_to_complete": done - server.spawned_at,
                })
            finally:
                page.close()
                server.stop()
    return results


# --- 1b. first page against a bare Panel page --------------------------------------------------

BASELINE_APP = r"""
import numpy as np, pandas as pd, panel as pn
from bokeh.plotting import figure

pn.extension("tabulator", design="bootstrap")
rng = np.random.default_rng(0)

def plot(height):
    p = figure(height=height, sizing_mode="stretch_width", x_axis_type="datetime", tools="xpan,xwheel_zoom,reset")
    t = 1.7e12 + 60_000 * np.arange(2000)
    p.line(t, np.cumsum(rng.normal(size=2000)))
    return pn.pane.Bokeh(p, sizing_mode="stretch_width")

table = pd.DataFrame({"symbol": [f"S{i:02d}USDT" for i in range(50)], **{c: rng.uniform(0, 100, 50) for c in
                      ("price", "change_pct", "quote_volume", "rsi", "stoch_k", "stoch_d")}, "signal": ""})
pn.template.BootstrapTemplate(title="baseline", main=[
    plot(380), plot(120), plot(120), plot(120), plot(300),
    pn.widgets.Tabulator(table, height=420, sizing_mode="stretch_width", show_index=False),
]).servable()
"""

# The baseline is complete when its five figures hold 2,000 points and the table 50 rows.
BASELINE_DONE_JS = r"""
() => {
  if (!(window.Bokeh && Bokeh.index)) return false;
  function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
  let plots = 0, rows = 0;
  for (const root of Bokeh.index.roots) for (const v of walk(root)) {
    if (v.model.type === "Figure") for (const r of v.model.renderers)
      if (r.data_source && r.data_source.data.x && r.data_source.data.x.length === 2000) plots++;
    if (v.model.type && v.model.type.endsWith("DataTabulator")) rows = v.model.source.data.symbol.length;
  }
  return plots === 5 && rows === 50;
}
"""


def serve_file(app: Path, port: int, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "panel", "serve", str(app), "--port", str(port), "--address",
                                 "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}"], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


def time_page(b, url: str, done, viewport=VIEWPORT) -> float:
    """Seconds from the page request to ``done`` (a state check, or JS returning true)."""
    page = new_page(b, viewport=viewport)
    try:
        page.goto("about:blank")
        t0 = time.monotonic()
        page.goto(url, timeout=300_000)
        if isinstance(done, str):
            while not page.evaluate(done):
                page.wait_for_timeout(20)
        else:
            wait_state(page, done, 300, every=0.02, what="a complete page")
        return time.monotonic() - t0
    finally:
        page.close()


def caught_up(b, url: str, timeout: float = 900) -> float:
    """Seconds until the page's status says live with no backfill running (one tab, then closed)."""
    page = new_page(b, viewport=VIEWPORT)
    t0 = time.monotonic()
    try:
        page.goto(url, timeout=300_000)
        wait_state(page, lambda s: (s["status"] or "").find("live") >= 0 and "backfill" not in s["status"],
                   timeout, every=0.5, what="the feed to catch up (live, no backfill)")
        return time.monotonic() - t0
    finally:
        page.close()


def bench_first_page(store: Path, symbols: list[str], runs: int, tmp: Path) -> dict:
    """The dashboard on ``store`` (fed by a local exchange process) and the bare page, alternately."""
    import shutil

    db = tmp / "firstpage.duckdb"
    shutil.copyfile(store, db)
    port = free_port()
    ex = subprocess.Popen([sys.executable, "-m", "market.exchange", "--port", str(port), "--symbols",
                           ",".join(symbols), "--speed", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    info = json.loads(ex.stdout.readline())
    app = serve_app(["--db", str(db), "--ws-url", info["ws"], "--rest-url", info["rest"], "--symbols",
                     ",".join(symbols)], tmp / "firstpage.log", serve_args=["--warm"])
    base_app = tmp / "baseline.py"
    base_app.write_text(BASELINE_APP)
    base_port = free_port()
    base = serve_file(base_app, base_port, tmp / "baseline.log")
    base_url = f"http://127.0.0.1:{base_port}/baseline"
    out: dict = {"dashboard": [], "baseline": []}
    try:
        up = wait_answer(app, 300)
        out["spawn_to_http"] = up - app.spawned_at
        with browser() as b:
            out["first_after_start"] = time_page(b, app.url, complete)  # backfill may still be running
            # The cached store ends when it was built, hours ago: at start the feed fetches the
            # lookback window (1,000 candles x 50 symbols) over REST and parses it on the
            # server's loop, which answers nothing else meanwhile. The timed pages are those
            # of a server that has caught up, as a user finds it; the one above shows the start.
            out["catch_up"] = caught_up(b, app.url)
            time_page(b, base_url, BASELINE_DONE_JS)  # warm the baseline server too
            time.sleep(5)
            for _ in range(runs):
                out["baseline"].append(time_page(b, base_url, BASELINE_DONE_JS))
                out["dashboard"].append(time_page(b, app.url, complete))
        out["rss_mb"] = psutil.Process(app.proc.pid).memory_info().rss / 2**20
    finally:
        app.stop()
        base.terminate()
        base.wait(20)
        ex.terminate()
        ex.wait(10)
    out["ratio"] = statistics.median(out["dashboard"]) / statistics.median(out["baseline"])
    return out


# --- 2 + 3. latency, CPU, memory ---------------------------------------------------------------

class ExchangeTap:
    """Our own client on the exchange's BTCUSDT kline stream: (arrival ms, open ms, close)."""

    def __init__(self, ws_base: str, symbol: str = "btcusdt") -> None:
        self.url = f"{ws_base}/stream?streams={symbol}@kline_1m"
        self.frames: list[tuple[float, int, float]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),), daemon=True)
        self._stop = asyncio.Event()
        self._thread.start()

    async def _run(self) -> None:
        async with websockets.connect(self.url, compression=None) as ws:
            reader = asyncio.ensure_future(self._read(ws))
            await self._stop.wait()
            reader.cancel()

    async def _read(self, ws) -> None:
        async for raw in ws:
            now = time.time() * 1000
            k = orjson.loads(raw)["data"]["k"]
            self.frames.append((now, int(k["t"]), round(float(k["c"]), 8)))

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


# In the page: every 10 ms, the newest (open time, close) over the chart's sources
# (their last rows; the forming candle is the newest); log it with Date.now() on change.
RECORDER_JS = r"""
() => {
  function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
  const sources = new Set();
  for (const root of Bokeh.index.roots) for (const v of walk(root)) {
    if (v.model.type !== "Figure") continue;
    for (const r of v.model.renderers) {
      const s = r.data_source;
      if (s && "close" in s.data && "body_top" in s.data) sources.add(s);
    }
  }
  window.__seen = [];
  window.__visible = document.visibilityState;
  let last = "";
  const check = () => {
    let t = -Infinity, c = null;
    for (const s of sources) {
      const n = s.data.time.length;
      if (n && s.data.time[n - 1] >= t) { t = s.data.time[n - 1]; c = s.data.close[n - 1] }
    }
    const key = t + "/" + c;
    if (c !== null && key !== last) { last = key; window.__seen.push([Date.now(), t, c]) }
  };
  window.__timer = setInterval(check, 10);
  return sources.size;
}
"""


# Sessions without a browser: bokeh.client documents kept in sync on their own loops
# (the server does the same work per session; the client side is far lighter than a tab).
# One at a time, each after the previous one has its document: nine pulled at once
# made the server build nine ~2 s documents back to back, and the later clients saw
# "Connection to server was lost" before their reply came (the bench then failed
# with no reason shown). A failure is retried twice and its traceback printed.
CLIENTS_PY = r"""
import asyncio, sys, threading, traceback
import panel.models, panel.models.tabulator  # the client must know Panel's model types
from bokeh.client import pull_session
from tornado.ioloop import IOLoop

def run(url, ready):
    asyncio.set_event_loop(asyncio.new_event_loop())
    for attempt in range(3):
        try:
            session = pull_session(url=url, io_loop=IOLoop.current())
            break
        except Exception:
            traceback.print_exc()
            print(f"client attempt {attempt + 1} failed", file=sys.stderr, flush=True)
    else:
        print("failed", flush=True)
        ready.set()
        return
    print("ok", flush=True)
    ready.set()
    session._loop_until_closed()

for _ in range(int(sys.argv[2])):
    ready = threading.Event()
    threading.Thread(target=run, args=(sys.argv[1], ready), daemon=True).start()
    ready.wait()
sys.stdin.read()
"""


def start_clients(url: str, n: int, log: Path) -> subprocess.Popen:
    """``n`` websocket sessions in one process; fails with the clients' own error output."""
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", CLIENTS_PY, url, str(n)], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    import queue

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.strip()) for x in proc.stdout] + [lines.put("")], daemon=True).start()
    for i in range(n):
        try:
            line = lines.get(timeout=300)  # a client stuck connecting is a failure too, not a hang
        except queue.Empty:
            line = "no answer in 300 s"
        if line != "ok":
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"websocket client {i + 1} of {n} failed to connect ({line or 'exited'}); "
                                 f"its output:\n{log.read_text(errors='replace')[-3000:]}")
    return proc


def match_latencies(frames: list[tuple[float, int, float]], seen: list) -> tuple[list[float], int]:
    """Page time - arrival of the run of frames that first carried the value the page shows."""
    by_open: dict[int, list[tuple[float, float]]] = {}
    for at, open_ms, close in frames:
        by_open.setdefault(open_ms, []).append((at, close))
    out, unmatched = [], 0
    for shown_at, open_ms, close in seen[1:]:  # the first entry is what the page had already
        runs = by_open.get(int(open_ms), [])
        close = round(float(close), 8)
        j = max((i for i, (at, c) in enumerate(runs) if c == close and at <= shown_at), default=None)
        if j is None:
            unmatched += 1
            continue
        while j > 0 and runs[j - 1][1] == close:
            j -= 1
        out.append(shown_at - runs[j][0])
    return out, unmatched


def bench_latency(tab_counts: list[int], window: float, tmp: Path) -> list[dict]:
    port = free_port()
    # the app's default 50 symbols (the exchange's own default list differs)
    ex = subprocess.Popen([sys.executable, "-m", "market.exchange", "--port", str(port),
                           "--symbols", ",".join(DEFAULT_SYMBOLS), "--speed", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    info = json.loads(ex.stdout.readline())
    server = serve_app(["--db", str(tmp / "latency.duckdb"), "--ws-url", info["ws"], "--rest-url", info["rest"]],
                       tmp / "latency.log", serve_args=["--warm"])
    tap = ExchangeTap(info["ws"])
    results = []
    try:
        wait_answer(server)
        proc = psutil.Process(server.proc.pid)
        with browser() as b:
            # warm up: the first page waits for the backfill of 50 x 1000 candles
            first = new_page(b, viewport=SMALL)
            first.goto(server.url)
            wait_state(first, complete, 120)
            first.close()
            time.sleep(4)  # its session is reaped
            skip = {server.proc.pid, ex.pid, *(c.pid for c in proc.children(recursive=True))}
            results.append(_measure(proc, [], tap, window, 0, skip=skip))
            for n, drawing, clients in tab_counts:
                extra = start_clients(server.url, clients, tmp / "clients.log") if clients else None
                tabs = []
                for _ in range(n):
                    page = new_page(b, viewport=SMALL if n > 1 else VIEWPORT)
                    console = Console()
                    console.attach(page)
                    page.goto(server.url)
                    tabs.append((page, console))
                for i, (page, _) in enumerate(tabs):
                    wait_state(page, complete, 120)
                    if i >= drawing:  # the page still gets and applies every update, but paints nothing
                        page.add_style_tag(content="body { display: none !important }")
                results.append({**_measure(proc, tabs, tap, window, n, drawing, skip), "clients": clients})
                for page, _ in tabs:
                    page.close()
                if extra is not None:
                    extra.kill()
                    extra.wait(10)
                time.sleep(20)  # Bokeh reaps closed sessions after 15 s
    finally:
        tap.stop()
        server.stop()
        ex.terminate()
        ex.wait(10)
    return results


def _browser_cpu(skip: set[int]) -> float:
    """CPU seconds used so far by this script's other descendants: Chromium and its driver."""
    total = 0.0
    for p in psutil.Process().children(recursive=True):
        if p.pid in skip:
            continue
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _measure(proc: psutil.Process, tabs: list, tap: ExchangeTap, window: float, n: int, drawing: int = 0,
             skip: set[int] = frozenset()) -> dict:
    for page, _ in tabs:
        page.evaluate(RECORDER_JS)
    rss0 = proc.memory_info().rss
    proc.cpu_percent(None)
    browser0, wall0 = _browser_cpu(skip), time.monotonic()
    started = time.time() * 1000
    time.sleep(window)
    cpu = proc.cpu_percent(None)
    browser_cpu = (_browser_cpu(skip) - browser0) / (time.monotonic() - wall0) * 100
    rss1 = proc.memory_info().rss
    load = psutil.getloadavg()[0]
    lat, unmatched, visible, errors = [], 0, set(), []
    frames = [f for f in tap.frames if f[0] >= started - 5000]
    for page, console in tabs:
        seen = page.evaluate("() => { clearInterval(window.__timer); return window.__seen }")
        visible.add(page.evaluate("() => window.__visible"))
        got, miss = match_latencies(frames, seen)
        lat += got
        unmatched += miss
        errors += console.errors
    return {"tabs": n, "drawing": drawing, "cpu_pct": cpu, "browser_cpu_pct": browser_cpu,
            "updates_per_tab_s": (len(lat) + unmatched) / max(n, 1) / window, "rss_mb_start": rss0 / 2**20, "rss_mb_end": rss1 / 2**20,
            "latencies": lat, "unmatched": unmatched, "visible": sorted(visible), "js_errors": errors,
            "window_s": window, "load": load}


# --- 4. open/close cycles -------------------------------------------------------------------------

def bench_cycles(cycles: int, synced: int, tmp: Path) -> dict:
    """``cycles`` sessions built by a page request and reaped unconnected, then ``synced``
    sessions pulled over a websocket and closed; server RSS at marks, sessions gone."""
    import urllib.request

    import panel.models
    import panel.models.tabulator  # noqa: F401
    from bokeh.client import pull_session

    server = serve_app(["--demo", "--db", str(tmp / "cycles.duckdb")], tmp / "cycles.log", serve_args=[*REAP, "--warm"])
    marks: list[tuple[str, float, float]] = []
    took = {"page": 0.0}
    try:
        wait_answer(server)
        proc = psutil.Process(server.proc.pid)
        with browser() as b:  # let the backfill finish before counting
            page = new_page(b, viewport=SMALL)
            page.goto(server.url)
            wait_state(page, complete, 120)
            page.close()

        def mark(label: str) -> None:
            time.sleep(5)  # > unused-session-lifetime: every session so far is destroyed
            marks.append((label, proc.memory_info().rss / 2**20, psutil.getloadavg()[0]))

        mark("0 page requests (start-up and one browser page)")
        for i in range(1, cycles + 1):
            started = time.monotonic()
            with urllib.request.urlopen(server.url) as r:  # the server builds the whole page
                r.read()
            took["page"] += time.monotonic() - started
            if i in (cycles // 4, cycles // 2, cycles):
                mark(f"{i} page requests")
        took["page"] /= cycles
        started = time.monotonic()
        for i in range(1, synced + 1):
            session = pull_session(url=server.url)  # websocket: the document synced to a client
            session.close()
        took["synced"] = (time.monotonic() - started) / max(synced, 1)
        mark(f"+ {synced} websocket sessions")
        with browser() as b:
            page = new_page(b, viewport=SMALL)
            page.goto(server.url)
            shown = sessions_shown(wait_state(page, lambda s: sessions_shown(s) is not None, 60))
            page.close()
    finally:
        server.stop()
    return {"cycles": cycles, "synced": synced, "rss_mb": marks, "sessions_shown_after": shown,
            "s_per_page": took["page"], "s_per_synced": took["synced"]}


# --- report ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small store, short windows, 40 cycles")
    ap.add_argument("--only", default="firstpage,latency,cycles", help="any of startup,firstpage,latency,cycles")
    a = ap.parse_args(argv)
    only = set(a.only.split(","))
    print(f"# bench_dashboard {dt.datetime.now():%Y-%m-%d %H:%M}, load average {psutil.getloadavg()[0]:.1f}, "
          f"{psutil.cpu_count()} cores\n")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "startup" in only:
            store = tmp / "store.duckdb"
            rows, took = build_store(store, days=3 if a.quick else 30)
            print(f"## Start-up to the first complete page\n\nstore: {rows:,} candles "
                  f"({store.stat().st_size / 2**20:.0f} MB), built in {took:.0f} s\n")
            print("| run | spawn -> HTTP answers | server builds the page (TTFB) | HTTP -> page loaded | "
                  "HTTP -> candles drawn | HTTP -> complete page | **spawn -> complete page** |")
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for r in bench_startup(store, 2 if a.quick else 3, tmp):
                print(f"| {r['run']} | {r['spawn_to_http']:.2f} s | {r['ttfb']:.2f} s | {r['http_to_page_html']:.2f} s | "
                      f"{r['http_to_candles']:.2f} s | {r['http_to_complete']:.2f} s | "
                      f"**{r['spawn_to_complete']:.2f} s** |")
            print()
        if "firstpage" in only:
            if a.quick:
                store = tmp / "small.duckdb"
                build_store(store, days=3, market="binance-futures")
                symbols, what = list(DEFAULT_SYMBOLS), "50 symbols x 3 days (--quick)"
            else:
                from benchmarks.bigstore import cached, specs

                store, symbols = cached(), [sp.symbol for sp in specs(50)]
                what = "benchmarks/bigstore.py cached(): 50 symbols x 1 year of 1m candles"
            r = bench_first_page(store, symbols, 2 if a.quick else 3, tmp)
            print(f"## First page: request -> complete page, against a bare Panel page\n\nstore: {what} "
                  f"({store.stat().st_size / 2**20:.0f} MB); server started with --warm; the bare page: Bootstrap "
                  "template, 5 Bokeh plots of 2,000 points, a 50-row Tabulator\n")
            print("| page | runs | median | all |")
            print("| --- | ---: | ---: | --- |")
            for k in ("baseline", "dashboard"):
                print(f"| {k} | {len(r[k])} | {statistics.median(r[k]):.2f} s | "
                      f"{', '.join(f'{v:.2f}' for v in r[k])} |")
            print(f"\n**ratio dashboard / bare page: {r['ratio']:.2f}** (median over median); the first page "
                  f"after the server answered ({r['spawn_to_http']:.1f} s after spawn): "
                  f"{r['first_after_start']:.2f} s; the feed caught up (live, no backfill) {r['catch_up']:.0f} s "
                  f"after that, and the timed pages followed; server RSS {r['rss_mb']:.0f} MB; load average at the "
                  f"end {os.getloadavg()[0]:.1f}\n")
        if "latency" in only:
            window = 10 if a.quick else 30
            # (tabs, of which drawing, extra websocket sessions without a browser)
            rows = bench_latency([(1, 1, 0), (10, 10, 0), (10, 1, 0), (1, 1, 9)], window, tmp)
            print(f"## Tick-to-screen latency and server load (speed 1, 50 symbols, {window:.0f} s per row)\n")
            print("| sessions: tabs (drawing) + clients | samples | updates/s per tab | median | p95 | max | "
                  "unmatched | server CPU (% of a core) | Chromium + clients CPU | server RSS start -> end | "
                  "JS errors | load average |")
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for r in rows:
                lat = r["latencies"]
                med = f"{statistics.median(lat):.0f} ms" if lat else "-"
                print(f"| {r['tabs']} ({r['drawing']}) + {r.get('clients', 0)} | {len(lat)} | {r['updates_per_tab_s']:.1f} | {med} | "
                      f"{pct(lat, 95):.0f} ms | {max(lat, default=float('nan')):.0f} ms | {r['unmatched']} | "
                      f"{r['cpu_pct']:.0f} % | {r['browser_cpu_pct']:.0f} % | "
                      f"{r['rss_mb_start']:.0f} -> {r['rss_mb_end']:.0f} MB | {len(r['js_errors'])} | {r['load']:.1f} |")
            errors = sorted({e.split(" (")[0] for r in rows for e in r["js_errors"]})
            if errors:
                print("\nJS errors seen: " + "; ".join(errors[:5]))
            print(f"\npage visibility during the runs: {sorted({v for r in rows for v in r['visible']})}\n")
        if "cycles" in only:
            r = bench_cycles(40 if a.quick else 200, 10 if a.quick else 40, tmp)
            print(f"## Server memory over {r['cycles'] + r['synced']} session open/close cycles\n")
            print("| after | server RSS | load average |")
            print("| --- | ---: | ---: |")
            for label, mb, load in r["rss_mb"]:
                print(f"| {label} | {mb:.0f} MB | {load:.1f} |")
            print(f"\n{r['s_per_page']:.2f} s per page request, {r['s_per_synced']:.2f} s per websocket "
                  f"session; afterwards the status header showed {r['sessions_shown_after']} session(s) "
                  "(the page reading it)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
