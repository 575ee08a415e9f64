"""market/feed.py: connections per stream limit, REST gap repair, and the health summary."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from market.binance import kline_frame
from market.presets import custom_preset
from market.exchange import LocalExchange
from market.feed import Feed, FeedStatus
from market.stream import Batch, FeedConfig
from market.schema import KLINE_SCHEMA
from tests.conftest import wait_for as _wait_for

MINUTE = 60_000
SYMS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
KEY = ["symbol", "interval", "open_time"]

# CI shares its machine: every wait is for a condition, with deadlines far above the ~1-3 s
# these normally take (the sim clock runs on wall time at 60x, so a slow box sees more candles).
pytestmark = pytest.mark.timeout(600)


async def wait_for(cond, what: str = "condition") -> None:
    await _wait_for(cond, timeout=120, what=what)


def feed_config(ex: LocalExchange, symbols=SYMS, *, max_streams: int | None = None, **overrides) -> FeedConfig:
    preset = custom_preset(ex.ws_base, ex.rest_base)
    if max_streams is not None:
        preset = dataclasses.replace(preset, max_streams=max_streams)
    # watchdog / first_event_wait far above a loaded box's stalls: none of these tests is about
    # a stale socket, and a spurious reconnect or a local-clock backfill would change what they count
    kw = dict(watchdog=60.0, backoff_base=0.05, backoff_cap=0.5, flush_every=0.02, lookback=30,
              first_event_wait=60.0)
    kw.update(overrides)
    return FeedConfig(preset=preset, symbols=tuple(symbols), **kw)



class Store:
    """The smallest consumer: every closed candle by key (newest wins), and the last one per symbol."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Batch] = asyncio.Queue()
        self.rows: dict[tuple[str, int], pl.DataFrame] = {}
        self.rest_batches: list[pl.DataFrame] = []
        self.stream_finals = 0
        self.override: dict[str, int] = {}  # pretend a symbol's history ends earlier

    def last_closed(self, symbol: str) -> int | None:
        if symbol in self.override:
            return self.override[symbol]
        times = [t for s, t in self.rows if s == symbol]
        return max(times) if times else None

    def _add(self, frame: pl.DataFrame) -> None:
        ms = frame.with_columns(_ms=pl.col("open_time").dt.epoch("ms"))
        for part in ms.partition_by("symbol", "_ms"):
            self.rows[(part["symbol"][0], part["_ms"][0])] = part.drop("_ms")

    async def run(self) -> None:
        while True:
            batch = await self.queue.get()
            if batch.finals:
                self.stream_finals += len(batch.finals)
                self._add(kline_frame(batch.finals))
            if batch.rest is not None:
                self.rest_batches.append(batch.rest)
                self._add(batch.rest)

    def frame(self, symbol: str) -> pl.DataFrame:
        parts = [f for (s, _), f in sorted(self.rows.items()) if s == symbol]
        return pl.concat(parts) if parts else pl.DataFrame(schema=KLINE_SCHEMA)

    def closed_through(self, ms: int) -> bool:
        return all((self.last_closed(s) or 0) >= ms for s in SYMS)

    def without_holes(self) -> bool:
        """No symbol lacks a minute between its first and last candle: after an outage the
        stream's finals resume before the REST backfill of the missed minutes lands."""
        for sym in SYMS:
            times = sorted(t for s, t in self.rows if s == sym)
            if times and times[-1] - times[0] != (len(times) - 1) * MINUTE:
                return False
        return True


@contextlib.asynccontextmanager
async def running(feed: Feed, store: Store):
    tasks = [asyncio.create_task(feed.run()), asyncio.create_task(store.run())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)


def check_complete(ex: LocalExchange, store: Store, symbol: str) -> pl.DataFrame:
    got = store.frame(symbol)
    ms = got["open_time"].dt.epoch("ms")
    assert ms.diff().drop_nulls().unique().to_list() == [MINUTE], f"{symbol}: a hole or a repeat"
    assert_frame_equal(got, ex.history(symbol, start_ms=ms[0], end_ms=ms[-1]))
    return got


async def test_streams_are_split_over_connections_at_the_preset_limit():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=100) as ex:
        store = Store()
        feed = Feed(feed_config(ex, max_streams=2, backfill=False), store.queue, last_closed=store.last_closed)
        # kline + ticker of one symbol per connection: a symbol's streams stay together
        assert [c.symbols for c in feed.connections] == [["BTCUSDT"], ["ETHUSDT"], ["SOLUSDT"]]
        assert all(c.url.count("@") == 2 for c in feed.connections)
        began = ex.now_ms()
        async with running(feed, store):
            # two finals per symbol at least (a slow start can miss the first minute's): one would
            # leave check_complete nothing to compare
            await wait_for(lambda: store.closed_through(began - began % MINUTE + MINUTE)
                           and all(store.frame(s).height >= 2 for s in SYMS), what="two finals per symbol")
            assert ex.stats.connections_open == 3
            st = feed.status()
            assert st.state == "live" and st.reconnects == 0 and st.messages == feed._messages() > 0
            assert st.describe().startswith("live: ")
        assert ex.stats.rest_requests == 0 and store.rest_batches == []
        for sym in SYMS:
            check_complete(ex, store, sym)


async def test_backfill_on_start_and_after_an_outage_leaves_no_gap():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=100) as ex:
        store = Store()
        feed = Feed(feed_config(ex), store.queue, last_closed=store.last_closed)
        began = ex.now_ms()
        async with running(feed, store):
            await wait_for(lambda: len(store.rest_batches) >= len(SYMS) and store.closed_through(began - began % MINUTE),
                           what="the start backfill")
            # lookback candles back from the server's clock, not from the wall clock
            for sym in SYMS:
                assert store.frame(sym).height >= 30
            start_rows = feed.backfilled_rows
            assert start_rows >= 3 * 30
            ex.refuse(5)  # five minutes of sim time without a connection (long enough to be hit on a slow box)
            ex.drop_connections()
            await wait_for(lambda: feed.status().state in ("reconnecting", "offline") and feed.status().reason,
                           what="the outage noticed")
            down = feed.status()
            assert down.describe().startswith(down.state)
            await wait_for(lambda: ex.stats.refused >= 1)
            now = ex.now_ms()
            await wait_for(lambda: store.closed_through(now - now % MINUTE + 2 * MINUTE) and feed.status().state == "live"
                           and store.without_holes(), what="recovery, the outage's candles backfilled")
            assert feed.status().reconnects >= 2
        # the candles that closed while we were away came over REST after the reconnect
        assert feed.backfilled_rows - start_rows >= len(SYMS)
        for sym in SYMS:
            got = check_complete(ex, store, sym)
            assert got.height >= 30 + 3


async def test_a_slow_backfill_still_covers_symbols_whose_finals_arrive_first():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=100) as ex:
        # the first REST answer is "wait 1.5 s": a minute and a half of sim time, in which the
        # stream delivers finals for every symbol before their backfill even starts
        ex.rest_fail(1, 429, 1.5)
        store = Store()
        feed = Feed(feed_config(ex), store.queue, last_closed=store.last_closed)
        began = ex.now_ms()
        async with running(feed, store):
            await wait_for(lambda: len(store.rest_batches) == 3, what="a backfill per symbol")
            await wait_for(lambda: store.closed_through(began - began % MINUTE + 2 * MINUTE)
                           and store.stream_finals >= 2 * len(SYMS), what="stream finals")
        assert feed.rest.rate_limited == 1
        assert store.stream_finals >= 2 * len(SYMS)
        # one batch per symbol (several backfills run at once, so in any order)
        assert all(b["symbol"].n_unique() == 1 for b in store.rest_batches)
        by_symbol = {b["symbol"][0]: b for b in store.rest_batches}
        assert sorted(by_symbol) == sorted(SYMS)
        for sym, batch in by_symbol.items():
            # each backfill starts `lookback` candles back, not after the finals already streamed
            assert batch.height >= 30
            got = check_complete(ex, store, sym)
            assert got.height >= 30 + 2


async def test_repair_fetches_the_candles_a_symbol_lacks():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=100) as ex:
        store = Store()
        feed = Feed(feed_config(ex), store.queue, last_closed=store.last_closed)
        async with running(feed, store):
            await wait_for(lambda: len(store.rest_batches) >= 3, what="the start backfill")
            last = store.last_closed("ETHUSDT")
            store.override["ETHUSDT"] = last - 5 * MINUTE  # as if five finals never came
            before = len(store.rest_batches)
            feed.repair("ETHUSDT")
            await wait_for(lambda: len(store.rest_batches) > before, what="the repair")
            repair = store.rest_batches[before]
        assert repair["symbol"].unique().to_list() == ["ETHUSDT"]
        got = repair["open_time"].dt.epoch("ms").to_list()
        assert got[:5] == [last - 4 * MINUTE + i * MINUTE for i in range(5)]
        assert_frame_equal(repair, ex.history("ETHUSDT", start_ms=got[0], end_ms=got[-1]))


async def test_a_failed_backfill_is_counted_and_the_stream_goes_on():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=100) as ex:
        ex.rest_fail(3, 451)  # the REST side is region-blocked, the stream is not
        store = Store()
        feed = Feed(feed_config(ex), store.queue, last_closed=store.last_closed)
        began = ex.now_ms()
        async with running(feed, store):
            await wait_for(lambda: feed.status().backfill_errors == 3, what="three failed backfills")
            await wait_for(lambda: store.closed_through(began - began % MINUTE + MINUTE), what="stream finals")
            assert feed.status().state == "live"
        assert store.rest_batches == [] and feed.backfilled_rows == 0
        # the stream's own finals only: every row came from it, none from before the start
        assert sum(store.frame(sym).height for sym in SYMS) == store.stream_finals
        for sym in SYMS:
            assert store.frame(sym)["open_time"].dt.epoch("ms").min() >= began - began % MINUTE


def test_status_in_plain_words():
    base = dict(state="live", reason="", retry_in=None, messages=10, messages_per_s=1234.4, last_event_ms=1,
                lag_ms=1500.0, reconnects=0, rejected={}, backfill="", backfill_errors=0)
    assert FeedStatus(**base).describe() == "live: 1,234 msg/s, lag 1.5 s"
    assert FeedStatus(**{**base, "lag_ms": None}).describe() == "live: 1,234 msg/s"
    down = {**base, "state": "reconnecting", "reason": "connection lost (1006)", "retry_in": 2.6}
    assert FeedStatus(**down).describe() == "reconnecting in 3 s: connection lost (1006)"
    assert FeedStatus(**{**base, "state": "connecting"}).describe() == "connecting to the exchange"
    busy = {**base, "backfill": "backfilling ETHUSDT (2/3)"}
    assert FeedStatus(**busy).describe().endswith("; backfilling ETHUSDT (2/3)")
