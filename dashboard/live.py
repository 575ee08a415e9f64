"""The one server-wide pipeline, and what sessions pull from it.

``shared_feed(config)`` returns the process's ``SharedFeed``, starting it on first
use. It lives in ``pn.state.cache`` so ``--dev`` reloads and new sessions reuse it,
and it is started with an empty ``contextvars.Context``: a task created from a
session inherits that session's Bokeh document context, and HoloViews then keeps
rescheduling refreshes forever (frozen charts, a spinning core). Sessions never
receive pushes; each pulls on its own periodic callback, so nothing global holds
a reference into a session.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import socket
import threading
import time

import panel as pn
import polars as pl

from dashboard.config import AppConfig
from market.exchange import LocalExchange
from market.live import LiveState
from store.ingest import Pipeline, PipelineStatus

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
            self.exchange = LocalExchange(port=port, symbols=tuple(config.symbols), speed=config.speed)
            ws, rest = f"ws://127.0.0.1:{port}/market", f"http://127.0.0.1:{port}"
        self.pipeline = Pipeline(config.ingest_config(ws, rest))
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sessions: set[str] = set()
        self._lock = threading.Lock()
        self._snapshot: pl.DataFrame | None = None
        self._snapshot_key: tuple[int, float] = (-1, 0.0)
        self.started_at = time.monotonic()

    @property
    def state(self) -> LiveState:
        return self.pipeline.state

    # -- lifecycle ----------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.task is not None:
            return
        self.loop = loop
        self.task = loop.create_task(self._run(), context=contextvars.Context())
        atexit.register(self.stop_sync)

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

    def stop_sync(self) -> None:
        """At interpreter exit the loop is gone: fold in what is queued and flush."""
        if self.task is not None and not self.task.done():
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
            self._snapshot = self.state.snapshot()
            self._snapshot_key = (self.state.version, now)
        return self._snapshot


def shared_feed(config: AppConfig) -> SharedFeed:
    """The process's SharedFeed, created and started once (also across --dev reloads)."""
    feed = pn.state.cache.get(CACHE_KEY)
    if feed is None:
        feed = pn.state.cache[CACHE_KEY] = SharedFeed(config)
        log.info("starting the shared pipeline: %s into %s", "demo exchange" if config.demo else
                 config.exchange, config.db_path())
    if feed.task is None:
        feed.start(asyncio.get_event_loop())
    return feed
