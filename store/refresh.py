"""Indicators of whole series after their candles were written in bulk (backfill, repair).

``store.bulk.refresh_indicators`` does the computing (one series, from a seam on,
equal to a full-history computation, later rows whose values move included); this
module says which series need it and from where:

- series a command stored candles into: from the first candle it stored, once
  every page of the series is in the file (``Refresher.stored`` / ``done``);
- series with stored candles that have no indicator row: from the first such
  candle (``unindexed``). That is how a run killed between writing a series'
  candles and its indicators is finished by the next run, even when its candles
  are complete and it fetches nothing.

Candles first, then indicators: a refresh only runs after the writer has put the
series' candles in the file (the caller flushes, then calls ``Refresher.run``).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence

from tqdm import tqdm

from store.bulk import refresh_indicators, session
from store.db import StoreError, query, resolve_db

Key = tuple[str, str]  # symbol, interval
Db = str | os.PathLike[str] | None
_EPOCH = dt.datetime(1970, 1, 1)


def unindexed(symbols: Sequence[str], interval: str, *, db: Db = None) -> dict[str, int]:
    """Per symbol: the open time (ms) of its first stored candle without an indicator row.

    A count per series first (two plain aggregates, ~1 s each on a year of 50
    symbols; ``count(DISTINCT open_time)`` took 52 s there); only series whose
    klines and indicators counts differ are searched for the first candle lacking
    a row (an anti-join over those series alone).
    """
    if not symbols or not resolve_db(db).exists():
        return {}
    where = "WHERE interval = ? AND symbol IN (SELECT unnest(?::VARCHAR[]))"
    counts = query(
        f"""SELECT k.symbol FROM (SELECT symbol, count(*) AS n FROM klines {where} GROUP BY symbol) k
            LEFT JOIN (SELECT symbol, count(*) AS n FROM indicators {where} GROUP BY symbol) i
              USING (symbol)
            WHERE k.n <> coalesce(i.n, 0)""",
        [interval, list(symbols), interval, list(symbols)], db=db)
    odd = counts["symbol"].to_list() if counts.height else []
    if not odd:
        return {}
    rows = query(
        f"""SELECT k.symbol, epoch_ms(min(k.open_time)) AS first FROM (SELECT symbol, open_time FROM klines {where}) k
            ANTI JOIN (SELECT symbol, open_time FROM indicators {where}) i USING (symbol, open_time)
            GROUP BY k.symbol""",
        [interval, odd, interval, odd], db=db)
    return dict(rows.iter_rows()) if rows.height else {}


class Refresher:
    """Series waiting for their indicators, and the refresh of those whose candles are stored.

    ``stored``/``done``/``check`` may be called from the event loop while ``run``
    works in a thread: the state is behind a lock.
    """

    def __init__(self, db: Db, market: str | None, *, progress: bool = False) -> None:
        self.db, self.market, self.progress = db, market, progress
        self.written = 0  # indicator rows written
        self.refreshed = 0  # series refreshed
        self._since: dict[Key, int] = {}  # earliest open time (ms) to recompute from
        self._ready: set[Key] = set()  # every candle of the series is queued in the writer
        self._lock = threading.Lock()

    def stored(self, key: Key, first_ms: int) -> None:
        """Candles of ``key`` from ``first_ms`` on were queued for the store."""
        with self._lock:
            self._since[key] = min(self._since.get(key, first_ms), first_ms)

    def done(self, key: Key) -> None:
        """Every page of ``key`` is queued: refresh it after the next successful flush."""
        with self._lock:
            if key in self._since:
                self._ready.add(key)

    def check(self, keys: Iterable[Key], later: set[Key] = frozenset()) -> int:
        """Queue the series among ``keys`` that have candles without indicators: ready at
        once (their candles are in the file), except those in ``later`` (pages still to
        fetch; ``done`` makes them ready). Returns how many."""
        by_interval: dict[str, list[str]] = {}
        for s, i in keys:
            by_interval.setdefault(i, []).append(s)
        found = 0
        for interval, symbols in by_interval.items():
            for s, first in unindexed(symbols, interval, db=self.db).items():
                self.stored((s, interval), first)
                if (s, interval) not in later:
                    self.done((s, interval))
                found += 1
        return found

    def take(self) -> list[Key]:
        """The ready series, taken BEFORE the flush that makes their candles durable."""
        with self._lock:
            keys, self._ready = sorted(self._ready), set()
            return keys

    def give_back(self, keys: Iterable[Key]) -> None:
        with self._lock:
            self._ready.update(keys)

    @property
    def waiting(self) -> list[Key]:
        """Series with candles stored this run whose indicators are not refreshed yet."""
        with self._lock:
            return sorted(self._since)

    def run(self, keys: list[Key]) -> None:
        """Refresh ``keys`` (their candles are in the file), one series per file session so
        other writers get in between. A failed series goes back to the ready set and the
        StoreError is raised after the others were tried."""
        failed: list[tuple[Key, StoreError]] = []
        bar = tqdm(keys, desc="indicators", unit="series", leave=False, file=sys.stderr,
                   disable=not self.progress or len(keys) < 2)
        for key in bar:
            with self._lock:
                since = self._since.get(key)
            if since is None:
                continue
            started = time.perf_counter()
            try:
                with session(self.db, self.market) as con:
                    n = refresh_indicators(con, *key, _EPOCH + dt.timedelta(milliseconds=since))
            except StoreError as exc:
                failed.append((key, exc))
                continue
            with self._lock:
                if self._since.get(key) == since:  # else more candles came meanwhile: stay
                    del self._since[key]
            self.written += n
            self.refreshed += 1
            if self.progress:
                tqdm.write(f"{' '.join(key)}: indicators refreshed, {n:,} rows written "
                           f"({time.perf_counter() - started:.2f} s)", file=sys.stderr)
        bar.close()
        if failed:
            self.give_back(k for k, _ in failed)
            (s, i), exc = failed[0]
            raise StoreError(f"indicators of {s} {i} not refreshed: {exc}")
