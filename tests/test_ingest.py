"""store/ingest.py: the whole pipeline against the local exchange, into real DuckDB files.

In-process tests run ``Pipeline`` against ``LocalExchange`` at 60x speed (a candle
closes every second) and compare what lands in DuckDB with the exchange's own
history, candle by candle; CLI tests run ``python -m store.ingest`` against
``python -m market.exchange`` in subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import store
from market.exchange import LocalExchange
from market.feed import Feed
from store import history
from store.db import gate
from store.ingest import IngestConfig, Pipeline
from tests.conftest import ROOT, talib_indicators, wait_for

MINUTE = 60_000
KEY = ["symbol", "interval", "open_time"]
FAST_FEED = dict(backoff_base=0.05, backoff_cap=0.5, first_event_wait=2.0)

pytestmark = pytest.mark.timeout(90)


# --------------------------------------------------------------------------- helpers



def make_pipeline(ex: LocalExchange, db: Path, symbols: tuple[str, ...], **config) -> Pipeline:
    """A Pipeline on ``ex`` whose feed reconnects within tenths of a second."""
    kw = dict(lookback=200, flush_every=0.25, watchdog=1.0)
    kw.update(config)
    cfg = IngestConfig(db=db, symbols=symbols, ws_url=ex.ws_base, rest_url=ex.rest_base, **kw)
    p = Pipeline(cfg)
    # IngestConfig has no knobs for the backoff: give the pipeline a feed with small numbers
    p.feed = Feed(dataclasses.replace(cfg.feed_config(), **FAST_FEED), p.queue, last_closed=p.state.last_closed,
                  empty=p.empty, first_stored=p.first.get)
    return p


@contextlib.asynccontextmanager
async def running(p: Pipeline, stop_timeout: float = 30):
    task = asyncio.create_task(p.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, stop_timeout)  # a hang on stop fails here


def closed_through(p: Pipeline, symbols, ms: int) -> bool:
    return all((p.state.last_closed(s) or 0) >= ms for s in symbols)


def to_ms(value) -> int:
    return int(pl.Series([value]).dt.epoch("ms")[0])


def check_exactly_once(ex: LocalExchange, db: Path, symbols) -> dict[str, pl.DataFrame]:
    """Every stored candle once, no holes, each with exactly the exchange's numbers."""
    out = {}
    for sym in symbols:
        got = history.klines(sym, db=db)
        assert got.height > 0, f"nothing stored for {sym}"
        assert got.select(KEY).is_duplicated().sum() == 0, f"{sym}: duplicated candles"
        first, last = to_ms(got["open_time"][0]), to_ms(got["open_time"][-1])
        assert_frame_equal(got, ex.history(sym, start_ms=first, end_ms=last))
        out[sym] = got
    assert history.gaps(db=db).height == 0
    cov = history.coverage(db=db)
    assert sorted(cov["symbol"].to_list()) == sorted(symbols) and cov["missing"].to_list() == [0] * len(symbols)
    return out


def check_indicators(db: Path, symbols, tol: float = 1e-9) -> None:
    """Stored RSI, StochRSI K and D equal TA-Lib's over the stored closes (null where TA-Lib's
    are), and each stored signal is the README's rule applied to TA-Lib's values."""
    n_klines = store.query("SELECT count(*) AS n FROM klines", db=db)["n"][0]
    n_ind = store.query("SELECT count(*) AS n FROM indicators", db=db)["n"][0]
    dups = store.query("SELECT count(*) AS n FROM (SELECT symbol, interval, open_time FROM indicators "
                       "GROUP BY ALL HAVING count(*) > 1)", db=db)["n"][0]
    assert n_ind == n_klines and dups == 0
    for sym in symbols:
        rows = history.with_indicators(sym, db=db)
        closes = rows["close"].to_numpy()
        assert len(closes) > 14
        want = talib_indicators(closes)
        assert np.isnan(want["rsi"][:14]).all() and not np.isnan(want["rsi"][14:]).any()
        for name in ("rsi", "stoch_k", "stoch_d"):
            have = rows[name].cast(pl.Float64).to_numpy()
            ref = want[name]
            assert np.array_equal(np.isnan(have), np.isnan(ref)), f"{sym} {name}: null where TA-Lib is not, or back"
            if (~np.isnan(ref)).any():
                assert np.abs(have - ref)[~np.isnan(ref)].max() <= tol, (sym, name)
        assert rows["signal"].to_list() == want["signal"], sym


def check_tickers(db: Path, symbols) -> None:
    tick = store.query("SELECT * FROM tickers ORDER BY symbol", db=db)
    assert tick["symbol"].to_list() == sorted(symbols)
    assert (tick["last_price"] > 0).all() and tick["event_time"].null_count() == 0


# --------------------------------------------------------------------------- in process


async def test_pipeline_stores_every_candle_once_with_talib_indicators(tmp_path):
    syms = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=syms, speed=60, history_minutes=400) as ex:
        p = make_pipeline(ex, db, syms, lookback=300)
        began = ex.now_ms()
        async with running(p):
            await wait_for(lambda: closed_through(p, syms, began - began % MINUTE + 3 * MINUTE),
                           what="three minutes of stream finals")
            await wait_for(lambda: p.writer.status().written_rows > 0, what="a flush")
        assert p.writer.pending_rows == 0
        # (no count of REST rows: it depends on timing; the stored data below is what counts)
        stored = check_exactly_once(ex, db, syms)
        for sym, got in stored.items():
            # the backfill reached `lookback` candles back from the connect time
            assert got.height >= 300 + 3
            assert to_ms(got["open_time"][0]) <= began - 299 * MINUTE
        check_indicators(db, syms)
        check_tickers(db, syms)
        assert p.feed.status().rejected == {}


async def test_pipeline_survives_faults_without_gaps_or_duplicates(tmp_path):
    syms = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=syms, speed=60, history_minutes=300) as ex:
        p = make_pipeline(ex, db, syms, lookback=100)
        conns = p.feed.connections
        async with running(p):
            def minutes_ahead(n: int) -> int:
                now = ex.now_ms()
                return now - now % MINUTE + n * MINUTE

            await wait_for(lambda: closed_through(p, syms, minutes_ahead(0) - MINUTE), what="live")
            ex.malformed(12)
            await wait_for(lambda: sum(p.feed.parser.rejected.values()) >= 12, what="bad frames read")

            ex.duplicate_finals(True)
            target = minutes_ahead(2)
            await wait_for(lambda: closed_through(p, syms, target), what="finals sent twice")

            ex.late_finals(10)  # 10 s of sim time: past the 5 s grace, so REST may repair them first
            target = minutes_ahead(2)
            await wait_for(lambda: closed_through(p, syms, target), what="late finals")
            ex.duplicate_finals(False)
            ex.late_finals(0)

            reconnects = sum(c.status.reconnects for c in conns)
            assert ex.drop_connections() >= 1
            await wait_for(lambda: sum(c.status.reconnects for c in conns) > reconnects, what="a reconnect")
            target = minutes_ahead(1)
            await wait_for(lambda: closed_through(p, syms, target), what="data after the reconnect")

            down = ex.now_ms()
            ex.refuse(1.5)  # an outage of 1.5 minutes of sim time
            ex.drop_connections()
            await wait_for(lambda: ex.stats.refused >= 1, what="a refused handshake")
            assert p.status().feed.state in ("reconnecting", "offline", "connecting")
            target = minutes_ahead(2)  # past the end of the outage
            await wait_for(lambda: closed_through(p, syms, target) and p.status().feed.state == "live",
                           what="recovery after the outage")
            # one refusal or more: how many reconnects fit in the 1.5 s depends on the box's load
            assert ex.stats.refused >= 1
        status = p.status()
        assert status.store.pending_rows == 0
        assert status.feed.reconnects >= 2
        assert status.feed.rejected == {
            "not_json": 2, "missing_field": 2, "bad_number": 4, "misaligned_time": 2, "unrequested_symbol": 2,
        }
        assert ex.stats.malformed_sent == 12
        stored = check_exactly_once(ex, db, syms)
        outage = list(range(down - down % MINUTE, target, MINUTE))
        for sym, got in stored.items():
            assert got.height >= 100 + 8  # the backfill plus the minutes streamed through the faults
            # every candle of the outage stored (exactly the exchange's: check_exactly_once)
            assert set(outage) <= set(got["open_time"].dt.epoch("ms").to_list()), sym
        check_indicators(db, syms)
        check_tickers(db, syms)


async def test_a_final_that_never_comes_is_repaired_over_rest(tmp_path):
    syms = ("BTCUSDT", "ETHUSDT")
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=syms, speed=60, history_minutes=300) as ex:
        # a watchdog longer than the silence: no reconnect, so no reconnect backfill either
        p = make_pipeline(ex, db, syms, lookback=50, watchdog=5.0)
        assert p.feed.config.watchdog == 5.0
        async with running(p):
            await wait_for(lambda: p.writer.status().written_rows >= 100, what="the backfill written")
            # the exchange's clock task has reached a point inside a minute (its own tick, not the
            # wall clock, so a loaded box cannot put the stall after the candle's close)
            await wait_for(lambda: 10_000 <= ex._sim % MINUTE <= 45_000, what="inside a minute")
            lost = ex._sim - ex._sim % MINUTE  # this candle's final falls inside the silence
            ex.stall(600)  # the exchange sends nothing, finals included, until we end it ...
            await wait_for(lambda: ex._sim >= lost + MINUTE + 5_000, what="the close passing in silence")
            ex.reset_faults()  # ... 5 s of sim time after the candle closed (the watchdog is 5 s real)
            await wait_for(lambda: closed_through(p, syms, lost + MINUTE), what="the candle after the lost one")
            assert all(c.status.reconnects == 0 for c in p.feed.connections)
        stored = check_exactly_once(ex, db, syms)
        for got in stored.values():
            assert lost in got["open_time"].dt.epoch("ms").to_list()
        check_indicators(db, syms)


async def test_file_held_by_another_process_loses_nothing(tmp_path, hold_file):
    syms = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=syms, speed=60, history_minutes=300) as ex:
        p = make_pipeline(ex, db, syms, lookback=100)
        async with running(p):
            await wait_for(lambda: p.writer.status().written_rows >= 300 and p.writer.pending_rows == 0,
                           what="the backfill written")
            # keep our own writer out while the other process opens the file (its open would
            # fail if a flush happened to hold the file at that moment)
            g = gate(db)
            assert g.read(time.monotonic() + 10)
            try:
                holder = await asyncio.to_thread(hold_file, db)
            finally:
                g.end_read()
            written = p.writer.status().written_rows
            target = max(p.state.last_closed(s) for s in syms) + 2 * MINUTE
            # two more minutes close while the file is held, and the writer has tried since
            await wait_for(lambda: closed_through(p, syms, target) and p.writer.status().pending_rows > 0
                           and "is held by" in (p.writer.status().last_error or ""), timeout=60,
                           what="candles waiting behind the held file")
            st = p.writer.status()
            assert st.written_rows == written  # nothing could be written ...
            assert st.pending_rows > 0  # ... so it waits in memory
            assert "is held by" in (st.last_error or ""), st.last_error
            assert "rows waiting for the database" in p.status().describe()
            last_before_release = max(p.state.last_closed(s) for s in syms)
            await asyncio.to_thread(holder.release)
            await wait_for(lambda: p.writer.pending_rows == 0, what="the backlog written")
            await wait_for(lambda: closed_through(p, syms, last_before_release + MINUTE), what="one more minute")
        assert p.writer.status().last_error is None
        check_exactly_once(ex, db, syms)
        check_indicators(db, syms)


async def test_no_backfill_stores_only_what_the_stream_sent(tmp_path):
    syms = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=syms, speed=60, history_minutes=300) as ex:
        p = make_pipeline(ex, db, syms, backfill=False)
        began = ex.now_ms()
        async with running(p):
            await wait_for(lambda: closed_through(p, syms, began - began % MINUTE + 2 * MINUTE), what="3 finals")
        assert ex.stats.rest_requests == 0 and p.feed.backfilled_rows == 0
        stored = check_exactly_once(ex, db, syms)
        for got in stored.values():
            # nothing older than the candle forming when we connected
            assert to_ms(got["open_time"][0]) >= began - began % MINUTE - MINUTE
            assert 3 <= got.height <= 6
        rsi = store.query("SELECT count(rsi) AS n FROM indicators", db=db)["n"][0]
        assert rsi == 0  # too few candles to warm up


async def test_restart_continues_from_the_stored_history(tmp_path):
    syms = ("BTCUSDT", "ETHUSDT")
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=syms, speed=60, history_minutes=300) as ex:
        first = make_pipeline(ex, db, syms, lookback=50)
        async with running(first):
            await wait_for(lambda: first.writer.status().written_rows >= 100, what="a first run")
        stopped = ex.now_ms()
        await wait_for(lambda: ex.now_ms() >= stopped + 2 * MINUTE, what="two minutes while nothing runs")
        second = make_pipeline(ex, db, syms, lookback=50)
        async with running(second):
            # the stored candles came back into memory, and the gap was fetched from there
            await wait_for(lambda: closed_through(second, syms, stopped - stopped % MINUTE + MINUTE),
                           what="the outage repaired")
            await wait_for(lambda: second.writer.status().written_rows > 0, what="a flush")
        assert second.feed.backfilled_rows < 2 * 50  # from the last stored candle, not a new lookback
        check_exactly_once(ex, db, syms)
        check_indicators(db, syms)


async def test_a_hole_left_in_the_store_by_an_earlier_run_is_repaired(tmp_path):
    syms = ("BTCUSDT", "ETHUSDT")
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=syms, speed=60, history_minutes=300) as ex:
        now = ex.now_ms()
        start = now - now % MINUTE - 100 * MINUTE
        old = pl.concat([ex.history(s, start_ms=start, end_ms=now - 2 * MINUTE) for s in syms])
        # an earlier --no-backfill run lost BTCUSDT's candles 40-42
        lost = (pl.col("symbol") == "BTCUSDT") & pl.col("open_time").dt.epoch("ms").is_between(
            start + 40 * MINUTE, start + 42 * MINUTE)
        w = store.Writer(db)
        w.add_klines(old.filter(~lost))
        w.flush()
        assert history.gaps(db=db)["missing"].to_list() == [3]
        p = make_pipeline(ex, db, syms)
        async with running(p):
            await wait_for(lambda: not p.state.holes(ex.now_ms()) and p.writer.status().pending_rows == 0
                           and p.writer.status().written_rows > 0, what="the hole repaired")
        check_exactly_once(ex, db, syms)


async def test_a_store_that_starts_late_gets_its_lookback_fetched(tmp_path):
    """A run killed after some streamed candles were stored but before its first backfill
    finished: the next start also fetches [now - lookback, first stored)."""
    syms = ("BTCUSDT", "ETHUSDT")
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=syms, speed=60, history_minutes=300) as ex:
        now = ex.now_ms()
        recent = now - now % MINUTE - 5 * MINUTE
        w = store.Writer(db)
        w.add_klines(pl.concat([ex.history(s, start_ms=recent, end_ms=now - 2 * MINUTE) for s in syms]))
        w.flush()
        p = make_pipeline(ex, db, syms, lookback=100)
        began = ex.now_ms()
        head = began - began % MINUTE - 100 * MINUTE
        async with running(p):
            await wait_for(lambda: all(p.first.get(s, recent) <= head + MINUTE for s in syms)
                           and p.writer.status().pending_rows == 0 and closed_through(p, syms, recent + 5 * MINUTE),
                           what="the lookback before the first stored candle")
            await wait_for(lambda: p.writer.status().pending_rows == 0, what="written")
        stored = check_exactly_once(ex, db, syms)  # from the new first candle on, no hole, the exchange's numbers
        for got in stored.values():
            assert to_ms(got["open_time"][0]) <= head + MINUTE  # not `recent`: the head was fetched
            assert got.height >= 100


# --------------------------------------------------------------------------- command line


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def exchange_proc():
    """``python -m market.exchange`` on a free port, for the CLI tests."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "market.exchange", "--port", "0", "--speed", "60",
         "--symbols", "BTCUSDT,ETHUSDT", "--history-minutes", "300"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        info = json.loads(proc.stdout.readline())
        assert info["ws"].endswith("/market") and info["rest"].startswith("http://127.0.0.1:")
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def ingest_cmd(exchange: dict, db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "store.ingest", "--db", str(db), "--symbols", "BTCUSDT,ETHUSDT",
            "--ws-url", exchange["ws"], "--rest-url", exchange["rest"], "--lookback", "100", *extra]


class Lines:
    """A subprocess's stderr, read in a thread, so the test can wait for log lines."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._q.put(line)

    def wait(self, needle: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no log line with {needle!r} within {timeout} s:\n{''.join(self.lines)}")

    def rest(self) -> str:
        while not self._q.empty():
            self.lines.append(self._q.get())
        return "".join(self.lines)


def exchange_history(exchange: dict, symbol: str, first_ms: int, last_ms: int) -> list[list]:
    """The exchange's closed candles as REST rows, from its control endpoint."""
    resp = httpx.post(f"{exchange['rest']}/_control/history",
                      params={"symbol": symbol, "start_ms": first_ms, "end_ms": last_ms})
    resp.raise_for_status()
    return resp.json()


def check_cli_db(exchange: dict, db: Path, min_rows: int) -> None:
    for sym in ("BTCUSDT", "ETHUSDT"):
        got = history.klines(sym, db=db)
        assert got.height >= min_rows and got.select(KEY).is_duplicated().sum() == 0
        rows = exchange_history(exchange, sym, to_ms(got["open_time"][0]), to_ms(got["open_time"][-1]))
        assert got["open_time"].dt.epoch("ms").to_list() == [r[0] for r in rows]
        assert got["close"].to_list() == [float(r[4]) for r in rows]
        assert got["volume"].to_list() == [float(r[5]) for r in rows]
    assert history.gaps(db=db).height == 0
    check_tickers(db, ("BTCUSDT", "ETHUSDT"))


def test_cli_runs_for_its_duration_and_exits_0(exchange_proc, tmp_path):
    db = tmp_path / "cli.duckdb"
    began = time.monotonic()
    out = subprocess.run(ingest_cmd(exchange_proc, db, "--duration", "4", "--flush-every", "0.5"),
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - began >= 4
    assert "stopped:" in out.stderr and ", 0 pending" in out.stderr
    check_cli_db(exchange_proc, db, 100)


def test_cli_sigterm_exits_0_after_a_final_flush(exchange_proc, tmp_path):
    db = tmp_path / "term.duckdb"
    # no periodic flush within the run: whatever is stored was written by the final flush
    proc = subprocess.Popen(ingest_cmd(exchange_proc, db, "--flush-every", "600", "--log-every", "0.3"),
                            cwd=ROOT, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        log = Lines(proc.stderr)
        log.wait("symbol=BTCUSDT")
        log.wait("symbol=ETHUSDT")
        log.wait("live:")
        # two candles close on the stream as well (the exchange's own history says when)
        live_at = exchange_history(exchange_proc, "ETHUSDT", 0, 2**62)[-1][0]
        deadline = time.monotonic() + 60
        while exchange_history(exchange_proc, "ETHUSDT", live_at, 2**62)[-1][0] < live_at + 2 * MINUTE:
            assert time.monotonic() < deadline, log.rest()
            time.sleep(0.05)
        assert not db.exists() or store.query("SELECT count(*) AS n FROM klines", db=db)["n"][0] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped:" in log.rest() and ", 0 pending" in log.rest()
    check_cli_db(exchange_proc, db, 100)
    for sym in ("BTCUSDT", "ETHUSDT"):  # the streamed candles made it into the final flush
        assert to_ms(history.klines(sym, db=db)["open_time"][-1]) >= live_at + 2 * MINUTE


def test_sql_cli_answers_while_ingest_runs(exchange_proc, tmp_path):
    db = tmp_path / "busy.duckdb"
    proc = subprocess.Popen(ingest_cmd(exchange_proc, db, "--flush-every", "0.1", "--log-every", "60"),
                            cwd=ROOT, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        log = Lines(proc.stderr)
        log.wait("symbol=ETHUSDT")
        deadline = time.monotonic() + 90
        while not db.exists() or store.query("SELECT count(*) AS n FROM klines", db=db)["n"][0] < 200:
            assert time.monotonic() < deadline, log.rest()
            time.sleep(0.1)
        both = ["BTCUSDT", "ETHUSDT"]
        # each query with a check of its values (a header alone satisfies none of them)
        queries = {
            "SELECT count(*) AS n FROM klines": lambda f: f["n"][0] >= 200,
            "SELECT symbol, max(open_time) AS last FROM klines GROUP BY symbol ORDER BY symbol":
                lambda f: f["symbol"].to_list() == both and f["last"].null_count() == 0,
            "SELECT symbol, last_price FROM tickers ORDER BY symbol":
                lambda f: f["symbol"].to_list() == both and (f["last_price"] > 0).all(),
            "SELECT k.symbol, avg(i.rsi) AS rsi FROM klines k JOIN indicators i USING (symbol, interval, open_time) "
            "GROUP BY ALL ORDER BY 1": lambda f: f["symbol"].to_list() == both and f["rsi"].is_between(0, 100).all(),
            "SELECT count(*) AS n FROM klines WHERE open_time > now() - INTERVAL 100 YEAR": lambda f: f["n"][0] >= 200,
            "SELECT * FROM schema_version": lambda f: f.height >= 1 and f["version"].min() >= 1,
        }
        # all at once, each opening and closing the file while the writer flushes every 0.1 s
        sqls = [subprocess.Popen([sys.executable, "-m", "store.sql", "--db", str(db), "--format", "csv", q],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
                for q in queries]
        results = [s.communicate(timeout=60) for s in sqls]
        for (q, check), s, (out, err) in zip(queries.items(), sqls, results):
            assert s.returncode == 0, f"{q}: {err}"
            frame = pl.read_csv(io.StringIO(out))
            assert frame.height > 0 and check(frame), (q, out)
        assert proc.poll() is None  # the ingest kept running through all of it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in log.rest()
    check_cli_db(exchange_proc, db, 100)
