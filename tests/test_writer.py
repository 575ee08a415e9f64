"""store/writer.py: idempotent appends, a held file, bounded memory, nothing lost."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import threading
import time

import polars as pl
from polars.testing import assert_frame_equal

import store
from market.schema import INDICATOR_SCHEMA, KLINE_SCHEMA, TICKER_SCHEMA
from tests.conftest import random_klines

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
    w = store.Writer(db, retry_base=0.01, retry_cap=0.05)
    w.add_klines(random_klines(["BTCUSDT"], 1))
    w.flush()
    holder = hold_file(db)
    batches = random_klines(["BTCUSDT", "ETHUSDT"], 40, start=dt.datetime(2026, 2, 1))
    for i in range(0, 80, 20):
        w.add_klines(batches.slice(i, 20))
        assert w.flush(force=True) == 0
    assert w.pending_rows == 80
    assert "held by process" in w.last_error and w.status().retry_in >= 0
    holder.release()
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


def test_memory_is_bounded_by_spooling_and_spool_survives_a_crash(tmp_path, hold_file):
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
    # the process "dies" here: a new writer finds the spooled rows and writes them
    w._spool()  # what close() does with rows it could not write
    del w
    holder.release()
    w2 = store.Writer(db)
    assert w2.pending_rows == 300
    assert w2.flush() == 300
    got = stored(db)
    assert got.height == 301
    assert_frame_equal(got.filter(pl.col("open_time") >= dt.datetime(2026, 3, 1)), data.sort(KEY))
    assert not list(w2.spool_dir.glob("*.parquet"))


READER = textwrap.dedent(
    """
    import sys, time, store
    db, seconds, pause = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    answered = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            store.query("SELECT count(*) FROM klines", db=db, timeout=10)
            answered += 1
        except Exception as exc:
            failed += 1
            print("failed:", exc, file=sys.stderr)
        time.sleep(pause)
    print(answered, failed)
    """
)


def test_reader_process_and_writer_share_the_file(tmp_path):
    """Another process queries every 100 ms while we flush every 100 ms: all answered, none lost."""
    db = tmp_path / "m.duckdb"
    w = store.Writer(db, retry_base=0.01, retry_cap=0.1)
    data = random_klines([f"S{i}" for i in range(50)], 40)
    w.add_klines(data.slice(0, 50))
    w.flush()
    proc = subprocess.Popen([sys.executable, "-c", READER, str(db), "4", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for i in range(50, data.height, 50):
        w.add_klines(data.slice(i, 50))
        w.flush()
        time.sleep(0.1)
    w.close()
    out, err = proc.communicate(timeout=60)
    answered, failed = map(int, out.split())
    assert failed == 0, err
    assert answered >= 20
    assert_frame_equal(stored(db), data.sort(KEY))


def test_long_reader_loses_nothing(tmp_path):
    """A reader holds the file (here 3 s; the README's minute-long check is the same code path)."""
    db = tmp_path / "m.duckdb"
    w = store.Writer(db, retry_base=0.05, retry_cap=0.5)
    data = random_klines(["BTCUSDT", "ETHUSDT"], 200)
    w.add_klines(data.head(2))
    w.flush()
    hold = textwrap.dedent(
        """
        import duckdb, sys, time
        con = duckdb.connect(sys.argv[1], read_only=True)
        print("ready", flush=True); time.sleep(3); con.close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", hold, str(db)], stdout=subprocess.PIPE, text=True)
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
    for i in range(2, data.height, 2):
        w.add_klines(data.slice(i, 2))
        time.sleep(0.02)
    proc.wait(timeout=30)
    stop.set()
    t.join()
    w.close()
    assert max(saw_pending) > 0
    assert_frame_equal(stored(db), data.sort(KEY))


def test_run_flushes_periodically_and_on_cancel(tmp_path):
    import asyncio

    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    data = random_klines(["BTCUSDT"], 3)

    async def main():
        task = asyncio.create_task(w.run(every=0.05))
        w.add_klines(data.head(1))
        await asyncio.sleep(0.5)
        assert store.query("SELECT count(*) AS n FROM klines", db=db)["n"][0] == 1
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
