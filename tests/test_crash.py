"""Crash suite: `python -m store.ingest` killed with SIGKILL, again and again, loses nothing.

One LocalExchange runs in this process at an accelerated clock; the ingest runs as
a real subprocess against it and is killed at random moments, during a flush (the
database file is open in the ingest process), and while another process holds the
file through ``store.reader()`` (so rows are pending or spooled to Parquet).
Restarts sometimes come after a pause, so candles close while nobody listens and
must come back over REST. At the end, after one clean run and SIGTERM, the store
must equal the exchange's history candle for candle, with no duplicate, no hole,
one indicator row per candle, and no spool file or WAL left behind.

Every stored indicator row must equal TA-Lib over the stored closes
(``indicator_rows_off`` == 0): a run seeds its history from the database plus the
rows a killed run left spooled, and stores again the indicators of spooled rows
(tests/test_ingest_recovery.py has the fast, deterministic cases).

The counts are printed and written to test-artifacts/crash.json (quoted in the
README's "Reliability" section). ``CRASH_SEED`` and ``CRASH_KILLS`` override the
defaults.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import store
from store import history
from market.exchange import LocalExchange
from tests.conftest import ROOT, talib_indicators, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
SPEED = 60  # sim seconds per real second: a 1m candle closes every second
KILLS = int(os.environ.get("CRASH_KILLS", "20"))
SEED = int(os.environ.get("CRASH_SEED", "20261129"))
MAX_PENDING = 30  # rows in memory before the writer spools (a few seconds of this feed)
KEY = ["symbol", "interval", "open_time"]

HOLDER = textwrap.dedent(
    """
    import sys, store
    with store.reader(sys.argv[1], timeout=120) as con:
        con.execute("SELECT count(*) FROM klines").fetchone()
        print("holding", flush=True)
        sys.stdin.readline()
    """
)


PROCS: list[subprocess.Popen] = []  # every process this test started, killed if it fails


class Reader:
    """Another process holding the file open through store.reader() until released."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        PROCS.append(self.proc)

    async def held(self) -> None:
        line = await asyncio.to_thread(self.proc.stdout.readline)
        assert line.strip() == "holding", f"the reader could not open the file: {line!r}"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        self.proc.wait(timeout=60)
        assert self.proc.returncode == 0


class Ingest:
    """One `python -m store.ingest` run; its log goes to a file we can watch."""

    def __init__(self, ex: LocalExchange, db: Path, log: Path) -> None:
        self.db, self.log = db, log
        self.out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "store.ingest", "--db", str(db), "--symbols", ",".join(SYMBOLS),
             "--ws-url", ex.ws_base, "--rest-url", ex.rest_base, "--flush-every", "0.2",
             "--log-every", "1", "--max-pending", str(MAX_PENDING)],
            cwd=ROOT, stdout=self.out, stderr=subprocess.STDOUT)
        PROCS.append(self.proc)

    def text(self) -> str:
        return self.log.read_text()

    def started(self) -> bool:
        """Past loading its history: every later open of the file is a flush."""
        t = self.text()
        return "loaded " in t or "starting without stored history" in t

    def file_open(self) -> bool:
        """The database file is open in the ingest process: the writer is inside a flush."""
        fd_dir = f"/proc/{self.proc.pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return False
        for n in names:
            try:
                if os.readlink(f"{fd_dir}/{n}") == str(self.db):
                    return True
            except OSError:
                continue
        return False

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self.out.close()
        assert self.proc.returncode == -signal.SIGKILL, self.text()[-2000:]

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 120)
        self.out.close()
        assert self.proc.returncode == 0, self.text()[-3000:]


def spool_files(db: Path) -> list[Path]:
    d = db.with_name(db.name + ".spool")
    return sorted(d.iterdir()) if d.exists() else []


def stored_max(db: Path) -> dict[str, int]:
    rows = store.query("SELECT symbol, epoch_ms(max(open_time)) AS t FROM klines GROUP BY symbol", db=db,
                       timeout=60)
    return dict(rows.iter_rows()) if rows.height else {}


@pytest.fixture
def procs():
    yield PROCS
    for proc in PROCS:  # a failed run leaves nothing behind
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    PROCS.clear()


async def test_sigkill_at_random_moments_loses_nothing(tmp_path, procs):
    rng = random.Random(SEED)
    db = tmp_path / "crash.duckdb"
    counts = collections.Counter()
    # the kind of each kill, shuffled: random moments, inside a flush, while another process holds the file
    n = KILLS * 3 // 10
    kinds = ["random"] * (KILLS - 2 * n) + ["flush"] * (n - 1) + ["held"] * n
    rng.shuffle(kinds)
    kinds = ["flush"] + kinds  # the first run makes the file: a reader needs it to exist
    started = time.monotonic()
    async with LocalExchange(symbols=SYMBOLS, speed=SPEED, history_minutes=90) as ex:
        reader: Reader | None = None
        for i, kind in enumerate(kinds):
            run = Ingest(ex, db, tmp_path / f"ingest-{i:02d}.log")
            if reader is not None and rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0.5, 2.0))  # restarted while still held, then released
            if reader is not None:
                await asyncio.to_thread(reader.release)
                reader = None
            if kind == "random":
                await asyncio.sleep(rng.uniform(0.2, 5.0))  # sometimes before it even connected
            elif kind == "flush":
                await wait_for(run.started, timeout=120, what="ingest start")
                await asyncio.sleep(rng.uniform(0.0, 2.0))
                deadline = time.monotonic() + 60
                while not run.file_open():  # no await between seeing the flush and the kill
                    assert time.monotonic() < deadline, "no flush seen in 60 s"
                    await asyncio.sleep(0.0005)
                counts["kills_during_flush"] += 1
            else:  # held: a reader process keeps the file open; rows wait in memory, then spool
                await wait_for(run.started, timeout=120, what="ingest start")
                reader = Reader(db)
                await reader.held()
                before = {f.name for f in spool_files(db)}
                await wait_for(lambda: any(f.suffix == ".parquet" and f.name not in before
                                           for f in spool_files(db)),
                               timeout=120, what="rows spooled while the file is held")
                await asyncio.sleep(rng.uniform(0.0, 1.5))
                counts["kills_while_held"] += 1
            run.kill()
            counts["kills"] += 1
            counts["wal_left_by_kill"] += (db.with_name(db.name + ".wal")).exists()
            counts["spool_files_left_by_kill"] += len(spool_files(db))
            if rng.random() < 0.3:  # candles close while nobody listens
                counts["pauses"] += 1
                await asyncio.sleep(rng.uniform(1.0, 4.0))
        if reader is not None:
            await asyncio.to_thread(reader.release)

        # one clean run: it must catch up with the exchange, then stop on SIGTERM
        final = Ingest(ex, db, tmp_path / "ingest-final.log")
        minute = 60_000
        target = ex.now_ms() - ex.now_ms() % minute - minute  # the candle closed when it started

        def caught_up() -> bool:
            """Up to that candle, and every hole inside the stored range repaired."""
            try:
                last = stored_max(db)
                if not (len(last) == len(SYMBOLS) and all(t >= target for t in last.values())):
                    return False
                return history.gaps(db=db).height == 0
            except store.StoreError:
                return False

        await wait_for(lambda: final.started(), timeout=120, what="final ingest start")
        await wait_for(caught_up, timeout=180, every=0.2, what="the final run catching up")
        await final.stop()

        # the file opens cleanly, read-write, with nothing to replay and nothing spooled
        assert not db.with_name(db.name + ".wal").exists()
        assert spool_files(db) == [], spool_files(db)
        con = duckdb.connect(str(db))
        try:
            for table in ("klines", "indicators", "tickers"):
                con.execute(f"SELECT count(*) FROM {table}").fetchone()
        finally:
            con.close()

        klines = store.query("SELECT * FROM klines ORDER BY symbol, interval, open_time", db=db)
        indicators = store.query("SELECT * FROM indicators ORDER BY symbol, interval, open_time", db=db)
        assert klines.select(KEY).is_duplicated().sum() == 0
        assert indicators.select(KEY).is_duplicated().sum() == 0
        assert_frame_equal(indicators.select(KEY), klines.select(KEY))  # one indicator row per candle
        compared = 0
        for sym in SYMBOLS:
            got = klines.filter(pl.col("symbol") == sym)
            first = ex.history(sym, "1m").head(1)["open_time"][0]
            assert got["open_time"][0] == first, f"{sym}: the store starts late"
            ms = got["open_time"].dt.epoch("ms")
            want = ex.history(sym, "1m", ms[0], ms[-1])
            missing = want.join(got, on=KEY, how="anti")["open_time"].to_list()
            assert not missing, f"{sym}: {len(missing)} candles missing: {missing[:5]} ... {missing[-5:]}"
            assert_frame_equal(got, want)  # candle for candle, every column
            compared += got.height
            # indicators: every row equals TA-Lib over the stored closes (asserted below)
            ref = talib_indicators(got["close"].to_numpy())
            ind = indicators.filter(pl.col("symbol") == sym)
            off = np.zeros(got.height, dtype=bool)
            for name in ("rsi", "stoch_k", "stoch_d"):
                ours = ind[name].to_numpy().astype(float)
                off |= np.isnan(ours) != np.isnan(ref[name])
                off |= np.nan_to_num(np.abs(ours - ref[name])) > 1e-9
            off |= np.array([a != b for a, b in zip(ind["signal"].to_list(), ref["signal"])])
            counts["indicator_rows_off"] += int(off.sum())
    counts["candles_compared"] = compared
    counts["symbols"] = len(SYMBOLS)
    counts["speed"] = SPEED
    counts["seed"] = SEED
    counts["seconds"] = round(time.monotonic() - started)
    report = dict(sorted(counts.items()))
    print("crash suite:", json.dumps(report))
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "crash.json").write_text(json.dumps(report, indent=2) + "\n")
    assert counts["kills"] == KILLS
    assert counts["kills_during_flush"] >= 1 and counts["kills_while_held"] >= 1
    assert counts["indicator_rows_off"] == 0, report
