"""market/rest.py: REST kline backfill against the local exchange over real HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from market.presets import custom_preset
from market.exchange import LocalExchange
from market.rest import KlineClient, RestError

MINUTE = 60_000
SYM = "BTCUSDT"

pytestmark = pytest.mark.timeout(60)


def client(ex: LocalExchange, **kw) -> KlineClient:
    limit = kw.pop("kline_limit", None)
    preset = custom_preset(ex.ws_base, ex.rest_base)
    if limit is not None:
        preset = dataclasses.replace(preset, kline_limit=limit)
    return KlineClient(preset, **kw)


async def mid_minute(ex: LocalExchange) -> int:
    """Wait until the exchange's clock is well inside a minute (its forming candle exists)."""
    deadline = time.monotonic() + 60  # up to 12 s at speed 1; generous for a loaded box
    while not 2_000 <= ex.now_ms() % MINUTE <= 50_000:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    return ex.now_ms()


def closed_truth(ex: LocalExchange, start_ms: int, closed_before: int) -> pl.DataFrame:
    """The exchange's own closed candles from start_ms that closed before closed_before."""
    want = ex.history(SYM, start_ms=start_ms)
    return want.filter(pl.col("close_time").dt.epoch("ms") < closed_before)


async def test_pagination_returns_every_candle_exactly_once():
    async with LocalExchange(symbols=(SYM,), speed=1, history_minutes=120) as ex:
        rest = client(ex, kline_limit=7)
        now = ex.now_ms()
        start = now - now % MINUTE - 45 * MINUTE
        closed_before = start + 40 * MINUTE + 123  # in the middle of a candle: 40 closed ones
        try:
            got = await rest.fetch(SYM, "1m", start, closed_before=closed_before)
        finally:
            await rest.aclose()
        want = closed_truth(ex, start, closed_before)
    assert want.height == 40
    assert_frame_equal(got, want)
    assert got["open_time"].is_duplicated().sum() == 0
    # 40 rows at 7 a page: 5 full pages, the 6th is cut by closed_before and ends the loop
    assert rest.requests == 6
    assert rest.rate_limited == 0


async def test_pagination_stops_at_the_exchanges_end():
    # rest_forming=False: the last page holds closed candles only, like history()
    async with LocalExchange(symbols=(SYM,), speed=1, history_minutes=30, rest_forming=False) as ex:
        rest = client(ex, kline_limit=10)
        now = ex.now_ms()
        start = now - now % MINUTE - 25 * MINUTE
        try:
            # a closed_before far in the future: the exchange's short last page ends it
            got = await rest.fetch(SYM, "1m", start, closed_before=now + 3600_000)
        finally:
            await rest.aclose()
        want = ex.history(SYM, start_ms=start)
    assert_frame_equal(got, want)
    assert got.height == 25 and rest.requests == 3


async def test_forming_candle_is_left_out():
    async with LocalExchange(symbols=(SYM,), speed=60, history_minutes=60) as ex:
        now = await mid_minute(ex)
        start = now - now % MINUTE - 10 * MINUTE
        # the raw answer does end with the candle still forming ...
        async with httpx.AsyncClient() as http:
            raw = (await http.get(f"{ex.rest_base}/fapi/v1/klines",
                                  params={"symbol": SYM, "interval": "1m", "startTime": start})).json()
        server_now = ex.now_ms()
        assert raw[-1][6] >= now, "the exchange should serve the forming candle last"
        rest = client(ex)
        try:
            got = await rest.fetch(SYM, "1m", start, closed_before=server_now)
        finally:
            await rest.aclose()
        # ... which fetch drops: every row closed before the server's "now"
        assert got.height >= 10
        assert (got["close_time"].dt.epoch("ms") < server_now).all()
        assert_frame_equal(got, closed_truth(ex, start, server_now))
        forming_open = server_now - server_now % MINUTE
        assert got["open_time"].dt.epoch("ms").max() == forming_open - MINUTE


async def test_rate_limit_waits_as_long_as_retry_after_says_and_is_counted():
    async with LocalExchange(symbols=(SYM,), speed=1, history_minutes=60) as ex:
        ex.rest_fail(2, 429, 1.5)  # longer than the default wait (1 s), so honouring it shows
        rest = client(ex)
        now = ex.now_ms()
        start = now - now % MINUTE - 20 * MINUTE
        began = time.monotonic()
        try:
            got = await rest.fetch(SYM, "1m", start, closed_before=now - now % MINUTE)
        finally:
            await rest.aclose()
        took = time.monotonic() - began
        assert rest.rate_limited == 2 and rest.requests == 3
        assert ex.stats.rest_requests == 3
        # twice Retry-After (1.5 s, at most 10 % jitter off), not the default 1 s (at most 2.2 s
        # for two): a lower bound only, which a slow box cannot break
        assert took >= 2.7, took
        assert_frame_equal(got, closed_truth(ex, start, now - now % MINUTE))
        assert got.height == 20


async def test_retry_after_beyond_max_wait_gives_up_in_plain_words():
    async with LocalExchange(symbols=(SYM,), speed=1, history_minutes=60) as ex:
        ex.rest_fail(1, 418, 120)
        rest = client(ex, max_wait=5)
        try:
            # giving up at once: sitting out the two minutes would hit this deadline first
            async with asyncio.timeout(60):
                with pytest.raises(RestError, match=r"rate limited .*HTTP 418.*waiting 120 s.*giving up"):
                    await rest.fetch(SYM, "1m", ex.now_ms() - 10 * MINUTE, closed_before=ex.now_ms())
        finally:
            await rest.aclose()
        assert rest.requests == 1
        assert rest.rate_limited == 1


async def test_server_errors_are_retried_and_region_blocks_are_explained():
    async with LocalExchange(symbols=(SYM,), speed=1, history_minutes=60) as ex:
        now = ex.now_ms()
        start = now - now % MINUTE - 5 * MINUTE
        ex.rest_fail(1, 503, 0)
        rest = client(ex)
        try:
            got = await rest.fetch(SYM, "1m", start, closed_before=now - now % MINUTE)
            assert got.height == 5 and rest.requests == 2 and rest.rate_limited == 0
            ex.rest_fail(1, 451, 0)
            with pytest.raises(RestError, match=r"HTTP 451.*region.*--exchange binance-us"):
                await rest.fetch(SYM, "1m", start, closed_before=now - now % MINUTE)
            with pytest.raises(RestError, match=r"refused .*HTTP 400"):
                await rest.fetch("NOPEUSDT", "1m", start, closed_before=now)
        finally:
            await rest.aclose()


# --- weight budget, one-request ranges and refusals (added with store.backfill) ---------------


async def test_exchange_info_sets_the_shared_budget_and_headers_resync_it():
    from market.ratelimit import Window, limiter_for
    async with LocalExchange(symbols=(SYM,), speed=1, history_minutes=60, enforce_weights=True,
                             futures_weight_limit=60, weight_window="10s") as ex:
        rest = client(ex)
        try:
            await rest.exchange_info()
            assert rest.limiter is limiter_for(ex.rest_base, False)  # one limiter per host
            assert rest.limiter.windows == (Window(60, 10, "SECOND"),)
            async with httpx.AsyncClient() as http:  # someone else on our IP spends 10
                await http.get(f"{ex.rest_base}/fapi/v1/klines", params={"symbol": SYM, "interval": "1m",
                                                                         "limit": 1500})
            now = ex.now_ms()
            rows = await rest.klines(SYM, "1m", now - now % MINUTE - 10 * MINUTE, now - now % MINUTE - 1, 10)
            assert len(rows) == 10  # endTime and a limit just big enough: exactly the range
            # the server's count (ours 1 + 1, theirs 10, unless its window rolled over) replaced our own 2
            assert rest.limiter.used() == ex.budgets[True].used >= 1
            assert rest.weight == 2
        finally:
            await rest.aclose()


async def test_a_redirect_is_never_followed_and_a_400_names_the_symbol():
    from market.rest import RegionBlocked, SymbolRejected
    async with LocalExchange(symbols=(SYM,), speed=1, history_minutes=60) as ex:
        rest = client(ex)
        try:
            with pytest.raises(SymbolRejected, match=r"NOPEUSDT: unknown symbol.*Invalid symbol") as bad:
                await rest.klines("NOPEUSDT", "1m", ex.now_ms() - 5 * MINUTE, None, 5)
            assert bad.value.symbol == "NOPEUSDT" and bad.value.code == -1121
            ex.redirect(30, 302, "https://www.binance.com/en/restricted", scope="rest")
            with pytest.raises(RegionBlocked, match=r"HTTP 302.*https://www.binance.com/en/restricted"):
                await rest.klines(SYM, "1m", ex.now_ms() - 5 * MINUTE, None, 5)
            assert ex.stats.redirected == 1 and rest.requests == 2
        finally:
            await rest.aclose()
