"""The candles one chart shows: a symbol at a timeframe, with indicators, kept current.

At the streamed interval the series reads the pipeline's memory directly. Coarser
timeframes are derived from 1m candles (stored history plus memory) with
``market.candles.resample``; a bucket counts as closed once its last minute has
closed, and the still-forming bucket (forming minute included) is the live candle.
Per poll the work is O(new rows + WARMUP), never O(history).
"""

from __future__ import annotations

import datetime as dt
import logging

import polars as pl

from market.candles import resample
from market.indicators import WARMUP, add_indicators, add_signal, tail_indicators
from market.schema import KLINE_SCHEMA, interval_ms
from store.db import StoreError
from store.history import candles as stored_candles
from store.history import klines as stored_klines

log = logging.getLogger("dashboard.series")

#: Buckets of history loaded for a derived timeframe (and kept in memory).
BUCKETS = 1000
_EPOCH = dt.datetime(1970, 1, 1)
_MS = dt.timedelta(milliseconds=1)


class Series:
    """Closed candles with indicators plus the forming one, for one chart."""

    def __init__(self, feed, symbol: str, timeframe: str) -> None:
        self.feed = feed
        self.state = feed.state
        self.symbol = symbol
        self.timeframe = timeframe
        self.base = self.state.interval
        self.derived = timeframe != self.base
        self._last_base = None  # newest base open_time folded in
        self._closed = pl.DataFrame(schema={**KLINE_SCHEMA})
        self._pending_base = pl.DataFrame(schema={**KLINE_SCHEMA})  # minutes of the open bucket
        self._older = pl.DataFrame(schema={**KLINE_SCHEMA})  # stored buckets before memory's
        self._version = -1
        self.revision = self.state.revisions.get(symbol, 0)

    # -- first paint ----------------------------------------------------------------
    @property
    def stale(self) -> bool:
        """True when older candles changed under us (a backfill landed): call initial() again."""
        return self.state.revisions.get(self.symbol, 0) != self.revision

    def initial(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        self.revision = self.state.revisions.get(self.symbol, 0)
        memory = self.state.candles(self.symbol)
        if not self.derived:
            self._closed = memory.tail(BUCKETS * 2)
            self._last_base = memory["open_time"].max() if memory.height else None
            return self._closed, self._forming()
        base = self._history(memory)
        self._last_base = base["open_time"].max() if base.height else None
        complete, partial = self._split(resample(base, self.timeframe))
        complete = pl.concat([self._older, complete]).tail(BUCKETS + WARMUP)
        self._closed = add_signal(add_indicators(complete)).tail(BUCKETS)
        self._pending_base = base.filter(pl.col("open_time") >= partial["open_time"].min()) if partial.height else base.clear()
        return self._closed, self._forming()

    def current(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """What :meth:`initial` and the polls since have built: closed candles and the forming one."""
        return self._closed, self._forming()

    def _history(self, memory: pl.DataFrame) -> pl.DataFrame:
        """Closed buckets before the first one memory can build, with the 1m rows it needs.

        Older buckets are aggregated by DuckDB (``store.history.candles``: a few
        thousand rows leave the file whatever the timeframe); from the bucket holding
        memory's first minute on, buckets are resampled from 1m rows (the stored
        minutes of that bucket plus memory), so the open bucket keeps its minutes.
        Returns the 1m base; the older buckets go to ``self._older``.
        """
        step = interval_ms(self.timeframe)
        first = memory["open_time"].min() if memory.height else None
        anchor = first or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        cut = _EPOCH + dt.timedelta(milliseconds=(int((anchor - _EPOCH) / _MS) // step) * step)
        db = self.feed.pipeline.db
        try:
            self._older = stored_candles(self.symbol, self.timeframe,
                                         cut - dt.timedelta(milliseconds=step * (BUCKETS + WARMUP)), cut, db=db)
            stored = (stored_klines(self.symbol, self.base, cut, first, db=db) if first is None or first > cut
                      else pl.DataFrame(schema={**KLINE_SCHEMA}))  # memory starts on the bucket
        except StoreError as exc:  # a busy or missing file: draw what memory has
            log.info("chart history for %s from memory only: %s", self.symbol, exc)
            self._older = stored = pl.DataFrame(schema={**KLINE_SCHEMA})
        return pl.concat([stored, memory.select(list(KLINE_SCHEMA))]).unique(
            ["open_time"], keep="last").sort("open_time")

    def _split(self, buckets: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Closed buckets vs the last one if its minutes are not all closed yet."""
        if buckets.height == 0 or self._last_base is None:
            return buckets, buckets.clear()
        done = pl.col("close_time") <= pl.lit(self._last_base) + pl.duration(milliseconds=interval_ms(self.base))
        return buckets.filter(done), buckets.filter(~done)

    # -- updates ------------------------------------------------------------------
    def poll(self) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """New closed candles since the last poll, and the forming candle if anything moved."""
        if self.state.version == self._version:
            return self._closed.clear(), None
        self._version = self.state.version
        new_base = self.state.candles(self.symbol, after=self._last_base)
        if new_base.height:
            self._last_base = new_base["open_time"].max()
        if not self.derived:
            new = new_base
        else:
            base = pl.concat([self._pending_base, new_base.select(list(KLINE_SCHEMA))])
            complete, partial = self._split(resample(base, self.timeframe))
            self._pending_base = base.filter(pl.col("open_time") >= partial["open_time"].min()) if partial.height else base.clear()
            new = self._with_indicators(complete) if complete.height else self._closed.clear()
        if new.height:
            self._closed = pl.concat([self._closed, new.select(self._closed.columns)]).tail(BUCKETS * 2)
        return new.select(self._closed.columns) if new.height else self._closed.clear(), self._forming()

    def _with_indicators(self, new: pl.DataFrame) -> pl.DataFrame:
        cols = list(KLINE_SCHEMA)
        frame = pl.concat([self._closed.select(cols).tail(WARMUP), new.select(cols)])
        return tail_indicators(frame, last_n=new.height)

    def _forming(self) -> pl.DataFrame:
        """The live candle of this timeframe with indicators computed through it."""
        minute = self.state.forming_frame(self.symbol)
        if self.derived:
            live = resample(pl.concat([self._pending_base, minute]), self.timeframe).tail(1)
        else:
            live = minute
        if live.height == 0:
            return self._closed.clear()
        frame = pl.concat([self._closed.select(list(KLINE_SCHEMA)).tail(WARMUP), live])
        return tail_indicators(frame, last_n=1).select(self._closed.columns)
