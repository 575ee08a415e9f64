"""The WebSocket consumer: one ``Connection`` per combined-stream URL, one ``Feed`` for all.

A ``Connection`` owns connect, read, watchdog and backoff. Reading never waits on
anyone: each frame is parsed and folded into the current ``Batch`` (finals kept
in full, forming candles and tickers coalesced to the latest per symbol), and a
pump hands batches to a bounded queue every ``flush_every`` s. When the queue is
full the batch just keeps coalescing, so memory stays bounded and no closed
candle is ever dropped.

After every (re)connect the connection waits for the first event to learn the
server's clock, then asks the ``Feed`` to backfill its symbols over REST from the
last stored closed candle: that is what makes history gap-free across outages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable

import polars as pl
import websockets
import websockets.asyncio.client
from websockets.exceptions import InvalidStatus, InvalidURI

from market.binance import Kline, Parser, Skip, Ticker, refusal_text
from market.presets import COMMON_FLAGS, Preset, region_block_message

log = logging.getLogger("market.stream")


@dataclasses.dataclass(frozen=True)
class FeedConfig:
    """How the consumer behaves; every number has a reason in its doc."""

    preset: Preset
    symbols: tuple[str, ...]
    interval: str = "1m"
    tickers: bool = True
    watchdog: float = 20.0  # s without any frame before a socket counts as stale
    backoff_base: float = 0.5  # s, doubled per failed attempt ...
    backoff_cap: float = 30.0  # ... up to this, with jitter
    healthy_after: float = 30.0  # s connected with data before backoff resets
    max_age: float = 23.5 * 3600  # Binance cuts every connection at 24 h: leave first
    flush_every: float = 0.05  # s between hand-offs to the queue
    open_timeout: float = 10.0
    backfill: bool = True
    lookback: int = 1000  # candles to fetch for a symbol the store has never seen
    first_event_wait: float = 5.0  # s to wait for the server clock before backfilling
    #: the running command's options, so a refusal suggests only flags it has; the
    #: default is the dashboard's, store.ingest (no --demo) passes its own
    flags: tuple[str, ...] = (*COMMON_FLAGS, "--demo")


@dataclasses.dataclass
class Batch:
    """What one connection read since the last hand-off, or one REST backfill."""

    finals: list[Kline] = dataclasses.field(default_factory=list)
    forming: dict[str, Kline] = dataclasses.field(default_factory=dict)
    tickers: dict[str, Ticker] = dataclasses.field(default_factory=dict)
    rest: pl.DataFrame | None = None  # closed candles from a backfill
    messages: int = 0

    def __bool__(self) -> bool:
        return bool(self.messages or self.finals or self.forming or self.tickers or self.rest is not None)


@dataclasses.dataclass
class ConnectionStatus:
    """Readable at any time; the UI turns it into words."""

    url: str
    state: str = "connecting"  # connecting | connected | reconnecting | offline
    reason: str = ""
    retry_at: float | None = None  # time.monotonic() of the next attempt
    connected_at: float | None = None
    last_message_at: float | None = None
    last_event_ms: int | None = None
    messages: int = 0
    reconnects: int = 0
    last_error: str = ""  # why the last attempt failed; kept while the next one runs


class Connection:
    """One combined-stream WebSocket: ``await run()`` until cancelled."""

    def __init__(
        self,
        url: str,
        symbols: list[str],
        config: FeedConfig,
        parser: Parser,
        queue: asyncio.Queue[Batch],
        on_connected: Callable[[list[str], int], None] | None = None,
    ) -> None:
        self.url = url
        self.symbols = symbols
        self.config = config
        self.parser = parser
        self.queue = queue
        self.on_connected = on_connected
        self.status = ConnectionStatus(url=url)
        self._batch = Batch()
        self._failures = 0
        self._first_event = asyncio.Event()
        self._stale_reason = ""

    async def run(self) -> None:
        while True:
            self._stale_reason = ""
            self._first_event = asyncio.Event()
            started = time.monotonic()
            try:
                await self._session()
                reason = "closed by the exchange"
            except asyncio.CancelledError:
                self.status.state, self.status.reason = "offline", "stopped"
                raise
            except BaseException as exc:  # noqa: BLE001 - every failure means: reconnect
                exc = _unwrap(exc)
                reason = self._explain(exc)
                refused = _refusal_status(exc) is not None
            else:
                refused = False
            healthy = (
                self.status.connected_at is not None
                and time.monotonic() - started >= self.config.healthy_after
                and self.status.last_message_at is not None
            )
            self._failures = 0 if healthy else self._failures + 1
            scheduled = self._stale_reason.startswith("scheduled")
            delay = 0.0 if scheduled else self._delay()
            offline = self._failures >= 3 or refused
            self.status.state = "offline" if offline else "reconnecting"
            self.status.reason = self._stale_reason or reason
            if not scheduled:
                self.status.last_error = self.status.reason
            self.status.retry_at = time.monotonic() + delay
            self.status.connected_at = None
            self.status.reconnects += 1
            log.warning("%s: %s; reconnecting in %.1f s", self.url, self.status.reason, delay)
            await asyncio.sleep(delay)

    def _delay(self) -> float:
        cap = min(self.config.backoff_cap, self.config.backoff_base * 2 ** max(0, self._failures - 1))
        return cap * random.uniform(0.5, 1.0)

    def _explain(self, exc: BaseException) -> str:
        if isinstance(exc, InvalidStatus):
            response = exc.response
            status = response.status_code
            if _refusal_status(exc) is not None:
                return region_block_message(
                    self.config.preset.name, status, location=response.headers.get("Location"),
                    flags=self.config.flags, detail=refusal_text(response.body))
            return f"the exchange refused the connection (HTTP {status})"
        if isinstance(exc, InvalidURI):
            return f"bad stream URL {self.url}: {exc}"
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.config.open_timeout:g} s"
        if isinstance(exc, OSError):
            return f"cannot reach the exchange: {exc.strerror or exc}"
        if isinstance(exc, websockets.ConnectionClosed):
            return f"connection lost ({exc})"
        return f"{type(exc).__name__}: {exc}"

    async def _session(self) -> None:
        self.status.state, self.status.reason = "connecting", ""
        async with _NoRedirects(
            # close_timeout: a closing handshake behind a full receive queue waits it out
            self.url, open_timeout=self.config.open_timeout, close_timeout=1.0, max_size=2**22, compression=None,
        ) as ws:
            self.status.state, self.status.retry_at = "connected", None
            self.status.connected_at = time.monotonic()
            self.status.last_message_at = None
            async with asyncio.TaskGroup() as tg:
                helpers = [tg.create_task(self._pump()), tg.create_task(self._watchdog(ws))]
                if self.on_connected is not None:
                    helpers.append(tg.create_task(self._after_connect()))
                try:
                    await self._read(ws)
                finally:
                    for task in helpers:
                        task.cancel()
                    self._hand_off()
                    if asyncio.current_task().cancelling():
                        # A stop: skip the closing handshake. Once nobody reads, the receive
                        # buffer fills, websockets stops reading and waits out close_timeout
                        # for a close frame it cannot see (websockets issue #1555).
                        ws.transport.abort()

    async def _after_connect(self) -> None:
        """No kline within ``first_event_wait``: announce the session with the local clock."""
        await asyncio.sleep(self.config.first_event_wait)
        if not self._first_event.is_set():
            self._first_event.set()
            self.on_connected(self.symbols, int(time.time() * 1000))

    async def _read(self, ws: websockets.ClientConnection) -> None:
        parse = self.parser.parse
        status = self.status
        monotonic = time.monotonic
        first = self._first_event
        async for raw in ws:
            status.messages += 1
            status.last_message_at = monotonic()
            rec = parse(raw)
            batch = self._batch
            batch.messages += 1
            cls = rec.__class__
            if cls is Kline:
                if rec.closed:
                    batch.finals.append(rec)
                else:
                    batch.forming[rec.symbol] = rec
                status.last_event_ms = rec.event_time
                if not first.is_set():
                    first.set()
                    if self.on_connected is not None:
                        # Synchronously, before any kline of this session is handed off: the
                        # feed's snapshot of what is stored must not include this session's
                        # finals, or the backfill would start after them and skip the outage.
                        self.on_connected(self.symbols, rec.event_time)
            elif cls is Ticker:
                batch.tickers[rec.symbol] = rec
                status.last_event_ms = rec.event_time
            elif cls is list:
                for t in rec:
                    batch.tickers[t.symbol] = t
            elif cls is Skip and rec.detail == "serverShutdown":
                self._stale_reason = "scheduled: the exchange announced a shutdown"
                return
            if batch.messages >= 4096:
                self._hand_off()

    def _hand_off(self) -> None:
        # A full queue means the consumer is behind: keep coalescing into the same
        # batch (finals all kept, forming/tickers latest only) and try next tick.
        if self._batch and not self.queue.full():
            self.queue.put_nowait(self._batch)
            self._batch = Batch()

    async def _pump(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_every)
            self._hand_off()

    async def _watchdog(self, ws: websockets.ClientConnection) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(min(1.0, cfg.watchdog / 4))
            now = time.monotonic()
            since = now - (self.status.last_message_at or self.status.connected_at or now)
            if since > cfg.watchdog:
                self._stale_reason = f"no data for {since:.0f} s (stale connection)"
            elif now - (self.status.connected_at or now) > cfg.max_age:
                self._stale_reason = "scheduled reconnect before the exchange's 24 h limit"
            else:
                continue
            log.warning("%s: %s", self.url, self._stale_reason)
            ws.transport.abort() if self._stale_reason.startswith("no data") else await ws.close()
            return


class _NoRedirects(websockets.asyncio.client.connect):
    """``websockets.connect`` that follows no redirect.

    websockets follows a 3xx to another ws:// or wss:// URL (up to 10 times) and
    fails with a misleading "bad URI" on an https:// one. Binance never redirects
    its streams: a redirect means a region block, a proxy or a captive portal, and
    another ws host is not Binance either. So the InvalidStatus reaches
    ``Connection._explain``, which says where we were sent.
    """

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


def _refusal_status(exc: BaseException) -> int | None:
    """The HTTP status of a handshake refused by a region block (451/403) or a redirect."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (451, 403) or 300 <= status < 400:
            return status
    return None


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def lag_ms(status: ConnectionStatus) -> float | None:
    """Wall clock minus the last event's exchange time (includes clock skew)."""
    if status.last_event_ms is None:
        return None
    return time.time() * 1000 - status.last_event_ms
