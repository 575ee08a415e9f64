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

import asyncio
import contextlib
import itertools
import time
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import polars as pl
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from market.exchange.config import ExchangeConfig, ExchangeStats
from market.exchange.control import Faults, without_gaps
from market.exchange.dumps import DumpSite
from market.exchange.responses import json_response as _json
from market.exchange.rest import Rest, rest_route
from market.exchange.streams import Streams, _Conn
from market.schema import KLINE_SCHEMA, TIME, empty, interval_ms
from market.exchange.wire import rest_rows
from market.synthetic import MINUTE_MS, SyntheticMarket, spec_for

_REGION_MSG = ("Service unavailable from a restricted location according to 'b. Eligibility' in "
               "https://www.binance.com/en/terms. Please contact customer service if you believe "
               "you received this message in error.")


class LocalExchange(Faults, Rest, DumpSite, Streams):
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
            # Prices are a function of (seed, symbol, minute) alone, so an exchange restarted
            # with the same seed serves the same prices for the same minutes (a demo
            # restarted against its old database shows no jump); history only says from
            # when on REST serves them.
            first = cfg.start_time - cfg.history_minutes * MINUTE_MS
            self.market = SyntheticMarket(tuple(spec_for(s) for s in cfg.symbols), cfg.seed, first)
        self._sim = cfg.start_time
        self._t0: float | None = None
        self._server: Server | None = None
        self._clock_task: asyncio.Task | None = None
        self._conns: set[_Conn] = set()
        self._subs: dict[str, set[_Conn]] = {}
        self._wake = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refuse_status = 503
        self._late: list[tuple[int, int, str, int]] = []  # (due, seq, stream, open_ms)
        self._late_seq = itertools.count()
        self._parsed: dict[str, tuple] = {}  # stream name -> parsed (or () if not served)
        self._dump_market: SyntheticMarket | None = None  # its own caches: built in a worker thread
        self._dump_cache: dict[tuple, tuple[str, bytes]] = {}
        self._dump_lock = asyncio.Lock()
        self._init_faults()

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
        return self._closed_rows(symbol, interval_ms(interval), lo, hi, self.now_ms())

    def _closed_rows(self, symbol: str, ims: int, lo: int, hi: int, now: int) -> list[list]:
        """REST rows of the candles opening in [lo, hi] that are closed at ``now``, lie in
        the history (the candle holding its first minute included) and not in a ``gap``,
        a day at a time."""
        assert self.market is not None
        first = self.market.first_ms
        lo = max(lo, first - first % ims)
        hi = min(hi, (now - ims) // ims * ims)  # closed: open + interval <= now
        if lo > hi:
            return []
        cols = without_gaps(self.market.closed(symbol, ims, lo, hi), ims, self._gaps.get(symbol, ()))
        return rest_rows(self.market.specs[symbol], cols, ims)

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

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Plain HTTP (control, REST, dumps) or a WebSocket handshake's fate."""
        url = urlsplit(request.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path.startswith("/_control/"):
            return self._control(url.path.removeprefix("/_control/"), query)
        route = rest_route(url.path)
        if route is not None:
            return await self._rest(*route, query)
        if url.path.startswith("/data/"):
            return await self._dump(url.path)
        if self._ws_route(url.path) is None:
            return _json(404, {"code": -1, "msg": f"Unknown path {url.path}"})
        redirect = self._redirect_response("ws")
        if redirect is not None:
            return redirect
        if time.monotonic() < self._refuse_until:
            self.stats.refused += 1
            msg = _REGION_MSG if self._refuse_status in (403, 451) else "Service unavailable."
            return _json(self._refuse_status, {"code": 0, "msg": msg})
        return None
