"""store/writer.py: idempotent appends, a held file, bounded memory, nothing lost."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import polars as pl
from polars.testing import assert_frame_equal

import store
from market.schema import INDICATOR_SCHEMA, KLINE_SCHEMA, TICKER_SCHEMA
from tests.conftest import ROOT, random_klines, wait_for

KEY = ["symbol", "interval", "open_time"]


def stored(db, table="klines"):
    order = "symbol" if table == "tickers" else "symbol, interval, open_time"
    return store.query(f"SELECT * FROM {table} ORDER BY {order}", db=db)


def test_same_candle_twice_and_older_copy_leave_one_newest_row(tmp_path):
    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    first = random_klines(["BTCUSDT", "ETHUSDT"], 5, seed=1)
    w.add_klines(first)
    w.flush()
    # a corrected copy of two candles, once in its own flush and once repeated in a batch
    fix = first.filter(pl.col("open_time") == pl.col("open_time").min()).with_columns(close=pl.lit(123.0))
    w.add_klines(first.head(2))  # an older copy arrives ...
    w.add_klines(fix)            # ... then the newer one, in the same flush
    w.flush()
    w.add_klines(first.tail(3))  # plain duplicates in a later flush
    w.flush()
    got = stored(db)
    assert got.height == 10
    assert got.select(KEY).is_duplicated().sum() == 0
    firsts = got.filter(pl.col("open_time") == pl.col("open_time").min())
    assert firsts["close"].to_list() == [123.0, 123.0]
    expected = first.update(fix, on=KEY).sort(KEY)
    assert_frame_equal(got, expected)


def test_duplicates_within_one_batch_keep_the_last(tmp_path):
    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    k = random_klines(["BTCUSDT"], 1)
    w.add_klines(pl.concat([k, k.with_columns(close=pl.lit(7.0)), k.with_columns(close=pl.lit(8.0))]))
    w.flush()
    assert stored(db)["close"].to_list() == [8.0]


def test_tickers_keep_the_newest_event_per_symbol(tmp_path):
    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    t0 = dt.datetime(2026, 1, 1)

    def tick(sym, sec, price):
        return pl.DataFrame(
            [dict(symbol=sym, event_time=t0 + dt.timedelta(seconds=sec), last_price=price, price_change=0.0,
                  price_change_pct=1.5, open_price=1.0, high_price=2.0, low_price=0.5, volume=1.0,
                  quote_volume=1.0, trades=3)], schema=TICKER_SCHEMA)

    w.add_tickers(pl.concat([tick("A", 2, 2.0), tick("A", 1, 1.0), tick("B", 1, 5.0)]))
    w.flush()
    w.add_tickers(tick("A", 0, 0.5))  # late, older event: ignored
    w.add_tickers(tick("B", 3, 6.0))
    w.flush()
    assert stored(db, "tickers").select("symbol", "last_price").rows() == [("A", 2.0), ("B", 6.0)]


def test_indicators_are_unique_per_candle(tmp_path):
    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    k = random_klines(["BTCUSDT"], 3)
    ind = k.select(KEY).with_columns(rsi=pl.lit(50.0), stoch_k=pl.lit(None, pl.Float64),
                                     stoch_d=pl.lit(None, pl.Float64), signal=pl.lit(None, pl.String))
    w.add_indicators(ind)
    w.flush()
    w.add_indicators(ind.tail(1).with_columns(rsi=pl.lit(60.0), signal=pl.lit("overbought")))
    w.flush()
    got = stored(db, "indicators")
    assert got.schema == pl.Schema(INDICATOR_SCHEMA)
    assert got["rsi"].to_list() == [50.0, 50.0, 60.0]
    assert got["signal"].to_list() == [None, None, "overbought"]


def test_held_file_keeps_rows_and_reports_then_writes_everything(tmp_path, hold_file):
    db = tmp_path / "m.duckdb"
    # a long backoff, so "a retry is scheduled" is visible however slow the box is
    w = store.Writer(db, retry_base=30.0, retry_cap=60.0)
    w.add_klines(random_klines(["BTCUSDT"], 1))
    w.flush()
    holder = hold_file(db)
    batches = random_klines(["BTCUSDT", "ETHUSDT"], 40, start=dt.datetime(2026, 2, 1))
    for i in range(0, 80, 20):
        w.add_klines(batches.slice(i, 20))
        assert w.flush(force=True) == 0
    assert w.pending_rows == 80
    st = w.status()
    assert "held by process" in w.last_error and st.last_error == w.last_error
    # four failures: the delay doubled up to the 60 s cap, jittered down to no less than half
    assert 25.0 < st.retry_in <= 60.0
    assert st.pending_rows == 80 and st.spooled_rows == 0 and st.written_rows == 1
    holder.release()
    assert w.flush() == 0 and w.pending_rows == 80  # an unforced flush honours the backoff
    assert w.flush(force=True) == 80
    assert w.pending_rows == 0 and w.last_error is None
    assert stored(db).height == 81


def test_own_process_reader_and_writer_do_not_collide(tmp_path):
    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    w.add_klines(random_klines(["BTCUSDT"], 2))
    w.flush()
    with store.reader(db) as con:
        w.add_klines(random_klines(["ETHUSDT"], 2))
        assert w.flush(force=True) == 0  # our own reader holds it: wait, do not error
        assert "being read in this process" in w.last_error
        assert con.execute("SELECT count(*) FROM klines").fetchone()[0] == 2
    assert w.flush(force=True) == 2


SPOOLER = textwrap.dedent(
    """
    import sys, store
    from tests.conftest import random_klines
    import datetime as dt
    w = store.Writer(sys.argv[1], max_pending_rows=50)
    data = random_klines(["BTCUSDT", "ETHUSDT", "SOLUSDT"], 2000, start=dt.datetime(2026, 4, 1))
    while True:  # the same rows again and again: idempotent, so the truth stays `data`
        for i in range(0, data.height, 25):
            w.add_klines(data.slice(i, 25))  # every second batch spools (the file is held)
            w.flush(force=True)
            if i == 250:
                print("spooling", flush=True)
    """
)


def test_memory_is_bounded_by_spooling_and_spool_survives_a_kill(tmp_path, hold_file):
    """A writer process spooling behind a held file is killed with SIGKILL; nothing spooled is lost."""
    db = tmp_path / "m.duckdb"
    w = store.Writer(db, max_pending_rows=50)
    w.add_klines(random_klines(["BTCUSDT"], 1))
    w.flush()
    holder = hold_file(db)
    data = random_klines(["BTCUSDT", "ETHUSDT", "SOLUSDT"], 100, start=dt.datetime(2026, 3, 1))
    for i in range(0, data.height, 25):
        w.add_klines(data.slice(i, 25))
        w.flush(force=True)
    st = w.status()
    assert st.pending_rows == 300 and st.spooled_rows >= 250
    assert len(list(w.spool_dir.glob("*.parquet"))) >= 5
    del w  # what this writer did not spool dies with it; the kill below is the real test

    proc = subprocess.Popen([sys.executable, "-c", SPOOLER, str(db)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "spooling"
        spool = db.with_name(db.name + ".spool")
        # kill it while a spool file is being written (a .tmp exists); give up looking after 30 s
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(f.suffix == ".tmp" for f in spool.iterdir()):
            pass
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    complete = sorted(spool.glob("*.parquet"))
    spooled = pl.concat([pl.read_parquet(f) for f in complete])
    holder.release()
    w2 = store.Writer(db)
    assert w2.pending_rows == spooled.height
    assert w2.flush() == spooled.height
    got = stored(db)
    # everything in a complete spool file is stored once; a half-written one is discarded
    expected = spooled.unique(KEY, keep="last").sort(KEY)
    assert_frame_equal(got.filter(pl.col("open_time") >= dt.datetime(2026, 3, 1)), expected)
    assert_frame_equal(expected.filter(pl.col("open_time") < dt.datetime(2026, 4, 1)), data.sort(KEY))
    assert expected.filter(pl.col("open_time") >= dt.datetime(2026, 4, 1)).height >= 250
    assert not list(spool.iterdir())  # nothing left behind, not even a half-written .tmp


READER = textwrap.dedent(
    """
    import sys, time, store
    db, queries, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    answered = failed = 0
    for _ in range(queries):
        try:
            store.query("SELECT count(*) FROM klines", db=db, timeout=60)
            answered += 1
        except Exception as exc:
            failed += 1
            print("failed:", exc, file=sys.stderr)
        time.sleep(pause)
    print(answered, failed)
    """
)


def test_reader_process_and_writer_share_the_file(tmp_path):
    """Another process runs 20 queries while we keep flushing: every query answered, no row lost."""
    db = tmp_path / "m.duckdb"
    w = store.Writer(db, retry_base=0.01, retry_cap=0.1)
    data = random_klines([f"S{i}" for i in range(50)], 40)
    w.add_klines(data.slice(0, 50))
    w.flush()
    proc = subprocess.Popen([sys.executable, "-c", READER, str(db), "20", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    flushes_while_reading = 0
    i = 50
    while proc.poll() is None:  # flush for as long as the reader runs (the same rows again: idempotent)
        w.add_klines(data.slice(i % data.height, 50))
        w.flush()
        flushes_while_reading += 1
        i += 50
        time.sleep(0.05)
    w.add_klines(data)
    w.close()
    out, err = proc.communicate(timeout=60)
    answered, failed = map(int, out.split())
    assert (answered, failed) == (20, 0), err
    assert flushes_while_reading > 0
    assert_frame_equal(stored(db), data.sort(KEY))


def test_long_reader_loses_nothing(tmp_path):
    """A reader process holds the file while rows keep coming; they wait in memory, then all land."""
    db = tmp_path / "m.duckdb"
    w = store.Writer(db, retry_base=0.05, retry_cap=0.5)
    data = random_klines(["BTCUSDT", "ETHUSDT"], 200)
    w.add_klines(data.head(2))
    w.flush()
    hold = textwrap.dedent(
        """
        import duckdb, sys
        con = duckdb.connect(sys.argv[1], read_only=True)
        print("ready", flush=True); sys.stdin.readline(); con.close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", hold, str(db)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    stop = threading.Event()
    saw_pending = []

    def flusher():
        while not stop.is_set():
            w.flush()
            saw_pending.append(w.pending_rows)
            time.sleep(0.05)

    t = threading.Thread(target=flusher)
    t.start()
    try:
        for i in range(2, data.height, 2):
            w.add_klines(data.slice(i, 2))
        wait_until(lambda: saw_pending and saw_pending[-1] == data.height - 2, "all rows waiting")
        assert w.status().written_rows == 2 and "held by process" in w.last_error
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
        wait_until(lambda: w.pending_rows == 0, "the rows written after the reader left")
    finally:
        stop.set()
        t.join()
    w.close()
    assert max(saw_pending) == data.height - 2
    assert_frame_equal(stored(db), data.sort(KEY))


def wait_until(cond, what: str, timeout: float = 60.0) -> None:
    """The thread-side twin of conftest.wait_for."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)


def test_run_flushes_periodically_and_on_cancel(tmp_path):
    import asyncio

    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    data = random_klines(["BTCUSDT"], 3)

    def count():
        return store.query("SELECT count(*) AS n FROM klines", db=db)["n"][0] if db.exists() else 0

    async def main():
        task = asyncio.create_task(w.run(every=0.05))
        w.add_klines(data.head(1))
        await wait_for(lambda: w.status().flushes >= 1, timeout=60, what="a periodic flush")
        assert count() == 1
        w.add_klines(data.tail(2))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    assert stored(db).height == 3


def test_schema_dtypes_roundtrip(tmp_path):
    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    w.add_klines(random_klines(["BTCUSDT"], 2))
    w.flush()
    assert stored(db).schema == pl.Schema(KLINE_SCHEMA)


# -- compaction (file size after minute-by-minute flushes) --------------------------------


def _all_tables(db):
    return {t: stored(db, t) for t in ("klines", "indicators", "tickers")} | {
        t: store.query(f"SELECT * FROM {t} ORDER BY ALL", db=db) for t in ("meta", "empty_ranges")
    }


def _minutes(n, symbols=50):
    data = random_klines([f"S{i:02d}USDT" for i in range(symbols)], n, seed=7)
    return data.partition_by("open_time", maintain_order=True)


def test_compaction_brings_small_flushes_back_to_a_bulk_load(tmp_path):
    from market.indicators import add_indicators, add_signal
    from store.ranges import record_empty

    minutes = _minutes(300)
    bulk = tmp_path / "bulk.duckdb"
    w = store.Writer(bulk)
    w.add_klines(pl.concat(minutes))
    w.flush()
    live = tmp_path / "live.duckdb"
    w = store.Writer(live, market="binance-futures", compact_every=0)  # no automatic compaction here
    for m in minutes:
        w.add_klines(m)
        w.flush(force=True)
    w.add_indicators(add_signal(add_indicators(pl.concat(minutes))).select(list(INDICATOR_SCHEMA)))
    w.add_tickers(pl.DataFrame({"symbol": ["S00USDT"], "event_time": [dt.datetime(2026, 1, 1)], "last_price": [1.0]},
                               ).with_columns(pl.lit(None).alias(c) for c in list(TICKER_SCHEMA)[3:]))
    w.flush()
    record_empty([("S01USDT", "1m", 0, 60_000)], db=live)
    before = _all_tables(live)
    grown = live.stat().st_size
    assert grown > 1.3 * bulk.stat().st_size  # what the flushes leave (block-rounded)
    assert w.compact() and w.compactions == 1
    assert live.stat().st_size < grown
    after = _all_tables(live)
    for table, frame in before.items():
        assert_frame_equal(after[table], frame, check_row_order=True), table
    assert not live.with_name(live.name + ".compact").exists()
    # the writer keeps working on the new file, and a plain check does nothing on a compact file
    w.add_klines(random_klines(["S00USDT"], 1, start=dt.datetime(2027, 1, 1)))
    assert w.flush() == 1
    assert w.compact(force=False) is False
    assert stored(live).height == 300 * 50 + 1


def test_automatic_compaction_runs_every_n_flushes_when_the_file_is_mostly_free(tmp_path):
    live = tmp_path / "live.duckdb"
    w = store.Writer(live, compact_every=40)
    minutes = _minutes(120, symbols=20)
    for m in minutes:
        w.add_klines(m)
        w.flush(force=True)
    assert w.compactions >= 1
    assert_frame_equal(stored(live), pl.concat(minutes).sort(KEY))


COMPACTOR = textwrap.dedent(
    """
    import sys, store
    w = store.Writer(sys.argv[1])
    n = 0
    while True:
        w.compact()
        n += 1
        if n == 3:
            print("compacting", flush=True)
    """
)


def test_kill_during_compaction_leaves_a_whole_file(tmp_path):
    """A process compacting in a loop is killed with SIGKILL: the file opens with every row, and the
    next compaction clears the half-written copy."""
    db = tmp_path / "m.duckdb"
    w = store.Writer(db, compact_every=0)
    minutes = _minutes(200)
    for m in minutes:
        w.add_klines(m)
        w.flush(force=True)
    expected = stored(db)
    proc = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(db)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "compacting"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert_frame_equal(stored(db), expected)
    w2 = store.Writer(db)
    assert w2.compact()
    assert not db.with_name(db.name + ".compact").exists()
    assert_frame_equal(stored(db), expected)


FULL_DISK = textwrap.dedent(
    """
    import datetime as dt, json, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    import store
    from tests.conftest import random_klines
    w = store.Writer(sys.argv[1], max_pending_rows=1000)
    w.add_klines(random_klines(["A"], 10))
    w.flush()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the disk is full: no file grows past 4 KB
    data = random_klines(["A", "B", "C"], 1000, start=dt.datetime(2026, 2, 1))
    raised, errors = [], set()
    for i in range(0, data.height, 250):
        w.add_klines(data.slice(i, 250))  # past 1,000 rows it tries to spool, which fails too
        errors.add(w.last_error or "")
        try:
            w.flush(force=True)
        except store.StoreError as exc:
            raised.append(str(exc))
    st = w.status()
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
    written = w.flush(force=True)
    print(json.dumps({"pending": st.pending_rows, "spooled": st.spooled_rows, "errors": sorted(errors),
                      "raised": len(raised), "written": written, "left": w.pending_rows}))
    """
)


def test_full_disk_keeps_rows_in_memory_when_spooling_fails_too(tmp_path):
    """Database and spool both unwritable (a per-file size limit stands in for a full disk):
    nothing is dropped, add() never raises, and everything lands once there is room."""
    db = tmp_path / "m.duckdb"
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(db)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["pending"] == 3000 and got["spooled"] == 0  # all kept in memory, over the 1,000 limit
    assert any("cannot spool" in e and "either" in e for e in got["errors"]), got
    assert got["raised"] == 12  # each of the 12 flushes said why it could not write
    assert got["written"] == 3000 and got["left"] == 0
    data = random_klines(["A", "B", "C"], 1000, start=dt.datetime(2026, 2, 1))
    assert_frame_equal(stored(db).filter(pl.col("open_time") >= dt.datetime(2026, 2, 1)), data.sort(KEY))
    spool = db.with_name(db.name + ".spool")
    assert not spool.exists() or not list(spool.iterdir())
