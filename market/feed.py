"""The feed: every connection for a symbol set, gap repair over REST, and its health.

``Feed.run()`` starts one ``Connection`` per combined-stream URL (split at the
preset's stream limit), and one worker that runs backfills: for the symbols of a
connection right after it (re)connects, and for single symbols the pipeline
reports as missing a final candle. Everything lands in one queue of ``Batch``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from market.binance import Parser
from market.presets import stream_names, stream_urls
from market.rest import KlineClient, RestError, absent_ranges
from market.schema import interval_ms
from market.stream import Batch, Connection, ConnectionStatus, FeedConfig

log = logging.getLogger("market.feed")

#: REST backfills in flight at once
BACKFILL_WORKERS = 4


@dataclasses.dataclass(frozen=True)
class FeedStatus:
    """One snapshot of the feed's health, for the UI and the logs."""

    state: str  # live | connecting | reconnecting | offline
    reason: str
    retry_in: float | None
    messages: int
    messages_per_s: float
    last_event_ms: int | None
    lag_ms: float | None
    reconnects: int
    rejected: dict[str, int]
    backfill: str  # "" when idle, else plain words with progress
    backfill_errors: int

    def describe(self) -> str:
        """The feed's state in plain words."""
        if self.state == "live":
            # a local exchange running faster than real time is "ahead", not lagging
            lag = f", lag {max(0.0, self.lag_ms) / 1000:.1f} s" if self.lag_ms is not None else ""
            text = f"live: {self.messages_per_s:,.0f} msg/s{lag}"
        elif self.state == "connecting":
            text = "connecting to the exchange"
        else:
            when = f" in {self.retry_in:.0f} s" if self.retry_in else ""
            text = f"{self.state}{when}: {self.reason}" if self.reason else f"{self.state}{when}"
        if self.backfill:
            text += f"; {self.backfill}"
        return text


@dataclasses.dataclass(frozen=True)
class _Want:
    """A backfill waiting for a worker: closed candles from ``start`` (an open_time), or
    from the lookback window's start (``head``), up to ``now`` (ms; None: the newest
    event time seen when it runs). ``connect``: asked by a (re)connect, which also
    fetches the head a killed run left missing."""

    start: int | None
    head: bool = False
    now: int | None = None
    connect: bool = False

    def merge(self, other: _Want) -> _Want:
        starts = [x for x in (self.start, other.start) if x is not None]
        return _Want(start=min(starts) if starts else None, head=self.head or other.head,
                     now=None if self.now is None or other.now is None else max(self.now, other.now),
                     connect=self.connect or other.connect)


class EmptyRanges:
    """Candle ranges [a, b) (ms) REST confirmed absent at the exchange, per symbol, in memory.

    The feed skips them when it repairs, and records what its own fetches prove
    absent (a stretch the answer skipped, followed by a candle it did return) in
    ``new`` for the owner to persist (store.ranges.record_empty into empty_ranges).
    """

    def __init__(self) -> None:
        self._known: dict[str, list[tuple[int, int]]] = {}
        self.new: list[tuple[str, int, int]] = []

    def load(self, known: dict[str, list[tuple[int, int]]]) -> None:
        for symbol, spans in known.items():
            for a, b in spans:
                self._add(symbol, a, b)

    def _add(self, symbol: str, a: int, b: int) -> None:
        spans = sorted([*self._known.get(symbol, []), (a, b)])
        merged: list[tuple[int, int]] = []
        for x, y in spans:
            if merged and x <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], y))
            else:
                merged.append((x, y))
        self._known[symbol] = merged

    def found(self, symbol: str, a: int, b: int) -> None:
        if b > a and self.skip(symbol, a) < b:
            self._add(symbol, a, b)
            self.new.append((symbol, a, b))

    def skip(self, symbol: str, start: int) -> int:
        """``start``, or the end of the confirmed-absent range it falls in."""
        for a, b in self._known.get(symbol, ()):
            if a <= start < b:
                return b
        return start

    def take_new(self) -> list[tuple[str, int, int]]:
        new, self.new = self.new, []
        return new


class Feed:
    """All connections for ``config.symbols`` plus their gap repair, feeding ``queue``."""

    def __init__(
        self,
        config: FeedConfig,
        queue: asyncio.Queue[Batch],
        *,
        last_closed: Callable[[str], int | None] = lambda symbol: None,
        rest: KlineClient | None = None,
        empty: EmptyRanges | None = None,
        first_stored: Callable[[str], int | None] = lambda symbol: None,
    ) -> None:
        self.config = config
        #: open_time (ms) of a symbol's oldest stored candle: a store that starts after
        #: (now - lookback) gets its head fetched on every (re)connect
        self.first_stored = first_stored
        self.empty = empty if empty is not None else EmptyRanges()
        self.queue = queue
        self.last_closed = last_closed
        self.parser = Parser(config.symbols)
        self.rest = rest if rest is not None else KlineClient(config.preset, counter=self.parser.counter,
                                                              flags=config.flags)
        streams = stream_names(config.symbols, config.interval, config.tickers)
        per_conn = config.preset.max_streams
        self.connections = []
        for i, url in enumerate(stream_urls(config.preset.ws_base, streams, per_conn)):
            chunk = streams[i * per_conn:(i + 1) * per_conn]
            # keep the configured order: the first symbols (the one on screen) backfill first
            symbols = list(dict.fromkeys(s.split("@")[0].upper() for s in chunk))
            hook = self._on_connected if config.backfill else None
            self.connections.append(Connection(url, symbols, config, self.parser, queue, hook))
        #: per symbol, the backfill waiting for a worker; a request for a symbol already
        #: waiting widens that one (a reconnect storm queues one fetch per symbol, not one per
        #: reconnect and hole), and the symbols are served in the order they were asked for
        self._wanted: dict[str, _Want] = {}
        self._turns: asyncio.Queue[str] = asyncio.Queue()
        self._backfill = ""
        self._busy = 0  # backfills in flight
        self._backfill_errors = 0
        self._rate = 0.0
        self.backfilled_rows = 0

    async def run(self) -> None:
        """Run until cancelled; cancelling stops every connection and backfill."""
        try:
            async with asyncio.TaskGroup() as tg:
                for conn in self.connections:
                    tg.create_task(conn.run())
                tg.create_task(self._backfills())
                tg.create_task(self._meter())
        finally:
            await self.rest.aclose()

    def repair(self, symbol: str, after_ms: int | None = None) -> None:
        """Fetch ``symbol``'s closed candles over REST from the one after ``after_ms``
        (an open_time; default: the last one known), for a final that never came."""
        if self.config.backfill:
            last = self.last_closed(symbol) if after_ms is None else after_ms
            step = interval_ms(self.config.interval)
            self._want(symbol, _Want(start=None if last is None else last + step, head=last is None))

    def _on_connected(self, symbols: list[str], server_now_ms: int) -> None:
        # Where each symbol's history ends *now*, before the new session's finals land.
        # Reading it later, when a worker reaches the symbol, would start after a final
        # the new session already delivered and leave the outage's candles out for good.
        step = interval_ms(self.config.interval)
        for symbol in symbols:
            last = self.last_closed(symbol)
            self._want(symbol, _Want(start=None if last is None else last + step, head=last is None,
                                     now=server_now_ms, connect=True))

    def _want(self, symbol: str, want: _Want) -> None:
        waiting = self._wanted.get(symbol)
        if waiting is None:
            self._wanted[symbol] = want
            self._turns.put_nowait(symbol)
        else:
            self._wanted[symbol] = waiting.merge(want)

    async def _backfills(self) -> None:
        # Several requests in flight: one at a time, a reconnect of 50 symbols against a slow
        # exchange (each answer ~1 s) left the newest holes waiting for minutes. The weight
        # limiter still paces them all under the exchange's budget.
        async with asyncio.TaskGroup() as tg:
            for _ in range(BACKFILL_WORKERS):
                tg.create_task(self._backfill_worker())

    async def _backfill_worker(self) -> None:
        step = interval_ms(self.config.interval)
        while True:
            symbol = await self._turns.get()
            want = self._wanted.pop(symbol, None)
            if want is None:
                continue
            # a (re)connect's own "now": candles after it come from its session's stream
            now_ms = want.now if want.now is not None else self._server_now()
            head_start = (now_ms // step - self.config.lookback) * step
            start = min(x for x in (want.start, head_start if want.head else None) if x is not None)
            self._busy += 1
            self._backfill = f"backfilling {symbol} ({len(self._wanted)} more waiting)"
            try:
                retry = dataclasses.replace(want, start=start, head=False, now=None, connect=False)
                await self._fetch(symbol, start, now_ms, retry)
                first = self.first_stored(symbol)
                if want.connect and first is not None and start > head_start < first:
                    # a run killed before its first backfill finished left the store starting
                    # late: the lookback window before its first candle, up to that candle
                    await self._fetch(symbol, head_start, first, None)
            finally:
                self._busy -= 1
                if not self._busy and not self._wanted:
                    self._backfill = ""

    async def _fetch(self, symbol: str, start: int, closed_before: int, retry: _Want | None) -> None:
        """Closed candles of ``symbol`` in [start, closed_before) to the queue; what the answer
        proves absent to ``self.empty``. A failure is retried in 30 s (``retry``) or left to
        the next (re)connect (None)."""
        step = interval_ms(self.config.interval)
        start = self.empty.skip(symbol, start)  # never ask again for what the exchange lacks
        if start >= closed_before:
            return
        rejected = sum(self.rest.counter.rejected.values())
        try:
            await self.rest.ensure_budget()
            frame = await self.rest.fetch(symbol, self.config.interval, start, closed_before=closed_before)
        except RestError as exc:
            self._backfill_errors += 1
            log.warning("backfill of %s failed, retrying %s: %s", symbol,
                        "in 30 s" if retry else "on the next connect", exc)
            if retry is not None:
                asyncio.get_running_loop().call_later(30, self._want, symbol, retry)
            return
        if frame.height and sum(self.rest.counter.rejected.values()) == rejected:
            times = sorted(frame["open_time"].dt.epoch("ms").to_list())
            # Proof of absence is a stretch followed by a candle the exchange did return.
            # Never the tail of an answer: an answer ending before ``closed_before`` (the
            # exchange's REST clock behind the stream's, the forming candle, a page end)
            # proves nothing there; the pipeline's next repair pass asks again.
            for a, b in absent_ranges(times, start, times[-1], step):
                self.empty.found(symbol, a, b)
        if frame.height:
            self.backfilled_rows += frame.height
            await self.queue.put(Batch(rest=frame))

    def _server_now(self) -> int:
        """The exchange's clock as last seen on the stream (a local exchange may run fast)."""
        seen = [c.status.last_event_ms for c in self.connections if c.status.last_event_ms]
        return max(seen) if seen else int(time.time() * 1000)

    async def _meter(self) -> None:
        last, then = self._messages(), time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now, count = time.monotonic(), self._messages()
            self._rate = (count - last) / (now - then)
            last, then = count, now

    def _messages(self) -> int:
        return sum(c.status.messages for c in self.connections)

    def status(self) -> FeedStatus:
        statuses: list[ConnectionStatus] = [c.status for c in self.connections]
        order = ["offline", "reconnecting", "connecting", "connected"]
        worst = min(statuses, key=lambda s: order.index(s.state))
        last_event = max((s.last_event_ms for s in statuses if s.last_event_ms), default=None)
        now = time.monotonic()
        return FeedStatus(
            state="live" if worst.state == "connected" else worst.state,
            reason=worst.reason,
            retry_in=max(0.0, worst.retry_at - now) if worst.retry_at else None,
            messages=self._messages(),
            messages_per_s=self._rate,
            last_event_ms=last_event,
            lag_ms=time.time() * 1000 - last_event if last_event else None,
            reconnects=sum(s.reconnects for s in statuses),
            rejected=self.parser.rejected,
            backfill=self._backfill,
            backfill_errors=self._backfill_errors,
        )
