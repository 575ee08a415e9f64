"""market/exchange/rest.py: weights, rate limits, ticker/24hr, exchangeInfo and REST
faults, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from market.exchange import LocalExchange

START = 1_700_000_000_000 // 60_000 * 60_000
MIN = 60_000

pytestmark = pytest.mark.timeout(300)  # CI shares its machine


def kl(sym: str = "BTCUSDT", **params) -> dict:
    return {"symbol": sym, "interval": "1m", **params}


async def test_weight_headers_and_exchange_info() -> None:
    async with LocalExchange(symbols=("BTCUSDT", "1000PEPEUSDT"), speed=0, start_time=START) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        r = await http.get("/fapi/v1/klines", params=kl(limit=1000))
        first = int(r.headers["X-MBX-USED-WEIGHT-1M"])
        assert r.status_code == 200 and first >= 5
        r = await http.get("/fapi/v1/klines", params=kl(limit=50))
        used = int(r.headers["X-MBX-USED-WEIGHT-1M"])
        assert used in (first + 1, 1)  # 1 if the minute rolled over in between
        r = await http.get("/fapi/v1/klines", params=kl(symbol="NOPEUSDT"))
        assert r.status_code == 400 and "X-MBX-USED-WEIGHT-1M" in r.headers  # errors carry it too
        r = await http.get("/api/v3/klines", params=kl())
        assert r.headers["X-MBX-USED-WEIGHT-1M"] in ("2", "4")  # spot's own budget
        info = (await http.get("/fapi/v1/exchangeInfo")).json()
        assert info["rateLimits"][0] == {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400}
        assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "1000PEPEUSDT"]
        pepe = info["symbols"][1]
        assert pepe["status"] == "TRADING" and pepe["contractType"] == "PERPETUAL" and pepe["quoteAsset"] == "USDT"
        tick = next(f["tickSize"] for f in pepe["filters"] if f["filterType"] == "PRICE_FILTER")
        row = (await http.get("/fapi/v1/klines", params=kl("1000PEPEUSDT", limit=1))).json()[0]
        assert len(row[1].split(".")[1]) == len(tick.split(".")[1]) == pepe["pricePrecision"]
        spot = (await http.get("/api/v3/exchangeInfo")).json()
        assert spot["rateLimits"][0]["limit"] == 6000 and "contractType" not in spot["symbols"][0]
    async with LocalExchange(symbols=("BTCUSDT",), speed=0, start_time=START, weight_window="10s",
                             futures_weight_limit=100, spot_weight_limit=300) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        r = await http.get("/fapi/v1/exchangeInfo")
        assert r.json()["rateLimits"][0] == {"rateLimitType": "REQUEST_WEIGHT", "interval": "SECOND", "intervalNum": 10, "limit": 100}
        assert "X-MBX-USED-WEIGHT-10S" in r.headers
        assert (await http.get("/api/v3/exchangeInfo")).json()["rateLimits"][0]["limit"] == 300


async def test_over_budget_429_then_418_and_counted() -> None:
    # a one-day window: the budget cannot roll over in the middle of the test (unless at midnight)
    while time.time() % 86400 > 86400 - 30:
        await asyncio.sleep(1)
    async with LocalExchange(symbols=("BTCUSDT",), speed=0, start_time=START, enforce_weights=True,
                             futures_weight_limit=12, weight_window="1d", ban_seconds=7) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        for used in (5, 10):
            r = await http.get("/fapi/v1/klines", params=kl(limit=1000))
            assert r.status_code == 200 and r.headers["X-MBX-USED-WEIGHT-1D"] == str(used)
        r = await http.get("/fapi/v1/klines", params=kl(limit=1000))
        assert r.status_code == 429 and r.json()["code"] == -1003
        assert 0 < int(r.headers["Retry-After"]) <= 86400
        r = await http.get("/fapi/v1/time")  # did not wait: banned
        assert r.status_code == 418 and r.headers["Retry-After"] == "7"
        assert (await http.get("/api/v3/klines", params=kl())).status_code == 200  # spot is another budget
        assert ex.stats.http_429 == 1 and ex.stats.http_418 == 1
        stats = (await http.get("/_control/stats")).json()
        assert stats["http_418"] == 1 and stats["weight_used"]["futures"] >= 15
        await http.post("/_control/rate_limits", params={"on": "false"})
        assert (await http.get("/fapi/v1/klines", params=kl(limit=1000))).status_code == 200
        r = await http.post("/_control/rate_limits", params={"on": "true", "futures": 3, "window": "1h"})
        assert r.json()["rateLimits"]["futures"] == {"rateLimitType": "REQUEST_WEIGHT", "interval": "HOUR", "intervalNum": 1, "limit": 3}
        info = await http.get("/fapi/v1/exchangeInfo")  # weight 1: fresh budget
        assert info.json()["rateLimits"][0]["limit"] == 3 and info.headers["X-MBX-USED-WEIGHT-1H"] == "1"
        assert (await http.get("/fapi/v1/klines", params=kl(limit=1000))).status_code == 429
        assert (await http.post("/_control/rate_limits", params={"window": "1w"})).status_code == 400
        assert ex.budgets[True].rate_limit()["interval"] == "HOUR"  # unchanged


async def test_a_client_honouring_retry_after_is_never_banned() -> None:
    async with LocalExchange(symbols=("BTCUSDT",), speed=0, start_time=START, enforce_weights=True,
                             futures_weight_limit=10, weight_window="2s", history_minutes=5000) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        got, waits = [], 0
        start = START - 4000 * MIN
        while len(got) < 8:  # weight 5 each: two a window
            r = await http.get("/fapi/v1/klines", params=kl(startTime=start + len(got) * 500 * MIN, limit=500))
            if r.status_code == 429:
                waits += 1
                await asyncio.sleep(float(r.headers["Retry-After"]))
                continue
            assert r.status_code == 200 and int(r.headers["X-MBX-USED-WEIGHT-2S"]) <= 10
            got.append(r.json())
        assert ex.stats.http_418 == 0 and waits == ex.stats.http_429 and waits >= 1
        assert [g[0][0] for g in got] == [start + i * 500 * MIN for i in range(8)]


async def test_ticker_24hr_matches_the_history() -> None:
    async with LocalExchange(symbols=("BTCUSDT", "ETHUSDT", "DOGEUSDT"), speed=0, start_time=START + 12_345,
                             history_minutes=2000) as ex, httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        r = await http.get("/fapi/v1/ticker/24hr")
        assert r.headers["X-MBX-USED-WEIGHT-1M"] == "40"
        all_ = r.json()
        assert [t["symbol"] for t in all_] == ["BTCUSDT", "ETHUSDT", "DOGEUSDT"]
        keys = ["symbol", "priceChange", "priceChangePercent", "weightedAvgPrice", "lastPrice", "lastQty", "openPrice",
                "highPrice", "lowPrice", "volume", "quoteVolume", "openTime", "closeTime", "firstId", "lastId", "count"]
        assert list(all_[0]) == keys
        r = await http.get("/fapi/v1/ticker/24hr", params={"symbol": "ETHUSDT"})
        eth = r.json()
        assert eth == all_[1] and r.headers["X-MBX-USED-WEIGHT-1M"] == "41"
        rows = (await http.get("/fapi/v1/klines", params=kl("ETHUSDT", startTime=START + 12_345 - 86_400_000, limit=1500))).json()
        window = [row for row in rows if row[0] >= START - 1439 * MIN]  # the 24 h ending now
        assert eth["openPrice"] == window[0][1] and eth["lastPrice"] == window[-1][4]
        assert float(eth["highPrice"]) == max(float(row[2]) for row in window)
        assert float(eth["lowPrice"]) == min(float(row[3]) for row in window)
        assert eth["count"] == sum(row[8] for row in window) and eth["closeTime"] == START + 12_250
        spot = await http.get("/api/v3/ticker/24hr")
        assert spot.headers["X-MBX-USED-WEIGHT-1M"] == "80" and "bidPrice" in spot.json()[0]
        r = await http.get("/fapi/v1/ticker/24hr", params={"symbol": "NOPEUSDT"})
        assert r.status_code == 400 and r.json() == {"code": -1121, "msg": "Invalid symbol."}


async def test_rest_faults_errors_latency_delist_redirect() -> None:
    async with LocalExchange(symbols=("BTCUSDT", "ETHUSDT"), speed=0, start_time=START) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        ex.rest_errors(0.5, 503)
        codes = [(await http.get("/fapi/v1/klines", params=kl(limit=2))).status_code for _ in range(40)]
        assert set(codes) == {200, 503} and codes.count(503) == ex.stats.http_5xx and 8 <= ex.stats.http_5xx <= 32
        await http.post("/_control/rest_errors", params={"fraction": 0})
        await http.post("/_control/rest_fail", params={"n": 2, "status": 502})
        assert [(await http.get("/fapi/v1/time")).status_code for _ in range(3)] == [502, 502, 200]
        await http.post("/_control/delist", params={"symbols": "ETHUSDT"})
        r = await http.get("/fapi/v1/klines", params=kl("ETHUSDT"))
        assert r.status_code == 400 and r.json() == {"code": -1121, "msg": "Invalid symbol."}
        assert [s["symbol"] for s in (await http.get("/fapi/v1/exchangeInfo")).json()["symbols"]] == ["BTCUSDT"]
        await http.post("/_control/rest_latency", params={"seconds": 0.3})
        t0 = time.monotonic()
        assert (await http.get("/fapi/v1/time")).status_code == 200
        assert time.monotonic() - t0 >= 0.3  # a lower bound only: slower is fine
        await http.post("/_control/redirect", params={"seconds": 3600, "status": 301, "location": "https://example.invalid/x", "scope": "rest"})
        r = await http.get("/fapi/v1/klines", params=kl())
        assert r.status_code == 301 and r.headers["Location"] == "https://example.invalid/x"
        await http.post("/_control/reset")
        assert (await http.get("/fapi/v1/klines", params=kl("ETHUSDT", limit=1))).status_code == 200
        assert ex.stats.redirected == 1


async def test_redirected_handshake() -> None:
    import websockets
    from websockets.exceptions import InvalidURI

    async with LocalExchange(symbols=("BTCUSDT",), speed=60, start_time=START) as ex:
        ex.redirect(3600, 302, "https://www.binance.com/en/restricted-location", scope="ws")  # reset_faults ends it
        # websockets.connect follows redirects itself, so look at the handshake's answer raw
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        async with httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
            r = await http.get("/market/stream", params={"streams": "btcusdt@kline_1m"}, headers=upgrade)
            assert r.status_code == 302
            assert r.headers["Location"] == "https://www.binance.com/en/restricted-location"
            assert (await http.get("/fapi/v1/ping")).status_code == 200  # REST is not redirected
        with pytest.raises(InvalidURI):  # what a client that follows it runs into
            await websockets.connect(f"{ex.ws_base}/stream?streams=btcusdt@kline_1m")
        assert ex.stats.redirected == 2
        ex.reset_faults()
        async with websockets.connect(f"{ex.ws_base}/stream?streams=btcusdt@kline_1m") as ws:
            assert "btcusdt@kline_1m" in await asyncio.wait_for(ws.recv(), 20)
