"""REST history backfill and repair: ``python -m store.backfill``.

    python -m store.backfill --symbols BTCUSDT,ETHUSDT --interval 1m --since 2026-01-01
    python -m store.backfill --top 50 --since 2025-11-01 --until 2025-12-01
    python -m store.backfill --repair                       # every hole between stored candles
    python -m store.backfill --repair --since 2026-01-01    # ... and up to now

What to fetch is computed from the store itself (``store.ranges.missing``: holes,
head and tail of the wanted window, minus ranges the exchange confirmed empty), so
a killed run just runs again. Each range becomes as few requests as its size needs
(one request per hole of up to 1500 candles, ``endTime`` and a limit just big
enough; longer ranges in pages of the size that buys the most candles per weight),
run a few at a time under the shared weight budget (market/ratelimit.py), and the
pages go through ``store.Writer`` about every second. Only closed candles are
stored: "now" is the server's clock, and nothing at or after it is asked for.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time

import polars as pl

from market import cli
from market.binance import parse_rest_klines
from market.rest import KlineClient, RateLimited, RegionBlocked, RestError, SymbolRejected, absent_ranges
from market.schema import INTERVAL_MS, interval_ms
from store import ranges
from store.backfill_report import Progress, Result, say
from store.backfill_args import PROG, BackfillConfig, parse_args
from store.db import StoreError, prepare
from store.refresh import Refresher
from store.writer import Writer

log = logging.getLogger("store.backfill")

Job = tuple[str, str, int, int, int]  # symbol, interval, start ms, end ms (exclusive), limit


def plan(rng: tuple[int, int], step: int, max_limit: int, page: int) -> list[tuple[int, int, int]]:
    """Requests for one range: (start, end, limit). A range of up to ``max_limit`` candles
    is one request whose limit is just big enough; a longer one is pages of ``page``."""
    a, b = rng
    n = (b - a) // step
    if n <= 0:
        return []
    if n <= max_limit:
        return [(a, b, n)]
    out = []
    while a < b:
        m = min(page, (b - a) // step)
        out.append((a, a + m * step, m))
        a += m * step
    return out


class Backfill:
    """One run: ``await Backfill(config).run()``; see the module docstring."""

    def __init__(self, config: BackfillConfig, *, progress: bool | None = None) -> None:
        self.config = config
        self.preset = config.preset()
        self.db = prepare(config.db, self.preset.market)  # before any network traffic
        self.client = KlineClient(self.preset, flags=("--exchange", "--rest-url"))
        self.writer = Writer(self.db, market=self.preset.market)
        self.progress = config.progress if progress is None else progress
        self.result = Result()
        self.indicators = Refresher(self.db, self.preset.market, progress=self.progress)
        self._wanted: list[tuple[str, str]] = []  # every series the run looked at
        self._flushing = threading.Lock()  # a cancelled flusher's thread may still be in _flush
        self.now: int | None = None  # the server's clock when the run started (ms)
        self._latest: dict[tuple[str, str], int] = {}  # newest open time known to exist
        self._trailing: list[tuple[str, str, int, int]] = []  # absent unless a later candle exists
        self._empty: list[tuple[str, str, int, int]] = []  # confirmed, not yet recorded
        self._left: collections.Counter = collections.Counter()  # jobs per (symbol, interval)
        self._done: collections.Counter = collections.Counter()  # candles stored per (symbol, interval)

    async def run(self) -> Result:
        try:
            await self._run()
        except (RestError, StoreError) as exc:  # region block, ban, no ticker/24hr, bad file: stop all
            self.result.fatal = str(exc)
        finally:
            await self.client.aclose()
            try:
                await asyncio.to_thread(self._flush, True)
            except StoreError as exc:  # candles the writer could not write are spooled, not lost
                self.result.fatal = self.result.fatal or str(exc)
            self.result.requests, self.result.weight = self.client.requests, self.client.weight
            self.result.indicator_series = self.indicators.refreshed
            self.result.indicator_rows = self.indicators.written
        return self.result

    async def _run(self) -> None:
        cfg = self.config
        info = await self.client.exchange_info()
        now = info.get("serverTime")
        if not isinstance(now, int):
            try:
                now = await self.client.server_time()
            except RestError as exc:
                log.warning("using the local clock for 'now': %s", exc)
                now = int(time.time() * 1000)
        self.now = now
        symbols = list(cfg.symbols)
        if cfg.top:
            symbols = await self.client.top_symbols(cfg.top)
            log.info("top %d by 24h quote volume: %s", cfg.top, ", ".join(symbols))
        await asyncio.to_thread(self.writer.flush, force=True)  # candles spooled by an earlier run first
        jobs = await self._plan(symbols, now)
        keys = list(dict.fromkeys((s, i) for s, i, *_ in jobs))
        # a run killed between a series' candles and its indicators left candles without them
        stale = await asyncio.to_thread(self.indicators.check, self._wanted, set(keys))
        if stale:
            say(f"{stale} series hold candles without indicators: refreshing them")
        sizes = dict.fromkeys(keys, 0)
        for s, i, a, b, _ in jobs:
            sizes[(s, i)] += (b - a) // interval_ms(i)
        log.info("%d candles to fetch in %d requests", sum(sizes.values()), len(jobs))
        queue: asyncio.Queue[Job] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        with Progress(sizes, self._left, enabled=self.progress) as self._shown:
            flusher = asyncio.create_task(self._flusher())
            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(cfg.concurrency, max(1, len(jobs)))):
                        tg.create_task(self._worker(queue, now))
            except* (RegionBlocked, RateLimited, StoreError) as group:
                raise group.exceptions[0] from None
            finally:
                flusher.cancel()

    async def _plan(self, symbols: list[str], now: int) -> list[Job]:
        """Every request the run needs, symbol by symbol, from what the store lacks."""
        cfg, jobs = self.config, []
        intervals = cfg.intervals
        if not intervals:  # --repair without --interval: what the store holds (1m if nothing)
            held = await asyncio.to_thread(ranges.series, None, symbols or None, db=self.db)
            intervals = tuple(sorted({i for _, i in held if i in INTERVAL_MS}, key=interval_ms)) or ("1m",)
        for interval in intervals:
            step = interval_ms(interval)
            if cfg.repair and not symbols and not cfg.top:
                wanted = [s for s, _ in await asyncio.to_thread(ranges.series, interval, None, db=self.db)]
            else:
                wanted = symbols
            hi = min(cfg.until_ms, now) if cfg.until_ms is not None else now
            todo = await asyncio.to_thread(ranges.missing, wanted, interval, cfg.since_ms,
                                           hi if cfg.since_ms is not None else None, db=self.db)
            ends = await asyncio.to_thread(ranges.bounds, wanted, interval, db=self.db)
            for s in wanted:
                self._wanted.append((s, interval))
                if s in ends:
                    self._latest[(s, interval)] = ends[s][1]
                for rng in todo.get(s, []):
                    if s in self.result.failed:
                        break
                    if (rng[1] - rng[0]) // step > 4 * self.client.page:
                        rng = await self._probe(s, interval, rng)
                    for a, b, limit in plan(rng, step, self.preset.kline_limit, self.client.page):
                        jobs.append((s, interval, a, b, limit))
                        self._left[(s, interval)] += 1
        return jobs

    async def _probe(self, symbol: str, interval: str, rng: tuple[int, int]) -> tuple[int, int]:
        """A long range may start before the symbol was listed: one candle (weight 1) says
        where its history starts, and the stretch before it is absent at the exchange."""
        a, b = rng
        try:
            rows = await self.client.klines(symbol, interval, a, b - 1, 1)
        except SymbolRejected as exc:
            self._fail(symbol, str(exc))
            return (a, a)
        first = rows[0][0] if rows and isinstance(rows[0], list) and rows[0] and isinstance(rows[0][0], int) else None
        if first is None:
            self._trailing.append((symbol, interval, a, b))
            return (b, b)
        if first > a:
            self._empty.append((symbol, interval, a, min(first, b)))
        return (max(a, min(first, b)), b)

    async def _worker(self, queue: asyncio.Queue[Job], now: int) -> None:
        while not queue.empty():
            job = queue.get_nowait()
            symbol, interval, a, b, limit = job
            if symbol not in self.result.failed:
                try:
                    await self._fetch(job, now)
                except SymbolRejected as exc:
                    self._fail(symbol, str(exc))
                except (RegionBlocked, RateLimited):
                    raise
                except RestError as exc:
                    self._fail(symbol, f"{symbol}: {exc}")
            key = (symbol, interval)
            self._left[key] -= 1
            if not self._left[key]:
                self.indicators.done(key)  # refreshed after the flush that stores its last page
            stored = None if symbol in self.result.failed else self._done[key]
            self._shown.advance(key, (b - a) // interval_ms(interval), stored)

    def _fail(self, symbol: str, message: str) -> None:
        if symbol not in self.result.failed:
            self.result.failed[symbol] = message
            say(f"skipping {message}")

    async def _fetch(self, job: Job, now: int) -> None:
        symbol, interval, a, b, limit = job
        step = interval_ms(interval)
        rows = await self.client.klines(symbol, interval, a, b - 1, limit)
        self.result.requests, self.result.weight = self.client.requests, self.client.weight
        frame = parse_rest_klines(rows, symbol, interval, self.client.counter, closed_before=now)
        t = pl.col("open_time").dt.epoch("ms")
        frame = frame.filter((t >= a) & (t < b))
        if frame.height:
            self.writer.add_klines(frame)
            self.indicators.stored((symbol, interval), int(frame["open_time"].dt.epoch("ms").min()))
            self.result.candles += frame.height
            self._done[(symbol, interval)] += frame.height
        times = sorted(r[0] for r in rows if isinstance(r, list) and r and isinstance(r[0], int))
        if times:
            key = (symbol, interval)
            self._latest[key] = max(self._latest.get(key, times[-1]), times[-1])
        gaps = absent_ranges(times, a, b, step)
        if gaps and gaps[-1][1] == b:
            self._trailing.append((symbol, interval, *gaps.pop()))
        self._empty.extend((symbol, interval, x, y) for x, y in gaps)

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_every)
            await asyncio.to_thread(self._flush, False)

    def _flush(self, final: bool) -> None:
        """Candles first, then the indicators of series whose candles are now all in the
        file (at the end: every series stored into), then the empty ranges confirmed so
        far (a candle at or after a trailing range's end confirms it)."""
        with self._flushing:
            self._flush_locked(final)

    def _flush_locked(self, final: bool) -> None:
        keys = self.indicators.waiting if final else self.indicators.take()
        if final:
            self.writer.close()
        else:
            self.writer.flush()
        error = None
        if self.writer.last_error is None:  # nothing held back: their candles are in the file
            try:
                self.indicators.run(keys)
            except StoreError as exc:  # retried at the end; a re-run finds them too (unindexed)
                log.warning("%s", exc)
                error = exc
        else:
            self.indicators.give_back(keys)
            if final and keys:
                error = StoreError(f"indicators of {len(keys)} series not refreshed: their candles are "
                                   f"not written yet ({self.writer.last_error})")
        still = []
        for s, i, a, b in self._trailing:
            (self._empty if self._latest.get((s, i), -1) >= b else still).append((s, i, a, b))
        self._trailing = still
        batch, self._empty = self._empty, []
        try:
            self.result.empty_recorded += ranges.record_empty(batch, db=self.db)
        except StoreError:
            self._empty[:0] = batch
            if final:
                raise
        if final and error is not None:
            raise StoreError(f"{error}; run the same command again to finish them")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_args(argv)
    except ValueError as exc:  # cli.UsageError from argparse, ValueError from our own checks
        print(cli.usage_line(PROG, exc), file=sys.stderr)
        return 2
    try:
        backfill = Backfill(config, progress=None)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = asyncio.run(backfill.run())
    budget = ", ".join(w.describe() for w in backfill.client.limiter.windows)
    for line in result.summary(budget):
        print(line, file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
