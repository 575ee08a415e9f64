"""Soak: a day of exchange time through the app's own process, with browser sessions coming and going.

The app's shape, in this process: one Panel server (``pn.serve``) whose sessions are
``dashboard.view.Dashboard`` pages sharing the one pipeline (``dashboard.live``,
which runs ``store.ingest.Pipeline``: kline and ticker streams -> LiveState ->
Writer -> DuckDB). The exchange runs in its own process
(``python -m market.exchange``), 50 symbols with 24h tickers, at ``--speed``
(0: as fast as the pipeline reads, with backpressure, so nothing is dropped).
``--sessions`` Bokeh clients open a session, keep it for a few seconds and close
it, over and over (each one builds a whole page server-side, runs its periodic
callback and is reaped when closed).

Every ``--sample`` seconds it records RSS, asyncio tasks on the server loop,
periodic callbacks alive, sessions, exchange time reached, rows written and file
size. At the end it compares every stored candle with the exchange's own history
(candles lost, duplicated or different: want 0) and writes a JSON report.

    .venv/bin/python benchmarks/soak.py --hours 24 --speed 0        # the full run
    .venv/bin/python benchmarks/soak.py --quick                     # 1 hour, a minute or two
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import polars as pl
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import panel as pn  # noqa: E402
from bokeh.client import pull_session  # noqa: E402

import store  # noqa: E402
from dashboard.config import AppConfig  # noqa: E402
from dashboard.live import CACHE_KEY, shared_feed  # noqa: E402
from dashboard.view import Dashboard  # noqa: E402
from market.presets import DEFAULT_SYMBOLS  # noqa: E402

MINUTE = 60_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def file_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + ".wal")) if p.exists())


class Sessions:
    """``n`` threads, each opening a Bokeh session on the app, holding it, closing it, again."""

    def __init__(self, url: str, n: int, hold: tuple[float, float], seed: int = 0) -> None:
        self.url, self.hold = url, hold
        self.stop = threading.Event()
        self.opened = self.failed = 0
        self.errors: list[str] = []
        self.rng = random.Random(seed)
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with pull_session(url=self.url) as session:
                    self.opened += 1
                    self.stop.wait(self.rng.uniform(*self.hold))
                    session.close()
            except Exception as exc:  # counted and reported, the soak goes on
                self.failed += 1
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                self.stop.wait(1.0)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def start_exchange(symbols: list[str], speed: float, history_minutes: int, kline_ms: int = 250,
                   ticker_ms: int = 1000) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "market.exchange", "--port", "0", "--symbols", ",".join(symbols),
         "--speed", str(speed), "--history-minutes", str(history_minutes), "--kline-ms", str(kline_ms),
         "--ticker-ms", str(ticker_ms)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())


def on_loop(feed, fn, timeout: float = 30.0):
    """Run ``fn()`` on the server's event loop and return its result."""
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), feed.loop).result(timeout)


def loop_counts(feed) -> tuple[int, int]:
    tasks = on_loop(feed, lambda: len(asyncio.all_tasks()))
    periodic = sum(len(cbs) for cbs in list(pn.state._periodic.values()))
    return tasks, periodic


def compare(db: Path, rest: str, symbols: list[str], last_closed_ms: int) -> dict:
    """Every stored candle against the exchange's history, over [first stored, last closed]."""
    stored = store.query("SELECT symbol, epoch_ms(open_time) AS t, close, volume FROM klines "
                         "ORDER BY symbol, open_time", db=db)
    dup = stored.select("symbol", "t").is_duplicated().sum()
    lost = different = checked = 0
    lost_keys: list[str] = []
    with httpx.Client(timeout=120) as http:
        for sym in symbols:
            mine = stored.filter(pl.col("symbol") == sym)
            first = int(mine["t"].min()) if mine.height else int(last_closed_ms)
            rows = http.post(f"{rest}/_control/history",
                             params={"symbol": sym, "start_ms": first, "end_ms": int(last_closed_ms)}).json()
            if not isinstance(rows, list):
                raise SystemExit(f"soak: the exchange's history for {sym} failed: {rows}")
            truth = pl.DataFrame({"t": [r[0] for r in rows], "close_x": [float(r[4]) for r in rows],
                                  "volume_x": [float(r[5]) for r in rows]}, schema_overrides={"t": pl.Int64})
            joined = truth.join(mine.filter(pl.col("t") <= last_closed_ms), on="t", how="left")
            lost += joined["close"].null_count()
            lost_keys += [f"{sym} {t}" for t in joined.filter(pl.col("close").is_null())["t"].head(5).to_list()]
            different += joined.filter((pl.col("close") != pl.col("close_x"))
                                       | (pl.col("volume") != pl.col("volume_x"))).height
            checked += truth.height
    return {"candles_checked": checked, "candles_lost": lost, "candles_duplicated": int(dup),
            "candles_different": different, "lost_samples (symbol, open_time ms)": lost_keys[:20],
            "last_closed_ms": int(last_closed_ms)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/soak.py", description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0, help="exchange time to run through")
    ap.add_argument("--speed", type=float, default=0.0, help="exchange clock speed; 0: as fast as we read")
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--sessions", type=int, default=2, help="Bokeh sessions opening and closing at once")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--quick", action="store_true", help="1 hour of exchange time (a minute or two)")
    ap.add_argument("--db", type=Path, help="database file (default: a new one in a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / ".cache" / "soak.json")
    # Binance futures update a forming kline every 250 ms and spot every 2 s: at 250 ms a
    # day is 21.6M frames for 50 symbols, which a shared 2-core box cannot push in an hour
    ap.add_argument("--kline-ms", type=int, default=250, help="ms between forming-kline updates (250, 1000, 2000)")
    ap.add_argument("--ticker-ms", type=int, default=1000, help="ms between 24h ticker updates")
    ap.add_argument("--repair-wait", type=float, default=600.0,
                    help="seconds to let hole repair finish after the goal before comparing")
    a = ap.parse_args(argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    # the feed's and the store's story (reconnects, backfills, repairs) beside the report
    logging.basicConfig(filename=a.out.with_suffix(".log"), filemode="w", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("bokeh", "tornado", "panel", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if a.quick:
        a.hours = min(a.hours, 1.0)
    if not (a.hours > 0 and a.speed >= 0 and 1 <= a.symbols <= len(DEFAULT_SYMBOLS) and a.sessions >= 0
            and a.repair_wait >= 0):
        print(f"error: need --hours > 0, --speed >= 0, 1 <= --symbols <= {len(DEFAULT_SYMBOLS)}, "
              "--sessions >= 0, --repair-wait >= 0", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory(prefix="soak-")
    db = a.db or Path(tmp.name) / "soak.duckdb"
    symbols = list(DEFAULT_SYMBOLS[: a.symbols])
    exchange, info = start_exchange(symbols, a.speed, history_minutes=1500, kline_ms=a.kline_ms,
                                    ticker_ms=a.ticker_ms)
    config = AppConfig(db=str(db), ws_url=info["ws"], rest_url=info["rest"], symbols=symbols, refresh_ms=500)

    def page():  # what dashboard/app.py does for each session
        pn.extension("tabulator", notifications=True, design="bootstrap")
        return Dashboard(shared_feed(config))

    port = int(os.environ.get("SOAK_PORT", "0")) or _free_port()
    server = pn.serve({"app": page}, port=port, address="127.0.0.1", websocket_origin=f"127.0.0.1:{port}",
                      threaded=True, show=False, verbose=False,
                      check_unused_sessions_milliseconds=500, unused_session_lifetime_milliseconds=2000)
    url = f"http://127.0.0.1:{port}/app"
    samples: list[dict] = []
    sessions = Sessions(url, a.sessions, hold=(2.0, 8.0))
    began = time.monotonic()
    try:
        _wait(lambda: httpx.get(url, timeout=60).status_code == 200, 120, "the server")  # starts the pipeline
        feed = pn.state.cache[CACHE_KEY]
        _wait(lambda: feed.status().feed.last_event_ms, 300, "the first message")
        sim0 = feed.status().feed.last_event_ms
        goal = sim0 + int(a.hours * 3600_000)
        sessions.start()
        bar = tqdm(total=round(a.hours * 60), unit="sim-min", desc="soak")
        next_sample = time.monotonic()
        while True:
            st = feed.status()
            now = st.feed.last_event_ms or sim0
            bar.n = min(bar.total, (now - sim0) // MINUTE)
            bar.refresh()
            if time.monotonic() >= next_sample or now >= goal:
                next_sample += a.sample
                tasks, periodic = loop_counts(feed)
                samples.append({"t_s": round(time.monotonic() - began, 1), "sim_h": round((now - sim0) / 3600_000, 3),
                                "rss_mb": round(rss_mb(), 1), "tasks": tasks, "periodic_callbacks": periodic,
                                "sessions": feed.sessions, "sessions_opened": sessions.opened,
                                "written_rows": st.store.written_rows, "pending_rows": st.store.pending_rows,
                                "file_bytes": file_bytes(db), "feed": st.feed.state})
            if now >= goal:
                break
            time.sleep(0.5)
        bar.close()
        sessions.join()
        # the sessions' pages are reaped (2 s unused lifetime): wait until none is left
        # (recorded either way: a session that is never reaped is a finding, not a crash)
        deadline = time.monotonic() + 300
        while feed.sessions and time.monotonic() < deadline:
            time.sleep(0.5)
        tasks, periodic = loop_counts(feed)
        after_sessions = {"sessions": feed.sessions, "tasks": tasks, "periodic_callbacks": periodic,
                          "rss_mb": round(rss_mb(), 1)}
        last_closed = min(feed.state.last_closed(s) or 0 for s in symbols)
        # Holes the feed saw (a final that never came, an outage's candles) are repaired over
        # REST with backoff, so the ones of the last minutes may still be open at the goal:
        # give the repair its time (the stream goes on), then compare. Counted either way.
        holes = lambda: on_loop(feed, lambda: [h for h in feed.state.holes(feed.status().feed.last_event_ms or 0)
                                               if h[1] < last_closed])  # noqa: E731
        open_at_goal, waited = len(holes()), time.monotonic()
        while holes() and time.monotonic() - waited < a.repair_wait:
            time.sleep(1.0)
        repair = {"holes_open_at_goal": open_at_goal, "holes_open_after_wait": len(holes()),
                  "repair_wait_s": round(time.monotonic() - waited, 1)}
        asyncio.run_coroutine_threadsafe(feed.stop(), feed.loop).result(300)
        check = compare(db, info["rest"], symbols, last_closed)
    finally:
        sessions.stop.set()
        feed = pn.state.cache.get(CACHE_KEY)
        if feed is not None and feed.task is not None and not feed.task.done():
            asyncio.run_coroutine_threadsafe(feed.stop(), feed.loop).result(300)
        server.stop()
        exchange.terminate()
        exchange.wait(30)
    wall = time.monotonic() - began
    candles = store.query("SELECT count(*) AS n FROM klines", db=db)["n"][0]
    report = {
        "command": "python benchmarks/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
                   f"load average at the end {os.getloadavg()[0]:.1f}",
        "hours": a.hours, "speed": a.speed, "symbols": a.symbols, "kline_ms": a.kline_ms,
        "ticker_ms": a.ticker_ms, "wall_s": round(wall, 1),
        "sim_per_wall": round(a.hours * 3600 / wall, 1),
        "sessions_opened": sessions.opened, "session_errors": sessions.failed,
        "session_error_samples": sessions.errors[:3],
        "candles_stored": candles, "file_bytes": file_bytes(db),
        "bytes_per_candle": round(file_bytes(db) / max(candles, 1), 1),
        "rss_mb_first": samples[0]["rss_mb"] if samples else None,
        "rss_mb_max": max(s["rss_mb"] for s in samples) if samples else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "after_sessions_closed": after_sessions, **repair, **check, "samples": samples,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"report: {a.out}")
    if check["candles_lost"] or check["candles_duplicated"] or check["candles_different"]:
        print(f"kept the database for a look: {db}")
    else:
        tmp.cleanup()
    return 0 if check["candles_lost"] == check["candles_duplicated"] == check["candles_different"] == 0 else 1


def table(r: dict) -> str:
    """A markdown table of ~10 evenly spaced samples plus the verdict, for BENCHMARKS.md."""
    s = r["samples"]
    picks = [s[round(i * (len(s) - 1) / 9)] for i in range(10)] if len(s) >= 10 else s
    lines = ["| wall s | exchange h | RSS MB | asyncio tasks | periodic callbacks | sessions open | "
             "rows written | file MB |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for x in picks:
        lines.append(f"| {x['t_s']:.0f} | {x['sim_h']:.1f} | {x['rss_mb']:.0f} | {x['tasks']} | "
                     f"{x['periodic_callbacks']} | {x['sessions']} | {x['written_rows']:,} | "
                     f"{x['file_bytes'] / 1e6:.1f} |")
    lines.append("")
    lines.append(f"{r['hours']:g} h of exchange time for {r['symbols']} symbols (a kline update every "
                 f"{r['kline_ms']} ms, a ticker every {r['ticker_ms']} ms) in {r['wall_s']:.0f} s "
                 f"({r['sim_per_wall']:g}x); {r['sessions_opened']} sessions opened and closed "
                 f"({r['session_errors']} errors); after they closed: {r['after_sessions_closed']}; "
                 f"{r['candles_stored']:,} candles, {r['bytes_per_candle']:g} bytes a candle on disk "
                 f"(klines + indicators + tickers); holes open at the goal {r['holes_open_at_goal']}, "
                 f"{r['holes_open_after_wait']} after {r['repair_wait_s']:g} s of repair; "
                 f"checked {r['candles_checked']:,} candles against the "
                 f"exchange: {r['candles_lost']} lost, {r['candles_duplicated']} duplicated, "
                 f"{r['candles_different']} different.")
    return "\n".join(lines)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: {what} not ready within {timeout:g} s")
        time.sleep(0.2)


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as exc:  # a step that never became ready: say which, exit 1
        print(exc.code if isinstance(exc.code, str) else f"exit {exc.code}", file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the server's and the sessions' threads must not keep the process alive
