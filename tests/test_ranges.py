"""store/ranges.py: missing ranges from a real DuckDB file, empty_ranges, range arithmetic."""

from __future__ import annotations

import datetime as dt

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

import store
from store import ranges
from tests.conftest import random_klines

MINUTE = 60_000
T0 = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


def at(i: int) -> int:
    return T0 + i * MINUTE


def make(db, cut: dict[str, list[tuple[int, int]]], n: int = 100) -> None:
    frame = random_klines(list(cut), n).with_columns(i=pl.int_range(0, n).over("symbol"))
    for sym, holes in cut.items():
        for a, b in holes:
            frame = frame.filter(~((pl.col("symbol") == sym) & pl.col("i").is_between(a, b - 1)))
    w = store.Writer(db, market="binance-futures")
    w.add_klines(frame.drop("i"))
    w.close()


def test_holes_head_tail_and_empty_ranges(tmp_path):
    db = tmp_path / "r.duckdb"
    make(db, {"BTCUSDT": [(10, 12), (50, 60)], "ETHUSDT": []})  # candles 0..99
    assert ranges.series(db=db) == [("BTCUSDT", "1m"), ("ETHUSDT", "1m")]
    assert ranges.bounds(["BTCUSDT"], "1m", db=db) == {"BTCUSDT": (at(0), at(99))}
    # --repair without --since: the holes only
    assert ranges.missing(["BTCUSDT", "ETHUSDT"], "1m", db=db) == {
        "BTCUSDT": [(at(10), at(12)), (at(50), at(60))]}
    # with a window: head and tail too (lo is rounded up to a candle, hi down)
    got = ranges.missing(["BTCUSDT", "ETHUSDT", "SOLUSDT"], "1m", at(-5) - 30_000, at(105) + 59_000, db=db)
    assert got == {"BTCUSDT": [(at(-5), at(0)), (at(10), at(12)), (at(50), at(60)), (at(100), at(105))],
                   "ETHUSDT": [(at(-5), at(0)), (at(100), at(105))],
                   "SOLUSDT": [(at(-5), at(105))]}
    # a window inside the history sees only its own holes
    assert ranges.missing(["BTCUSDT"], "1m", at(20), at(55), db=db) == {"BTCUSDT": [(at(50), at(55))]}
    # what the exchange confirmed absent is never asked again
    assert ranges.record_empty([("BTCUSDT", "1m", at(50), at(56)), ("ETHUSDT", "1m", at(-5), at(0))], db=db) == 2
    assert ranges.record_empty([("BTCUSDT", "1m", at(51), at(53))], db=db) == 0  # already covered
    assert ranges.empty(["BTCUSDT"], "1m", db=db) == {"BTCUSDT": [(at(50), at(56))]}
    assert ranges.missing(["BTCUSDT", "ETHUSDT"], "1m", at(-5), at(100), db=db) == {
        "BTCUSDT": [(at(-5), at(0)), (at(10), at(12)), (at(56), at(60))]}
    rows = store.query("SELECT symbol, start_time, end_time FROM empty_ranges ORDER BY symbol", db=db).rows()
    assert rows[0] == ("BTCUSDT", dt.datetime(2026, 1, 1, 0, 50), dt.datetime(2026, 1, 1, 0, 56))


def test_no_database_yet_is_nothing_stored(tmp_path):
    db = tmp_path / "none.duckdb"
    assert ranges.series(db=db) == [] and ranges.holes(["BTCUSDT"], "1m", db=db) == {}
    assert ranges.missing(["BTCUSDT"], "1m", at(0), at(10), db=db) == {"BTCUSDT": [(at(0), at(10))]}


@settings(deadline=None)  # the 200 ms default flakes on a loaded CI box
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(1, 20)), max_size=8),
       st.lists(st.tuples(st.integers(0, 100), st.integers(1, 20)), max_size=8))
def test_range_arithmetic_matches_sets(a, b):
    ra = [(x, x + n) for x, n in a]
    rb = [(x, x + n) for x, n in b]
    cover = lambda rs: {t for x, y in rs for t in range(x, y)}  # noqa: E731
    got = ranges.subtract(ra, rb)
    assert cover(got) == cover(ra) - cover(rb)
    assert all(x < y for x, y in got) and got == sorted(got)
    merged = ranges.merge(ra)
    assert cover(merged) == cover(ra)
    assert all(p[1] < q[0] for p, q in zip(merged, merged[1:]))  # disjoint, not touching


def _naive_holes(frame: pl.DataFrame, lo: int | None, hi: int | None) -> dict[str, list[tuple[int, int]]]:
    """Holes the obvious way: consecutive candles inside [lo, hi) more than a minute apart."""
    t = pl.col("open_time").dt.epoch("ms")
    inside = frame.with_columns(t=t).filter(pl.col("t") >= (lo if lo is not None else -(2**62)),
                                            pl.col("t") < (hi if hi is not None else 2**62))
    found = (inside.sort("symbol", "t").with_columns(nt=pl.col("t").shift(-1).over("symbol"))
             .filter(pl.col("nt") - pl.col("t") > MINUTE))
    out: dict[str, list[tuple[int, int]]] = {}
    for s, a, b in found.select("symbol", "t", "nt").iter_rows():
        out.setdefault(s, []).append((a + MINUTE, b))
    return out


def test_holes_across_blocks_windows_and_both_read_paths(tmp_path, monkeypatch):
    """The two-pass finder (day blocks shrunk to 60 minutes) against a plain diff: holes inside,
    across and over whole blocks, windows that cut holes and blocks, a subset of symbols."""
    monkeypatch.setattr(ranges, "_BLOCK", 60)
    db = tmp_path / "b.duckdb"
    n = 600
    make(db, {"AAAUSDT": [(5, 8), (59, 61), (119, 300), (430, 431)], "BBBUSDT": [(0, 2), (359, 420), (599, 600)],
              "CCCUSDT": []}, n)
    stored = store.query("SELECT symbol, open_time FROM klines", db=db)
    windows = [(None, None), (at(0), at(n)), (at(7), at(125)), (at(60), at(360)), (at(200), None), (None, at(59))]
    for lo, hi in windows:
        for syms in (["AAAUSDT", "BBBUSDT", "CCCUSDT"], ["BBBUSDT"]):
            expected = {s: r for s, r in _naive_holes(stored, lo, hi).items() if s in syms}
            assert ranges.holes(syms, "1m", lo, hi, db=db) == expected, (lo, hi, syms)
            monkeypatch.setattr(ranges, "_MAX_RANGES", 0)  # the one-join read-back
            assert ranges.holes(syms, "1m", lo, hi, db=db) == expected, (lo, hi, syms, "join")
            monkeypatch.setattr(ranges, "_MAX_RANGES", 400)
    assert ranges.holes(["AAAUSDT"], "1m", db=db)["AAAUSDT"] == [(at(5), at(8)), (at(59), at(61)),
                                                                  (at(119), at(300)), (at(430), at(431))]
