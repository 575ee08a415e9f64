"""The pipeline: stream -> live state -> store, headless. The dashboard runs the same class.

    python -m store.ingest --db market.duckdb --symbols BTCUSDT,ETHUSDT --duration 600
    python -m store.ingest --ws-url ws://127.0.0.1:9000/market --rest-url http://127.0.0.1:9000

Reading, state and writing are decoupled: connections hand coalesced batches to
a queue; one consumer folds them into ``LiveState`` and queues rows on the
``Writer``; the writer flushes every ``flush_every`` s in a worker thread,
keeping rows in memory while another process holds the file.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import logging
import signal
import sys
import time
from pathlib import Path

import polars as pl

from market import cli
from market.presets import COMMON_FLAGS, DEFAULT_PRESET, DEFAULT_SYMBOLS, Preset, custom_preset, get_preset
from market.feed import EmptyRanges, Feed, FeedStatus
from market.live import LiveState
from market.schema import INDICATOR_SCHEMA, KLINE_SCHEMA, empty, interval_ms
from market.stream import Batch, FeedConfig
from store import ranges
from store.db import StoreError, prepare, resolve_db
from store.history import recent_klines
from store.writer import Writer, WriterStatus

log = logging.getLogger("store.ingest")


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Everything the pipeline needs; built from CLI flags or the dashboard's --args."""

    db: Path | None = None
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    interval: str = "1m"
    exchange: str = DEFAULT_PRESET
    ws_url: str | None = None
    rest_url: str | None = None
    backfill: bool = True
    lookback: int = 1000
    flush_every: float = 1.0
    keep: int = 2000
    watchdog: float = 20.0
    queue_size: int = 1024
    max_pending_rows: int = 1_000_000  # rows held in memory while the file is busy, then spooled
    #: s to wait at start for a file another process holds; past it the pipeline starts
    #: without stored history and loads it (rewriting the indicators it stored) once it can
    history_wait: float = 30.0
    #: the running command's options, named by a region-block message (the dashboard adds --demo)
    flags: tuple[str, ...] = COMMON_FLAGS

    def preset(self) -> Preset:
        if self.ws_url or self.rest_url:
            if not (self.ws_url and self.rest_url):
                raise ValueError("--ws-url and --rest-url go together")
            return custom_preset(self.ws_url, self.rest_url, like=self.exchange)
        return get_preset(self.exchange)

    def feed_config(self) -> FeedConfig:
        return FeedConfig(
            preset=self.preset(), symbols=self.symbols, interval=self.interval,
            watchdog=self.watchdog, backfill=self.backfill, lookback=self.lookback, flags=self.flags,
        )


@dataclasses.dataclass(frozen=True)
class PipelineStatus:
    feed: FeedStatus
    store: WriterStatus
    started: bool
    history_loaded: bool = True

    def describe(self) -> str:
        text = self.feed.describe()
        if self.started and not self.history_loaded:
            text += "; stored history not loaded yet (the database is busy): nothing is written until it is"
        if self.store.pending_rows and self.store.last_error:
            text += f"; {self.store.pending_rows:,} rows waiting for the database ({self.store.last_error})"
        return text


class Pipeline:
    """Start with ``await run()``; stop by cancelling it (the final flush happens then)."""

    def __init__(self, config: IngestConfig, *, writer: Writer | None = None) -> None:
        self.config = config
        self.db = resolve_db(config.db)
        self.writer = writer or Writer(self.db, market=config.preset().market,
                                       max_pending_rows=config.max_pending_rows)
        self.state = LiveState(list(config.symbols), config.interval, keep=config.keep)
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=config.queue_size)
        #: ranges REST confirmed absent at the exchange: the feed never asks for them again
        self.empty = EmptyRanges()
        #: per symbol, open_time (ms) of the oldest candle stored or on its way to the store
        self.first: dict[str, int] = {}
        self.feed = Feed(config.feed_config(), self.queue, last_closed=self.state.last_closed, empty=self.empty,
                         first_stored=self.first.get)
        self.started = asyncio.Event()
        self.batches = 0
        #: symbols that delivered a candle or ticker (stream or REST) since the start
        self.received: set[str] = set()
        #: the stored history is in the state (False while the database was busy since the start)
        self.history_loaded = False

    def status(self) -> PipelineStatus:
        return PipelineStatus(self.feed.status(), self.writer.status(), self.started.is_set(), self.history_loaded)

    async def run(self) -> None:
        try:
            await self._load_history()
            self.started.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.feed.run())
                tg.create_task(self._consume())
                tg.create_task(self._housekeeping())
                if not self.history_loaded:
                    tg.create_task(self._load_history_late())
        finally:
            self._drain()
            if self.started.is_set() and not self.history_loaded:  # last chance to rewrite them
                with contextlib.suppress(StoreError):
                    await asyncio.shield(self._load_history(late=True, wait=1.0))  # a stop is not held up
            await asyncio.shield(asyncio.to_thread(self.writer.close))

    async def _load_history(self, *, late: bool = False, wait: float | None = None) -> None:
        """Seed the state from the store: the database's newest ``keep`` candles per symbol
        plus the rows a killed run left spooled to Parquet (in the store as soon as the
        next flush runs, so part of the history the indicators are computed over).

        Indicator rows stored from a shorter history are queued again, recomputed: the
        spooled ones (their run may have computed them before its history was whole)
        and, on a ``late`` load (the database was busy at start), every row this run
        computed without it. With neither, nothing is rewritten.
        """
        cfg = self.config
        try:
            # the spool first: a flush moves spooled rows into the database, never back
            klines, marks = await asyncio.to_thread(self._spooled)
            stored = await asyncio.to_thread(recent_klines, cfg.symbols, cfg.interval, cfg.keep, db=self.db,
                                             timeout=cfg.history_wait if wait is None else wait)
        except StoreError as exc:
            if not late:
                log.warning("starting without stored history: %s", exc)
            return
        if late:
            marks = pl.concat([marks, self.state.closed.select("symbol", "open_time")])
        counts = dict(stored.group_by("symbol").len().iter_rows()) if stored.height else {}
        whole = [s for s in cfg.symbols if counts.get(s, 0) < cfg.keep]  # the database's whole history
        rewrite = self.state.load(pl.concat([stored, klines]), marks, whole)
        if rewrite.height:
            self.writer.add_indicators(rewrite)
        self.history_loaded = True
        with contextlib.suppress(StoreError):
            for sym, (a, _) in (await asyncio.to_thread(ranges.bounds, cfg.symbols, cfg.interval, db=self.db)).items():
                self.first[sym] = min(a, self.first.get(sym, a))
        with contextlib.suppress(StoreError):
            self.empty.load(await asyncio.to_thread(ranges.empty, cfg.symbols, cfg.interval, db=self.db))
        log.info("loaded %d stored candles (%d of them spooled) for %d symbols%s; %d indicator rows to rewrite",
                 stored.height + klines.height, klines.height, len(counts), " late" if late else "",
                 rewrite.height)

    async def _load_history_late(self) -> None:
        """The database was busy at start: load its history as soon as it can be read."""
        while not self.history_loaded:
            await asyncio.sleep(self.config.flush_every)
            await self._load_history(late=True)

    def _spooled(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Our symbols' spooled klines, and (symbol, open_time) of every spooled kline or indicator row."""
        cfg = self.config
        ours = pl.col("symbol").is_in(list(cfg.symbols)) & (pl.col("interval") == cfg.interval)
        try:
            klines = self.writer.spooled("klines").filter(ours)
            indicators = self.writer.spooled("indicators").filter(ours)
        except (OSError, pl.exceptions.PolarsError) as exc:  # the flush will say so too
            log.warning("cannot read the rows spooled in %s: %s", self.writer.spool_dir, exc)
            klines, indicators = empty(KLINE_SCHEMA), empty(INDICATOR_SCHEMA)
        marks = pl.concat([klines.select("symbol", "open_time"), indicators.select("symbol", "open_time")])
        return klines.select(list(KLINE_SCHEMA)), marks

    async def _consume(self) -> None:
        while True:
            self._apply(await self.queue.get())

    def _apply(self, batch: Batch) -> None:
        received = self.received
        if len(received) < len(self.config.symbols):  # free once every symbol has spoken
            received.update(k.symbol for k in batch.finals)
            received.update(batch.forming)
            received.update(batch.tickers)
            if batch.rest is not None and batch.rest.height:
                received.update(batch.rest["symbol"].unique().to_list())
        changes = self.state.apply(batch)
        self.batches += 1
        if changes.klines.height:  # together: a flush never stores candles without their indicators
            self.writer.add_many({"klines": changes.klines, "indicators": changes.indicators})
            firsts = changes.klines.group_by("symbol").agg(pl.col("open_time").min().dt.epoch("ms"))
            for sym, t in firsts.iter_rows():
                self.first[sym] = min(t, self.first.get(sym, t))

    def _drain(self) -> None:
        """Fold in what is still queued or half-read, so a stop loses no closed candle."""
        while not self.queue.empty():
            self._apply(self.queue.get_nowait())
        for conn in self.feed.connections:
            batch, conn._batch = conn._batch, Batch()
            if batch:
                self._apply(batch)
        if self.state.tickers:
            self.writer.add_tickers(self.state.tickers_frame())

    async def _housekeeping(self) -> None:
        """Every flush interval: tickers to the store, a flush, holes repaired over REST."""
        ticker_version = -1
        asked: dict[tuple[str, int], tuple[int, float]] = {}  # hole -> (tries, last try)
        every = self.config.flush_every
        while True:
            await asyncio.sleep(every)
            if self.state.version != ticker_version and self.state.tickers:
                ticker_version = self.state.version
                self.writer.add_tickers(self.state.tickers_frame())
            try:
                # not before the history is loaded: rows computed without it wait in memory
                # or in the spool, which the next run recomputes if this one is killed
                if self.history_loaded:
                    await asyncio.to_thread(self.writer.flush)
            except StoreError as exc:  # rows stay queued; the status shows the error
                log.error("cannot write to the database, will retry: %s", exc)
            if found := self.empty.take_new():
                try:
                    await asyncio.to_thread(ranges.record_empty, [(s, self.config.interval, a, b) for s, a, b in found],
                                            db=self.db)
                except StoreError:
                    self.empty.new[:0] = found  # next time
            now_ms = self.feed.status().last_event_ms or int(time.time() * 1000)
            step = interval_ms(self.config.interval)
            for symbol, after in self.state.holes(now_ms):
                if self.empty.skip(symbol, after + step) > after + step:
                    continue  # REST proved the exchange lacks it (minutes without trades)
                tries, at = asked.get((symbol, after), (0, 0.0))
                # Asked again until filled or proven absent, less often each time (30 s, 60 s,
                # ... 10 min): two tries were the limit, and a hole both came to nothing for
                # (an answer cut short at the live edge, a failed request) stayed for good.
                if time.monotonic() - at > min(30 * 2**tries, 600):
                    asked[(symbol, after)] = (tries + 1, time.monotonic())
                    log.info("candles missing for %s after %s: fetching them over REST", symbol,
                             time.strftime("%Y-%m-%d %H:%M", time.gmtime(after / 1000)))
                    self.feed.repair(symbol, after)


PROG = "python -m store.ingest"


def parse_args(argv: list[str] | None = None) -> tuple[IngestConfig, float | None, float]:
    """``(config, duration, log_every)`` from the command line; a bad argument is a
    ``market.cli.UsageError`` whose one line says what is wrong and what is allowed."""
    p = cli.ArgumentParser(prog=PROG, description="Ingest Binance klines into DuckDB (no UI).")
    p.add_argument("--db", type=Path, help="database file (default: $MARKET_DB or store/market.duckdb)")
    p.add_argument("--symbols", type=cli.symbols, default=DEFAULT_SYMBOLS,
                   help="comma-separated, e.g. BTCUSDT,ETHUSDT (default: 50 liquid USD-M perps)")
    p.add_argument("--interval", type=cli.interval, default="1m", help="kline interval, e.g. 1m, 5m, 1h")
    p.add_argument("--exchange", default=DEFAULT_PRESET, help="preset: binance-futures, binance-spot, binance-us, ...")
    p.add_argument("--ws-url", help="stream base without /stream, e.g. wss://fstream.binance.com/market")
    p.add_argument("--rest-url", help="REST base, e.g. https://fapi.binance.com")
    p.add_argument("--duration", type=cli.seconds(),
                   help="stop after this many seconds (exit 0, or 1 if a symbol received nothing)")
    p.add_argument("--no-backfill", action="store_true", help="WebSocket only: no REST gap repair")
    p.add_argument("--lookback", type=cli.integer(1, 1_000_000), default=1000,
                   help="candles to fetch for a symbol never stored")
    p.add_argument("--flush-every", type=cli.seconds(), default=1.0, help="seconds between database flushes")
    p.add_argument("--log-every", type=cli.seconds(), default=10.0, help="seconds between status lines")
    # for the crash suite: spool to Parquet after a few rows instead of a million
    p.add_argument("--max-pending", type=cli.integer(1, 10**9), default=1_000_000, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    config = IngestConfig(
        db=a.db, symbols=a.symbols, interval=a.interval, exchange=a.exchange, ws_url=a.ws_url,
        rest_url=a.rest_url, backfill=not a.no_backfill, lookback=a.lookback, flush_every=a.flush_every,
        max_pending_rows=a.max_pending,
    )
    try:
        config.feed_config()  # validate presets and URLs before starting
    except ValueError as exc:
        raise cli.UsageError(f"{exc}; see {PROG} --help") from None
    return config, a.duration, a.log_every


class _RecentWarnings(logging.Handler):
    """The feed's last warnings (connection failures, refused backfills), to say why nothing came."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: collections.deque[str] = collections.deque(maxlen=50)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def silence_report(pipeline: Pipeline, elapsed: float, warnings: list[str]) -> str | None:
    """None when every symbol delivered something, else one line saying which did not and why."""
    missing = [s for s in pipeline.config.symbols if s not in pipeline.received]
    if not missing:
        return None
    conns = pipeline.feed.connections
    # "stopped" is our own stop at the end of --duration, not why nothing came
    why = next((c.status.reason for c in conns
                if c.status.state != "connected" and c.status.reason and c.status.reason != "stopped"), "")
    why = why or next((c.status.last_error for c in conns if c.status.last_error), "")
    if not why or len(missing) < len(pipeline.config.symbols):
        # a refused backfill names the symbol ("HTTP 400 ... Invalid symbol"): the best clue
        why = next((w for w in reversed(warnings) if any(s in w for s in missing)), why)
    if not why and not any(c.status.connected_at or c.status.reconnects or c.status.messages for c in conns):
        # still on the first attempt: it neither connected nor failed yet
        why = (f"no answer from {pipeline.config.preset().ws_base} yet (still connecting); a firewall or "
               f"proxy that drops the traffic looks like this, or a --duration too short for the handshake")
    if not why:
        why = (f"connected, but the exchange sent no candle for {'them' if len(missing) > 1 else 'it'}; "
               f"check the symbol names on {pipeline.config.preset().name} (an unknown symbol streams nothing)")
    which = "" if len(missing) == len(pipeline.config.symbols) else f" for {', '.join(missing)}"
    return f"received nothing{which} in {elapsed:.0f} s: {why}"


async def _main(config: IngestConfig, duration: float | None, log_every: float) -> int:
    pipeline = Pipeline(config)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    recent = _RecentWarnings()
    logging.getLogger("market").addHandler(recent)
    started = time.monotonic()
    log.info("ingesting %d symbols (%s) into %s", len(config.symbols), config.interval, pipeline.db)
    try:
        async with asyncio.timeout(duration):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(pipeline.run())
                while True:
                    await asyncio.sleep(log_every)
                    st = pipeline.status()
                    log.info("%s; %d candles written", st.describe(), st.store.written_rows)
    except (TimeoutError, asyncio.CancelledError):
        pass
    finally:
        logging.getLogger("market").removeHandler(recent)
    st = pipeline.status()
    log.info("stopped: %d rows written, %d pending, rejected frames %s",
             st.store.written_rows, st.store.pending_rows, st.feed.rejected or "none")
    problem = silence_report(pipeline, time.monotonic() - started, list(recent.messages))
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 the database is unusable, or a symbol received nothing; 2 a bad argument."""
    try:
        config, duration, log_every = parse_args(argv)
    except cli.UsageError as exc:
        print(cli.usage_line(PROG, exc), file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        prepare(config.db, config.preset().market)  # before any network traffic
    except StoreError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_main(config, duration, log_every))


if __name__ == "__main__":
    sys.exit(main())
