"""WebSocket side of the local exchange: routes, subscriptions, delivery, replay and
the synthetic clock that fans frames out."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from market.exchange.config import MALFORMED_KINDS, read_recording
from market.exchange.responses import text as _text
from market.schema import INTERVAL_MS
from market.exchange.wire import kline_data, ticker_data
from market.synthetic import MINUTE_MS, STEP_MS, Candle, spec_for

log = logging.getLogger("market.exchange")

_STREAM = re.compile(r"([a-z0-9]+)@(?:kline_(\w+)|(ticker))")


@dataclass(eq=False)
class _Conn:
    ws: ServerConnection
    raw: bool  # /ws/...: payloads without the {"stream", "data"} wrapper
    queue: asyncio.Queue
    streams: list[str] = field(default_factory=list)
    malformed: int = 0



class Streams:
    """Mixin of LocalExchange: everything that travels over WebSockets."""

    @staticmethod
    def _ws_route(path: str) -> tuple[bool, list[str]] | None:
        """(raw, streams in the URL) for a WebSocket path, None if it is not one."""
        path = path.removeprefix("/market")
        if path in ("/stream", "/ws"):
            return path == "/ws", []
        if path.startswith("/ws/"):
            return True, [s for s in path[4:].split("/") if s]
        return None

    def _parse_stream(self, name: str) -> tuple[str, str | None, int] | None:
        """(SYMBOL, interval or None for ticker, interval ms) if we serve it."""
        hit = self._parsed.get(name)
        if hit is None:
            hit = self._parsed[name] = self._parse_new(name)
        return hit or None

    def _parse_new(self, name: str) -> tuple[str, str | None, int] | tuple[()]:
        m = _STREAM.fullmatch(name)
        if m is None or self.market is None or m[1].upper() not in self.market.specs:
            return ()
        if m[3]:
            return m[1].upper(), None, 0
        return (m[1].upper(), m[2], INTERVAL_MS[m[2]]) if m[2] in INTERVAL_MS else ()

    def _subscribe(self, conn: _Conn, names: list[str]) -> None:
        for name in names:
            if name not in conn.streams:
                conn.streams.append(name)
                if self._parse_stream(name) is not None:
                    self._subs.setdefault(name, set()).add(conn)
                    self._wake.set()

    def _unsubscribe(self, conn: _Conn, names: list[str]) -> None:
        for name in names:
            if name in conn.streams:
                conn.streams.remove(name)
            subs = self._subs.get(name)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self._subs[name]

    async def _handler(self, ws: ServerConnection) -> None:
        route = self._ws_route(urlsplit(ws.request.path).path)
        assert route is not None  # process_request let only WebSocket paths through
        query = dict(parse_qsl(urlsplit(ws.request.path).query))
        size = 4 if self.config.max_speed else 20_000
        conn = _Conn(ws, route[0], asyncio.Queue(size))
        self._subscribe(conn, route[1] + [s for s in query.get("streams", "").split("/") if s])
        self._conns.add(conn)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        writer = asyncio.create_task(self._replay(conn) if self.market is None else self._writer(conn))
        writer.add_done_callback(lambda task: self._writer_done(conn, task))
        try:
            async for message in ws:
                reply = self._on_control_frame(conn, message)
                if not self._flowing.is_set():
                    await self._flowing.wait()
                await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer  # its failure, if any, was logged by _writer_done
            self._unsubscribe(conn, list(conn.streams))
            self._conns.discard(conn)
            self.stats.connections_open -= 1
            while not conn.queue.empty():  # frees a max-speed clock blocked on put()
                conn.queue.get_nowait()

    @staticmethod
    def _writer_done(conn: _Conn, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() and not isinstance(task.exception(), ConnectionClosed):
            log.error("stream writer failed; closing the connection", exc_info=task.exception())
            conn.ws.transport.abort()

    def _on_control_frame(self, conn: _Conn, message: str | bytes) -> str:
        """Binance's answer to SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS."""
        try:
            req = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            return _text({"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}, "id": None})
        rid = req.get("id") if isinstance(req, dict) else None
        if not isinstance(req, dict) or not isinstance(rid, (int, str)) or isinstance(rid, bool):
            return _text({"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}, "id": None})
        method, params = req.get("method"), req.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return _text({"error": {"code": 2, "msg": "Invalid request: invalid stream name"}, "id": rid})
            (self._subscribe if method == "SUBSCRIBE" else self._unsubscribe)(conn, params)
            return _text({"result": None, "id": rid})
        if method == "LIST_SUBSCRIPTIONS":
            return _text({"result": list(conn.streams), "id": rid})
        return _text({"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": rid})

    async def _deliver(self, conn: _Conn, frames: list[bytes]) -> None:
        """Write frames in one go, then wait while the client is behind.

        ``ws.send`` per frame costs ~15 us of Python; framing a whole tick through
        the sans-I/O protocol and writing it once is several times cheaper, which
        is what lets speed=0 measure the consumer rather than this server.
        """
        if not self._flowing.is_set():
            await self._flowing.wait()
        ws = conn.ws
        if ws.protocol.state is not State.OPEN:
            raise ConnectionClosed(None, None)
        for frame in frames:
            ws.protocol.send_text(frame)
            if conn.malformed > 0:
                conn.malformed -= 1
                kind = MALFORMED_KINDS[self._malformed_seq % len(MALFORMED_KINDS)]
                self._malformed_seq += 1
                ws.protocol.send_text(self._malformed_frame(conn, kind))
                self.stats.malformed_sent += 1
                self.stats.frames_sent += 1
        self.stats.frames_sent += len(frames)
        ws.transport.write(b"".join(ws.protocol.data_to_send()))
        while ws.transport.get_write_buffer_size() > 2**20:
            await asyncio.sleep(0.002)

    async def _writer(self, conn: _Conn) -> None:
        while True:
            await self._deliver(conn, await conn.queue.get())

    async def _replay(self, conn: _Conn) -> None:
        """Send the recording raw, with its timing divided by speed; loop if configured."""
        frames = self._recording
        while frames:
            if self.config.max_speed:
                for i in range(0, len(frames), 256):
                    await self._deliver(conn, [f for _, f in frames[i:i + 256]])
                    await asyncio.sleep(0)
            else:
                for (prev, _), (ts, frame) in zip([frames[0], *frames], frames):
                    if ts > prev:
                        await asyncio.sleep((ts - prev) / self.config.speed)
                    await self._deliver(conn, [frame])
            if not self.config.loop:
                return

    def _load_replay(self, path: str | Path) -> None:
        _, frames = read_recording(path)
        self._recording = [(ts, raw.encode()) for ts, raw in frames]
        for _, raw in frames:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                data = orjson.loads(raw).get("data", {})
                self._recorded_symbols.add(data["s"])
                k = data.get("k")
                if k and k["x"] is True:
                    row = [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"], k.get("B", "0")]
                    self._recorded.setdefault((k["s"], k["i"]), {})[k["t"]] = row

    def _malformed_frame(self, conn: _Conn, kind: str) -> bytes:
        stream = next((s for s in conn.streams if "@kline_" in s), "btcusdt@kline_1m")
        sym, _, interval = stream.partition("@kline_")
        ims, now = INTERVAL_MS.get(interval, MINUTE_MS), self.now_ms()
        spec = spec_for(sym.upper())
        scale = 10 ** spec.price_decimals
        p = max(1, round(spec.price * scale))
        candle = Candle(now - now % ims, now - now % ims + ims - 1, p, p, p, p, 10, 3, 5, 10 * p, 5 * p, 1, 3, False, 1)
        data = orjson.loads(kline_data(spec, interval or "1m", candle, now, False))
        k = data["k"]
        if kind == "not_json":
            return f'{{"stream":"{stream}","data":{{"e":"kline","E":{now},"s":'.encode()
        if kind == "missing_fields":
            del k["c"], k["v"], k["t"]
        elif kind == "non_numeric":
            k["x"], k["c"] = True, "abc"
        elif kind == "nan":
            k["x"], k["c"], k["h"] = True, "NaN", "NaN"
        elif kind == "misaligned":
            k["x"], k["t"], k["T"] = True, k["t"] + 17_123, k["T"] + 17_123
        elif kind == "unknown_stream":
            stream, data["s"], k["s"] = "zzzusdt@kline_1m", "ZZZUSDT", "ZZZUSDT"
        return orjson.dumps(data if conn.raw else {"stream": stream, "data": data})

    # -- the synthetic clock -------------------------------------------------

    async def _clock(self) -> None:
        """Advance the sim clock one 250 ms step at a time and fan frames out."""
        cfg, burst, ticks = self.config, 0, 0
        batches: dict[_Conn, list[bytes]] = {}
        while True:
            t = self._sim + STEP_MS
            if cfg.max_speed:
                if not self._subs and not self._late:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
            else:
                delay = self._t0 + (t - cfg.start_time) / cfg.speed / 1000 - time.monotonic()
                burst += 1
                if delay > 0 or burst >= 64:  # yield now and then even when behind
                    burst = 0
                    await asyncio.sleep(max(delay, 0))
            self._sim = t
            self._tick(t, batches)
            ticks += 1
            # flat out, hand over a few hundred frames at a time: per-hand-over costs dominate
            if not cfg.max_speed or ticks >= 256 or sum(map(len, batches.values())) >= 256:
                await self._flush(batches)
                batches, ticks = {}, 0

    def _render(self, stream: str, t: int, open_ms: int | None = None) -> list[str]:
        """The data JSON(s) due on ``stream`` at sim time t."""
        assert self.market is not None
        sym, interval, ims = self._parse_stream(stream)  # type: ignore[misc]
        spec = self.market.specs[sym]
        if interval is None:
            if t % self.config.ticker_ms:
                return []
            w = self.market.window(sym, t)
            return [ticker_data(spec, w, t)] if w else []
        if self._gaps:  # minutes missing at the exchange send no kline frames
            shown = open_ms if open_ms is not None else t - ims if t % ims == 0 else t - t % ims
            if self._in_gap(sym, ims, shown):
                return []
        if open_ms is None and t % ims == 0:  # a candle just closed
            open_ms = t - ims
            if self._late_ms:
                for _ in range(2 if self._duplicate else 1):
                    heapq.heappush(self._late, (t + self._late_ms, next(self._late_seq), stream, t - ims))
                return []
            k = self.market.candle(sym, ims, open_ms, t)
            data = kline_data(spec, interval, k, t, True) if k else None
            return [] if data is None else [data, data] if self._duplicate else [data]
        if open_ms is None and t % self.config.kline_ms:
            return []  # between two forming-candle updates
        k = self.market.candle(sym, ims, t - t % ims if open_ms is None else open_ms, t)
        if k is None:
            return []
        return [kline_data(spec, interval, k, t, k.closed)]

    def _tick(self, t: int, batches: dict[_Conn, list[bytes]]) -> None:
        """Add what is due at sim time t to each connection's batch."""
        due = [(s, None) for s in self._subs]
        while self._late and self._late[0][0] <= t:
            _, _, stream, open_ms = heapq.heappop(self._late)
            due.append((stream, open_ms))
        stalled = not self._flowing.is_set()  # a stalled feed loses what it would have sent
        for stream, open_ms in due:
            conns = self._subs.get(stream)
            if not conns or stalled:
                continue
            for data in self._render(stream, t, open_ms):
                combined = f'{{"stream":"{stream}","data":{data}}}'.encode()
                raw = data.encode()
                for conn in conns:
                    batches.setdefault(conn, []).append(raw if conn.raw else combined)

    async def _flush(self, batches: dict[_Conn, list[bytes]]) -> None:
        for conn, batch in batches.items():
            if self.config.max_speed:
                await conn.queue.put(batch)  # backpressure: wait for the slowest reader
            else:
                try:
                    conn.queue.put_nowait(batch)
                except asyncio.QueueFull:
                    log.warning("dropping a client that stopped reading (%d batches queued)", conn.queue.qsize())
                    conn.ws.transport.abort()
        if self.config.max_speed:
            await asyncio.sleep(0)
