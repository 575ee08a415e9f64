"""Recording starts with the server, not with the first page; stopping it flushes.

Every test runs ``panel serve --warm dashboard/app.py --args ...`` as a subprocess,
the command the README documents, and opens NO browser: what reached the DuckDB
file is read with ``store.query`` (read-only, retrying while the app flushes).
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pytest

import store
from tests.browser import ServeProcess, serve_app

pytestmark = pytest.mark.timeout(240)

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
WARM = ["--warm"]


def wait_until(cond, timeout: float, what: str, server: ServeProcess | None = None):
    """Poll ``cond()`` until it returns neither False nor None; fail with the server's log."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got is not None and got is not False:
            return got
        if server is not None and server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode} while waiting for {what}:\n"
                                 f"{server.output()[-3000:]}")
        if time.monotonic() > deadline:
            log = server.output()[-3000:] if server is not None else ""
            raise AssertionError(f"{what} not seen within {timeout:g} s\n{log}")
        time.sleep(0.25)


def klines_since(db: Path, since: dt.datetime):
    """Per symbol: candles stored, and candles opened at or after ``since`` (streamed after start)."""
    if not db.exists():
        return None
    try:
        return store.query(
            "SELECT symbol, count(*) AS n, count(*) FILTER (WHERE open_time >= ?) AS new, "
            "min(low) AS low, max(high) AS high, bool_and(high >= greatest(open, close) "
            "AND low <= least(open, close) AND volume >= 0 AND low > 0) AS sane "
            "FROM klines GROUP BY symbol ORDER BY symbol", [since], db=db, timeout=5)
    except store.StoreError:
        return None  # created but not migrated yet, or held past the timeout: ask again


def stop_with(server: ServeProcess, sig: int, timeout: float = 60) -> int:
    server.proc.send_signal(sig)
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)
        raise AssertionError(f"server did not stop within {timeout} s of signal {sig}:\n{server.output()[-3000:]}")


def test_demo_records_from_server_start_without_a_browser(tmp_path):
    db = tmp_path / "demo.duckdb"
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None, second=0, microsecond=0)
    server = serve_app(["--demo", "--db", str(db), "--speed", "60", "--symbols", ",".join(SYMBOLS)],
                       tmp_path / "serve.log", serve_args=WARM)
    try:
        # at speed 60 a minute closes every second: streamed candles, not only the backfill
        rows = wait_until(lambda: (r := klines_since(db, started)) is not None and r.height == len(SYMBOLS)
                          and min(r["new"]) >= 3 and min(r["n"]) >= 500 and r, 120,
                          "backfilled and streamed klines in the file", server)
        assert rows["symbol"].to_list() == sorted(SYMBOLS)
        assert all(rows["sane"]) and min(rows["low"]) > 0
        meta = store.query("SELECT value FROM meta WHERE key = 'market'", db=db)
        assert meta["value"].to_list() == ["demo"]  # synthetic prices never claim a real market
        tickers = wait_until(lambda: (t := store.query("SELECT symbol, last_price FROM tickers ORDER BY symbol",
                                                         db=db)).height == len(SYMBOLS) and t,
                             60, "tickers in the file", server)
        assert min(tickers["last_price"]) > 0
        assert "at server start" in server.output()  # the --warm run started it, not a session
    finally:
        code = stop_with(server, signal.SIGTERM)
    assert code == 0, server.output()[-3000:]
    assert "Traceback" not in server.output(), server.output()[-3000:]


HOLDER = textwrap.dedent("""
    import sys, time, duckdb
    while True:  # the app opens the file for its flushes: retry until we hold it
        try:
            con = duckdb.connect(sys.argv[1])
            break
        except duckdb.Error:
            time.sleep(0.01)
    print("holding", flush=True)
    sys.stdin.readline()
    con.close()
""")


class Tap:
    """Our own client on the exchange's kline streams: (symbol, open_time ms) of every final, with arrival."""

    def __init__(self, ws_base: str, symbols: list[str]) -> None:
        streams = "/".join(f"{s.lower()}@kline_1m" for s in symbols)
        self.url = f"{ws_base}/stream?streams={streams}"
        self.finals: list[tuple[float, str, int]] = []
        self.ws = None
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.connected.wait(30), "the tap could not connect to the exchange"

    def _read(self) -> None:
        from websockets.sync.client import connect

        with connect(self.url, compression=None) as ws:
            self.ws = ws
            self.connected.set()
            try:
                for raw in ws:
                    k = orjson.loads(raw)["data"]["k"]
                    if k["x"]:
                        self.finals.append((time.monotonic(), k["s"], int(k["t"])))
            except Exception:  # noqa: BLE001 - closed at the end of the test
                pass

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.thread.join(5)


def test_sigterm_writes_the_candles_closed_since_the_last_flush(tmp_path):
    """While another process holds the file, closed candles wait in memory; SIGTERM
    must still write them (the final flush, retried until the file is free)."""
    ex = subprocess.Popen([sys.executable, "-m", "market.exchange", "--port", "0", "--symbols", ",".join(SYMBOLS),
                           "--speed", "60"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    holder = tap = None
    db = tmp_path / "live.duckdb"
    try:
        info = json.loads(ex.stdout.readline())
        started = dt.datetime.now(dt.UTC).replace(tzinfo=None, second=0, microsecond=0)
        server = serve_app(["--db", str(db), "--ws-url", info["ws"], "--rest-url", info["rest"],
                            "--symbols", ",".join(SYMBOLS)], tmp_path / "serve.log", serve_args=WARM,
                           env={"PYTHONUNBUFFERED": "1"})
        wait_until(lambda: (r := klines_since(db, started)) is not None and r.height == len(SYMBOLS)
                   and min(r["new"]) >= 2, 120, "streamed klines in the file", server)
        tap = Tap(info["ws"], SYMBOLS)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "holding"
        held = time.monotonic()
        # a few candles per symbol close while the app cannot write them
        wait_until(lambda: sum(1 for at, _, _ in tap.finals if at > held + 1) >= 4 * len(SYMBOLS), 60,
                   "candles closing while the file is held", server)
        # what the app had certainly received (same loopback stream, 2 s of slack on a busy box)
        cutoff = time.monotonic() - 2
        expected = {(s, t) for at, s, t in tap.finals if held < at < cutoff}
        assert len(expected) >= 2 * len(SYMBOLS)
        server.proc.send_signal(signal.SIGTERM)
        # release only once the server's loop has stopped, so no periodic flush can write them
        wait_until(lambda: "SIGTERM" in server.output(), 30, "the server to take SIGTERM")
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)
        code = server.proc.wait(60)
        assert code == 0, server.output()[-3000:]
        got = store.query("SELECT symbol, epoch_ms(open_time) AS t FROM klines", db=db)
        have = set(zip(got["symbol"].to_list(), got["t"].to_list()))
        missing = sorted(expected - have)
        assert not missing, f"{len(missing)} of {len(expected)} closed candles lost at SIGTERM: {missing[:5]}"
    finally:
        if tap is not None:
            tap.close()
        if holder is not None and holder.poll() is None:
            holder.kill()
        ex.terminate()
        ex.wait(10)
        if "server" in locals() and server.proc.poll() is None:
            server.proc.kill()


def exit_code(server: ServeProcess, timeout: float = 120) -> int:
    """The exit code of a server expected to stop by itself (killed if it does not)."""
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)
        raise AssertionError(f"the server kept running:\n{server.output()[-3000:]}") from None


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir() or p, "is a folder"),
    (lambda p: (p.write_text("not a database " * 10), p)[1], "is not a DuckDB database"),
])
def test_an_unusable_database_stops_the_start_with_one_line(tmp_path, make, words):
    bad = make(tmp_path / "bad.duckdb")
    server = serve_app(["--demo", "--db", str(bad), "--symbols", "BTCUSDT"], tmp_path / "serve.log",
                       serve_args=WARM)
    code = exit_code(server)
    out = server.output()
    assert code == 2, out[-3000:]
    assert f"error: {bad} {words}" in out and "Traceback" not in out, out[-3000:]


def test_a_demo_database_is_not_mixed_into_a_real_one(tmp_path):
    real = store.prepare(tmp_path / "real.duckdb", "binance-futures")
    server = serve_app(["--demo", "--db", str(real), "--symbols", "BTCUSDT"], tmp_path / "serve.log",
                       serve_args=WARM)
    code = exit_code(server)
    out = server.output()
    assert code == 2 and "binance-futures" in out and "Traceback" not in out, out[-3000:]


def test_the_first_snapshot_is_seeded_from_the_stored_tickers(tmp_path):
    """After a restart the heatmap and table show the stored 24h values until live tickers arrive."""
    import polars as pl

    from dashboard.config import AppConfig
    from dashboard.live import SharedFeed
    from market.schema import TICKER_SCHEMA

    db = store.prepare(tmp_path / "t.duckdb", "binance-futures")
    rows = [{**dict.fromkeys(TICKER_SCHEMA), "symbol": s, "event_time": dt.datetime(2026, 11, 29), "last_price": p,
             "price_change_pct": pct, "quote_volume": qv, "volume": 10.0}
            for s, p, pct, qv in (("BTCUSDT", 97000.5, 1.5, 1.2e10), ("ETHUSDT", 3000.25, -2.0, 6.1e9))]
    w = store.Writer(db, market="binance-futures")
    w.add_tickers(pl.DataFrame(rows, schema=TICKER_SCHEMA))
    w.close()
    feed = SharedFeed(AppConfig(db=str(db), symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"]))
    snap = feed.snapshot()
    assert snap["symbol"].to_list() == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert snap["price_change_pct"].to_list() == [1.5, -2.0, None]
    assert snap["quote_volume"].to_list()[:2] == [1.2e10, 6.1e9] and snap["last_price"][0] == 97000.5

    # live tickers (and candles) for every symbol: the live values win and the seed is dropped
    from market.binance import Kline, Ticker
    from market.stream import Batch

    t0 = 1_764_460_800_000  # 2025-11-30 00:00 UTC
    syms = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    feed.state.apply(Batch(
        forming={s: Kline(s, "1m", t0, t0 + 59_999, 10.0, 11.0, 9.0, 10.5, 1.0, 10.5, 3, 0.5, 5.0, False, t0 + 1000)
                 for s in syms},
        tickers={s: Ticker(s, t0 + 1000, 10.5 + i, 0.1, 0.5 + i, 10.0, 11.0, 9.0, 100.0, 1000.0 * (i + 1), 7)
                 for i, s in enumerate(syms)},
    ))
    snap = feed.snapshot(max_age=0)
    assert snap["price_change_pct"].to_list() == [0.5, 1.5, 2.5]
    assert snap["quote_volume"].to_list() == [1000.0, 2000.0, 3000.0]
    assert feed._stored_tickers is None
