"""A local exchange that speaks Binance's public market-data protocol on one port.

For the offline demo, tests (real sockets on 127.0.0.1) and benchmarks. One
`websockets` server answers WebSocket streams (combined ``/market/stream`` and
``/stream``, raw ``/ws/<stream>``, SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS) and,
through ``process_request``, plain HTTP: REST klines (``/fapi/v1/klines``,
``/api/v3/klines``) and fault switches (``POST /_control/<name>?...``).

Data comes from the deterministic synthetic market (market/synthetic.py) on a sim
clock running ``speed`` times real time (``speed=0``: as fast as the slowest client
reads), or from a recording replayed raw to every client (``replay=path``).

Run it: ``python -m market.exchange --port 8765 --symbols 50 --speed 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import math
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import polars as pl
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from market.schema import INTERVAL_MS, KLINE_SCHEMA, TIME, empty, interval_ms
from market.synthetic import (DEFAULT_SYMBOLS, MINUTE_MS, STEP_MS, Candle, SyntheticMarket,
                              kline_data, rest_row, spec_for, ticker_data)

ANCHOR_MS = 7 * 86_400_000

log = logging.getLogger(__name__)

REST_LIMITS = {"/fapi/v1/klines": 1500, "/api/v3/klines": 1000}
_STREAM = re.compile(r"([a-z0-9]+)@(?:kline_(\w+)|(ticker))")
_INT = re.compile(r"-?[0-9]{1,20}")
_REGION_MSG = ("Service unavailable from a restricted location according to 'b. Eligibility' in "
               "https://www.binance.com/en/terms. Please contact customer service if you believe "
               "you received this message in error.")
MALFORMED_KINDS = ("not_json", "missing_fields", "non_numeric", "nan", "misaligned", "unknown_stream")


@dataclass(frozen=True)
class ExchangeConfig:
    """How the local exchange runs. ``symbols`` may be a count of the default list."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    symbols: tuple[str, ...] | int = DEFAULT_SYMBOLS
    interval: str = "1m"  # default for history(); streams and REST serve every interval
    speed: float = 1.0  # sim seconds per real second; 0 or inf: as fast as clients read
    seed: int = 0
    replay: str | Path | None = None
    loop: bool = True  # replay: start over at the end
    history_minutes: int = 3 * 1440
    start_time: int | None = None  # ms; default now (floored to 250 ms)
    ticker_ms: int = 1000
    rest_forming: bool = True  # REST's last row may be the forming candle, like Binance

    def __post_init__(self) -> None:
        syms = self.symbols
        if isinstance(syms, int):
            syms = DEFAULT_SYMBOLS[:syms]
        object.__setattr__(self, "symbols", tuple(s.upper() for s in syms))
        interval_ms(self.interval)
        if not self.speed >= 0 or self.seed < 0 or self.history_minutes < 0:
            raise ValueError("speed, seed and history_minutes must be >= 0")
        if self.ticker_ms <= 0 or self.ticker_ms % STEP_MS:
            raise ValueError(f"ticker_ms must be a multiple of {STEP_MS}")
        # now, not the minute's start: at speed 1 the sim clock must match the wall clock
        start = self.start_time if self.start_time is not None else int(time.time() * 1000)
        object.__setattr__(self, "start_time", start - start % STEP_MS)

    @property
    def max_speed(self) -> bool:
        return self.speed == 0 or math.isinf(self.speed)


@dataclass
class ExchangeStats:
    """Counters a test or benchmark can read (``ex.stats``)."""

    connections_total: int = 0
    connections_open: int = 0
    frames_sent: int = 0  # data frames, malformed ones included
    malformed_sent: int = 0
    rest_requests: int = 0
    refused: int = 0


@dataclass(eq=False)
class _Conn:
    ws: ServerConnection
    raw: bool  # /ws/...: payloads without the {"stream", "data"} wrapper
    queue: asyncio.Queue
    streams: list[str] = field(default_factory=list)
    malformed: int = 0


def read_recording(path: str | Path) -> tuple[str, list[tuple[float, str]]]:
    """(url, [(receive time, raw frame), ...]) from a fixtures-format recording."""
    lines = Path(path).read_text().splitlines()
    url = lines[0].rpartition(" <-> ")[0]
    frames = []
    for line in lines[1:]:
        ts, sep, raw = line.partition(": ")
        if sep:
            frames.append((float(ts), raw))
    return url, frames


def _json(status: int, body: Any, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Connection", "close"), *extra])
    with contextlib.suppress(ValueError):
        return Response(status, HTTPStatus(status).phrase, headers, data)
    return Response(status, "Error", headers, data)


def _text(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _err(code: int, msg: str, status: int = 400) -> Response:
    return _json(status, {"code": code, "msg": msg})


class LocalExchange:
    """A Binance-compatible market-data server; see the module docstring.

    ``LocalExchange(symbols=("BTCUSDT",), speed=60)`` or ``LocalExchange(config)``;
    use ``async with`` or ``await start()`` / ``await stop()``.
    """

    def __init__(self, config: ExchangeConfig | None = None, /, **overrides: Any) -> None:
        self.config = cfg = ExchangeConfig(**{**(asdict(config) if config else {}), **overrides})
        self.stats = ExchangeStats()
        self.market: SyntheticMarket | None = None
        self._recording: list[tuple[float, bytes]] = []
        self._recorded: dict[tuple[str, str], dict[int, list]] = {}
        self._recorded_symbols: set[str] = set()
        if cfg.replay is not None:
            self._load_replay(cfg.replay)
        else:
            first = cfg.start_time - cfg.history_minutes * MINUTE_MS
            first -= first % MINUTE_MS
            # The path starts at a fixed weekly anchor, so an exchange restarted with
            # the same seed serves the same prices for the same minutes (a demo
            # restarted against its old database shows no jump).
            origin = first - first % ANCHOR_MS
            self.market = SyntheticMarket(tuple(spec_for(s) for s in cfg.symbols), cfg.seed, origin, first)
        self._sim = cfg.start_time
        self._t0: float | None = None
        self._server: Server | None = None
        self._clock_task: asyncio.Task | None = None
        self._conns: set[_Conn] = set()
        self._subs: dict[str, set[_Conn]] = {}
        self._wake = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._stall_handle: asyncio.TimerHandle | None = None
        self._refuse_until, self._refuse_status = 0.0, 503
        self._duplicate, self._late_ms = False, 0
        self._late: list[tuple[int, int, str, int]] = []  # (due, seq, stream, open_ms)
        self._late_seq = itertools.count()
        self._rest_fail = (0, 429, 1.0)
        self._malformed_seq = 0
        self._parsed: dict[str, tuple] = {}  # stream name -> parsed (or () if not served)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self._server = await serve(
            self._handler, cfg.host, cfg.port, process_request=self._process_request,
            compression=None, ping_interval=180, ping_timeout=600, close_timeout=2,
            write_limit=2**18, server_header="local-exchange")
        self._t0 = time.monotonic()
        if self.market is not None:
            self._clock_task = asyncio.create_task(self._clock(), name="exchange-clock")

    async def stop(self) -> None:
        self._end_stall()
        if self._clock_task is not None:
            self._clock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock_task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> LocalExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the exchange first"
        return self._server.sockets[0].getsockname()[1]

    @property
    def _host(self) -> str:
        return "127.0.0.1" if self.config.host in ("", "0.0.0.0", "::") else self.config.host

    @property
    def ws_base(self) -> str:
        return f"ws://{self._host}:{self.port}/market"

    @property
    def rest_base(self) -> str:
        return f"http://{self._host}:{self.port}"

    def now_ms(self) -> int:
        """The sim clock: the last tick at max speed, else real time scaled by speed."""
        if self.config.max_speed or self._t0 is None:
            return self._sim
        return self.config.start_time + int((time.monotonic() - self._t0) * self.config.speed * 1000)

    # -- fault switches ------------------------------------------------------

    def drop_connections(self) -> int:
        """Abort every WebSocket's TCP connection (no close frame: the client sees 1006)."""
        for conn in list(self._conns):
            conn.ws.transport.abort()
        return len(self._conns)

    def refuse(self, seconds: float, status: int = 503) -> None:
        """Reject new WebSocket handshakes with ``status`` for ``seconds`` (451/403: region block)."""
        self._refuse_until, self._refuse_status = time.monotonic() + seconds, int(status)

    def stall(self, seconds: float) -> None:
        """Send nothing and read nothing (so pings go unanswered) for ``seconds``; ticks are lost."""
        self._flowing.clear()
        for conn in self._conns:
            conn.ws.transport.pause_reading()
        if self._stall_handle is not None:
            self._stall_handle.cancel()
        self._stall_handle = asyncio.get_running_loop().call_later(seconds, self._end_stall)

    def _end_stall(self) -> None:
        self._stall_handle = None
        self._flowing.set()
        for conn in self._conns:
            if not conn.ws.transport.is_closing():
                conn.ws.transport.resume_reading()

    def malformed(self, n: int) -> None:
        """Every open connection gets n bad frames, one after each of its next normal frames,
        cycling through MALFORMED_KINDS."""
        for conn in self._conns:
            conn.malformed += int(n)

    def duplicate_finals(self, on: bool = True) -> None:
        self._duplicate = bool(on)

    def late_finals(self, seconds: float) -> None:
        """Delay each final kline by ``seconds`` of sim time (0: on time)."""
        self._late_ms = int(seconds * 1000)

    def rest_fail(self, n: int, status: int = 429, retry_after: float = 1) -> None:
        """The next n REST requests answer ``status`` with a Retry-After header."""
        self._rest_fail = (int(n), int(status), retry_after)

    def reset_faults(self) -> None:
        self._end_stall()
        self._refuse_until, self._duplicate, self._late_ms, self._rest_fail = 0.0, False, 0, (0, 429, 1.0)
        for conn in self._conns:
            conn.malformed = 0

    # -- history (the truth tests compare with) ------------------------------

    def history_rows(self, symbol: str, interval: str | None = None,
                     start_ms: int | None = None, end_ms: int | None = None) -> list[list]:
        """Closed candles with open_time in [start_ms, end_ms], as REST rows."""
        interval = interval or self.config.interval
        lo, hi = start_ms if start_ms is not None else -(2**62), end_ms if end_ms is not None else 2**62
        if self.market is None:
            rows = self._recorded.get((symbol, interval), {})
            return [rows[t] for t in sorted(rows) if lo <= t <= hi]
        if symbol not in self.market.specs:
            raise ValueError(f"{symbol!r} is not traded here; symbols: {', '.join(self.market.specs)}")
        now, spec = self.now_ms(), self.market.specs[symbol]
        return [rest_row(spec, k) for k in self.market.candles(symbol, interval_ms(interval), lo, hi, now) if k.closed]

    def history(self, symbol: str, interval: str | None = None,
                start_ms: int | None = None, end_ms: int | None = None) -> pl.DataFrame:
        """Closed candles as a KLINE_SCHEMA frame (times naive UTC Datetime("us"))."""
        interval = interval or self.config.interval
        rows = self.history_rows(symbol, interval, start_ms, end_ms)
        if not rows:
            return empty(KLINE_SCHEMA)
        cols = list(zip(*rows))
        ms = lambda i: pl.Series(cols[i], dtype=pl.Int64).cast(pl.Datetime("ms")).cast(TIME)  # noqa: E731
        num = lambda i: pl.Series(cols[i], dtype=pl.String).cast(pl.Float64)  # noqa: E731
        return pl.DataFrame({
            "symbol": [symbol] * len(rows), "interval": [interval] * len(rows),
            "open_time": ms(0), "close_time": ms(6), "open": num(1), "high": num(2), "low": num(3),
            "close": num(4), "volume": num(5), "quote_volume": num(7),
            "trades": pl.Series(cols[8], dtype=pl.Int64), "taker_buy_volume": num(9),
            "taker_buy_quote_volume": num(10)}, schema=KLINE_SCHEMA)

    # -- HTTP side -------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path.startswith("/_control/"):
            return self._control(url.path.removeprefix("/_control/"), query)
        if url.path in REST_LIMITS or url.path in ("/fapi/v1/ping", "/api/v3/ping", "/fapi/v1/time", "/api/v3/time"):
            self.stats.rest_requests += 1
            n, status, retry = self._rest_fail
            if n > 0:
                self._rest_fail = (n - 1, status, retry)
                return _json(status, {"code": -1003, "msg": "Too many requests; please use the websocket for live updates."},
                             (("Retry-After", f"{retry:g}"),))
            if url.path.endswith("/ping"):
                return _json(200, {})
            if url.path.endswith("/time"):
                return _json(200, {"serverTime": self.now_ms()})
            return self._klines(REST_LIMITS[url.path], url.path.startswith("/fapi"), query)
        if self._ws_route(url.path) is None:
            return _json(404, {"code": -1, "msg": f"Unknown path {url.path}"})
        if time.monotonic() < self._refuse_until:
            self.stats.refused += 1
            msg = _REGION_MSG if self._refuse_status in (403, 451) else "Service unavailable."
            return _json(self._refuse_status, {"code": 0, "msg": msg})
        return None

    def _klines(self, max_limit: int, futures: bool, q: dict[str, str]) -> Response:
        sym, interval = q.get("symbol", ""), q.get("interval", "")
        for name, value in (("symbol", sym), ("interval", interval)):
            if not value:
                return _err(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        if not re.fullmatch(r"[A-Z0-9\-_.]{1,20}", sym):
            return _err(-1100, "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.")
        nums: dict[str, int | None] = {}
        for name in ("startTime", "endTime", "limit"):
            value = q.get(name)
            if value is not None and not _INT.fullmatch(value):
                return _err(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^-?[0-9]{{1,20}}$'.")
            nums[name] = int(value) if value is not None else None
        try:
            ims = interval_ms(interval)
        except ValueError:
            return _err(-1120, "Invalid interval.")
        known = self.market.specs if self.market else self._recorded_symbols
        if sym not in known:
            return _err(-1121, "Invalid symbol.")
        limit = 500 if nums["limit"] is None else nums["limit"]
        start, end = nums["startTime"], nums["endTime"]
        if limit < 1 or (futures and limit > max_limit):
            return _err(-1130, "Data sent for parameter 'limit' is not valid.")
        limit = min(limit, max_limit)  # spot caps silently
        if start is not None and end is not None and start > end:
            return _err(-1023, "Start time is greater than end time.")
        return _json(200, self._kline_rows(sym, interval, ims, start, end, limit))

    def _kline_rows(self, sym: str, interval: str, ims: int, start: int | None, end: int | None, limit: int) -> list:
        if self.market is None:
            rows = self.history_rows(sym, interval, start, end)
            return rows[:limit] if start is not None else rows[-limit:]
        now = self.now_ms()
        if start is not None:
            lo = max(start, self.market.first_ms - self.market.first_ms % ims)
            lo += -lo % ims
            hi = lo + (limit - 1) * ims if end is None else min(end, lo + (limit - 1) * ims)
        else:
            hi = min(now if end is None else end, now)
            hi -= hi % ims
            lo = hi - limit * ims  # one spare: the newest candle may not have started yet
        candles = self.market.candles(sym, ims, lo, hi, now)
        if not self.config.rest_forming:
            candles = [k for k in candles if k.closed]
        spec = self.market.specs[sym]
        return [rest_row(spec, k) for k in (candles[:limit] if start is not None else candles[-limit:])]

    def _control(self, name: str, q: dict[str, str]) -> Response:
        on = lambda key: q.get(key, "true").lower() in ("1", "true", "yes", "on")  # noqa: E731
        opt = lambda key: int(q[key]) if key in q else None  # noqa: E731
        try:
            out: Any = {"ok": True}
            if name == "drop_connections":
                out = {"ok": True, "dropped": self.drop_connections()}
            elif name == "refuse":
                self.refuse(float(q.get("seconds", 5)), int(q.get("status", 503)))
            elif name == "stall":
                self.stall(float(q.get("seconds", 5)))
            elif name == "malformed":
                self.malformed(int(q.get("n", 1)))
            elif name == "duplicate_finals":
                self.duplicate_finals(on("on"))
            elif name == "late_finals":
                self.late_finals(float(q.get("seconds", 5)))
            elif name == "rest_fail":
                self.rest_fail(int(q.get("n", 1)), int(q.get("status", 429)), float(q.get("retry_after", 1)))
            elif name == "reset":
                self.reset_faults()
            elif name == "stats":
                out = {**asdict(self.stats), "connections_open": len(self._conns), "now": self.now_ms()}
            elif name == "history":
                out = self.history_rows(q["symbol"], q.get("interval"), opt("start_ms"), opt("end_ms"))
            else:
                return _json(404, {"error": f"unknown control {name!r}"})
        except (KeyError, ValueError) as exc:
            return _json(400, {"error": f"bad parameters for {name}: {exc!r}"})
        return _json(200, out)

    # -- WebSocket side ------------------------------------------------------

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
        if open_ms is None and t % ims == 0:  # a candle just closed
            open_ms = t - ims
            if self._late_ms:
                for _ in range(2 if self._duplicate else 1):
                    heapq.heappush(self._late, (t + self._late_ms, next(self._late_seq), stream, t - ims))
                return []
            k = self.market.candle(sym, ims, open_ms, t)
            data = kline_data(spec, interval, k, t, True) if k else None
            return [] if data is None else [data, data] if self._duplicate else [data]
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


def main(argv: list[str] | None = None) -> int:
    """``python -m market.exchange``: serve until SIGINT/SIGTERM, then exit 0."""
    ap = argparse.ArgumentParser(prog="python -m market.exchange", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    ap.add_argument("--symbols", default="50", help="a count of the default list, or A,B,...")
    ap.add_argument("--interval", default="1m")
    ap.add_argument("--speed", type=float, default=1.0, help="sim speed; 0 or inf: as fast as possible")
    ap.add_argument("--replay", default=None, help="replay a recording (fixtures format) instead")
    ap.add_argument("--no-loop", action="store_true", help="replay once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--history-minutes", type=int, default=3 * 1440)
    args = ap.parse_args(argv)
    symbols: int | tuple[str, ...] = (int(args.symbols) if args.symbols.isdigit()
                                      else tuple(s for s in args.symbols.split(",") if s))
    config = ExchangeConfig(host=args.host, port=args.port, symbols=symbols, interval=args.interval,
                            speed=args.speed, seed=args.seed, replay=args.replay, loop=not args.no_loop,
                            history_minutes=args.history_minutes)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve_until_signal(config))
    return 0


async def _serve_until_signal(config: ExchangeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LocalExchange(config) as ex:
        print(json.dumps({"ws": ex.ws_base, "rest": ex.rest_base, "port": ex.port,
                          "symbols": len(config.symbols), "speed": config.speed}), flush=True)
        await stop.wait()


if __name__ == "__main__":
    sys.exit(main())
