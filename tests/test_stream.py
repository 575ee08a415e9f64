"""market/stream.py: one Connection against the local exchange, over real sockets.

Every test runs a ``Connection`` against ``LocalExchange`` on 127.0.0.1 and checks
what reaches the queue (coalesced ``Batch``es) and what ``status`` says, while the
exchange's fault switches break the connection in the ways Binance does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from market.binance import Kline, Parser, kline_frame
from market.presets import custom_preset, stream_names, stream_urls
from market.exchange import LocalExchange
from market.stream import Batch, Connection, FeedConfig
from tests.conftest import FIXTURES, wait_for

SYMS = ("BTCUSDT", "ETHUSDT")
MINUTE = 60_000
REPLAY = FIXTURES / "binance_futures_2021-07-22.ws"

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------- helpers


def feed_config(ex: LocalExchange, symbols=SYMS, **overrides) -> FeedConfig:
    """Small numbers so reconnect tests take tenths of a second, not minutes."""
    kw = dict(watchdog=1.0, backoff_base=0.05, backoff_cap=0.5, healthy_after=60.0,
              flush_every=0.02, open_timeout=30.0, backfill=False)
    kw.update(overrides)
    return FeedConfig(preset=custom_preset(ex.ws_base, ex.rest_base), symbols=tuple(symbols), **kw)


def connection(ex: LocalExchange, symbols=SYMS, queue: asyncio.Queue | None = None, **overrides) -> Connection:
    cfg = feed_config(ex, symbols, **overrides)
    streams = stream_names(symbols, cfg.interval, cfg.tickers)
    (url,) = stream_urls(cfg.preset.ws_base, streams, cfg.preset.max_streams)
    return Connection(url, list(symbols), cfg, Parser(symbols), queue if queue is not None else asyncio.Queue())



@contextlib.asynccontextmanager
async def running(conn: Connection):
    """Run ``conn`` until the block ends, then cancel it (the way the Feed stops it)."""
    task = asyncio.create_task(conn.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Background:
    """Runs ``self._run()`` as a task for the length of an ``async with`` block."""

    _task: asyncio.Task | None = None

    async def __aenter__(self):
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Sink(Background):
    """Drains a queue in the background, like the pipeline's consumer."""

    def __init__(self, queue: asyncio.Queue) -> None:
        self.queue = queue
        self.batches: list[Batch] = []

    async def _run(self) -> None:
        while True:
            self.batches.append(await self.queue.get())

    def pull(self) -> None:
        while not self.queue.empty():
            self.batches.append(self.queue.get_nowait())

    def finals(self, symbol: str | None = None) -> list[Kline]:
        return [k for b in self.batches for k in b.finals if symbol is None or k.symbol == symbol]

    async def __aexit__(self, *exc) -> None:
        await super().__aexit__(*exc)
        self.pull()


class Watcher(Background):
    """Samples ``conn.status`` every 2 ms and keeps every distinct observation.

    Reconnect waits are >= 25 ms here and asyncio runs due timers in deadline order,
    so the watcher sees each retry window before the connection's sleep ends.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.seen: list[tuple[float, str, str, float | None, int, int]] = []

    async def _run(self) -> None:
        while True:
            st = self.conn.status
            obs = (st.state, st.reason, st.retry_at, st.reconnects, self.conn._failures)
            if not self.seen or self.seen[-1][1:] != obs:
                self.seen.append((time.monotonic(), *obs))
            await asyncio.sleep(0.002)

    def reasons(self) -> list[str]:
        return [s[2] for s in self.seen if s[2]]

    def retries(self) -> list[tuple[float, str, str, float, int, int]]:
        """First observation of each scheduled retry (one per failure)."""
        out, last = [], None
        for s in self.seen:
            if s[3] is not None and s[3] != last:
                out.append(s)
                last = s[3]
        return out



def check_finals_match_exchange(ex: LocalExchange, finals: list[Kline], symbol: str) -> pl.DataFrame:
    """One final per candle, consecutive, with exactly the exchange's numbers."""
    got = kline_frame([k for k in finals if k.symbol == symbol])
    assert got.height > 0, f"no finals for {symbol}"
    assert got["open_time"].is_duplicated().sum() == 0, f"{symbol}: a candle was handed over twice"
    got = got.sort("open_time")
    steps = got["open_time"].diff().drop_nulls().dt.total_milliseconds().unique().to_list()
    assert steps in ([], [MINUTE]), f"{symbol}: finals are not consecutive: {steps}"
    first, last = (int(got["open_time"][i].timestamp() * 1000) for i in (0, -1))
    assert_frame_equal(got, ex.history(symbol, start_ms=first, end_ms=last))
    return got


# --------------------------------------------------------------------------- reading


async def test_connection_hands_coalesced_batches_to_the_queue():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=30) as ex:
        conn = connection(ex, flush_every=0.05)
        async with Sink(conn.queue) as sink, running(conn):
            await wait_for(lambda: min(len(sink.finals(s)) for s in SYMS) >= 3, what="3 finals per symbol")
        sink.pull()
    batches = sink.batches
    # every message read is accounted for in exactly one batch
    assert sum(b.messages for b in batches) == conn.status.messages > 0
    records = sum(len(b.forming) + len(b.tickers) + len(b.finals) for b in batches)
    # ~30 frames per 50 ms hand-off at speed 60 shrink to a few records: coalescing works
    assert records * 3 < conn.status.messages, (records, conn.status.messages)
    last_event = dict.fromkeys(SYMS, 0)
    for b in batches:
        assert set(b.forming) <= set(SYMS) and set(b.tickers) <= set(SYMS)
        for sym, k in b.forming.items():
            assert k.symbol == sym and not k.closed
            assert k.event_time > last_event[sym], "a later batch carried an older forming candle"
            last_event[sym] = k.event_time
        assert all(k.closed for k in b.finals)
        assert all(t.symbol == sym for sym, t in b.tickers.items())
    for sym in SYMS:
        check_finals_match_exchange(ex, sink.finals(), sym)
    assert conn.status.state == "offline" and conn.status.reason == "stopped"
    assert conn.status.reconnects == 0


def _recording_truth(path: Path) -> tuple[int, list[dict], dict[str, dict], int]:
    """Straight from the file with orjson (not our parser): frames, finals, last forming, others."""
    frames, finals, forming, others = 0, [], {}, 0
    for line in path.read_bytes().splitlines()[1:]:
        _, sep, raw = line.partition(b": ")
        if not sep:
            continue
        frames += 1
        msg = orjson.loads(raw)
        if "@kline_" not in msg["stream"]:
            others += 1
            continue
        data = msg["data"]
        if data["k"]["x"]:
            finals.append(data)
        else:
            forming[data["s"]] = data
    return frames, finals, forming, others


async def test_replay_of_real_futures_traffic_keeps_every_final_and_ignores_other_streams():
    frames, finals, forming, others = _recording_truth(REPLAY)
    symbols = sorted(forming)
    assert len(symbols) == 4 and len(finals) == 4 and others > 1000  # what the fixture holds
    async with LocalExchange(replay=REPLAY, speed=0, loop=False) as ex:
        conn = connection(ex, symbols=symbols)
        async with Sink(conn.queue) as sink, running(conn):
            await wait_for(lambda: conn.status.messages == frames, what="the whole recording read")
        # the exchange sent the recording once (loop=False) and counts each frame before it goes
        # out: by the time we read them all, anything beyond the recording was counted too
        assert ex.stats.frames_sent == frames
        sink.pull()
    assert conn.status.messages == frames
    assert sum(b.messages for b in sink.batches) == frames
    got = sorted(sink.finals(), key=lambda k: k.symbol)
    want = sorted(finals, key=lambda d: d["s"])
    assert [(k.symbol, k.open_time, k.close, k.volume, k.trades, k.event_time) for k in got] == [
        (d["s"], d["k"]["t"], float(d["k"]["c"]), float(d["k"]["v"]), d["k"]["n"], d["E"]) for d in want
    ]
    latest: dict[str, Kline] = {}
    for b in sink.batches:  # later batches win, as in LiveState
        latest.update(b.forming)
    assert {s: (k.event_time, k.close, k.closed) for s, k in latest.items()} == {
        s: (d["E"], float(d["k"]["c"]), False) for s, d in forming.items()
    }
    assert conn.parser.rejected == {}
    assert conn.parser.ignored == {"unknown_stream": others}


async def test_full_queue_makes_the_reader_coalesce_instead_of_blocking():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=30) as ex:
        queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)  # nobody drains it
        conn = connection(ex, queue=queue)
        async with running(conn):
            await wait_for(queue.full, what="first hand-off")
            await wait_for(lambda: min(sum(k.symbol == s for k in conn._batch.finals) for s in SYMS) >= 3,
                           what="3 finals per symbol coalesced while the queue is full")
            held = conn._batch
            assert held.messages > 500  # kept reading: ~600 frames/s at speed 60
            assert set(held.forming) == set(SYMS)
            last_event = conn.status.last_event_ms
            # the latest forming candle of each symbol, not the first one seen
            for k in held.forming.values():
                assert k.event_time >= last_event - 250
        assert conn._batch is held  # the stop could not hand it over either: nothing dropped
        assert conn.status.reconnects == 0 and ex.stats.connections_total == 1
        batches = [queue.get_nowait(), conn._batch]
        assert sum(b.messages for b in batches) == conn.status.messages
        finals = [k for b in batches for k in b.finals]
        for sym in SYMS:
            check_finals_match_exchange(ex, finals, sym)


@pytest.mark.parametrize("fault", ["flood", "stall"])
async def test_stop_is_prompt_while_the_exchange_floods_or_stalls(fault):
    # speed 0: the exchange sends as fast as we read; a stall: it reads nothing, not even a close
    async with LocalExchange(symbols=SYMS, speed=0 if fault == "flood" else 60, history_minutes=30) as ex:
        conn = connection(ex, watchdog=30.0)
        task = asyncio.create_task(conn.run())
        await wait_for(lambda: conn.status.messages > 200)
        if fault == "stall":
            ex.stall(30)
            await asyncio.sleep(0.2)
        task.cancel()
        # a stop that waited on the flood or on a peer that reads nothing would hang here
        # (how fast a stop is belongs in benchmarks, not in an assertion)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        assert task.done()
        assert conn.status.state == "offline" and conn.status.reason == "stopped"
        ex.reset_faults()


# --------------------------------------------------------------------------- faults


async def test_reconnects_after_the_exchange_drops_the_connection():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=30) as ex:
        conn = connection(ex)
        async with Sink(conn.queue) as sink, Watcher(conn) as watch, running(conn):
            await wait_for(lambda: conn.status.messages > 50)
            assert ex.drop_connections() == 1
            await wait_for(lambda: conn.status.reconnects == 1)
            before = conn.status.messages
            await wait_for(lambda: conn.status.state == "connected" and conn.status.messages > before + 50,
                           what="data after the reconnect")
            dropped_at = ex.now_ms()
            # candles that close on the new connection reach the queue too
            await wait_for(lambda: all(any(k.open_time >= dropped_at for k in sink.finals(s)) for s in SYMS),
                           what="a final per symbol after the reconnect")
            assert ex.stats.connections_total == 2
            assert conn.status.reconnects == 1
        lost = [s for s in watch.seen if s[4] == 1 and s[1] == "reconnecting"]
        assert lost and lost[0][2].startswith("connection lost"), watch.seen
        for sym in SYMS:
            after = [k for k in sink.finals(sym) if k.open_time >= dropped_at]
            check_finals_match_exchange(ex, after, sym)


async def test_watchdog_reconnects_a_stalled_connection():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=30) as ex:
        conn = connection(ex, watchdog=1.0)
        async with Watcher(conn) as watch, running(conn):
            await wait_for(lambda: conn.status.messages > 50)
            ex.stall(600)  # until we end it: the verdict must come from the watchdog, not the data
            last_message = conn.status.last_message_at  # frames in flight may still land: a lower bound
            await wait_for(lambda: any("stale" in r for r in watch.reasons()), what="a stale verdict")
            noticed = next(t for t, _, r, *_ in watch.seen if "stale" in r)
            assert noticed - last_message >= 1.0  # not before the watchdog's 1 s of silence
            reason = next(r for r in watch.reasons() if "stale" in r)
            assert reason.startswith("no data for") and reason.endswith("(stale connection)")
            assert conn.status.reconnects >= 1
            ex.reset_faults()
            before = conn.status.messages
            await wait_for(lambda: conn.status.state == "connected" and conn.status.messages > before + 50,
                           what="data after the stall")


async def test_region_block_is_explained_and_recovers_when_it_ends():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=30) as ex:
        ex.refuse(600, 451)  # until we end it below
        conn = connection(ex)
        async with Watcher(conn) as watch, running(conn):
            await wait_for(lambda: ex.stats.refused >= 2)
            ex.refuse(0)
            blocked = [s for s in watch.seen if "region" in s[2]]
            assert blocked, watch.seen
            for _, state, reason, *_ in blocked:
                assert state in ("offline", "reconnecting")
                assert "HTTP 451" in reason and "not available from your region" in reason
                # names the presets that may work, binance-us first, and the offline demo
                assert "--exchange binance-us (for US users)" in reason
                assert "--exchange binance-spot" in reason and "--demo" in reason
            assert {s[1] for s in blocked} == {"offline"}  # a region block is not a blip
            await wait_for(lambda: conn.status.state == "connected" and conn.status.messages > 20,
                           what="recovery after the refusal window")
            assert conn.status.reason == ""
            assert ex.stats.refused >= 2 and ex.stats.connections_total == 1


async def test_backoff_grows_with_jitter_is_capped_and_resets_when_healthy():
    base, cap = 0.05, 0.4
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=30) as ex:
        ex.refuse(600, 503)  # until six retries were refused, however slow the box
        conn = connection(ex, backoff_base=base, backoff_cap=cap, healthy_after=0.5)
        async with Watcher(conn) as watch, running(conn):
            await wait_for(lambda: len(watch.retries()) >= 6, what="six refused attempts")
            ex.refuse(0)
            await wait_for(lambda: conn.status.state == "connected" and conn.status.messages > 20,
                           what="recovery after the refusal window")
            refused = watch.retries()
            # a plain HTTP status, not the region-block message
            assert {r[2] for r in refused} == {"the exchange refused the connection (HTTP 503)"}
            assert [r[5] for r in refused] == list(range(1, len(refused) + 1))
            assert len(refused) >= 6
            # three failures in a row turn "reconnecting" into "offline"
            assert [r[1] for r in refused] == ["reconnecting"] * 2 + ["offline"] * (len(refused) - 2)
            for i, (seen_at, _, _, retry_at, _, failures) in enumerate(refused):
                limit = min(cap, base * 2 ** (failures - 1))
                assert retry_at - seen_at <= limit  # seen after the failure: a lower bound of the wait
                if i:
                    # the next attempt starts after the previous wait: an upper bound of it
                    assert retry_at - refused[i - 1][3] >= 0.5 * limit
            assert any(min(cap, base * 2 ** (r[5] - 1)) == cap for r in refused)  # the cap was reached
            # healthy for > healthy_after: the next failure waits the base delay again
            await wait_for(lambda: conn.status.connected_at is not None
                           and time.monotonic() - conn.status.connected_at > 0.7, what="a healthy connection")
            n = len(watch.retries())
            ex.drop_connections()
            await wait_for(lambda: len(watch.retries()) > n)
            seen_at, state, _, retry_at, _, failures = watch.retries()[n]
            assert failures == 0 and state == "reconnecting"
            assert retry_at - seen_at <= base
    # the jitter itself: uniform in [cap/2, cap] for every failure count
    for failures in (1, 2, 3, 4, 8, 30):
        conn._failures = failures
        limit = min(cap, base * 2 ** (failures - 1))
        delays = [conn._delay() for _ in range(300)]
        assert 0.5 * limit <= min(delays) and max(delays) <= limit
        assert max(delays) - min(delays) > 0.3 * limit  # really jittered


async def test_malformed_frames_are_counted_by_reason_and_never_crash():
    async with LocalExchange(symbols=SYMS, speed=60, history_minutes=30) as ex:
        conn = connection(ex)
        async with Sink(conn.queue) as sink, running(conn):
            await wait_for(lambda: conn.status.messages > 20)
            ex.malformed(12)  # two of each kind the exchange can make
            await wait_for(lambda: sum(conn.parser.rejected.values()) >= 12, what="12 rejections")
            before = conn.status.messages
            await wait_for(lambda: conn.status.messages > before + 100, what="reading on")
            await wait_for(lambda: min(len(sink.finals(s)) for s in SYMS) >= 1, what="a final per symbol")
        assert conn.parser.rejected == {
            "not_json": 2, "missing_field": 2, "bad_number": 4, "misaligned_time": 2, "unrequested_symbol": 2,
        }
        assert ex.stats.malformed_sent == 12
        assert conn.status.reconnects == 0 and ex.stats.connections_total == 1
        for b in sink.batches:  # nothing bad slipped into a batch
            for k in [*b.finals, *b.forming.values()]:
                assert k.symbol in SYMS and k.open_time % MINUTE == 0 and k.close > 0
        for sym in SYMS:
            check_finals_match_exchange(ex, sink.finals(), sym)
