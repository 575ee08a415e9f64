"""store/ingest.py after a kill: stored indicators equal a full-history computation.

Regression tests for what the crash suite (tests/test_crash.py) found: a run that
seeded its history from the database alone computed RSI/StochRSI without the rows a
killed run had left spooled to Parquet, stored those values, and never rewrote
them; a run that started while the database was busy did the same with no history
at all; and a spool file written while a failed flush held older rows let those
older rows win. Real DuckDB files, the real LocalExchange, TA-Lib as the reference.
"""

from __future__ import annotations

import threading

import numpy as np
import polars as pl
import pytest

import store
from market.exchange import LocalExchange
from market.indicators import add_indicators, add_signal
from market.schema import INDICATOR_SCHEMA, KLINE_SCHEMA
from tests.conftest import wait_for
from tests.test_ingest import MINUTE, check_indicators, closed_through, make_pipeline, running

pytestmark = pytest.mark.timeout(120)

SYMS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def with_indicators(klines: pl.DataFrame) -> pl.DataFrame:
    return add_signal(add_indicators(klines)).select(list(INDICATOR_SCHEMA))


def spool_files(db) -> list:
    d = db.with_name(db.name + ".spool")
    return sorted(d.glob("*.parquet")) if d.exists() else []


async def test_rows_spooled_by_a_killed_run_join_the_history_and_get_their_indicators_rewritten(
        tmp_path, hold_file):
    """A killed run left rows spooled (with indicators from a cut history, or none):
    BTCUSDT's spool fills a hole inside the database's range, ETHUSDT's is the newest
    stretch, SOLUSDT's holds candles whose indicator rows never made it. No REST, so
    nothing but the spool can fill the history the next run computes over."""
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=300) as ex:
        hist = {s: ex.history(s, "1m").tail(200) for s in SYMS}
        stored = pl.concat([hist["BTCUSDT"][:120], hist["BTCUSDT"][150:], hist["ETHUSDT"][:140],
                            hist["SOLUSDT"][:170]])
        w = store.Writer(db)
        w.add_many({"klines": stored, "indicators": with_indicators(stored)})  # right, as far as they go
        assert w.flush() == 2 * stored.height
        holder = hold_file(db)  # a reader held the file: the killed run's rows went to Parquet
        w = store.Writer(db, max_pending_rows=1)
        for part in (hist["BTCUSDT"][120:150], hist["ETHUSDT"][140:]):
            w.add_many({"klines": part, "indicators": with_indicators(part)})  # computed from the spool alone
        w.add_klines(hist["SOLUSDT"][170:])
        holder.release()
        assert len(spool_files(db)) == 5

        p = make_pipeline(ex, db, SYMS, backfill=False)
        began = ex.now_ms()
        async with running(p):
            await wait_for(lambda: closed_through(p, SYMS, began - began % MINUTE + 2 * MINUTE),
                           what="two minutes of stream finals")
            await wait_for(lambda: p.writer.pending_rows == 0, what="everything flushed")
        assert p.history_loaded and spool_files(db) == []
        # the spooled candles are in the pipeline's history, so its stream finals carry on from them
        for s in SYMS:
            assert p.state.candles(s)["open_time"].is_in(hist[s]["open_time"].implode()).sum() == 200
    check_indicators(db, SYMS, tol=1e-9)


async def test_a_database_busy_at_start_is_loaded_later_and_the_indicators_rewritten(tmp_path, hold_file):
    """Another process holds the file when the pipeline starts: it runs on REST's last 40
    candles (a cut history) and writes nothing, then loads the database once it is free
    and stores every indicator it computed without it recomputed over the whole history."""
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=300) as ex:
        stored = pl.concat([ex.history(s, "1m").tail(250).head(200) for s in SYMS])
        w = store.Writer(db)
        w.add_many({"klines": stored, "indicators": with_indicators(stored)})
        w.flush()
        holder = hold_file(db)
        p = make_pipeline(ex, db, SYMS, lookback=40, history_wait=0.2)
        began = ex.now_ms()
        async with running(p):
            await wait_for(lambda: closed_through(p, SYMS, began - began % MINUTE), what="REST's candles")
            assert not p.history_loaded and p.state.candles("BTCUSDT").height < 50
            assert p.writer.status().written_rows == 0  # what it computed without the history waits
            assert "stored history not loaded yet" in p.status().describe()
            holder.release()
            await wait_for(lambda: p.history_loaded, what="the late history load")
            await wait_for(lambda: closed_through(p, SYMS, began - began % MINUTE + 2 * MINUTE),
                           what="two minutes of stream finals")
            await wait_for(lambda: p.writer.pending_rows == 0 and not p.state.holes(ex.now_ms(), 60_000),
                           what="everything flushed, holes repaired")
        assert p.state.candles("BTCUSDT").height > 200
    check_indicators(db, SYMS, tol=1e-9)


def test_newest_version_wins_when_a_spool_happens_while_a_flush_fails(tmp_path, hold_file):
    """A flush that fails (file held) puts its rows back in memory; rows spooled
    meanwhile are newer and must still win. Versions of each round's indicator row
    are added while another thread keeps trying to flush; the last one must be stored."""
    db = tmp_path / "m.duckdb"
    store.Writer(db).flush()
    holder = hold_file(db)
    w = store.Writer(db, max_pending_rows=2, retry_base=0.0, retry_cap=0.0)
    base = pl.DataFrame({"symbol": "BTCUSDT", "interval": "1m", "rsi": 0.0, "stoch_k": 0.0, "stoch_d": 0.0,
                         "signal": None}, schema_overrides={"signal": pl.String})
    stop = threading.Event()

    def flushing() -> None:
        while not stop.is_set():
            w.flush(force=True)

    t = threading.Thread(target=flushing)
    t.start()
    rounds = 150
    try:
        for r in range(rounds):
            for version in range(1, 4):
                row = base.with_columns(open_time=pl.lit(r * MINUTE).cast(pl.Datetime("ms")).cast(pl.Datetime("us")),
                                        rsi=pl.lit(float(version)))
                w.add_indicators(row.select(list(INDICATOR_SCHEMA)))
    finally:
        stop.set()
        t.join()
    holder.release()
    w.close()
    got = store.query("SELECT rsi FROM indicators ORDER BY open_time", db=db)["rsi"].to_numpy()
    assert len(got) == rounds
    assert (got == 3.0).all(), f"an older version won in {int((got != 3.0).sum())} of {rounds} rounds"
