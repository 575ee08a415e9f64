"""store/db.py: schema, migration, read-only readers that retry on the lock."""

from __future__ import annotations

import threading
import time

import duckdb
import polars as pl
import pytest

import store
from store.db import default_db_path, migrate
from tests.conftest import random_klines

CONTRACT = {
    "klines": ["symbol", "interval", "open_time", "close_time", "open", "high", "low", "close",
               "volume", "quote_volume", "trades", "taker_buy_volume", "taker_buy_quote_volume"],
    "tickers": ["symbol", "event_time", "last_price", "price_change", "price_change_pct",
                "open_price", "high_price", "low_price", "volume", "quote_volume", "trades"],
    "indicators": ["symbol", "interval", "open_time", "rsi", "stoch_k", "stoch_d", "signal"],
}


def test_schema_is_created_on_first_flush_with_documented_columns(tmp_path):
    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    w.add_klines(random_klines(["BTCUSDT"], 3))
    assert w.flush() == 3
    for table, cols in CONTRACT.items():
        got = store.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
            [table], db=db,
        )["column_name"].to_list()
        assert got == cols
    types = dict(store.query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'klines'", db=db
    ).iter_rows())
    assert types["open_time"] == "TIMESTAMP" and types["close"] == "DOUBLE" and types["trades"] == "BIGINT"


def test_old_file_is_migrated_not_rejected(tmp_path):
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    # an earlier layout: fewer kline columns, no indicators table, no version table
    con.execute("""CREATE TABLE klines (symbol VARCHAR, interval VARCHAR, open_time TIMESTAMP,
                   close_time TIMESTAMP, open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE)""")
    con.execute("INSERT INTO klines VALUES ('BTCUSDT', '1m', '2025-01-01', '2025-01-01 00:00:59.999', 1, 2, 0.5, 1.5, 10)")
    changes = migrate(con, "old")
    assert "added klines.taker_buy_quote_volume DOUBLE" in changes
    assert "created table indicators" in changes
    assert migrate(con, "old") == []  # idempotent
    con.close()
    w = store.Writer(db)
    w.add_klines(random_klines(["ETHUSDT"], 2))
    assert w.flush() == 2
    got = store.query("SELECT symbol, close, trades FROM klines ORDER BY symbol, open_time", db=db)
    assert got.row(0) == ("BTCUSDT", 1.5, None)
    assert got.height == 3
    assert store.query("SELECT max(version) AS v FROM schema_version", db=db)["v"][0] == 1


def test_query_binds_parameters_and_returns_polars(tmp_path):
    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    w.add_klines(random_klines(["BTCUSDT", "ETHUSDT"], 10))
    w.flush()
    got = store.query("SELECT count(*) AS n FROM klines WHERE symbol = ?", ["ETHUSDT"], db=db)
    assert isinstance(got, pl.DataFrame) and got["n"][0] == 10
    # a quote in a parameter is data, not SQL
    assert store.query("SELECT count(*) AS n FROM klines WHERE symbol = ?", ["x' OR '1'='1"], db=db)["n"][0] == 0
    with pytest.raises(store.QueryError, match="nope"):
        store.query("SELECT nope FROM klines", db=db)


def test_readers_cannot_write(tmp_path):
    db = tmp_path / "m.duckdb"
    w = store.Writer(db)
    w.add_klines(random_klines(["BTCUSDT"], 1))
    w.flush()
    with pytest.raises(store.QueryError, match="read-only"):
        store.query("DELETE FROM klines", db=db)
    assert store.query("SELECT count(*) AS n FROM klines", db=db)["n"][0] == 1


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(store.StoreError, match="no database at .* store.ingest"):
        store.query("SELECT 1", db=tmp_path / "absent.duckdb")


def test_reader_waits_for_another_process(tmp_path, hold_file):
    db = tmp_path / "m.duckdb"
    duckdb.connect(str(db)).close()
    holder = hold_file(db)
    t0 = time.monotonic()  # before the timer starts: its 1 s cannot begin before t0, however slow the box
    threading.Timer(1.0, holder.release).start()
    assert store.query("SELECT 42 AS x", db=db)["x"][0] == 42
    assert time.monotonic() - t0 >= 0.9


def test_reader_gives_up_with_a_plain_message(tmp_path, hold_file):
    db = tmp_path / "m.duckdb"
    duckdb.connect(str(db)).close()
    hold_file(db)
    with pytest.raises(store.StoreLocked, match=r"held by process \d+ .*stayed held for 0.5 s"):
        store.query("SELECT 1", db=db, timeout=0.5)


def test_market_db_env_overrides_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MARKET_DB", str(tmp_path / "env.duckdb"))
    assert default_db_path() == tmp_path / "env.duckdb"
    w = store.Writer()
    assert w.path == tmp_path / "env.duckdb"
    monkeypatch.delenv("MARKET_DB")
    assert default_db_path() == store.DEFAULT_DB
