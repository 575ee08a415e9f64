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
import dataclasses
import logging
import sys
import time

import polars as pl
from tqdm import tqdm

from market.binance import parse_rest_klines
from market.rest import KlineClient, RateLimited, RegionBlocked, RestError, SymbolRejected, absent_ranges
from market.schema import interval_ms
from store import ranges
from store.backfill_args import BackfillConfig, parse_args
from store.db import StoreError, prepare
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


@dataclasses.dataclass
class Result:
    candles: int = 0
    requests: int = 0
    weight: int = 0
    empty_recorded: int = 0
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    fatal: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.fatal else 0


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
        self.now: int | None = None  # the server's clock when the run started (ms)
        self._latest: dict[tuple[str, str], int] = {}  # newest open time known to exist
        self._trailing: list[tuple[str, str, int, int]] = []  # absent unless a later candle exists
        self._empty: list[tuple[str, str, int, int]] = []  # confirmed, not yet recorded
        self._left: collections.Counter = collections.Counter()  # jobs per (symbol, interval)
        self._done: collections.Counter = collections.Counter()  # candles per (symbol, interval)

    async def run(self) -> Result:
        try:
            await self._run()
        except (RegionBlocked, RateLimited) as exc:
            self.result.fatal = str(exc)
        except StoreError as exc:
            self.result.fatal = str(exc)
        finally:
            await self.client.aclose()
            await asyncio.to_thread(self._flush, True)
            self.result.requests, self.result.weight = self.client.requests, self.client.weight
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
        jobs: list[Job] = []
        for interval in cfg.intervals:
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
                if s in ends:
                    self._latest[(s, interval)] = ends[s][1]
                for rng in todo.get(s, []):
                    for a, b, limit in plan(rng, step, self.preset.kline_limit, self.client.page):
                        jobs.append((s, interval, a, b, limit))
                        self._left[(s, interval)] += 1
        total = sum((b - a) // interval_ms(i) for _, i, a, b, _ in jobs)
        log.info("%d candles to fetch in %d requests", total, len(jobs))
        queue: asyncio.Queue[Job] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        with tqdm(total=total, unit="candle", unit_scale=True, desc="all", disable=not self.progress,
                  file=sys.stderr, mininterval=0.5, dynamic_ncols=True) as bar:
            self._bar = bar
            flusher = asyncio.create_task(self._flusher())
            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(cfg.concurrency, max(1, len(jobs)))):
                        tg.create_task(self._worker(queue, now))
            except* (RegionBlocked, RateLimited, StoreError) as group:
                raise group.exceptions[0] from None
            finally:
                flusher.cancel()

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
            self._bar.update((b - a) // interval_ms(interval))
            self._left[(symbol, interval)] -= 1
            if not self._left[(symbol, interval)] and symbol not in self.result.failed:
                self._bar.write(f"{symbol} {interval}: {self._done[(symbol, interval)]:,} candles", file=sys.stderr)

    def _fail(self, symbol: str, message: str) -> None:
        if symbol not in self.result.failed:
            self.result.failed[symbol] = message
            self._bar.write(f"skipping {message}", file=sys.stderr)

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
        """Candles first, then the empty ranges confirmed so far (a candle at or after
        a trailing range's end confirms it)."""
        if final:
            self.writer.close()
        else:
            self.writer.flush()
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        backfill = Backfill(config, progress=None)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = asyncio.run(backfill.run())
    budget = ", ".join(w.describe() for w in backfill.client.limiter.windows)
    print(f"backfill: {result.candles:,} candles stored, {result.requests:,} requests "
          f"(weight {result.weight:,}; budget {budget}), {result.empty_recorded} empty ranges recorded",
          file=sys.stderr)
    for message in result.failed.values():
        print(f"failed: {message}", file=sys.stderr)
    if result.fatal:
        print(f"error: {result.fatal}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
