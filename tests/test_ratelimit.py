"""market/ratelimit.py: the weight budget, its pacing, header resync and bans.

The limiter is pure bookkeeping over a clock; these tests drive it with their own
clock (a list holding "now") so the arithmetic is checked exactly. Real traffic
against an enforcing local exchange is in tests/test_backfill.py.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.ratelimit import (Window, WeightLimiter, best_page, default_windows, klines_weight,
                              limiter_for, windows_from_exchange_info)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(limit=100, num=10, unit="SECOND", **kw) -> tuple[WeightLimiter, Clock]:
    clock = Clock()
    return WeightLimiter([Window(limit, num, unit)], clock=clock, slack=0.0, **kw), clock


def test_klines_weight_follows_binance():
    assert [klines_weight(n, False) for n in (1, 99, 100, 499, 500, 1000, 1001, 1500)] == [1, 1, 2, 2, 5, 5, 10, 10]
    assert {klines_weight(n, True) for n in (1, 500, 1000)} == {2}


def test_best_page_buys_the_most_candles_per_weight():
    assert best_page(1500, spot=False) == 499  # 249.5 candles a weight, against 150 at 1500
    assert best_page(1000, spot=True) == 1000  # spot costs 2 whatever the limit


def test_budget_from_exchange_info_and_defaults():
    info = {"serverTime": 1, "rateLimits": [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "SECOND", "intervalNum": 10, "limit": 60},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "DAY", "intervalNum": 1, "limit": 100000},
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "FORTNIGHT", "limit": 5}]}  # unreadable: skipped
    windows = windows_from_exchange_info(info)
    assert windows == (Window(60, 10, "SECOND"), Window(100000, 1, "DAY"))
    assert [w.header for w in windows] == ["x-mbx-used-weight-10s", "x-mbx-used-weight-1d"]
    assert [w.ms for w in windows] == [10_000, 86_400_000]
    assert windows_from_exchange_info({}) == ()
    assert default_windows(False) == (Window(2400, 1, "MINUTE"),)
    assert default_windows(True) == (Window(6000, 1, "MINUTE"),)


def test_paces_under_the_margin_of_the_budget():
    lim, clock = limiter(100, margin=0.9)  # 90 usable per 10 s
    for _ in range(9):
        assert lim.delay(10) == 0
        asyncio.run(lim.acquire(10))
        clock.now += 0.5
    assert lim.used() == 90
    # the next 10 fit once the first entry (booked at t=1000) leaves the window at 1010
    assert lim.delay(10) == pytest.approx(1010 - clock.now)
    clock.now = 1010.0
    assert lim.delay(10) == 0


def test_server_headers_resync_both_ways():
    lim, clock = limiter(100)
    w = lim.windows[0]
    asyncio.run(lim.acquire(10))
    lim.settle(10, {"X-MBX-USED-WEIGHT-10S": "70"})  # another process on our IP spent 60
    assert lim.used() == 70
    assert lim.delay(30) > 0
    lim.observe({w.header: "5"})  # the server's window started afresh
    assert lim.used() == 5
    assert lim.delay(80) == 0
    lim.observe({w.header: "not a number"})
    assert lim.used() == 5


def test_requests_in_flight_are_kept_when_resyncing():
    lim, clock = limiter(100)
    for _ in range(3):
        asyncio.run(lim.acquire(10))
    assert lim.in_flight == 30
    # the first answer says 10: the server has not seen the other two yet, we still count them
    lim.settle(10, {"x-mbx-used-weight-10s": "10"})
    assert lim.in_flight == 20 and lim.used() == 30


def test_block_stops_every_request_until_retry_after():
    lim, clock = limiter(100)
    lim.block(7)
    assert lim.blocked_for == 7
    assert lim.delay(1) == 7
    clock.now += 7
    assert lim.delay(1) == 0


async def test_acquire_waits_for_a_block_in_real_time():
    lim = WeightLimiter([Window(100, 10, "SECOND")])
    loop = asyncio.get_running_loop()
    began = loop.time()  # before the block starts: a slow box cannot make it look shorter
    lim.block(0.2)
    await asyncio.gather(lim.acquire(1), lim.acquire(1))
    assert loop.time() - began >= 0.2
    assert lim.used() == 2


def test_a_request_bigger_than_the_budget_is_refused_in_plain_words():
    lim, _ = limiter(10)
    with pytest.raises(ValueError, match="weight 40 can never fit a budget of 10 per 10 seconds"):
        lim.delay(40)


def test_one_limiter_per_host():
    a = limiter_for("http://127.0.0.1:1/x", False)
    assert limiter_for("http://127.0.0.1:1", False) is a
    assert limiter_for("http://127.0.0.1:2", False) is not a


def test_set_windows_keeps_what_was_spent():
    lim, clock = limiter(100)
    asyncio.run(lim.acquire(40))
    lim.set_windows([Window(50, 1, "MINUTE"), Window(1000, 1, "HOUR")])
    assert lim.used(lim.windows[0]) == 40 and lim.used(lim.windows[1]) == 40
    assert lim.delay(10) > 0  # 40 + 10 > 45 (90 % of 50)


@settings(deadline=None)  # the 200 ms default flakes on a loaded CI box
@given(st.lists(st.tuples(st.integers(1, 10), st.floats(0, 3)), max_size=60), st.integers(20, 200))
def test_never_books_more_than_the_margin_in_any_window(steps, limit):
    """Whatever the request sizes and spacing, the weight booked in any window of the
    budget's length stays under 90 % of it (so a sliding or a fixed window holds)."""
    lim, clock = limiter(limit, margin=0.9)
    booked: list[tuple[float, int]] = []
    for weight, gap in steps:
        clock.now += gap
        clock.now += lim.delay(weight)
        assert lim.delay(weight) == 0
        asyncio.run(lim.acquire(weight))
        booked.append((clock.now, weight))
        in_window = sum(w for t, w in booked if t + 10.0 > clock.now)
        assert in_window <= int(limit * 0.9)
