"""In-memory live state: recent closed candles with indicators, forming candles, tickers.

One ``LiveState`` per pipeline, touched only from the pipeline's event loop
(readers in other threads get immutable polars frames). ``apply(batch)`` folds a
``Batch`` in and returns what the store must write. Indicators are recomputed
only for the rows a batch changed, from ``WARMUP`` candles of history before the
first of them (O(tail), equal to the full-history values to ~1e-13).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection

import polars as pl

from market.binance import Kline, Ticker, kline_frame, ticker_frame
from market.indicators import WARMUP, add_indicators, add_signal, tail_indicators
from market.schema import INDICATOR_SCHEMA, KLINE_SCHEMA, empty, interval_ms
from market.stream import Batch

KEY = ["symbol", "interval", "open_time"]
IND_COLS = ["rsi", "stoch_k", "stoch_d", "signal"]
CLOSED_SCHEMA = {**KLINE_SCHEMA, **{c: INDICATOR_SCHEMA[c] for c in IND_COLS}}


@dataclasses.dataclass(frozen=True)
class Changes:
    """What one batch changed: rows for the store, and the symbols that moved."""

    klines: pl.DataFrame
    indicators: pl.DataFrame
    symbols: frozenset[str]


class LiveState:
    """Recent history (``keep`` closed candles per symbol) plus the live edge."""

    def __init__(self, symbols: list[str], interval: str = "1m", *, keep: int = 2000) -> None:
        self.symbols = list(symbols)
        self.interval = interval
        self.step_ms = interval_ms(interval)
        self.keep = max(keep, WARMUP + 1)
        self.closed: pl.DataFrame = empty(CLOSED_SCHEMA)
        self.forming: dict[str, Kline] = {}
        self.tickers: dict[str, Ticker] = {}
        self._last_closed: dict[str, int] = {}
        self.version = 0  # bumps on every change, so readers can skip a redraw
        # per symbol, bumps when rows at or before its newest candle change (a backfill
        # landing behind streamed candles, a corrected final): readers must reload
        self.revisions: dict[str, int] = {}
        self._inner_holes: list[tuple[str, int]] = []
        self._holes_version = -1
        self.closed_version = 0
        self.applied_at: float | None = None

    # -- history ------------------------------------------------------------------
    def seed(self, history: pl.DataFrame) -> Changes:
        """Load stored closed candles (KLINE_SCHEMA, any order) and compute indicators."""
        return self._merge(history.filter(pl.col("interval") == self.interval))

    def load(self, history: pl.DataFrame, since: pl.DataFrame, whole: Collection[str] = ()) -> pl.DataFrame:
        """Merge stored candles the state lacked; return the indicator rows to store again.

        For candles that were stored (or spooled) but not in the state when rows after
        them were computed: a killed run's spooled rows, or the whole database when it
        was busy at start. Returns each symbol's rows from ``since``'s ``open_time`` for
        it on, as INDICATOR_SCHEMA rows recomputed over the merged history, except rows
        with fewer than WARMUP candles before them (their window is cut) unless the
        symbol is in ``whole`` (``history`` reaches back to its first stored candle).
        """
        history = history.filter(pl.col("interval") == self.interval).select(list(KLINE_SCHEMA))
        marks = since.group_by("symbol").agg(pl.col("open_time").min().alias("_since"))
        # over everything known, before _merge trims the state to `keep` rows a symbol
        # (a deep spool would otherwise lose the rows its oldest candles need)
        full = (
            pl.concat([self.closed.select(list(KLINE_SCHEMA)), history])
            .join(marks, on="symbol", how="semi")
            .unique(KEY, keep="last", maintain_order=True)
        )
        self._merge(history)
        if full.height == 0:
            return empty(INDICATOR_SCHEMA)
        return (
            add_signal(add_indicators(full))  # sorted by symbol, open_time
            .with_columns(_i=pl.int_range(pl.len()).over("symbol"))
            .join(marks, on="symbol")
            .filter(pl.col("open_time") >= pl.col("_since"),
                    (pl.col("_i") >= WARMUP) | pl.col("symbol").is_in(list(whole)))
            .select(list(INDICATOR_SCHEMA))
        )

    def last_closed(self, symbol: str) -> int | None:
        """open_time (ms) of the newest closed candle known for ``symbol``."""
        return self._last_closed.get(symbol)

    # -- updates ------------------------------------------------------------------
    def apply(self, batch: Batch) -> Changes:
        for sym, k in batch.forming.items():
            last = self._last_closed.get(sym)
            if last is None or k.open_time > last:
                prev = self.forming.get(sym)
                if prev is None or (k.open_time, k.event_time) >= (prev.open_time, prev.event_time):
                    self.forming[sym] = k
        for sym, t in batch.tickers.items():
            prev = self.tickers.get(sym)
            if prev is None or t.event_time >= prev.event_time:
                self.tickers[sym] = t
        parts = [kline_frame(batch.finals)] if batch.finals else []
        if batch.rest is not None and batch.rest.height:
            parts.append(batch.rest)
        changes = self._merge(pl.concat(parts)) if parts else _no_changes()
        if batch.forming or batch.tickers or changes.symbols:
            self.version += 1
            self.applied_at = time.monotonic()
        return changes

    def _merge(self, new: pl.DataFrame) -> Changes:
        new = new.filter(pl.col("interval") == self.interval)
        if new.height == 0:
            return _no_changes()
        new = new.unique(KEY, keep="last", maintain_order=True)
        firsts = new.group_by("symbol").agg(pl.col("open_time").min().alias("_first"))
        older = []
        for sym, first_ms in firsts.select("symbol", pl.col("_first").dt.epoch("ms")).iter_rows():
            prev = self._last_closed.get(sym)
            if prev is not None and first_ms <= prev:
                older.append((sym, prev))
        if older:
            # History changed under the charts only if a row at or before the last closed one
            # is new or differs: a backfill re-sending candles the stream already gave is no
            # change (each revision makes every chart of the symbol reload its window)
            before = pl.DataFrame(older, schema={"symbol": pl.String, "_prev": pl.Int64}, orient="row")
            early = new.join(before, on="symbol").filter(pl.col("open_time").dt.epoch("ms") <= pl.col("_prev"))
            cols = list(KLINE_SCHEMA)
            changed = early.select(cols).join(self.closed.select(cols), on=cols, how="anti")
            for sym in changed["symbol"].unique().to_list():
                self.revisions[sym] = self.revisions.get(sym, 0) + 1
        merged = (
            pl.concat([self.closed.select(list(KLINE_SCHEMA)), new])
            .unique(KEY, keep="last", maintain_order=True)
            .sort("symbol", "open_time")
        )
        touched = merged.join(firsts, on="symbol", how="semi")
        # WARMUP rows before each symbol's first changed row seed the recursion
        idx = pl.int_range(pl.len()).over("symbol")
        start = (
            touched.with_columns(_i=idx)
            .join(firsts, on="symbol")
            .filter(pl.col("open_time") >= pl.col("_first"))
            .group_by("symbol")
            .agg(pl.col("_i").min().alias("_start"))
        )
        window = (
            touched.with_columns(_i=idx)
            .join(start, on="symbol")
            .filter(pl.col("_i") >= pl.col("_start") - WARMUP)
        )
        computed = (
            add_signal(add_indicators(window.drop("_i", "_start")))
            .join(firsts, on="symbol")
            .filter(pl.col("open_time") >= pl.col("_first"))
            .drop("_first")
        )
        indicators = computed.select(list(INDICATOR_SCHEMA))
        old = self.closed.select(*KEY, *IND_COLS)
        keep = self.keep
        self.closed = (
            merged.join(
                pl.concat([old.join(indicators, on=KEY, how="anti"), indicators]),
                on=KEY, how="left",
            )
            .sort("symbol", "open_time")
            # pl.len() is unsigned: subtracting from it would wrap around
            .filter(pl.int_range(pl.len()).over("symbol") >= pl.len().over("symbol").cast(pl.Int64) - keep)
            .select(list(CLOSED_SCHEMA))
        )
        lasts = self.closed.group_by("symbol").agg(pl.col("open_time").max().dt.epoch("ms"))
        for sym, t in lasts.iter_rows():
            self._last_closed[sym] = t
            k = self.forming.get(sym)
            if k is not None and k.open_time <= self._last_closed[sym]:
                del self.forming[sym]
        self.closed_version += 1
        symbols = frozenset(firsts["symbol"].to_list())
        return Changes(klines=new.select(list(KLINE_SCHEMA)), indicators=indicators, symbols=symbols)

    # -- reads (cheap, immutable results) -----------------------------------------
    def candles(self, symbol: str, after: object | None = None) -> pl.DataFrame:
        """Closed candles with indicators for ``symbol`` (newer than ``after``, if given)."""
        out = self.closed.filter(pl.col("symbol") == symbol)
        return out.filter(pl.col("open_time") > after) if after is not None else out

    def forming_frame(self, symbol: str | None = None) -> pl.DataFrame:
        """The forming candle(s) as KLINE_SCHEMA rows."""
        rows = [k for s, k in self.forming.items() if symbol is None or s == symbol]
        return kline_frame(rows)

    def tickers_frame(self) -> pl.DataFrame:
        return ticker_frame(list(self.tickers.values()))

    def holes(self, now_ms: int, grace_ms: int = 5_000) -> list[tuple[str, int]]:
        """Where closed candles are missing: ``(symbol, open_time ms of the candle before)``.

        Two kinds: the stream moved on to a later forming candle while a final never
        came (after ``grace_ms``, since finals can be seconds late), and gaps inside
        the recent history (a final lost while the next one arrived, or a hole left
        by an earlier run). The pipeline asks REST for each.
        """
        found: list[tuple[str, int]] = []
        for sym, k in self.forming.items():
            last = self._last_closed.get(sym)
            if last is not None and k.open_time - last > self.step_ms and now_ms - k.open_time > grace_ms:
                found.append((sym, last))
        if self._holes_version != self.closed_version:
            t = pl.col("open_time").dt.epoch("ms")
            self._inner_holes = [
                (sym, before) for sym, before in self.closed.lazy()
                .select("symbol", t.alias("before"), (t.shift(-1).over("symbol") - t).alias("step"))
                .filter(pl.col("step") > self.step_ms)
                .select("symbol", "before")
                .collect().iter_rows()
            ]
            self._holes_version = self.closed_version
        return found + [h for h in self._inner_holes if h not in found]

    def snapshot(self) -> pl.DataFrame:
        """One row per symbol: last price, 24h stats, live RSI/StochRSI (forming candle included)."""
        forming = self.forming_frame()
        base = pl.concat([self.closed.select(list(KLINE_SCHEMA)), forming]).unique(KEY, keep="last")
        if base.height == 0:
            return pl.DataFrame(schema={"symbol": pl.String()})
        live = tail_indicators(base, last_n=1).select(
            "symbol", pl.col("close").alias("price"), "open_time", *IND_COLS
        )
        tick = self.tickers_frame().select(
            "symbol", "last_price", "price_change_pct", "quote_volume", "volume", "event_time"
        )
        return (
            pl.DataFrame({"symbol": self.symbols})
            .join(live, on="symbol", how="left")
            .join(tick, on="symbol", how="left")
            # the forming candle's close is fresher (250 ms) than the ticker's (1-2 s)
            .with_columns(last_price=pl.coalesce("price", "last_price"))
            .drop("price")
        )


def _no_changes() -> Changes:
    return Changes(klines=empty(KLINE_SCHEMA), indicators=empty(INDICATOR_SCHEMA), symbols=frozenset())
