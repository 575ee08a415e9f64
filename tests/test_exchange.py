"""The local exchange, driven over real sockets on 127.0.0.1 like Binance would be."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
import time
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import httpx
import polars as pl
import pytest
import websockets
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from market.exchange import MALFORMED_KINDS, LocalExchange, read_recording
from market.schema import KLINE_SCHEMA
from tests.conftest import FIXTURES, wait_for

ROOT = Path(__file__).resolve().parents[1]
RECORDING = FIXTURES / "binance_futures_2021-07-22.ws"

START = 1_700_000_000_000 // 60_000 * 60_000  # a fixed minute boundary
MIN = 60_000
KLINE_KEYS = ["t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"]
TICKER_KEYS = ["e", "E", "s", "p", "P", "w", "c", "Q", "o", "h", "l", "v", "q", "O", "C", "F", "L", "n"]

pytestmark = pytest.mark.timeout(300)  # CI shares its machine: minutes, not seconds


def connect(url: str) -> websockets.connect:
    # A client that stops reading a busy feed cannot finish the closing handshake while
    # its receive queue is full (websockets issue #1555): it waits close_timeout (10 s).
    return websockets.connect(url, close_timeout=0.2)


async def collect(ws, seconds: float) -> list[str]:
    """Every frame received for ``seconds``."""
    out, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            out.append(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            break
    return out


async def collect_until(ws, done, timeout: float = 120) -> list[str]:
    """Frames until ``done(frames)``; on a loaded machine this waits longer, it does not fail."""
    frames: list[str] = []
    async with asyncio.timeout(timeout):
        while not done(frames):
            frames.append(await ws.recv())
    return frames


async def until_quiet(ws, gap: float = 0.3, timeout: float = 5) -> list[str]:
    """Frames until none arrives for ``gap`` seconds; fails if the feed never pauses."""
    frames: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                frames.append(await asyncio.wait_for(ws.recv(), gap))
            except TimeoutError:
                return frames


def finals_seen(stream: str, n: int):
    return lambda frames: sum(f'"{stream}"' in f and '"x":true' in f for f in frames) >= n


def finals_since(stream: str, n: int, since: int):
    """done(frames) for collect_until: n finals of candles closing at or after sim time
    ``since`` (a lagging client first reads what was sent before it)."""
    seen = {"checked": 0, "count": 0}

    def done(frames: list[str]) -> bool:
        for f in frames[seen["checked"]:]:
            if f'"{stream}"' in f and '"x":true' in f and json.loads(f)["data"]["k"]["T"] + 1 >= since:
                seen["count"] += 1
        seen["checked"] = len(frames)
        return seen["count"] >= n
    return done


def event_time(frame: str) -> int:
    """E of a frame; 0 for the malformed ones."""
    try:
        return int(json.loads(frame)["data"]["E"])
    except (ValueError, KeyError, TypeError):
        return 0


def klines(frames: list[str], stream: str) -> list[dict]:
    return [m["data"]["k"] for m in map(json.loads, frames) if m.get("stream") == stream]


def row_of(k: dict) -> list:
    """A streamed kline as the REST row Binance would print for it."""
    return [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"], k["B"]]


async def test_streams_format_rate_and_one_final_per_candle() -> None:
    streams = ["btcusdt@kline_1m", "btcusdt@ticker", "ethusdt@ticker"]
    # taken before the exchange's clock starts at START: a frame stamped later than START + 120x
    # the time since has run ahead. (Measured from the handshake instead, a box that stalls the
    # process lags the clock, which then catches up in a burst: a false "ahead".)
    t0 = time.monotonic()
    async with LocalExchange(symbols=("BTCUSDT", "ETHUSDT"), speed=120, start_time=START) as ex:
        async with connect(f"{ex.ws_base}/stream?streams={'/'.join(streams)}") as ws:
            frames = await collect_until(ws, finals_seen("btcusdt@kline_1m", 3))
            elapsed = time.monotonic() - t0
        msgs = [json.loads(f) for f in frames]
        assert {m["stream"] for m in msgs} == set(streams)
        ks = [m["data"] for m in msgs if m["stream"] == "btcusdt@kline_1m"]
        for d in ks:
            assert list(d) == ["e", "E", "s", "k"] and d["e"] == "kline" and d["s"] == "BTCUSDT"
            k = d["k"]
            assert list(k) == KLINE_KEYS and k["i"] == "1m" and k["B"] == "0"
            assert all(isinstance(k[f], str) and float(k[f]) >= 0 for f in "ohlcvqVQ")
            assert k["t"] % MIN == 0 and k["T"] == k["t"] + MIN - 1 and k["t"] < d["E"] <= k["T"] + 1
            assert float(k["l"]) <= min(float(k["o"]), float(k["c"])) <= max(float(k["o"]), float(k["c"])) <= float(k["h"])
            assert float(k["V"]) <= float(k["v"]) and k["L"] - k["f"] + 1 == k["n"]
            assert 40_000 < float(k["c"]) < 120_000
        # one update every 250 ms of sim time, none lost, whatever the wall clock did
        assert {b["E"] - a["E"] for a, b in zip(ks, ks[1:])} == {250}
        # 120x: a loaded machine lags behind, but the feed never runs ahead of 120x real time
        assert (ks[-1]["E"] - START) / 120_000 <= elapsed
        finals = Counter(d["k"]["t"] for d in ks if d["k"]["x"])
        assert len(finals) >= 2 and set(finals.values()) == {1}
        by_minute = defaultdict(list)
        for d in ks:
            by_minute[d["k"]["t"]].append(d["k"])
        whole = [t for t in by_minute if t - MIN in by_minute and t + MIN in by_minute]
        assert whole, "no fully observed minute"
        for t in whole:
            seq = by_minute[t]
            assert len(seq) == 240 and [k["x"] for k in seq] == [False] * 239 + [True]
            for a, b in zip(seq, seq[1:]):  # updates are prefixes of the final candle
                assert a["o"] == b["o"] and float(a["h"]) <= float(b["h"]) and float(a["l"]) >= float(b["l"])
                assert float(a["v"]) <= float(b["v"]) and a["n"] <= b["n"] and float(a["q"]) <= float(b["q"])
            assert seq[0]["o"] == by_minute[t - MIN][-1]["c"]  # open = previous close
        tickers = defaultdict(list)
        for m in msgs:
            if m["stream"].endswith("@ticker"):
                assert list(m["data"]) == TICKER_KEYS and m["data"]["e"] == "24hrTicker"
                tickers[m["data"]["s"]].append(m["data"])
        for sym, ts in tickers.items():
            assert {b["E"] - a["E"] for a, b in zip(ts, ts[1:])} == {1000}
            assert (ts[-1]["E"] - START) / 120_000 <= elapsed
        # the ticker's last price is the kline's close at the same instant
        close_at = {d["E"]: d["k"]["c"] for d in ks}
        same = [t for t in tickers["BTCUSDT"] if t["E"] in close_at]
        assert same and all(t["c"] == close_at[t["E"]] for t in same)
        # ... and its open is the open of the minute 24 h back
        tick = next(t for t in tickers["BTCUSDT"] if t["E"] % MIN)
        day_ago = tick["E"] // MIN * MIN - 1439 * MIN
        async with httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
            row = (await http.get("/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "1m", "startTime": day_ago, "limit": 1})).json()[0]
        assert row[0] == day_ago and row[1] == tick["o"]
        assert float(tick["l"]) <= float(tick["c"]) <= float(tick["h"]) and tick["L"] - tick["F"] + 1 == tick["n"]


async def test_kline_and_ticker_update_periods_are_configurable() -> None:
    from market.exchange import ExchangeConfig

    streams = ["btcusdt@kline_1m", "btcusdt@ticker"]
    cfg = ExchangeConfig(symbols=("BTCUSDT",), speed=0, start_time=START, kline_ms=2000, ticker_ms=5000)
    async with LocalExchange(cfg) as ex:
        async with connect(f"{ex.ws_base}/stream?streams={'/'.join(streams)}") as ws:
            frames = await collect_until(ws, finals_seen("btcusdt@kline_1m", 3))
    msgs = [json.loads(f)["data"] for f in frames]
    ks = [m["k"] for m in msgs if m["e"] == "kline"]
    by_minute = defaultdict(list)
    for k in ks:
        by_minute[k["t"]].append(k)
    whole = [t for t in by_minute if t - MIN in by_minute and t + MIN in by_minute]
    assert whole
    for t in whole:  # 29 forming updates 2 s apart, then the final at the close
        seq = by_minute[t]
        assert [k["x"] for k in seq] == [False] * 29 + [True]
    assert {m["E"] % 2000 for m in msgs if m["e"] == "kline"} == {0}
    ticks = [m["E"] for m in msgs if m["e"] == "24hrTicker"]
    assert len(ticks) > 2 and {b - a for a, b in zip(ticks, ticks[1:])} == {5000}
    with pytest.raises(ValueError, match="kline_ms"):
        ExchangeConfig(kline_ms=300)


async def test_final_klines_equal_rest_rows_and_history() -> None:
    async with LocalExchange(symbols=("BTCUSDT", "1000PEPEUSDT"), speed=120, start_time=START) as ex:
        streams = "btcusdt@kline_1m/1000pepeusdt@kline_1m"
        async with connect(f"{ex.ws_base}/stream?streams={streams}") as ws:
            frames = await collect_until(ws, lambda f: finals_seen("btcusdt@kline_1m", 2)(f) and finals_seen("1000pepeusdt@kline_1m", 2)(f))
        async with httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
            for sym in ("BTCUSDT", "1000PEPEUSDT"):
                finals = [k for k in klines(frames, f"{sym.lower()}@kline_1m") if k["x"]]
                assert len(finals) >= 2
                params = {"symbol": sym, "interval": "1m", "startTime": finals[0]["t"], "endTime": finals[-1]["t"]}
                rows = (await http.get("/fapi/v1/klines", params=params)).json()
                assert rows == [row_of(k) for k in finals]  # every field, as strings
                hist = ex.history(sym, start_ms=finals[0]["t"], end_ms=finals[-1]["t"])
                assert hist.schema == pl.Schema(KLINE_SCHEMA)
                assert hist["close"].to_list() == [float(k["c"]) for k in finals]
                assert hist["quote_volume"].to_list() == [float(k["q"]) for k in finals]
                assert hist["trades"].to_list() == [k["n"] for k in finals]


async def test_longer_intervals_aggregate_the_minutes_exactly() -> None:
    async with LocalExchange(symbols=("ETHUSDT",), speed=600, start_time=START) as ex:
        async with connect(f"{ex.ws_base}/stream?streams=ethusdt@kline_1m/ethusdt@kline_5m") as ws:
            frames = await collect_until(ws, finals_seen("ethusdt@kline_5m", 2))
            # through the next 1m final: frames go out in time order, so every 1m final up to the
            # second 5m close is in (a fixed 0.1 s read could miss it on a loaded box)
            frames += await collect_until(ws, finals_seen("ethusdt@kline_1m", 1))
        five = [k for k in klines(frames, "ethusdt@kline_5m") if k["x"]]
        ones = {k["t"]: k for k in klines(frames, "ethusdt@kline_1m") if k["x"]}
        assert five and all(k["t"] % (5 * MIN) == 0 for k in five)
        async with httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
            rows = (await http.get("/fapi/v1/klines", params={"symbol": "ETHUSDT", "interval": "5m", "startTime": five[0]["t"], "limit": len(five)})).json()
        assert rows == [row_of(k) for k in five]
        whole = [k for k in five if all(k["t"] + i * MIN in ones for i in range(5))]
        assert whole  # the second 5m candle was watched from its start
        for k in whole:
            parts = [ones[k["t"] + i * MIN] for i in range(5)]
            assert k["o"] == parts[0]["o"] and k["c"] == parts[-1]["c"]
            assert Decimal(k["h"]) == max(Decimal(p["h"]) for p in parts)
            assert Decimal(k["l"]) == min(Decimal(p["l"]) for p in parts)
            assert Decimal(k["v"]) == sum(Decimal(p["v"]) for p in parts)
            assert Decimal(k["q"]) == sum(Decimal(p["q"]) for p in parts)
            assert k["n"] == sum(p["n"] for p in parts) and k["f"] == parts[0]["f"] and k["L"] == parts[-1]["L"]


async def test_rest_params_limits_errors_and_both_paths() -> None:
    # speed=0 with no subscriber: the sim clock stands still at START
    async with LocalExchange(symbols=("BTCUSDT", "SOLUSDT"), speed=0, start_time=START, history_minutes=2000) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:

        async def get(path="/fapi/v1/klines", **params):
            r = await http.get(path, params={"symbol": "BTCUSDT", "interval": "1m", **params})
            return r.status_code, r.json()

        status, rows = await get()
        assert status == 200 and len(rows) == 500 and rows[-1][0] == START - MIN  # nothing formed at START yet
        assert [r[0] for r in rows] == list(range(START - 500 * MIN, START, MIN))
        assert all(len(r) == 12 and r[11] == "0" and isinstance(r[8], int) for r in rows)
        _, rows = await get(startTime=START - 100 * MIN + 1, limit=10)
        assert [r[0] for r in rows] == list(range(START - 99 * MIN, START - 89 * MIN, MIN))
        _, rows = await get(endTime=START - 50 * MIN, limit=5)
        assert [r[0] for r in rows] == list(range(START - 54 * MIN, START - 49 * MIN, MIN))
        _, rows = await get(startTime=START - 30 * MIN, endTime=START - 10 * MIN)
        assert len(rows) == 21
        _, rows = await get(startTime=0, limit=3)  # before the history: it starts at its origin
        assert rows[0][0] == START - 2000 * MIN and len(rows) == 3
        status, rows = await get(limit=1500)
        assert status == 200 and len(rows) == 1500
        assert await get(limit=1501) == (400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."})
        assert (await get(limit=0))[1]["code"] == -1130
        status, spot = await get("/api/v3/klines", limit=1500)  # spot caps at 1000
        assert status == 200 and spot == rows[-1000:]
        _, rows_5m = await get(interval="5m", endTime=START - 1, limit=2)
        last_5m = (START - 1) // (5 * MIN) * 5 * MIN
        assert [r[0] for r in rows_5m] == [last_5m - 5 * MIN, last_5m]
        assert await get(symbol="NOPEUSDT") == (400, {"code": -1121, "msg": "Invalid symbol."})
        assert (await get(symbol="btcusdt"))[1]["code"] == -1100
        assert (await get(interval="7m"))[1] == {"code": -1120, "msg": "Invalid interval."}
        assert (await get(startTime="yesterday"))[1]["code"] == -1100
        assert (await get(startTime=START, endTime=START - MIN))[1]["code"] == -1023
        r = await http.get("/fapi/v1/klines", params={"interval": "1m"})
        assert r.status_code == 400 and r.json()["code"] == -1102
        assert (await http.get("/nope")).status_code == 404
        assert (await http.get("/fapi/v1/time")).json() == {"serverTime": START}
        assert ex.history("BTCUSDT")["open_time"].len() == 2000

    # mid-minute, REST's last row is the forming candle (as Binance does); history() is closed only
    async with LocalExchange(symbols=("BTCUSDT",), speed=0, start_time=START + 30_000, history_minutes=60) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        rows = (await http.get("/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "1m"})).json()
        assert len(rows) == 61 and rows[-1][0] == START and rows[-1][6] > ex.now_ms()
        assert rows[-1][1] == rows[-2][4] and float(rows[-1][5]) > 0
        hist = ex.history("BTCUSDT")
        assert hist.height == 60 and hist["open_time"].dt.epoch("ms").max() == START - MIN


async def test_subscribe_list_unsubscribe_and_raw_streams() -> None:
    async with LocalExchange(symbols=("BTCUSDT",), speed=120, start_time=START) as ex:
        async with connect(f"{ex.ws_base}/stream") as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m", "nopeusdt@kline_1m"], "id": 1}))
            assert await ws.recv() == '{"result":null,"id":1}'
            first = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert first["stream"] == "btcusdt@kline_1m"
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
            frames = await collect_until(ws, lambda f: '"id":2' in f[-1] if f else False)
            assert json.loads(frames[-1]) == {"result": ["btcusdt@kline_1m", "nopeusdt@kline_1m"], "id": 2}
            await ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 3}))
            await collect_until(ws, lambda f: bool(f) and f[-1] == '{"result":null,"id":3}')
            await until_quiet(ws, timeout=20)  # would never pause if the feed went on (a kline every ~2 ms)
            await ws.send("{not json")
            assert json.loads(await ws.recv())["error"]["code"] == 3
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["x"]}))  # no id
            assert json.loads(await ws.recv())["error"]["code"] == 2
        async with connect(f"ws://127.0.0.1:{ex.port}/ws/btcusdt@kline_1m") as ws:
            data = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert data["e"] == "kline" and data["s"] == "BTCUSDT"  # raw: no stream wrapper
        async with connect(f"ws://127.0.0.1:{ex.port}/stream?streams=btcusdt@ticker") as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 20))["stream"] == "btcusdt@ticker"
        assert ex.stats.connections_total == 3 and ex.stats.frames_sent > 0


async def test_replay_sends_every_recorded_frame_once() -> None:
    _, recorded = read_recording(RECORDING)
    assert len(recorded) == 1535
    async with LocalExchange(replay=RECORDING, speed=0, loop=False) as ex:
        async with connect(f"{ex.ws_base}/stream?streams=sushiusdt@kline_1m") as ws:
            got = [await asyncio.wait_for(ws.recv(), 20) for _ in range(1535)]
            assert await collect(ws, 0.3) == []  # no loop: it stops at the end
        assert got == [raw for _, raw in recorded]  # byte for byte, other streams included
        final = next(json.loads(raw)["data"]["k"] for raw in got if '"sushiusdt@kline_1m"' in raw and '"x":true' in raw)
        async with httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
            rows = (await http.get("/fapi/v1/klines", params={"symbol": "SUSHIUSDT", "interval": "1m"})).json()
            assert rows == [row_of(final)]
            assert (await http.get("/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "1m"})).status_code == 400


async def test_replay_keeps_recorded_timing_over_speed_and_loops() -> None:
    _, recorded = read_recording(RECORDING)
    span = recorded[-1][0] - recorded[0][0]
    async with LocalExchange(replay=RECORDING, speed=60, loop=True) as ex:
        async with connect(f"{ex.ws_base}/stream") as ws:
            t0 = time.monotonic()
            got = [await asyncio.wait_for(ws.recv(), 20) for _ in range(1540)]
            elapsed = time.monotonic() - t0
    assert elapsed >= 0.8 * span / 60
    assert got[1535:] == [raw for _, raw in recorded[:5]]


async def test_drop_connections_closes_without_close_frame() -> None:
    async with LocalExchange(symbols=("BTCUSDT",), speed=120, start_time=START) as ex:
        url = f"{ex.ws_base}/stream?streams=btcusdt@kline_1m"
        async with connect(url) as ws:
            await ws.recv()
            assert ex.drop_connections() == 1
            with pytest.raises(ConnectionClosedError) as info:
                while True:
                    await asyncio.wait_for(ws.recv(), 20)
            assert info.value.rcvd is None  # abrupt: 1006, no close frame
        async with connect(url) as ws, httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
            await ws.recv()  # reconnecting works
            r = await http.post("/_control/drop_connections")
            assert r.json() == {"ok": True, "dropped": 1}
            with pytest.raises(ConnectionClosedError):
                while True:
                    await asyncio.wait_for(ws.recv(), 20)


async def test_refuse_rejects_handshakes_with_the_status() -> None:
    async with LocalExchange(symbols=("BTCUSDT",), speed=120, start_time=START) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        url = f"{ex.ws_base}/stream?streams=btcusdt@kline_1m"
        ex.refuse(60, 451)
        with pytest.raises(InvalidStatus) as info:
            await connect(url)
        assert info.value.response.status_code == 451
        assert b"restricted location" in info.value.response.body
        assert (await http.get("/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "1m"})).status_code == 200
        # a refusal ends by itself: retry (as a client would) until the handshake works
        refused_until = time.monotonic() + 0.5  # before refuse(): the refusal cannot end earlier
        ex.refuse(0.5, 451)
        for _ in range(100):
            try:
                async with connect(url) as ws:
                    await asyncio.wait_for(ws.recv(), 20)
                break
            except InvalidStatus:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("the refusal never ended")
        assert time.monotonic() >= refused_until - 0.01
        refused = ex.stats.refused
        assert (await http.post("/_control/refuse", params={"seconds": 60, "status": 403})).json() == {"ok": True}
        with pytest.raises(InvalidStatus) as info:
            await connect(url)
        ex.reset_faults()  # ends it
        async with connect(url) as ws:
            await asyncio.wait_for(ws.recv(), 20)
        assert info.value.response.status_code == 403 and ex.stats.refused == refused + 1


async def test_stall_sends_nothing_and_leaves_pings_unanswered() -> None:
    async with LocalExchange(symbols=("BTCUSDT",), speed=120, start_time=START) as ex:
        async with connect(f"{ex.ws_base}/stream?streams=btcusdt@kline_1m") as ws:
            await ws.recv()
            ex.stall(60)  # ended below: a loaded machine cannot outlast it
            stall_sim = ex.now_ms()
            pong = await ws.ping()
            # a lagging client may still read what was sent before; nothing newer is sent
            assert all(event_time(f) <= stall_sim for f in await collect(ws, 0.7))
            assert not pong.done()
            ex.reset_faults()
            after = json.loads((await collect_until(ws, lambda f: f and event_time(f[-1]) > stall_sim))[-1])
            await asyncio.wait_for(pong, 20)
            # the ticks of the stall are lost, as on a stale socket: the consumer must backfill
            assert after["data"]["E"] - stall_sim > 60_000


async def test_malformed_frames_arrive_interleaved() -> None:
    def classify(text: str, wanted: set[str]) -> str:
        try:
            m = json.loads(text)
        except ValueError:
            return "not_json"
        if m.get("stream") not in wanted:
            return "unknown_stream"
        k = m["data"].get("k", {})
        if not set(KLINE_KEYS) <= k.keys():
            return "missing_fields"
        try:
            values = [float(k[f]) for f in "ohlcvqVQ"]
        except ValueError:
            return "non_numeric"
        if any(math.isnan(v) for v in values):
            return "nan"
        if k["t"] % MIN or k["T"] != k["t"] + MIN - 1:
            return "misaligned"
        return "ok"

    async with LocalExchange(symbols=("BTCUSDT",), speed=120, start_time=START) as ex:
        async with connect(f"{ex.ws_base}/stream?streams=btcusdt@kline_1m") as ws:
            await ws.recv()
            ex.malformed(6)
            frames = await collect_until(ws, lambda f: sum(classify(x, {"btcusdt@kline_1m"}) != "ok" for x in f) >= 6)
            kinds = [classify(f, {"btcusdt@kline_1m"}) for f in frames + await collect(ws, 0.2)]
        bad = [k for k in kinds if k != "ok"]
        assert sorted(bad) == sorted(MALFORMED_KINDS)
        assert all(kinds[i - 1] == "ok" for i, k in enumerate(kinds) if k != "ok")  # interleaved
        assert ex.stats.malformed_sent == 6


async def test_duplicate_and_late_finals() -> None:
    async with LocalExchange(symbols=("BTCUSDT",), speed=240, start_time=START) as ex:
        async with connect(f"{ex.ws_base}/stream?streams=btcusdt@kline_1m") as ws:
            ex.duplicate_finals(True)
            switched = ex.now_ms()  # ticks before this may have been sent the old way
            ks = klines(await collect_until(ws, finals_since("btcusdt@kline_1m", 5, switched)), "btcusdt@kline_1m")
            finals = [k for k in ks if k["x"] and k["T"] + 1 >= switched]
            counts = Counter(k["t"] for k in finals)
            counts.pop(finals[-1]["t"])  # the window may have cut the last pair
            assert counts and set(counts.values()) == {2}
            assert all(a == b for a, b in zip(finals[::2], finals[1::2]))
            ex.duplicate_finals(False)
            ex.late_finals(3.0)
            switched = ex.now_ms()
            frames = [json.loads(f)["data"] for f in await collect_until(ws, finals_since("btcusdt@kline_1m", 2, switched))]
        late = [(i, d) for i, d in enumerate(frames) if d["k"]["x"] and d["k"]["T"] + 1 >= switched]
        assert late
        for i, d in late:
            assert d["E"] == d["k"]["T"] + 1 + 3000  # sent 3 s of sim time after the close
            assert any(f["k"]["t"] == d["k"]["t"] + MIN for f in frames[:i])  # after the next candle's updates
        assert len({d["k"]["t"] for _, d in late}) == len(late)


async def test_rest_fail_answers_429_with_retry_after() -> None:
    async with LocalExchange(symbols=("BTCUSDT",), speed=0, start_time=START) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        params = {"symbol": "BTCUSDT", "interval": "1m", "limit": 2}
        ex.rest_fail(2, 429, retry_after=1)
        for _ in range(2):
            r = await http.get("/fapi/v1/klines", params=params)
            assert r.status_code == 429 and r.headers["Retry-After"] == "1" and r.json()["code"] == -1003
            assert (await http.get("/_control/stats")).status_code == 200  # control is never failed
        assert (await http.get("/fapi/v1/klines", params=params)).status_code == 200
        await http.post("/_control/rest_fail", params={"n": 1, "status": 418, "retry_after": 2})
        r = await http.get("/api/v3/klines", params=params)
        assert r.status_code == 418 and r.headers["Retry-After"] == "2"


async def test_http_control_endpoints() -> None:
    async with LocalExchange(symbols=("BTCUSDT",), speed=120, start_time=START, history_minutes=30) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        async with connect(f"{ex.ws_base}/stream?streams=btcusdt@kline_1m") as ws:
            await ws.recv()
            stats = (await http.post("/_control/stats")).json()
            assert stats["connections_open"] == 1 and stats["frames_sent"] >= 1 and stats["now"] > START
            assert (await http.post("/_control/malformed", params={"n": 2})).json() == {"ok": True}
            await http.post("/_control/duplicate_finals", params={"on": "true"})
            assert ex._duplicate
            await http.post("/_control/late_finals", params={"seconds": 2})
            assert ex._late_ms == 2000
            await http.post("/_control/reset")
            assert not ex._duplicate and ex._late_ms == 0
            await http.post("/_control/stall", params={"seconds": 6})  # ends by itself, after the check below (even on a loaded box)
            stall_sim = ex.now_ms()
            assert all(event_time(f) <= stall_sim for f in await collect(ws, 0.4))
            await collect_until(ws, lambda f: f and event_time(f[-1]) > stall_sim)
        assert ex.stats.malformed_sent == 2
        truth = (await http.post("/_control/history", params={"symbol": "BTCUSDT", "end_ms": START - MIN})).json()
        rest = (await http.get("/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "1m", "endTime": START - MIN})).json()
        assert len(truth) == 30 and truth == rest
        assert (await http.post("/_control/nope")).status_code == 404
        assert (await http.post("/_control/stall", params={"seconds": "soon"})).status_code == 400


async def test_same_seed_same_market_and_a_plausible_one() -> None:
    kw = dict(speed=0, start_time=START, history_minutes=1440)
    async with LocalExchange(seed=7, **kw) as a, LocalExchange(seed=7, **kw) as b, \
            LocalExchange(seed=8, symbols=("BTCUSDT",), **kw) as c:
        assert len(a.config.symbols) == 50
        assert a.history("BTCUSDT").equals(b.history("BTCUSDT"))
        assert a.history("DOGEUSDT", "15m").equals(b.history("DOGEUSDT", "15m"))
        assert not a.history("BTCUSDT").equals(c.history("BTCUSDT"))
        frames = pl.concat([a.history(s) for s in a.config.symbols])
    assert frames.height == 50 * 1440
    stats = frames.group_by("symbol").agg(
        ret_std=pl.col("close").log().diff().std(),
        first=pl.col("close").first(),
        gaps=(pl.col("open_time").diff().dt.total_milliseconds() != MIN).sum(),
        bad_open=(pl.col("open") != pl.col("close").shift()).sum(),
    )
    assert stats["ret_std"].is_between(0.0003, 0.006).all()
    assert stats["gaps"].sum() == 0 and stats["bad_open"].sum() == 0
    price = dict(zip(stats["symbol"], stats["first"]))
    # the path starts up to a week before the first candle served, so allow its drift
    assert 40_000 < price["BTCUSDT"] < 120_000 and 1_500 < price["ETHUSDT"] < 5_000 and price["1000PEPEUSDT"] < 1
    assert frames.filter(
        (pl.col("high") < pl.max_horizontal("open", "close")) | (pl.col("low") > pl.min_horizontal("open", "close"))
        | (pl.col("taker_buy_volume") > pl.col("volume")) | (pl.col("trades") < 1) | (pl.col("volume") <= 0)
    ).height == 0


async def test_max_speed_streams_flat_out_and_idles_without_clients() -> None:
    async with LocalExchange(symbols=("BTCUSDT",), speed=0, start_time=START) as ex:
        async with connect(f"{ex.ws_base}/stream?streams=btcusdt@kline_1m") as ws:
            t0 = time.monotonic()
            ks = [json.loads(await asyncio.wait_for(ws.recv(), 20))["data"] for _ in range(2400)]
            elapsed = time.monotonic() - t0
        assert {b["E"] - a["E"] for a, b in zip(ks, ks[1:])} == {250}
        # 10 sim minutes, which real time would take 600 s; the test's own timeout bounds elapsed
        assert sum(d["k"]["x"] for d in ks) == 10 and (ks[-1]["E"] - ks[0]["E"]) / 1000 > 5 * elapsed
        await wait_for(lambda: not ex._subs and not ex._wake.is_set(), what="the clock parks")
        now = ex.now_ms()
        await asyncio.sleep(0.2)  # nothing to wait for: the clock must simply not move
        assert ex.now_ms() == now and not ex._wake.is_set()  # no subscriber: the clock waits
        async with connect(f"{ex.ws_base}/stream?streams=btcusdt@kline_1m") as ws:
            data = json.loads(await asyncio.wait_for(ws.recv(), 20))["data"]
        assert data["E"] > now  # ... and resumes for the next client


async def test_cli_serves_until_sigterm_and_exits_0() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market.exchange", "--port", "0", "--symbols", "BTCUSDT,ETHUSDT", "--speed", "0",
        "--history-minutes", "120", cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        assert info["ws"].startswith("ws://127.0.0.1:") and info["ws"].endswith("/market")
        async with httpx.AsyncClient(base_url=info["rest"], timeout=120) as http:
            rows = (await http.get("/fapi/v1/klines", params={"symbol": "ETHUSDT", "interval": "1m", "limit": 1000})).json()
            # the exchange's clock (parked at its start: no subscriber yet), not ours: a minute
            # boundary can pass while a loaded box starts the process
            server_now = (await http.get("/fapi/v1/time")).json()["serverTime"]
        # 120 closed minutes of history, plus the forming one when started mid-minute
        closed = [r for r in rows if r[6] < server_now]
        assert len(closed) == 120 and len(rows) - len(closed) <= 1
        async with connect(f"{info['ws']}/stream?streams=btcusdt@kline_1m") as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 20))["data"]["s"] == "BTCUSDT"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_restarted_exchange_serves_the_same_minutes() -> None:
    """The demo restarts against its old database: old minutes must not change price."""
    async with LocalExchange(symbols=("BTCUSDT",), speed=0, start_time=START, history_minutes=300) as a, \
            LocalExchange(symbols=("BTCUSDT",), speed=0, start_time=START + 90 * MIN, history_minutes=300) as b:
        first, later = a.history("BTCUSDT"), b.history("BTCUSDT")
    both = first.join(later, on="open_time", suffix="_b")
    assert both.height == 210
    assert (both["close"] == both["close_b"]).all() and (both["volume"] == both["volume_b"]).all()


async def test_gap_removes_minutes_from_rest_stream_and_dumps() -> None:
    """``gap``: minutes missing at the exchange, as on Binance (no trades, maintenance)."""
    import datetime as dt
    import io
    import zipfile
    day0 = START - START % 86_400_000 - 86_400_000  # the whole day before START: a dump exists
    async with LocalExchange(symbols=("BTCUSDT", "ETHUSDT"), speed=120, start_time=START,
                             history_minutes=3 * 1440) as ex, httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        past = (day0 + 600 * MIN, day0 + 610 * MIN)  # 10 minutes, two whole 5m candles
        r = await http.post("/_control/gap", params={"symbol": "BTCUSDT", "start": past[0], "end": past[1]})
        assert r.json() == {"ok": True}
        assert (await http.post("/_control/gap", params={"symbol": "BTCUSDT", "start": 5, "end": 5})).status_code == 400
        assert (await http.post("/_control/gap", params={"symbol": "BTCUSDT"})).status_code == 400

        async def rows(sym="BTCUSDT", interval="1m", **params):
            r = await http.get("/fapi/v1/klines", params={"symbol": sym, "interval": interval, **params})
            assert r.status_code == 200, r.text
            return r.json()

        # the limit counts existing candles: the next 20 after the start, read past the gap
        got = await rows(startTime=past[0] - 5 * MIN, limit=20)
        assert [r[0] for r in got] == [past[0] + i * MIN for i in range(-5, 0)] + [past[1] + i * MIN for i in range(15)]
        # ... and an endTime bounds it: fewer rows
        got = await rows(startTime=past[0] - 5 * MIN, endTime=past[1] + 4 * MIN, limit=100)
        assert [r[0] for r in got] == [past[0] + i * MIN for i in range(-5, 0)] + [past[1] + i * MIN for i in range(5)]
        assert not any(past[0] <= r[0] < past[1] for r in await rows(endTime=past[1] + 2 * MIN, limit=30))
        assert len(await rows(endTime=past[1] + 2 * MIN, limit=30)) == 30
        five = [r[0] for r in await rows(interval="5m", startTime=past[0] - 10 * MIN, endTime=past[1] + 5 * MIN)]
        assert five == [past[0] - 10 * MIN, past[0] - 5 * MIN, past[1], past[1] + 5 * MIN]
        truth = ex.history("BTCUSDT", "1m", past[0] - MIN, past[1])["open_time"].dt.epoch("ms").to_list()
        assert truth == [past[0] - MIN, past[1]]
        other = await rows("ETHUSDT", startTime=past[0], endTime=past[1] - MIN)
        assert len(other) == 10  # another symbol keeps its minutes
        # dumps leave the minutes out
        day = dt.datetime.fromtimestamp(day0 / 1000, dt.UTC).strftime("%Y-%m-%d")
        r = await http.get(f"/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-{day}.zip")
        assert r.status_code == 200
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            lines = zf.read(zf.namelist()[0]).decode().splitlines()
        opens = [int(line.split(",")[0]) for line in lines[1:]]
        assert len(opens) == 1440 - 10 and not any(past[0] <= t < past[1] for t in opens)
        assert opens == [r[0] for r in await rows(startTime=day0, endTime=day0 + 86_400_000 - MIN, limit=1500)]
        # the stream sends no kline frame for the live gap's minutes, finals or updates
        live = ex.now_ms() // MIN * MIN + 12 * MIN  # 6 s ahead at 120x: time to connect on a loaded box
        ex.gap("BTCUSDT", live, live + 2 * MIN)
        async with connect(f"{ex.ws_base}/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m") as ws:
            frames = await collect_until(
                ws, lambda f: any('"x":true' in x and f'"t":{live + 2 * MIN},' in x and "btcusdt" in x for x in f),
                timeout=180)
        btc = klines(frames, "btcusdt@kline_1m")
        assert not any(live <= k["t"] < live + 2 * MIN for k in btc)
        assert any(k["t"] == live - MIN and k["x"] for k in btc) or btc[0]["t"] >= live
        eth = {k["t"] for k in klines(frames, "ethusdt@kline_1m") if k["x"]}
        assert {live, live + MIN} <= eth  # ETHUSDT streams those minutes as usual
        assert not any(live <= r[0] < live + 2 * MIN for r in await rows(startTime=live - 5 * MIN, limit=10))


def test_gap_control_parameters_are_checked() -> None:
    """``POST /_control/gap``'s query: a gap is added, or 400 with the reason; never a crash."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    ex = LocalExchange(symbols=("BTCUSDT",), speed=0, start_time=START)
    text = st.one_of(st.none(), st.text(max_size=8), st.integers(-(2**70), 2**70).map(str))

    @settings(max_examples=300, deadline=None)
    @given(text, text, text)
    def check(symbol, start, end):
        q = {k: v for k, v in (("symbol", symbol), ("start", start), ("end", end)) if v is not None}
        before = dict(ex._gaps)
        r = ex._control("gap", q)
        body = json.loads(r.body)
        if r.status_code == 200:
            sym = q["symbol"].upper()
            assert body == {"ok": True} and ex._gaps[sym][-1] == (int(q["start"]), int(q["end"]))
            assert int(q["start"]) < int(q["end"])
        else:
            assert r.status_code == 400 and "bad parameters for gap" in body["error"]
            assert ex._gaps == before

    check()
