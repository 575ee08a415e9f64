"""The batched, idempotent, lock-aware writer.

Batches (polars frames in market.schema shapes) are queued in memory and written
by ``flush()``: open the file, one transaction, one statement per table, close.
Between flushes the file is free for other processes. When someone else holds it,
the rows stay queued, the writer retries with capped, jittered backoff, and past
``max_pending_rows`` it spools batches to Parquet beside the database so memory
stays bounded and a crash loses nothing either; the next good flush loads them.

Uniqueness on (symbol, interval, open_time) without a PRIMARY KEY: each flush
deletes the batch's keys within the batch's time range, then inserts the batch
(deduplicated, newest last wins), so a repeated or corrected candle replaces the
old row.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import threading
import time
from pathlib import Path

import duckdb
import polars as pl

from market.schema import INDICATOR_SCHEMA, KLINE_SCHEMA, TICKER_SCHEMA, conform
from store.db import StoreError, StoreLocked, claim_market, gate, migrate, open_file, resolve_db

log = logging.getLogger("store.writer")

KEY = ["symbol", "interval", "open_time"]
TABLES: dict[str, dict[str, pl.DataType]] = {
    "klines": KLINE_SCHEMA,
    "tickers": TICKER_SCHEMA,
    "indicators": INDICATOR_SCHEMA,
}


@dataclasses.dataclass(frozen=True)
class WriterStatus:
    """What the UI shows about the store."""

    pending_rows: int
    spooled_rows: int
    written_rows: int
    flushes: int
    last_flush_ms: float | None
    last_error: str | None
    retry_in: float
    near_capacity: bool


class Writer:
    """Queue batches with ``add``; ``flush`` (or ``run``) writes them.

    Thread-safe: ``add`` may be called from the event loop while ``flush`` runs in
    a worker thread.
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        *,
        max_pending_rows: int = 1_000_000,
        warn_ratio: float = 0.8,
        retry_base: float = 0.1,
        retry_cap: float = 2.0,
        market: str | None = None,
        compact_every: int = 50,
        compact_free_ratio: float = 0.1,
        compact_max_bytes: int = 512 * 2**20,
    ) -> None:
        self.path = resolve_db(db)
        # Compaction (see compact()): checked every `compact_every` flushes; runs when
        # free blocks exceed `compact_free_ratio` of the file and the file is small
        # enough (`compact_max_bytes`) to copy in well under a second.
        self.compact_every = compact_every
        self.compact_free_ratio = compact_free_ratio
        self.compact_max_bytes = compact_max_bytes
        self._since_compact_check = 0
        self.compactions = 0
        self.market = market  # recorded on first write; another market's file is refused
        self.spool_dir = self.path.with_name(self.path.name + ".spool")
        self.max_pending_rows = max_pending_rows
        self.warn_ratio = warn_ratio
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[str, list[pl.DataFrame]] = {t: [] for t in TABLES}
        self._pending_rows = 0
        self._spooled_rows = 0
        self._spool_seq = 0
        self._written = 0
        self._flushes = 0
        self._last_flush_ms: float | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._warned = False
        self._migrated = False
        self._recover_spool()

    # -- queueing -----------------------------------------------------------------
    def add(self, table: str, batch: pl.DataFrame) -> None:
        """Queue ``batch`` for ``table`` (klines, tickers or indicators); cheap, never blocks on I/O."""
        self.add_many({table: batch})

    def add_many(self, batches: dict[str, pl.DataFrame]) -> None:
        """Queue batches for several tables at once: a flush takes all of them or none.

        Why: klines and their indicators added one call apart could be split by a
        flush in another thread, and a kill then leaves candles stored without
        their indicator rows, which nothing would write again.
        """
        frames = {t: conform(b, TABLES[t]) for t, b in batches.items() if b.height}
        if not frames:
            return
        with self._lock:
            for table, frame in frames.items():
                self._pending[table].append(frame)
                self._pending_rows += frame.height
            over = self._pending_rows >= self.max_pending_rows
            near = self._pending_rows >= self.warn_ratio * self.max_pending_rows
            if near and not self._warned:
                self._warned = True
                log.warning(
                    "%d rows waiting for %s (limit %d): %s",
                    self._pending_rows, self.path, self.max_pending_rows,
                    self._last_error or "the file is busy",
                )
        # Never while a flush holds rows (the next add spools instead): a failed flush puts
        # its rows back in memory, and rows in memory are written after every spool file,
        # so a spool file written meanwhile (newer rows) would lose to them.
        if over and self._flush_lock.acquire(blocking=False):
            try:
                self._spool()
            finally:
                self._flush_lock.release()

    def add_klines(self, batch: pl.DataFrame) -> None:
        self.add("klines", batch)

    def add_tickers(self, batch: pl.DataFrame) -> None:
        self.add("tickers", batch)

    def add_indicators(self, batch: pl.DataFrame) -> None:
        self.add("indicators", batch)

    @property
    def pending_rows(self) -> int:
        """Rows not yet in the database (in memory plus spooled to Parquet)."""
        return self._pending_rows + self._spooled_rows

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def status(self) -> WriterStatus:
        return WriterStatus(
            pending_rows=self._pending_rows + self._spooled_rows,
            spooled_rows=self._spooled_rows,
            written_rows=self._written,
            flushes=self._flushes,
            last_flush_ms=self._last_flush_ms,
            last_error=self._last_error,
            retry_in=max(0.0, self._retry_at - time.monotonic()),
            near_capacity=self._pending_rows >= self.warn_ratio * self.max_pending_rows,
        )

    # -- spooling -----------------------------------------------------------------
    def _spool(self) -> None:
        """Move queued frames to Parquet files so memory stays bounded."""
        with self._lock:
            taken = {t: frames for t, frames in self._pending.items() if frames}
            self._pending = {t: [] for t in TABLES}
            rows = self._pending_rows
            self._pending_rows = 0
            self._warned = False
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            for table in list(taken):
                self._spool_seq += 1
                name = f"{time.time_ns():020d}-{self._spool_seq:06d}-{table}.parquet"
                tmp = self.spool_dir / (name + ".tmp")
                try:
                    pl.concat(taken[table]).write_parquet(tmp)
                    tmp.replace(self.spool_dir / name)  # atomic: a crash leaves no half file
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                del taken[table]
        except (OSError, pl.exceptions.PolarsError) as exc:
            # a full disk fails the spool too: keep the rows in memory, over the limit,
            # rather than drop them (the caller is the event loop: never raise into it)
            left = sum(f.height for frames in taken.values() for f in frames)
            self._requeue(taken, left)
            self._spooled_rows += rows - left
            self._last_error = f"cannot spool to {self.spool_dir} either: {exc}"
            log.error("keeping %d rows in memory: %s", self.pending_rows, self._last_error)
            return
        self._spooled_rows += rows
        log.warning("spooled %d rows to %s while %s is busy", rows, self.spool_dir, self.path)

    def spooled(self, table: str) -> pl.DataFrame:
        """``table``'s rows spooled to Parquet and not in the database yet (a reader of
        the file alone misses them), oldest first. Read it before the database: a
        flush moves spooled rows into the database, never the other way."""
        frames = []
        for f in self._spool_files():
            if f.stem.rsplit("-", 1)[1] == table:
                with contextlib.suppress(FileNotFoundError):  # flushed meanwhile: in the database now
                    frames.append(pl.read_parquet(f))
        return pl.concat(frames) if frames else pl.DataFrame(schema=TABLES[table])

    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.parquet")) if self.spool_dir.exists() else []

    def _count_spooled(self) -> int:
        return sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in self._spool_files())

    def _recover_spool(self) -> None:
        # a .tmp is a spool file whose writer was killed mid-write: never renamed, so
        # never counted as written; its rows died with that process, like its memory
        if self.spool_dir.exists():
            for tmp in self.spool_dir.glob("*.parquet.tmp"):
                log.warning("removing %s, half-written by a process that was killed", tmp)
                tmp.unlink(missing_ok=True)
        self._spooled_rows = self._count_spooled()
        if self._spooled_rows:
            log.warning("found %d spooled rows from an earlier run in %s", self._spooled_rows, self.spool_dir)

    # -- flushing -----------------------------------------------------------------
    def flush(self, *, force: bool = False) -> int:
        """Write everything queued in one transaction; returns rows written.

        On a busy file returns 0, keeps the rows and schedules a retry (``force``
        ignores the backoff). Other database errors raise StoreError after the
        rows are put back.
        """
        if not force and time.monotonic() < self._retry_at:
            return 0
        with self._flush_lock:
            with self._lock:
                taken = self._pending
                self._pending = {t: [] for t in TABLES}
                rows = self._pending_rows
                self._pending_rows = 0
            spool = self._spool_files()
            if rows == 0 and not spool:
                return 0
            try:
                started = time.perf_counter()
                written = self._write(taken, spool)
            except BaseException as exc:
                self._requeue(taken, rows)
                self._failed(exc)
                if isinstance(exc, StoreLocked):
                    return 0
                raise
            for f in spool:
                f.unlink(missing_ok=True)
            if spool:
                self._spooled_rows = self._count_spooled()
            self._last_flush_ms = (time.perf_counter() - started) * 1000
            self._flushes += 1
            self._written += written
            if self._last_error:
                log.info("wrote %d rows to %s after: %s", written, self.path, self._last_error)
            self._last_error = None
            self._failures = 0
            self._retry_at = 0.0
            self._warned = False
            self._since_compact_check += 1
            if self.compact_every and self._since_compact_check >= self.compact_every:
                self._since_compact_check = 0
                try:
                    self._compact_locked(force=False)
                except StoreError as exc:  # the rows are written; compaction can wait
                    log.warning("compaction of %s skipped: %s", self.path, exc)
            return written

    def _requeue(self, taken: dict[str, list[pl.DataFrame]], rows: int) -> None:
        with self._lock:
            for table, frames in taken.items():
                self._pending[table][:0] = frames  # older rows first, so newer still win
            self._pending_rows += rows

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        delay = min(self.retry_cap, self.retry_base * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay * random.uniform(0.5, 1.0)
        message = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        if message != self._last_error:
            log.warning("cannot write to %s, keeping %d rows in memory: %s", self.path, self.pending_rows, message)
        self._last_error = message

    def _write(self, taken: dict[str, list[pl.DataFrame]], spool: list[Path]) -> int:
        g = gate(self.path)
        if not g.try_write():
            raise StoreLocked(f"{self.path} is being read in this process")
        try:
            con = open_file(self.path, read_only=False)
            try:
                if not self._migrated:
                    migrate(con, str(self.path))
                    if self.market is not None:
                        claim_market(con, self.market, self.path)
                    self._migrated = True
                batches = self._merge(taken, spool)
                con.execute("BEGIN")
                written = 0
                for table, frame in batches.items():
                    written += self._write_table(con, table, frame)
                con.execute("COMMIT")
                return written
            except duckdb.Error as exc:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise StoreError(f"writing to {self.path} failed: {exc}") from exc
            finally:
                con.close()
        finally:
            g.end_write()

    @staticmethod
    def _merge(taken: dict[str, list[pl.DataFrame]], spool: list[Path]) -> dict[str, pl.DataFrame]:
        parts: dict[str, list[pl.DataFrame]] = {t: [] for t in TABLES}
        for f in spool:  # spooled rows are older than anything still in memory
            parts[f.stem.rsplit("-", 1)[1]].append(pl.read_parquet(f))
        for table, frames in taken.items():
            parts[table].extend(frames)
        return {t: pl.concat(fs) for t, fs in parts.items() if fs}

    @staticmethod
    def _write_table(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> int:
        if table == "tickers":
            batch = frame.sort("event_time", maintain_order=True).unique("symbol", keep="last")
        else:
            batch = frame.unique(subset=KEY, keep="last", maintain_order=True)
        con.register("batch", batch.to_arrow())
        try:
            cols = ", ".join(f'"{c}"' for c in TABLES[table])
            if table == "tickers":
                updates = ", ".join(f'"{c}" = excluded."{c}"' for c in TABLES[table] if c != "symbol")
                con.execute(
                    f"INSERT INTO tickers ({cols}) SELECT {cols} FROM batch "
                    f"ON CONFLICT (symbol) DO UPDATE SET {updates} "
                    "WHERE excluded.event_time >= tickers.event_time"
                )
            else:
                lo, hi = batch["open_time"].min(), batch["open_time"].max()
                con.execute(
                    f"DELETE FROM {table} t USING batch b WHERE t.open_time BETWEEN ? AND ? "
                    "AND t.symbol = b.symbol AND t.interval = b.interval AND t.open_time = b.open_time",
                    [lo, hi],
                )
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM batch")
        finally:
            con.unregister("batch")
        return batch.height

    # -- compaction ---------------------------------------------------------------
    def compact(self, *, force: bool = True) -> bool:
        """Rewrite the file without its free blocks; returns True if it did.

        Why: every flush commits and checkpoints, and a checkpoint rewrites the
        table's last, partly filled row group into new blocks before it frees the
        old ones. The freed blocks are reused later, so the waste is bounded (about
        a row group, a few MB: a 1M-candle file fed minute by minute ends 6 % over
        a bulk load), but on a young file it is most of it: 1,000 minute-sized
        flushes left 94.6 bytes a candle against 57.7 for a bulk load of the same
        rows. DuckDB cannot hand back blocks in the middle of a file (VACUUM does
        not; CHECKPOINT only truncates free blocks at the end), so this copies
        every table into a new file (``COPY FROM DATABASE``, a bulk load) and
        renames it over the old one. A kill -9 at any point leaves either the old
        file or the new one whole, never a mix. ``force=False`` only compacts when
        free blocks exceed ``compact_free_ratio`` of a file under
        ``compact_max_bytes``.
        """
        with self._flush_lock:
            return self._compact_locked(force=force)

    def _compact_locked(self, *, force: bool) -> bool:
        if not self.path.exists():
            return False
        g = gate(self.path)
        if not g.try_write():
            return False  # being read in this process: next time
        try:
            try:
                con = open_file(self.path, read_only=False)
            except StoreLocked:
                return False  # another process is reading: next time
            fresh = self.path.with_name(self.path.name + ".compact")
            try:
                total, free, block = con.execute(
                    "SELECT total_blocks, free_blocks, block_size FROM pragma_database_size()"
                ).fetchall()[0]
                wanted = free > self.compact_free_ratio * total and total * block <= self.compact_max_bytes
                if not (force or wanted):
                    return False
                for stale in (fresh, fresh.with_name(fresh.name + ".wal")):
                    stale.unlink(missing_ok=True)  # left by a run killed mid-compaction
                name = con.execute("SELECT current_database()").fetchall()[0][0]
                con.execute(f"ATTACH '{_quoted(fresh)}' AS compact_target")
                con.execute(f'COPY FROM DATABASE "{name}" TO compact_target')
                con.execute("CHECKPOINT compact_target")
                con.execute("DETACH compact_target")
            except duckdb.Error as exc:
                raise StoreError(f"compacting {self.path} failed: {exc}") from exc
            finally:
                con.close()
            if fresh.with_name(fresh.name + ".wal").exists() or self.path.with_name(self.path.name + ".wal").exists():
                # a WAL beside either file belongs to it: renaming would pair it with the wrong one
                fresh.unlink(missing_ok=True)
                raise StoreError(f"compacting {self.path}: a write-ahead log was left; kept the file as it was")
            os.replace(fresh, self.path)  # atomic: readers see the old file or the new one
            self.compactions += 1
            log.info("compacted %s: %d of %d blocks were free", self.path, free, total)
            return True
        finally:
            g.end_write()


    # -- lifecycle ----------------------------------------------------------------
    async def run(self, every: float = 1.0) -> None:
        """Flush every ``every`` s in a worker thread until cancelled, then flush once more."""
        try:
            while True:
                await asyncio.sleep(every)
                await asyncio.to_thread(self.flush)
        finally:
            await asyncio.shield(asyncio.to_thread(self.close))

    def close(self, timeout: float = 10.0) -> int:
        """Final flush, retrying while the file is busy for up to ``timeout`` s.

        Rows that still cannot be written are spooled to Parquet (and loaded by the
        next writer on this file), never dropped.
        """
        deadline = time.monotonic() + timeout
        written = 0
        while True:
            written += self.flush(force=True)
            if self._pending_rows == 0 and not self._spool_files():
                return written
            if time.monotonic() >= deadline:
                if self._pending_rows:
                    with self._flush_lock:  # a flush abandoned by a cancelled caller may still run
                        self._spool()
                log.warning("closed with %d rows spooled in %s: %s", self.pending_rows, self.spool_dir, self._last_error)
                return written
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _quoted(path: Path) -> str:
    """``path`` as the body of a SQL string literal (ATTACH takes no bound parameter)."""
    return str(path).replace("'", "''")
