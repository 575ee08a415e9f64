"""Opening the DuckDB file: paths, errors, schema, and short-lived readers.

DuckDB lets one process write a file *or* many processes read it, and a second
process cannot even open the file read-only while a writer holds it. So nobody
here keeps the file open: the writer (store/writer.py) opens it per flush, and
readers open it read-only, query, close, and retry while someone else holds it.
Inside one process a read-only and a read-write connection to the same file
cannot coexist either ("different configuration"), so a process-wide
readers/writer gate per file serialises our own flushes against our own reads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl

log = logging.getLogger("store")

SCHEMA_VERSION = 1
DEFAULT_DB = Path(__file__).resolve().parent / "market.duckdb"
T = TypeVar("T")


class StoreError(Exception):
    """A problem with the database file, worded for the person who must fix it."""


class StoreLocked(StoreError):
    """Another process (or our own writer) holds the file right now; try again."""


class QueryError(StoreError):
    """The SQL itself failed (syntax, unknown column, ...)."""


class MarketMismatch(StoreError):
    """The file holds candles of another market (spot vs futures, ...)."""


#: the market assumed for files written before markets were recorded
LEGACY_MARKET = "binance-futures"


def default_db_path() -> Path:
    """``$MARKET_DB`` if set, else ``store/market.duckdb``; read at call time."""
    env = os.environ.get("MARKET_DB")
    return Path(env).expanduser() if env else DEFAULT_DB


def resolve_db(db: str | os.PathLike[str] | None) -> Path:
    return Path(db).expanduser() if db is not None else default_db_path()


def _is_lock_error(exc: duckdb.Error) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def _holder(exc: duckdb.Error) -> str:
    m = re.search(r"held in (.+?) \(PID (\d+)\)", str(exc))
    return f"process {m.group(2)} ({m.group(1)})" if m else "another process"


class _Gate:
    """Readers/writer gate for one file inside this process (never blocks the writer)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    def try_write(self) -> bool:
        with self._cond:
            if self._readers or self._writing:
                return False
            self._writing = True
            return True

    def end_write(self) -> None:
        with self._cond:
            self._writing = False
            self._cond.notify_all()

    def read(self, deadline: float) -> bool:
        with self._cond:
            while self._writing:
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    return False
            self._readers += 1
            return True

    def end_read(self) -> None:
        with self._cond:
            self._readers -= 1
            self._cond.notify_all()


# Process-wide by nature: DuckDB's one-configuration-per-file rule is per process.
_gates: dict[Path, _Gate] = {}
_gates_lock = threading.Lock()


def gate(path: Path) -> _Gate:
    key = path.resolve()
    with _gates_lock:
        return _gates.setdefault(key, _Gate())


def open_file(path: Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """One attempt to open ``path``; lock conflicts become StoreLocked."""
    if read_only and not path.exists():
        raise StoreError(
            f"no database at {path} yet: start the app or `python -m store.ingest` "
            "to create it, or point --db / MARKET_DB at an existing file"
        )
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        if _is_lock_error(exc):
            raise StoreLocked(f"{path} is held by {_holder(exc)}") from exc
        raise StoreError(f"cannot open {path}: {exc}") from exc


def schema_sql() -> str:
    return resources.files("store").joinpath("schema.sql").read_text()


def _statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _columns(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str]]:
    rows = con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
    ).fetchall()
    out: dict[str, dict[str, str]] = {}
    for table, column, dtype in rows:
        out.setdefault(table, {})[column] = dtype
    return out


def migrate(con: duckdb.DuckDBPyConnection, name: str = "database") -> list[str]:
    """Create missing tables and add columns an older file lacks; returns what changed.

    The expected shape is schema.sql itself, materialised in memory, so adding a
    column to schema.sql is the whole migration for additive changes. Anything
    else (a rename, a type change) gets a numbered step here and a version bump.
    """
    ref = duckdb.connect(":memory:")
    try:
        for stmt in _statements(schema_sql()):
            ref.execute(stmt)
        expected = _columns(ref)
    finally:
        ref.close()
    changes: list[str] = []
    existing = _columns(con)
    for stmt in _statements(schema_sql()):
        con.execute(stmt)
    for table, cols in expected.items():
        if table not in existing:
            changes.append(f"created table {table}")
            continue
        for column, dtype in cols.items():
            if column not in existing[table]:
                con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {dtype}')
                changes.append(f"added {table}.{column} {dtype}")
    if stored_market(con) is None and con.execute("SELECT count(*) FROM (SELECT 1 FROM klines LIMIT 1)").fetchone()[0]:
        # Files from before markets were recorded were all written by the futures default.
        con.execute("INSERT INTO meta VALUES ('market', ?)", [LEGACY_MARKET])
        changes.append(f"recorded market {LEGACY_MARKET} for existing candles")
    current = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    if current is None or current < SCHEMA_VERSION:
        con.execute(
            "INSERT INTO schema_version VALUES (?, ?)",
            [SCHEMA_VERSION, dt.datetime.now(dt.UTC).replace(tzinfo=None)],
        )
    if changes:
        log.info("schema of %s: %s", name, "; ".join(changes))
    return changes


def stored_market(con: duckdb.DuckDBPyConnection) -> str | None:
    """The market recorded in the file, or None for a file with no candles yet."""
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'market'").fetchone()
    except duckdb.CatalogException:
        return None
    return row[0] if row else None


def claim_market(con: duckdb.DuckDBPyConnection, market: str, path: Path | str = "the database") -> None:
    """Record ``market`` in a file that has none; refuse a file that holds another one.

    Call it on a read-write connection before writing candles.
    """
    held = stored_market(con)
    if held is None:
        con.execute("INSERT OR REPLACE INTO meta VALUES ('market', ?)", [market])
    elif held != market:
        raise MarketMismatch(
            f"{path} holds {held} candles, not {market}: one file holds one market, so "
            f"{held} and {market} prices never mix. Use another file for {market} "
            f"(--db PATH or MARKET_DB), or --exchange {held} for this one"
        )


def prepare(
    db: str | os.PathLike[str] | None, market: str | None = None, *, timeout: float = 30.0
) -> Path:
    """Check at start, before any network traffic, that ``db`` can be written.

    Creates the file and schema if missing, migrates an older one, and records or
    checks ``market``. A file that is not a DuckDB database, a folder that cannot be
    written, or a file of another market raises StoreError with a message a user
    can act on; a file held by another process is waited for up to ``timeout`` s
    (the app holds it only for its flushes).
    """
    path = resolve_db(db)
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a database file: give a file path with --db or MARKET_DB")
    if path.exists() and path.stat().st_size and not _looks_like_duckdb(path):
        raise StoreError(
            f"{path} is not a DuckDB database (its first bytes say otherwise): "
            "give a new path or an existing market database with --db or MARKET_DB"
        )
    if not os.access(path if path.exists() else _existing_parent(path), os.W_OK):
        raise StoreError(f"cannot write {path}: permission denied; give a writable path with --db or MARKET_DB")

    def setup(con: duckdb.DuckDBPyConnection) -> Path:
        migrate(con, str(path))
        if market is not None:
            claim_market(con, market, path)
        return path

    return write(path, setup, failed=f"cannot use {path}", timeout=timeout)


def write(path: Path, work: Callable[[duckdb.DuckDBPyConnection], T], *, failed: str, timeout: float = 30.0) -> T:
    """``work(con)`` on a read-write connection to ``path``, closed after; its result.

    Waits up to ``timeout`` s while another process or our own writer holds the
    file (StoreLocked after that); a duckdb.Error becomes StoreError("{failed}: ...").
    For short one-off writes; the batched writer is store.Writer.
    """
    deadline = time.monotonic() + timeout
    g = gate(path)
    delay = 0.02
    while True:
        if g.try_write():
            try:
                con = open_file(path, read_only=False)
                try:
                    return work(con)
                except duckdb.Error as exc:
                    raise StoreError(f"{failed}: {exc}") from exc
                finally:
                    con.close()
            except StoreLocked:
                if time.monotonic() > deadline:
                    raise
            finally:
                g.end_write()
        elif time.monotonic() > deadline:
            raise StoreLocked(f"{path} stayed busy in this process for {timeout:g} s")
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 0.5)


def _looks_like_duckdb(path: Path) -> bool:
    # DuckDB's main header carries the magic bytes "DUCK" at offset 8.
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return True  # let duckdb say what is wrong
    return len(head) < 12 or head[8:12] == b"DUCK"


def _existing_parent(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


@contextlib.contextmanager
def reader(
    db: str | os.PathLike[str] | None = None, *, timeout: float = 30.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection that is closed on exit; waits up to ``timeout`` s for a writer.

    Keep the block short: while it is open, the writer cannot flush (it keeps its
    rows in memory meanwhile, so nothing is lost, but the UI shows rows pending).
    """
    path = resolve_db(db)
    deadline = time.monotonic() + timeout
    g = gate(path)
    delay = 0.01
    while True:
        if not g.read(deadline):
            raise StoreLocked(f"{path} stayed busy with our own writer for {timeout:g} s")
        try:
            con = open_file(path, read_only=True)
            break
        except StoreLocked as exc:
            g.end_read()
            if time.monotonic() + delay > deadline:
                raise StoreLocked(
                    f"{exc} and stayed held for {timeout:g} s. A flush takes well under a "
                    "second, so something keeps the file open: close other DuckDB "
                    "sessions on it (a notebook holding store.reader(), the duckdb CLI), "
                    "or raise the timeout"
                ) from exc
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.25)
        except BaseException:
            g.end_read()
            raise
    try:
        yield con
    finally:
        con.close()
        g.end_read()


def query(
    sql: str,
    params: Sequence[Any] | dict[str, Any] | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> pl.DataFrame:
    """Run one read-only query with bound parameters and return a polars DataFrame.

    >>> store.query("SELECT * FROM klines WHERE symbol = ? ORDER BY open_time", ["BTCUSDT"])
    """
    with reader(db, timeout=timeout) as con:
        try:
            rel = con.sql(sql, params=params)
            return pl.DataFrame() if rel is None else rel.pl()
        except duckdb.Error as exc:
            raise QueryError(f"{type(exc).__name__}: {exc}") from exc


#: The file `make demo` (the app with --demo) writes its synthetic market to, apart from real data.
DEMO_DB = DEFAULT_DB.with_name("demo.duckdb")


def notebook_db() -> tuple[Path, str]:
    """The file a notebook should read, and why, in the words the notebook prints.

    ``$MARKET_DB`` when set (even if that file is missing: the user chose it);
    else ``store/market.duckdb`` when it exists; else ``store/demo.duckdb`` when
    `make demo` has written it; else ``store/market.duckdb`` (missing: the
    notebook then says how to fill it).
    """
    if os.environ.get("MARKET_DB"):
        return default_db_path(), "from MARKET_DB"
    if DEFAULT_DB.exists():
        return DEFAULT_DB, "default"
    if DEMO_DB.exists():
        return DEMO_DB, f"the demo's file: there is no {DEFAULT_DB.name} yet"
    return DEFAULT_DB, "default, not created yet"
