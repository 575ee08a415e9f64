"""store/browse.py: server-side filter, sort, paginate and candle lookup on a real file."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import store
from store import browse
from store.browse import Filter
from tests.conftest import random_klines

START = dt.datetime(2026, 1, 1)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("browse") / "m.duckdb"
    w = store.Writer(path, market="binance-futures")
    frame = random_klines(["BTCUSDT", "ETHUSDT", "SOLUSDT"], 400, start=START)
    w.add_klines(frame)
    w.flush()
    return path, frame


def test_tables_lists_schema(db):
    path, _ = db
    t = browse.tables(db=path)
    assert {"klines", "tickers", "indicators", "meta", "empty_ranges"} <= set(t["name"])
    assert t.filter(pl.col("name") == "klines")["rows"].item() == 1200


def test_page_filters_sorts_and_counts_on_server(db):
    path, frame = db
    p = browse.page(
        "klines",
        filters=[Filter("symbol", "=", "ETHUSDT"), Filter("close", ">", 100.0)],
        order_by="close", descending=True, offset=5, limit=10, db=path,
    )
    want = frame.filter((pl.col("symbol") == "ETHUSDT") & (pl.col("close") > 100)).sort("close", descending=True)
    assert p.total == want.height
    assert p.frame["close"].to_list() == want["close"][5:15].to_list()
    assert p.elapsed_ms > 0


@pytest.mark.parametrize("op,value,expr", [
    ("contains", "sol", pl.col("symbol").str.contains("SOL")),
    ("starts with", "bt", pl.col("symbol").str.starts_with("BT")),
    ("!=", "BTCUSDT", pl.col("symbol") != "BTCUSDT"),
    ("is not null", None, pl.col("symbol").is_not_null()),
    ("is null", None, pl.col("symbol").is_null()),
])
def test_operators(db, op, value, expr):
    path, frame = db
    assert browse.page("klines", filters=[Filter("symbol", op, value)], db=path).total == frame.filter(expr).height


def test_bad_identifiers_are_refused_by_name(db):
    path, _ = db
    with pytest.raises(ValueError, match="no table or view 'klines; DROP TABLE klines'"):
        browse.page("klines; DROP TABLE klines", db=path)
    with pytest.raises(ValueError, match="no column"):
        browse.page("klines", order_by='close" DESC; --', db=path)
    with pytest.raises(ValueError, match="unknown operator"):
        browse.page("klines", filters=[Filter("close", "LIKE", "%")], db=path)


def test_candles_range_and_indicators_columns(db):
    path, frame = db
    p = browse.candles("ethusdt", "1m", START + dt.timedelta(minutes=10), START + dt.timedelta(minutes=70), db=path)
    assert p.total == 60 and p.frame.height == 60
    assert {"rsi", "stoch_k", "stoch_d", "signal"} <= set(p.frame.columns)
    want = frame.filter(pl.col("symbol") == "ETHUSDT")["close"][10:70].to_list()
    assert p.frame["close"].to_list() == want


def test_export_is_bounded(db):
    path, _ = db
    rows, more = browse.export("klines", max_rows=100, db=path)
    assert rows.height == 100 and more
    rows, more = browse.export("klines", filters=[Filter("symbol", "=", "BTCUSDT")], max_rows=1000, db=path)
    assert rows.height == 400 and not more


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.text(max_size=20), op=st.sampled_from([*browse.OPERATORS, "~", ""]), value=st.text(max_size=20))
def test_arbitrary_filters_never_crash(db, column, op, value):
    path, _ = db
    try:
        p = browse.page("klines", filters=[Filter(column, op, value)], limit=5, db=path)
        assert p.frame.height <= 5
    except (ValueError, store.StoreError) as exc:
        assert str(exc)


def test_coverage_and_gaps(tmp_path):
    path = tmp_path / "g.duckdb"
    frame = random_klines(["BTCUSDT", "ETHUSDT"], 300, start=START)
    holed = frame.filter(~((pl.col("symbol") == "ETHUSDT") & pl.col("open_time").dt.minute().is_in([5, 6, 7])))
    w = store.Writer(path, market="binance-futures")
    w.add_klines(holed)
    w.flush()
    cov = browse.coverage(db=path)
    assert cov.select("symbol", "interval", "candles", "missing").rows() == [
        ("BTCUSDT", "1m", 300, 0), ("ETHUSDT", "1m", 285, 15)]
    g = browse.gaps("ETHUSDT", "1m", db=path)
    assert g.height == 5 and g["missing"].to_list() == [3] * 5
    assert g["gap_start"][0] == START + dt.timedelta(minutes=5)
    assert not g["at_exchange"].any()
    # a range REST confirmed empty turns that gap into "missing at the exchange"
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("INSERT INTO empty_ranges VALUES ('ETHUSDT', '1m', ?, ?, now())",
                [START + dt.timedelta(minutes=5), START + dt.timedelta(minutes=8)])
    con.close()
    assert browse.gaps("ETHUSDT", "1m", db=path)["at_exchange"].to_list() == [True, False, False, False, False]
    with pytest.raises(ValueError, match="unknown interval"):
        browse.gaps("ETHUSDT", "7m", db=path)
