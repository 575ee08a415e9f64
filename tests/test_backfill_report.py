"""store/backfill_report.py: the run's progress lines and summary."""

from __future__ import annotations

import collections

from store.backfill_report import Progress, Result


def test_progress_says_each_series_once_done_and_follows_the_next(capsys):
    a, b = ("BTCUSDT", "1m"), ("ETHUSDT", "1m")
    left = collections.Counter({a: 2, b: 1})
    with Progress({a: 3000, b: 500}, left, enabled=False) as p:
        assert p._current == a
        left[a] -= 1
        p.advance(a, 1500, 1500)
        assert capsys.readouterr().err == "" and p._current == a
        left[b] -= 1
        p.advance(b, 500, None)  # failed: said already, nothing more
        assert capsys.readouterr().err == "" and p._current == a
        left[a] -= 1
        p.advance(a, 1500, 2999)
        assert capsys.readouterr().err == "BTCUSDT 1m: 2,999 candles stored\n"
        assert p._current is None


def test_result_summary_and_exit_code():
    ok = Result(candles=1234, requests=3, weight=15, empty_recorded=2, indicator_series=1, indicator_rows=1234)
    assert ok.exit_code == 0
    assert ok.summary("2400/60s") == [
        "backfill: 1,234 candles stored, 3 requests (weight 15; budget 2400/60s), 2 empty ranges recorded, "
        "indicators of 1 series refreshed (1,234 rows)"]
    bad = Result(failed={"XUSDT": "XUSDT: invalid symbol"}, fatal="region blocked")
    assert bad.exit_code == 1
    assert bad.summary("b")[1:] == ["failed: XUSDT: invalid symbol", "error: region blocked"]
