"""market/feed.py + store/ingest.py: reconnects at high exchange speed leave no gap and
record no confirmed-absent range inside the exchange's history."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest

from market.exchange import LocalExchange
from market.feed import Feed
from market.presets import DEFAULT_SYMBOLS
from store import history, ranges
from store.ingest import IngestConfig, Pipeline
from tests.conftest import wait_for
from tests.test_ingest import running

MINUTE = 60_000
NSYM = int(__import__("os").environ.get("GAP_SYMBOLS", "6"))
SPEED = float(__import__("os").environ.get("GAP_SPEED", "600"))
FAST_FEED = dict(backoff_base=0.05, backoff_cap=0.5, first_event_wait=2.0)
pytestmark = pytest.mark.timeout(300)


def pipeline(ex: LocalExchange, db, symbols, **kw) -> Pipeline:
    cfg = IngestConfig(db=db, symbols=symbols, ws_url=ex.ws_base, rest_url=ex.rest_base,
                       # a 1 s watchdog made a box at load 25 reconnect over and over by itself
                       **{"lookback": 100, "flush_every": 0.25, "watchdog": 3.0, **kw})
    p = Pipeline(cfg)
    p.feed = Feed(dataclasses.replace(cfg.feed_config(), **FAST_FEED), p.queue,
                  last_closed=p.state.last_closed, empty=p.empty, first_stored=p.first.get)
    return p


def ms(col) -> list[int]:
    return col.dt.epoch("ms").to_list()


@pytest.mark.parametrize("fault", ["drop", "stall"])
async def test_reconnects_at_high_speed_leave_no_gap_and_no_false_empty_range(tmp_path, fault):
    syms = tuple(DEFAULT_SYMBOLS[:NSYM])
    db = tmp_path / "m.duckdb"
    # 600x: a candle closes every 0.1 s, so each reconnect spans minutes of exchange time
    async with LocalExchange(symbols=syms, speed=SPEED, history_minutes=300) as ex:
        p = pipeline(ex, db, syms)
        async with running(p, stop_timeout=60):
            await wait_for(lambda: all(p.state.last_closed(s) for s in syms), timeout=120, what="live")
            for _ in range(6):
                reconnects = p.feed.status().reconnects
                if fault == "drop":
                    ex.drop_connections()
                else:  # silence: the watchdog reconnects, and the new session hears nothing at first
                    ex.stall(6.0)
                await wait_for(lambda: p.feed.status().reconnects > reconnects, timeout=120, what="a reconnect")
                now = ex.now_ms()
                target = now - now % MINUTE + MINUTE
                await wait_for(lambda: all((p.state.last_closed(s) or 0) >= target for s in syms),
                               timeout=120, what="finals after the reconnect")
            end = min(p.state.last_closed(s) for s in syms)
            # every hole inside the run's span repaired within the run
            try:
                await wait_for(lambda: p.writer.pending_rows == 0 and not [
                    h for h in p.state.holes(ex.now_ms()) if h[1] < end], timeout=120, what="holes repaired")
            except AssertionError:
                left = [h for h in p.state.holes(ex.now_ms()) if h[1] < end]
                raise AssertionError(f"holes left: {left[:5]} ({len(left)}), end {end}, "
                                     f"empty: {list(p.empty._known.items())[:3]}, first {ex.market.first_ms}, "
                                     f"forming: {[(s, k.open_time) for s, k in list(p.state.forming.items())[:3]]}, "
                                     f"last: {[(s, p.state.last_closed(s)) for s in syms[:3]]}") from None
            await wait_for(lambda: p.writer.pending_rows == 0, timeout=60, what="written")
            recorded = list(p.empty._known.items())
        for sym in syms:
            got = history.klines(sym, db=db)
            first = ms(got["open_time"])[0]
            want = ex.history(sym, start_ms=first, end_ms=end)
            have = got.filter(pl.col("open_time").dt.epoch("ms") <= end)
            missing = sorted(set(ms(want["open_time"])) - set(ms(have["open_time"])))
            assert missing == [], f"{sym}: {len(missing)} candles missing"
        inside = [(s, a, b) for s, spans in recorded for a, b in spans if b > ex.market.first_ms]
        assert inside == [], f"ranges recorded absent inside the history: {inside}"
        stored = ranges.empty(list(syms), "1m", db=db)
        assert all(b <= ex.market.first_ms for spans in stored.values() for _, b in spans), stored
