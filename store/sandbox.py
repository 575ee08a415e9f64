"""SQL typed into a web page, run safely against the market file.

The Data page of the dashboard (and anything else that runs SQL it did not write)
goes through here. Every query gets a fresh sandbox:

- an in-memory DuckDB with the market file ATTACHed READ_ONLY and made the default
  catalog, so writes to the file are impossible whatever the statement says; the
  in-memory main catalog is a separate instance, so none of these settings leak
  into the app's own readers of the same file;
- ``memory_limit`` and ``threads`` capped so a heavy query cannot starve the feed,
  then ``enable_external_access = false`` (no files, URLs, ATTACH, COPY, EXPORT,
  INSTALL/LOAD) and ``lock_configuration = true`` (no SET/RESET/PRAGMA changes);
- exactly one statement, of type SELECT or EXPLAIN (``extract_statements`` sees
  through a CTE that hides a DELETE); a type check alone would not be enough,
  which is why the two layers above exist;
- a time limit: a timer interrupts the query, and the file is closed at once, so a
  slow query holds the file (and makes the writer queue rows) for at most that long;
- a row limit on what comes back (the limit is pushed into the plan).

Errors come back as ``QueryError`` / ``SandboxRefused`` / ``QueryTimeout`` carrying
DuckDB's own words, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb
import polars as pl

from store.db import QueryError, StoreError, StoreLocked, gate, resolve_db

ALLOWED = {duckdb.StatementType.SELECT: "SELECT", duckdb.StatementType.EXPLAIN: "EXPLAIN"}
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_ROWS = 10_000
MEMORY_LIMIT = "2GB"
THREADS = 1  # the feed keeps the other core


class SandboxRefused(StoreError):
    """The statement is not allowed from the page (writes, files, settings, ...)."""


class QueryTimeout(QueryError):
    """The query ran past its time limit and was cancelled."""


@dataclasses.dataclass(frozen=True)
class Result:
    """What a sandboxed query returned."""

    frame: pl.DataFrame
    truncated: bool  # more rows existed than max_rows
    elapsed_ms: float


def check(sql: str) -> str:
    """The one allowed statement in ``sql``; SandboxRefused says why otherwise.

    Parsing needs no database, so this runs before the file is opened.
    """
    if not sql or not sql.strip():
        raise SandboxRefused("type a query, e.g. SELECT * FROM klines LIMIT 10")
    try:
        statements = duckdb.connect(":memory:").extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(_words(exc)) from exc
    if len(statements) != 1:
        raise SandboxRefused(f"one statement at a time, please ({len(statements)} found)")
    kind = statements[0].type
    if kind not in ALLOWED:
        name = str(kind).rsplit(".", 1)[-1]
        raise SandboxRefused(
            f"{name} statements are not allowed here: the page runs read-only queries "
            "(SELECT, WITH ... SELECT, FROM ..., SHOW, DESCRIBE, SUMMARIZE, EXPLAIN). "
            "Writing, ATTACH, COPY, EXPORT, INSTALL/LOAD, settings and file access are refused"
        )
    return statements[0].query


def run(
    sql: str,
    params: Sequence[Any] | dict[str, Any] | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_rows: int = DEFAULT_MAX_ROWS,
    lock_timeout: float = 10.0,
) -> Result:
    """Run one read-only statement in a fresh sandbox; at most ``max_rows`` rows back."""
    check(sql)
    with session(db, lock_timeout=lock_timeout) as s:
        return s.run(sql, params, timeout=timeout, max_rows=max_rows)


class Session:
    """One open sandbox: several checked statements on one read-only open of the file.

    Each statement gets its own time limit; keep the block short, since the file
    stays open (and the writer queues rows) until it ends.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def run(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> Result:
        statement = check(sql)
        started = time.perf_counter()
        timer = threading.Timer(timeout, self.con.interrupt)
        timer.start()
        try:
            rel = self.con.sql(statement, params=params)
            frame = pl.DataFrame() if rel is None else rel.limit(max_rows + 1).pl()
        except duckdb.InterruptException as exc:
            raise QueryTimeout(
                f"the query ran longer than {timeout:g} s and was cancelled; narrow it "
                "(a WHERE on symbol and open_time, a LIMIT) or run it with python -m store.sql"
            ) from exc
        except duckdb.PermissionException as exc:
            raise SandboxRefused(f"refused: {_words(exc)} (the page cannot read files or URLs)") from exc
        except duckdb.Error as exc:
            raise QueryError(_words(exc)) from exc
        finally:
            timer.cancel()
        truncated = frame.height > max_rows
        return Result(frame.head(max_rows), truncated, (time.perf_counter() - started) * 1000)


@contextlib.contextmanager
def session(db: str | os.PathLike[str] | None = None, *, lock_timeout: float = 10.0) -> Iterator[Session]:
    """Open the file once in a sandbox for a few statements (see ``Session``)."""
    with _sandbox(resolve_db(db), lock_timeout) as con:
        yield Session(con)


class _sandbox:
    """Open the file read-only inside a locked-down in-memory DuckDB; close on exit."""

    def __init__(self, path, lock_timeout: float) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self.gate = gate(path)

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        if not self.path.exists():
            raise StoreError(f"no database at {self.path} yet: start the app or an import first")
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        while True:
            if not self.gate.read(deadline):
                raise StoreLocked(f"{self.path} stayed busy with our own writer for {self.lock_timeout:g} s")
            try:
                self.con = _open(self.path)
                return self.con
            except StoreLocked:
                self.gate.end_read()
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
            except BaseException:
                self.gate.end_read()
                raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.con.close()
        finally:
            self.gate.end_read()


def _open(path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    try:
        con.execute("ATTACH ? AS market (READ_ONLY)", [str(path)])
    except duckdb.Error as exc:
        con.close()
        if isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower():
            raise StoreLocked(f"{path} is held by another process") from exc
        raise StoreError(f"cannot open {path}: {_words(exc)}") from exc
    con.execute("USE market")
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute(f"SET threads = {THREADS}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _words(exc: duckdb.Error) -> str:
    """DuckDB's own message, first lines only (no traceback, no hints list)."""
    text = str(exc).strip()
    return text.split("\n\nLINE")[0].strip()


__all__ = ["DEFAULT_MAX_ROWS", "DEFAULT_TIMEOUT", "QueryTimeout", "Result", "SandboxRefused", "Session", "check", "run",
           "session"]
