"""store/sandbox.py: read-only SQL from the page, on a real file, with real escapes tried."""

from __future__ import annotations

import hashlib
import threading
import time

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import store
from store import sandbox
from store.sandbox import QueryTimeout, SandboxRefused
from tests.conftest import random_klines

ESCAPES = [
    # writes, also hidden in a CTE or behind a SELECT
    "DELETE FROM klines",
    "WITH x AS (SELECT 1) DELETE FROM klines",
    "UPDATE klines SET close = 0",
    "INSERT INTO klines SELECT * FROM klines",
    "DROP TABLE klines",
    "CREATE TABLE t AS SELECT 1",
    "CREATE TEMP TABLE t AS SELECT 1",
    "ALTER TABLE klines ADD COLUMN x INT",
    "TRUNCATE klines",
    "SELECT * FROM query('DELETE FROM klines')",
    "SELECT 1; DELETE FROM klines",
    # other files and the network
    "ATTACH '/tmp/other.duckdb' AS o",
    "DETACH market",
    "COPY klines TO '/tmp/stolen.csv'",
    "EXPORT DATABASE '/tmp/stolen'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_parquet('/tmp/*.parquet')",
    "SELECT * FROM read_json_auto('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'http://127.0.0.1:9/x.csv'",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    # settings
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET threads",
    "PRAGMA threads = 8",
    "SET memory_limit = '100GB'",
    "CALL pragma_version()",
    "USE memory",
    "CHECKPOINT",
    "VACUUM",
]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "m.duckdb"
    w = store.Writer(path, market="binance-futures")
    w.add_klines(random_klines(["BTCUSDT", "ETHUSDT"], 500))
    w.flush()
    return path


def test_select_returns_rows(db):
    r = sandbox.run("SELECT symbol, count(*) AS n FROM klines GROUP BY symbol ORDER BY symbol", db=db)
    assert r.frame.to_dicts() == [{"symbol": "BTCUSDT", "n": 500}, {"symbol": "ETHUSDT", "n": 500}]
    assert not r.truncated and r.elapsed_ms > 0


def test_bound_parameters(db):
    r = sandbox.run("SELECT count(*) AS n FROM klines WHERE symbol = ?", ["ETHUSDT"], db=db)
    assert r.frame.item() == 500


def test_row_limit_pushed_down(db):
    r = sandbox.run("SELECT * FROM klines ORDER BY open_time", db=db, max_rows=7)
    assert r.frame.height == 7 and r.truncated
    r = sandbox.run("SELECT * FROM klines WHERE symbol = 'BTCUSDT' LIMIT 7", db=db, max_rows=7)
    assert r.frame.height == 7 and not r.truncated


@pytest.mark.parametrize("sql", ESCAPES)
def test_escape_refused_and_file_unchanged(db, sql):
    before = digest(db)
    with pytest.raises(store.StoreError) as info:
        sandbox.run(sql, db=db)
    # refusals are worded for a person: no traceback, no Python exception names
    message = str(info.value)
    assert "Traceback" not in message and message
    assert digest(db) == before
    assert store.query("SELECT count(*) FROM klines", db=db).item() == 1000


def test_refusal_names_the_statement(db):
    with pytest.raises(SandboxRefused, match="DELETE statements are not allowed"):
        sandbox.run("WITH x AS (SELECT 1) DELETE FROM klines", db=db)
    with pytest.raises(SandboxRefused, match="file system operations are disabled"):
        sandbox.run("SELECT * FROM read_csv('/etc/passwd')", db=db)
    with pytest.raises(SandboxRefused, match="one statement at a time"):
        sandbox.run("SELECT 1; SELECT 2", db=db)


def test_duckdb_errors_are_plain(db):
    with pytest.raises(store.QueryError, match="Binder Error: Referenced column \"nope\" not found") as info:
        sandbox.run("SELECT nope FROM klines", db=db)
    assert "Traceback" not in str(info.value)
    with pytest.raises(store.QueryError, match="syntax error"):
        sandbox.run("SELEC 1", db=db)


def test_timeout_cancels(db):
    with pytest.raises(QueryTimeout, match="longer than 0.3 s"):
        sandbox.run("SELECT count(*) FROM range(1000000000000)", db=db, timeout=0.3)
    # the sandbox is gone: the writer can open the file again
    w = store.Writer(db, market="binance-futures")
    w.add_klines(random_klines(["SOLUSDT"], 5))
    assert w.flush() == 5


def test_settings_do_not_leak_into_app_readers(db):
    """The sandbox's locked configuration lives in its own instance, not the app's readers."""
    with store.reader(db) as con:
        sandbox.run("SELECT 1", db=db)
        con.execute("SET threads = 2")  # would fail if lock_configuration had leaked


def test_slow_query_holds_writer_only_until_its_limit(db):
    """A long query makes the writer queue rows; after the limit they drain, none lost."""
    w = store.Writer(db, market="binance-futures", retry_base=0.01, retry_cap=0.05)
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            # long enough that a descheduled main thread still finds it holding the file
            sandbox.run("SELECT count(*) FROM range(1000000000000)", db=db, timeout=5)
        except QueryTimeout:
            pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    fresh = random_klines(["XRPUSDT"], 60)
    wait_for_sync(lambda: sandbox_holds(db), timeout=30)
    w.add_klines(fresh)
    assert w.flush(force=True) == 0 and w.pending_rows == 60  # held: queued, not lost
    t.join(60)
    assert not errors
    wait_for_sync(lambda: w.flush(force=True) or w.pending_rows == 0, timeout=30)
    assert w.pending_rows == 0
    got = store.query("SELECT * FROM klines WHERE symbol = 'XRPUSDT' ORDER BY open_time", db=db)
    assert got.height == 60
    assert got["close"].to_list() == fresh["close"].to_list()


def wait_for_sync(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def sandbox_holds(db) -> bool:
    g = store.db.gate(db)
    return g._readers > 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_arbitrary_text_never_crashes_or_writes(db, text):
    before = digest(db)
    try:
        r = sandbox.run(text, db=db, timeout=2, max_rows=10)
        assert isinstance(r.frame, pl.DataFrame)
    except store.StoreError as exc:
        assert str(exc)
    assert digest(db) == before


def test_missing_file(tmp_path):
    with pytest.raises(store.StoreError, match="no database"):
        sandbox.run("SELECT 1", db=tmp_path / "none.duckdb")


def test_check_needs_no_file():
    assert sandbox.check("  SELECT 1  ").strip().startswith("SELECT 1")
    with pytest.raises(SandboxRefused):
        sandbox.check("")
