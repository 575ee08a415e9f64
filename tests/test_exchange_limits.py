"""market/exchange/limits.py: Binance's request weights and the 429-then-418 budget."""

from __future__ import annotations

import pytest

from market.exchange.limits import WeightBudget, kline_weight, parse_window, ticker_weight


def test_kline_weights_follow_binance() -> None:
    assert [kline_weight(True, n) for n in (None, 1, 99, 100, 499, 500, 1000, 1001, 1500)] == [5, 1, 1, 2, 2, 5, 5, 10, 10]
    assert {kline_weight(False, n) for n in (None, 1, 1000)} == {2}
    assert parse_window("1m") == ("MINUTE", 1, 60) and parse_window("10s") == ("SECOND", 10, 10)
    for bad in ("", "0m", "1w", "m", "-1s"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_budget_429_then_418_then_resets() -> None:
    now = [1000.0]
    b = WeightBudget(10, "10s", ban_seconds=30, enforce=True, clock=lambda: now[0])
    assert b.header == "X-MBX-USED-WEIGHT-10S"
    assert [b.charge(5), b.charge(5)] == [(200, 0), (200, 0)]
    now[0] = 1003.2
    assert b.charge(1) == (429, 7)  # the window [1000, 1010) resets in 6.8 s
    now[0] = 1004.0
    assert b.charge(1) == (418, 30)  # sent during the Retry-After wait: banned
    now[0] = 1020.0
    assert b.charge(1) == (418, 14)  # still banned, in a new window
    now[0] = 1034.5
    assert b.charge(1) == (200, 0) and b.used == 1
    off = WeightBudget(1, "1m", clock=lambda: now[0])
    assert [off.charge(100)[0] for _ in range(3)] == [200] * 3 and off.used == 300  # counted, not enforced


def test_ticker_weights() -> None:
    assert (ticker_weight(True, False), ticker_weight(False, False)) == (40, 80)
    assert (ticker_weight(True, True), ticker_weight(False, True)) == (1, 2)


def test_a_request_a_hair_early_is_429_not_418() -> None:
    now = [100.0]
    b = WeightBudget(1, "10s", ban_seconds=60, enforce=True, clock=lambda: now[0])
    assert b.charge(1) == (200, 0) and b.charge(1) == (429, 10)
    now[0] = 109.98  # waited Retry-After by a clock 20 ms behind ours
    assert b.charge(1)[0] == 429
    now[0] = 110.0
    assert b.charge(1) == (200, 0)
