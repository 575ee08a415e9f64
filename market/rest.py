"""REST market data: klines for gap repair and backfill, exchangeInfo, ticker/24hr, time.

One ``KlineClient`` per process (the live feed's gap repair and ``store.backfill``
use the same class, and every client of one host shares one ``WeightLimiter``).
Every request books its weight first and resyncs from the answer's
``X-MBX-USED-WEIGHT-*`` headers (market/ratelimit.py). HTTP 429/418 stop every
request for ``Retry-After``; transport errors and 5xx are retried with capped
backoff; a redirect, 403 or 451 is a likely region block (never followed); a 400
names the symbol. Everything else becomes a ``RestError`` worded for the user.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

import httpx
import orjson
import polars as pl

from market.binance import RejectCounter, parse_rest_klines
from market.presets import PRESETS, Preset, region_block_message
from market.ratelimit import (WeightLimiter, best_page, default_windows, klines_weight, limiter_for,
                              windows_from_exchange_info)
from market.schema import KLINE_SCHEMA, empty, interval_ms

log = logging.getLogger("market.rest")


class RestError(Exception):
    """A REST request failed for good (after retries), in plain words."""


class SymbolRejected(RestError):
    """The exchange refused a request about one symbol (HTTP 400: unknown symbol, bad interval)."""

    def __init__(self, message: str, symbol: str, code: int | None) -> None:
        super().__init__(message)
        self.symbol, self.code = symbol, code


class RegionBlocked(RestError):
    """A redirect, 403 or 451: a region block, a proxy or a captive portal."""


class RateLimited(RestError):
    """Over the weight budget for longer than we are willing to wait (or banned: 418)."""


class KlineClient:
    """REST requests for one preset, paced under the host's weight budget."""

    def __init__(
        self,
        preset: Preset,
        client: httpx.AsyncClient | None = None,
        *,
        counter: RejectCounter | None = None,
        retries: int = 6,
        max_wait: float = 60.0,
        timeout: float = 10.0,
        limiter: WeightLimiter | None = None,
        flags: Sequence[str] = ("--exchange",),
    ) -> None:
        self.preset = preset
        # redirects are never followed: Binance does not redirect API calls, a block page does
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._own_client = client is None
        self.counter = counter or RejectCounter()
        self.retries = retries
        self.max_wait = max_wait
        self.limiter = limiter or limiter_for(preset.rest_base, preset.spot)
        self.flags = tuple(flags)
        self.api = preset.rest_base + preset.klines_path.rsplit("/", 1)[0]  # .../fapi/v1 or .../api/v3
        self.requests = 0  # attempts, retries included
        self.rate_limited = 0  # 429 and 418 answers
        self.weight = 0  # weight booked by this client
        self.budget_known = False

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    # -- endpoints ------------------------------------------------------------------

    async def exchange_info(self) -> dict:
        """``exchangeInfo`` once: the weight budget for the shared limiter and the server's clock.

        If it cannot be read, Binance's documented defaults (futures 2400, spot 6000
        a minute) stay in force, and the answers' headers still resync the count.
        """
        try:
            info = await self.get("exchangeInfo", {}, 20 if self.preset.spot else 1)
        except (RegionBlocked, RateLimited):
            raise
        except RestError as exc:
            log.warning("no exchangeInfo (%s): assuming the documented budget %s", exc,
                        default_windows(self.preset.spot)[0].describe())
            self.budget_known = True
            return {}
        windows = windows_from_exchange_info(info) if isinstance(info, dict) else ()
        if windows:
            self.limiter.set_windows(windows)
        self.budget_known = True
        return info if isinstance(info, dict) else {}

    async def ensure_budget(self) -> None:
        if not self.budget_known:
            await self.exchange_info()

    async def server_time(self) -> int:
        """The exchange's clock in ms (``GET time``; a local exchange's clock may run fast)."""
        body = await self.get("time", {}, 1)
        try:
            return int(body["serverTime"])
        except (KeyError, TypeError, ValueError):
            raise RestError(f"{self.api}/time answered {str(body)[:200]} without a serverTime") from None

    async def tickers_24hr(self) -> list[dict]:
        """Every symbol's 24 h ticker in one call (weight 40 futures, 80 spot)."""
        body = await self.get("ticker/24hr", {}, 80 if self.preset.spot else 40)
        if not isinstance(body, list):
            raise RestError(f"{self.api}/ticker/24hr answered {str(body)[:200]} instead of a list")
        return body

    async def top_symbols(self, n: int) -> list[str]:
        """The ``n`` symbols with the highest 24 h quote volume. One entry (futures, trimmed)::

            {"symbol": "BTCUSDT", "priceChange": "-94.99", "lastPrice": "67905.01",
             "volume": "179826.114", "quoteVolume": "12203842581.42", "count": 2841337, ...}
        """
        ranked = []
        for t in await self.tickers_24hr():
            try:
                ranked.append((float(t["quoteVolume"]), str(t["symbol"])))
            except (KeyError, TypeError, ValueError):
                continue
        ranked.sort(key=lambda p: (-p[0], p[1]))
        return [s for _, s in ranked[:n]]

    async def klines(self, symbol: str, interval: str, start_ms: int, end_ms: int | None, limit: int) -> list:
        """One klines request: raw rows with open_time in [start_ms, end_ms] (inclusive), at most ``limit``."""
        params = {"symbol": symbol.upper(), "interval": interval, "startTime": start_ms, "limit": limit}
        if end_ms is not None:
            params["endTime"] = end_ms
        rows = await self.get("klines", params, klines_weight(limit, self.preset.spot))
        if not isinstance(rows, list):
            raise RestError(f"{self.preset.klines_url} answered {str(rows)[:200]} instead of a list of klines")
        return rows

    @property
    def page(self) -> int:
        """Rows per request for long ranges: the most candles per unit of weight."""
        return best_page(self.preset.kline_limit, self.preset.spot)

    async def fetch(
        self,
        symbol: str,
        interval: str,
        start_ms: int,
        *,
        closed_before: int,
        on_page: Callable[[int], None] | None = None,
    ) -> pl.DataFrame:
        """Closed klines of ``symbol`` from ``start_ms`` (an open_time) on, every page.

        ``closed_before`` is the server's "now" in ms (from the stream's event
        times, so it also holds for a local exchange whose clock runs fast): rows
        closing at or after it are still forming and are left out.
        """
        step = interval_ms(interval)
        # a small range in a small page: futures weigh a 1500-row page 10 and a 99-row one
        # 1, and a reconnect repairs 50 symbols' holes of a few candles at once; a long one
        # in the largest pages (fewest round trips: the live feed waits on them)
        need = -(-(closed_before - start_ms) // step) + 1
        limit = min(self.preset.kline_limit, need) if 0 < need < 100 else self.preset.kline_limit
        frames = []
        start = start_ms
        while start < closed_before:
            rows = await self.klines(symbol, interval, start, None, limit)
            frame = parse_rest_klines(rows, symbol, interval, self.counter, closed_before)
            if frame.height:
                frames.append(frame)
            if on_page:
                on_page(frame.height)
            if len(rows) < limit or not rows:
                break
            last_open = rows[-1][0] if isinstance(rows[-1], list) and rows[-1] else None
            if not isinstance(last_open, int) or last_open + step <= start:
                break  # a page we cannot advance from: stop instead of looping
            start = last_open + step
        return pl.concat(frames) if frames else empty(KLINE_SCHEMA)

    # -- one request, paced and retried ---------------------------------------------

    async def get(self, endpoint: str, params: dict, weight: int):
        """GET ``{api}/{endpoint}`` and return its JSON; see the module docstring for errors."""
        url = f"{self.api}/{endpoint}"
        delay = 0.5
        for attempt in range(self.retries + 1):
            await self.limiter.acquire(weight)
            self.requests += 1
            self.weight += weight
            try:
                resp = await self._client.get(url, params=params)
            except httpx.HTTPError as exc:
                self.limiter.settle(weight)
                problem = f"cannot reach {url}: {type(exc).__name__} {exc}".rstrip()
                wait = delay
            else:
                self.limiter.settle(weight, resp.headers)
                status = resp.status_code
                if status == 200:
                    try:
                        return orjson.loads(resp.content)
                    except orjson.JSONDecodeError as exc:
                        raise RestError(f"{url} answered something that is not JSON: {exc}") from exc
                if status in (429, 418):
                    self.rate_limited += 1
                    wait = _retry_after(resp, default=max(delay, 1.0))
                    self.limiter.block(wait)  # every request waits, or the next one earns a ban
                    what = "" if status == 429 else ": this IP is banned for a while"
                    problem = f"rate limited by {url} (HTTP {status}{what}), waiting {wait:g} s as asked"
                    if wait > self.max_wait:
                        raise RateLimited(f"{problem}: longer than {self.max_wait:g} s, giving up for now")
                    log.warning("%s", problem)
                    continue  # acquire() sits out the wait; not a failed try
                if 300 <= status < 400 or status in (403, 451):
                    raise RegionBlocked(self._region(status, resp))
                if status >= 500:
                    problem, wait = f"{url} answered HTTP {status}", delay
                elif status == 400 and "symbol" in params:
                    raise self._rejected(url, params, resp)
                else:
                    raise RestError(f"{url} refused {params}: HTTP {status} {resp.text[:200]}")
            if attempt == self.retries:
                raise RestError(f"{problem}; gave up after {self.retries + 1} tries")
            log.warning("%s; retrying", problem)
            await asyncio.sleep(wait * random.uniform(0.9, 1.1))
            delay = min(delay * 2, 30.0)
        raise RestError(f"{url}: still rate limited after {self.retries + 1} tries")

    def _region(self, status: int, resp: httpx.Response) -> str:
        name = self.preset.name if self.preset.name in PRESETS else self.preset.market
        detail = None
        try:
            body = orjson.loads(resp.content)
            detail = body.get("msg") if isinstance(body, dict) else None
        except orjson.JSONDecodeError:
            pass
        return region_block_message(name, status, location=resp.headers.get("location"), flags=self.flags,
                                    detail=detail if status in (403, 451) else None)

    @staticmethod
    def _rejected(url: str, params: dict, resp: httpx.Response) -> SymbolRejected:
        """Binance's 400 answer, e.g. ``{"code":-1121,"msg":"Invalid symbol."}``, naming the symbol."""
        code, msg = None, resp.text[:200]
        try:
            body = orjson.loads(resp.content)
            code, msg = body.get("code"), str(body.get("msg", msg))
        except (orjson.JSONDecodeError, AttributeError):
            pass
        symbol = str(params.get("symbol"))
        what = {-1121: "unknown symbol", -1120: f"bad interval {params.get('interval')!r}"}.get(code, "bad request")
        return SymbolRejected(
            f"{symbol}: {what}: {url} refused it (HTTP 400, code {code}: {msg!r})", symbol, code)


def _retry_after(resp: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "")))
    except ValueError:
        return default


def absent_ranges(open_times: Sequence[int], start_ms: int, end_ms: int, step: int) -> list[tuple[int, int]]:
    """Ranges [a, b) of open times in [start_ms, end_ms) that ``open_times`` (sorted) skip.

    For an answer that asked for [start_ms, end_ms): what the exchange does not have
    there. A trailing range is only confirmed absent if a later candle exists, which
    the caller knows, not this function.
    """
    out = []
    cur = start_ms
    for t in open_times:
        if t < cur:
            continue
        if t >= end_ms:
            break
        if t > cur:
            out.append((cur, t))
        cur = t + step
    if cur < end_ms:
        out.append((cur, end_ms))
    return out
