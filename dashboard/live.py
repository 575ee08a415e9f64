"""The one server-wide pipeline, and what sessions pull from it.

``shared_feed(config)`` returns the process's ``SharedFeed``, starting it on first
use. It lives in ``pn.state.cache`` so ``--dev`` reloads and new sessions reuse it,
and it is started with an empty ``contextvars.Context``: a task created from a
session inherits that session's Bokeh document context, and HoloViews then keeps
rescheduling refreshes forever (frozen charts, a spinning core). Sessions never
receive pushes; each pulls on its own periodic callback, so nothing global holds
a reference into a session.

When it starts: ``panel serve`` runs nothing of a single-file app before the
first session (no lifecycle hook for a file; ``--setup`` and ``--warm`` are
flags). The documented commands pass ``--warm``, which runs app.py once while the
server starts; app.py then only calls ``shared_feed(config, at="server start")``,
so history loads and klines reach the file with no browser connected. Without
``--warm`` the first page starts it, and the page says so.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import signal
import socket
import threading
import time

import panel as pn
import polars as pl

from dashboard.config import AppConfig
import store
from market.exchange import LocalExchange
from market.live import LiveState
from market.presets import custom_preset
from store.ingest import Pipeline, PipelineStatus

#: The market recorded in a --demo database: synthetic prices never join a real file.
DEMO_MARKET = "demo"

log = logging.getLogger("dashboard.live")
CACHE_KEY = "crypto-explorer:shared-feed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SharedFeed:
    """The pipeline (and, with --demo, the local exchange) shared by every session."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.exchange: LocalExchange | None = None
        ws = rest = None
        if config.demo:
            port = _free_port()
            ws, rest = f"ws://127.0.0.1:{port}/market", f"http://127.0.0.1:{port}"
        ingest = config.ingest_config(ws, rest)
        preset = ingest.preset()
        if config.demo:
            preset = custom_preset(ws, rest, like=config.exchange, market=DEMO_MARKET)
        self.market = preset.market
        # a bad --db (a folder, not DuckDB, unwritable, another market) fails here, before any traffic
        self.db = store.prepare(ingest.db, self.market)
        if config.demo:
            self.exchange = LocalExchange(port=port, symbols=tuple(config.symbols), speed=config.speed)
        self.pipeline = Pipeline(ingest, writer=store.Writer(self.db, market=self.market))
        self.task: asyncio.Task | None = None
        self._stopping = False
        self._decimals: dict[str, int] = {}
        self._stored_tickers = self._load_tickers()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sessions: set[str] = set()
        self._lock = threading.Lock()
        self._snapshot: pl.DataFrame | None = None
        self._snapshot_key: tuple[int, float] = (-1, 0.0)
        self.started_at = time.monotonic()
        self.started_utc: float | None = None  # time.time() when the pipeline was started
        self.started_by = ""  # "server start" (panel serve --warm) or "first page"

    @property
    def state(self) -> LiveState:
        return self.pipeline.state

    # -- lifecycle ----------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, at: str = "first page") -> None:
        """Create the pipeline task on ``loop`` (which may not run yet: ``--warm``
        calls this before the server's loop starts); a second call does nothing."""
        if self.task is not None:
            return
        self.loop = loop
        self.started_utc, self.started_by = time.time(), at
        self.task = loop.create_task(self._run(), context=contextvars.Context())
        # after Bokeh's own SIGTERM handler, which it installs just before its loop starts
        loop.call_soon_threadsafe(self._handle_signals)
        atexit.register(self.stop_sync)

    def _handle_signals(self) -> None:
        """Ctrl-C and SIGTERM stop the pipeline on the running loop (final flush), then the server.

        Left to interpreter exit instead, the flush finds the thread pools shut and
        the pipeline's threads torn down under DuckDB (a SIGSEGV, seen).
        """
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._on_signal, sig)
            except (ValueError, RuntimeError, NotImplementedError):
                return  # not the main thread (pn.serve(threaded=True) in tests): atexit covers it

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping:
            log.warning("%s again: stopping the server now", sig.name)
            self.loop.stop()
            return
        self._stopping = True
        log.info("%s: stopping the pipeline (final flush), then the server", sig.name)
        self.loop.create_task(self._shutdown(), context=contextvars.Context())

    async def _shutdown(self) -> None:
        try:
            await asyncio.wait_for(self.stop(), 30)
        except Exception:  # noqa: BLE001 - stop the server whatever happened
            log.exception("stopping the pipeline failed")
        finally:
            self.loop.stop()

    async def _run(self) -> None:
        if self.exchange is not None:
            async with self.exchange:
                await self.pipeline.run()
        else:
            await self.pipeline.run()

    async def stop(self) -> None:
        """Cancel the pipeline and wait for its final flush."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    def stop_sync(self, timeout: float = 30.0) -> None:
        """At interpreter exit (Ctrl-C, SIGTERM): stop the pipeline and make its final flush.

        The server's loop has stopped by then but is not closed: run it until the
        pipeline task has ended the way a cancel ends it (queued batches folded in,
        writer closed, local exchange shut). Leaving the task and its threads to
        interpreter teardown crashed the process (SIGSEGV) in DuckDB.
        """
        if self.task is None or self.task.done():
            return
        loop = self.loop
        if loop is not None and not loop.is_closed() and not loop.is_running():
            try:
                loop.run_until_complete(asyncio.wait_for(self.stop(), timeout))
                return
            except Exception:  # noqa: BLE001 - exit path: fall back to a direct flush
                log.exception("stopping the pipeline on its loop failed; flushing directly")
        try:
            self.pipeline._drain()
            self.pipeline.writer.close(timeout=5)
        except Exception:  # noqa: BLE001 - exit path: log, never raise
            log.exception("final flush failed")

    # -- sessions -----------------------------------------------------------------
    def session_opened(self, session_id: str) -> None:
        with self._lock:
            self._sessions.add(session_id)

    def session_closed(self, session_id: str) -> None:
        with self._lock:
            self._sessions.discard(session_id)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    # -- reads for sessions ---------------------------------------------------------
    def status(self) -> PipelineStatus:
        return self.pipeline.status()

    def snapshot(self, max_age: float = 0.5) -> pl.DataFrame:
        """Per-symbol table for the heatmap and signal table, computed once for all sessions."""
        now = time.monotonic()
        version, at = self._snapshot_key
        if self._snapshot is None or (version != self.state.version and now - at >= max_age):
            self._snapshot = self._seeded(self.state.snapshot())
            self._snapshot_key = (self.state.version, now)
        return self._snapshot

    def _load_tickers(self) -> pl.DataFrame | None:
        """The stored 24h tickers, so the first page after a restart has its heatmap and table
        filled before the ticker stream has sent every symbol (it takes 1-2 s per symbol)."""
        try:
            return store.query("SELECT symbol, last_price, price_change_pct, quote_volume, volume FROM tickers",
                               db=self.db, timeout=5)
        except store.StoreError as exc:
            log.info("no stored tickers to start the heatmap with: %s", exc)
            return None

    def _seeded(self, snap: pl.DataFrame) -> pl.DataFrame:
        seed = self._stored_tickers
        if seed is None or seed.height == 0:
            return snap
        cols = [c for c in seed.columns if c != "symbol"]
        if all(c in snap.columns for c in cols) and snap.select(pl.sum_horizontal(pl.col(cols).null_count())).item() == 0:
            self._stored_tickers = None  # every symbol has live values now
            return snap
        if snap.height == 0:  # no candles in memory yet
            snap = pl.DataFrame({"symbol": list(self.config.symbols)})
        stored = seed.rename({c: f"{c}_stored" for c in cols})
        out = snap.join(stored, on="symbol", how="left")
        return out.with_columns(
            (pl.coalesce(c, f"{c}_stored") if c in snap.columns else pl.col(f"{c}_stored")).alias(c) for c in cols
        ).drop([f"{c}_stored" for c in cols])

    def price_decimals(self) -> dict[str, int]:
        """Per symbol with candles in memory: the decimals its prices are quoted with (its tick)."""
        from dashboard.table import price_decimals

        missing = [s for s in self.config.symbols if s not in self._decimals]
        for symbol in missing:
            recent = self.state.candles(symbol).tail(200)
            if recent.height:
                values = [v for c in ("open", "high", "low", "close") for v in recent[c].to_list()]
                self._decimals[symbol] = price_decimals(values)
        return dict(self._decimals)

    def started_words(self) -> str:
        """When recording began and why, for the page."""
        if self.started_utc is None:
            return "Not recording yet."
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started_utc))
        if self.started_by == "server start":
            return f"Recording since {when}, when the server started."
        return (f"Recording since {when}, when the {self.started_by} opened: serve with "
                "<code>panel serve --warm dashboard/app.py</code> to record from server start.")


def _server_loop() -> asyncio.AbstractEventLoop:
    """The running loop, or (under ``--warm``, before the server runs) the one it will run."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        from tornado.ioloop import IOLoop  # Bokeh's server runs this thread's IOLoop

        return IOLoop.current().asyncio_loop


def shared_feed(config: AppConfig, at: str = "first page") -> SharedFeed:
    """The process's SharedFeed, created and started once (also across --dev reloads).

    ``at`` says what started it ("server start" under ``panel serve --warm``).
    Raises store.StoreError when the database cannot be used (checked before any traffic).
    """
    feed = pn.state.cache.get(CACHE_KEY)
    if feed is None:
        feed = SharedFeed(config)
        pn.state.cache[CACHE_KEY] = feed
        log.info("starting the shared pipeline at %s: %s into %s", at, "demo exchange" if config.demo else
                 config.exchange, feed.db)
    if feed.task is None:
        feed.start(_server_loop(), at)
    return feed
