"""market/synthetic.py: deep, deterministic, random-access history (and over REST)."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from market.exchange import LocalExchange
from market.synthetic import DAY_MS, MINUTE_MS, SyntheticMarket, spec_for

START = 1_700_000_000_000 // 60_000 * 60_000
SYMS = ("BTCUSDT", "1000PEPEUSDT")

pytestmark = pytest.mark.timeout(300)  # CI shares its machine


def market(seed: int = 0) -> SyntheticMarket:
    return SyntheticMarket(tuple(spec_for(s) for s in SYMS), seed)


def test_any_minute_is_the_same_whatever_was_computed_before() -> None:
    far, near = START - 400 * DAY_MS, START - 3 * DAY_MS
    a, b = market(), market()
    ka = a.candle("BTCUSDT", MINUTE_MS, far, START)
    assert len(a._days) <= 2  # one day's block (and no year of arrays) for a candle 400 days back
    for t in range(near, near + 3 * DAY_MS, 7 * 60 * MINUTE_MS):  # b computes other days first
        b.candle("BTCUSDT", MINUTE_MS, t, START)
    assert b.candle("BTCUSDT", MINUTE_MS, far, START) == ka
    assert market(seed=1).candle("BTCUSDT", MINUTE_MS, far, START) != ka


def test_days_join_up_and_trade_ids_run_on() -> None:
    m = market()
    for sym in SYMS:
        for d in (START // DAY_MS - 300, START // DAY_MS):
            last = m.candle(sym, MINUTE_MS, d * DAY_MS - MINUTE_MS, START)
            first = m.candle(sym, MINUTE_MS, d * DAY_MS, START)
            assert first.o == last.c and first.first_id == last.last_id + 1
            day = m.candle(sym, DAY_MS, d * DAY_MS, START)
            assert day.last_id - day.first_id + 1 == day.n and day.l <= min(day.o, day.c) <= max(day.o, day.c) <= day.h


def test_prices_stay_plausible_over_years() -> None:
    m = market()
    days = range(START // DAY_MS - 3 * 365, START // DAY_MS + 365, 5)
    btc = [m.anchor("BTCUSDT", d) / 10 for d in days]
    assert 68000 * 0.6 < min(btc) and max(btc) < 68000 * 1.6
    moves = [abs(b / a - 1) for a, b in zip(btc, btc[1:])]
    assert 0.005 < sum(moves) / len(moves) < 0.2  # it moves, but not wildly, over 5 days


async def test_rest_serves_a_year_back_and_aggregates_exactly() -> None:
    async with LocalExchange(symbols=SYMS, speed=0, start_time=START, history_days=400) as ex, \
            LocalExchange(symbols=SYMS, speed=0, start_time=START + 5 * DAY_MS, history_days=30) as later, \
            httpx.AsyncClient(timeout=120) as http:
        hour = START - 380 * DAY_MS
        hour -= hour % 3_600_000
        params = {"symbol": "1000PEPEUSDT", "interval": "1m", "startTime": hour, "limit": 60}
        ones = (await http.get(f"{ex.rest_base}/fapi/v1/klines", params=params)).json()
        h1 = (await http.get(f"{ex.rest_base}/fapi/v1/klines", params={**params, "interval": "1h", "limit": 1})).json()[0]
        assert [r[0] for r in ones] == list(range(hour, hour + 3_600_000, MINUTE_MS))
        assert h1[1] == ones[0][1] and h1[4] == ones[-1][4] and h1[6] == hour + 3_600_000 - 1
        assert Decimal(h1[2]) == max(Decimal(r[2]) for r in ones) and Decimal(h1[3]) == min(Decimal(r[3]) for r in ones)
        for col in (5, 7, 9, 10):
            assert Decimal(h1[col]) == sum(Decimal(r[col]) for r in ones)
        assert h1[8] == sum(r[8] for r in ones)
        first = (await http.get(f"{ex.rest_base}/fapi/v1/klines", params={**params, "startTime": 0, "limit": 1})).json()
        assert first[0][0] == START - 400 * DAY_MS  # history starts where it was told to
        # a later-started exchange with a shorter history serves the same minutes where both have them
        lo = START - 2 * DAY_MS
        both = {"symbol": "BTCUSDT", "interval": "1m", "startTime": lo, "limit": 1000}
        rows = (await http.get(f"{later.rest_base}/fapi/v1/klines", params=both)).json()
        assert len(rows) == 1000 and rows == ex.history_rows("BTCUSDT", "1m", lo, lo + 999 * MINUTE_MS)


@pytest.mark.parametrize("t", [START + 12_345, START - START % DAY_MS + 250, START - START % DAY_MS - 250, START + 7 * 3_600_000])
def test_the_24h_window_is_the_sum_of_its_minutes(t: int) -> None:
    m = market()
    w = m.window("1000PEPEUSDT", t)
    first = t - DAY_MS
    minutes = [m.candle("1000PEPEUSDT", MINUTE_MS, o, t) for o in range(first - first % MINUTE_MS, t + 1, MINUTE_MS)]
    minutes = [k for k in minutes if k is not None and k.open_time + MINUTE_MS > first]
    if minutes[0].open_time < first:  # the window starts after the partly covered minute
        minutes = minutes[1:]
    assert w.o == minutes[0].o and w.c == minutes[-1].c
    assert w.h == max(k.h for k in minutes) and w.l == min(k.l for k in minutes)
    assert (w.v, w.n, w.q) == (sum(k.v for k in minutes), sum(k.n for k in minutes), sum(k.q for k in minutes))
    assert w.first_id == minutes[0].first_id and w.last_id == minutes[-1].last_id


@pytest.mark.parametrize("interval", [MINUTE_MS, 5 * MINUTE_MS, 3_600_000, 4 * 3_600_000, DAY_MS])
def test_closed_columns_equal_candles_one_by_one(interval: int) -> None:
    from market.exchange.wire import rest_row, rest_rows

    m = market()
    first = START - 3 * DAY_MS + 7 * interval  # crosses midnights for every interval
    last = first + 40 * interval
    spec = m.specs["1000PEPEUSDT"]
    one_by_one = [rest_row(spec, m.candle("1000PEPEUSDT", interval, t, START + 100 * DAY_MS))
                  for t in range(first - first % interval, last + 1, interval)]
    assert rest_rows(spec, m.closed("1000PEPEUSDT", interval, first - first % interval, last), interval) == one_by_one


async def test_streamed_finals_equal_rest_rows_in_a_deep_history() -> None:
    """Random REST reads far back (which churn the day cache) change nothing streamed."""
    import asyncio
    import json

    import websockets

    async with LocalExchange(symbols=("ETHUSDT",), speed=240, start_time=START, history_days=400) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        async with websockets.connect(f"{ex.ws_base}/stream?streams=ethusdt@kline_1m", close_timeout=0.2) as ws:
            finals = []
            async with asyncio.timeout(180):
                for back in range(10, 400, 13):  # cold day blocks all over the history
                    params = {"symbol": "ETHUSDT", "interval": "1m", "startTime": START - back * DAY_MS, "limit": 1000}
                    assert len((await http.get("/fapi/v1/klines", params=params)).json()) == 1000
                while len(finals) < 3:
                    k = json.loads(await ws.recv())["data"]["k"]
                    if k["x"]:
                        finals.append(k)
        rows = (await http.get("/fapi/v1/klines", params={"symbol": "ETHUSDT", "interval": "1m",
                                                           "startTime": finals[0]["t"], "limit": 3})).json()
    assert rows == [[k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"], k["B"]]
                    for k in finals]
