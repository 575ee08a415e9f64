"""REST klines: the gap repair source (backfill on start and after every reconnect).

One ``KlineClient`` per process shares an ``httpx.AsyncClient``. It paginates
within the preset's limit, honours HTTP 429/418 ``Retry-After`` (Binance bans IPs
that ignore it), retries transport errors and 5xx with capped backoff, and turns
everything else into a ``RestError`` worded for the user.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import httpx
import orjson
import polars as pl

from market.binance import RejectCounter, parse_rest_klines
from market.presets import Preset, region_block_message
from market.schema import KLINE_SCHEMA, empty, interval_ms

log = logging.getLogger("market.rest")


class RestError(Exception):
    """A REST request failed for good (after retries), in plain words."""


class KlineClient:
    """Fetches closed klines over REST for one preset."""

    def __init__(
        self,
        preset: Preset,
        client: httpx.AsyncClient | None = None,
        *,
        counter: RejectCounter | None = None,
        retries: int = 6,
        max_wait: float = 60.0,
        timeout: float = 10.0,
    ) -> None:
        self.preset = preset
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._own_client = client is None
        self.counter = counter or RejectCounter()
        self.retries = retries
        self.max_wait = max_wait
        self.requests = 0
        self.rate_limited = 0

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

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
        limit = self.preset.kline_limit
        frames = []
        start = start_ms
        while start < closed_before:
            rows = await self._get(
                {"symbol": symbol.upper(), "interval": interval, "startTime": start, "limit": limit}
            )
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

    async def _get(self, params: dict) -> list:
        url = self.preset.klines_url
        delay = 0.5
        for attempt in range(self.retries + 1):
            self.requests += 1
            try:
                resp = await self._client.get(url, params=params)
            except httpx.HTTPError as exc:
                problem = f"cannot reach {url}: {type(exc).__name__} {exc}".rstrip()
                wait = delay
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        rows = orjson.loads(resp.content)
                    except orjson.JSONDecodeError as exc:
                        raise RestError(f"{url} answered something that is not JSON: {exc}") from exc
                    if not isinstance(rows, list):
                        raise RestError(f"{url} answered {str(rows)[:200]} instead of a list of klines")
                    return rows
                if status in (429, 418):
                    self.rate_limited += 1
                    wait = _retry_after(resp, default=delay)
                    problem = f"rate limited by {url} (HTTP {status}), waiting {wait:g} s as asked"
                    if wait > self.max_wait:
                        raise RestError(f"{problem}: longer than {self.max_wait:g} s, giving up for now")
                elif status in (451, 403):
                    raise RestError(region_block_message(self.preset.name, status))
                elif status >= 500:
                    problem, wait = f"{url} answered HTTP {status}", delay
                else:
                    raise RestError(f"{url} refused {params}: HTTP {status} {resp.text[:200]}")
            if attempt == self.retries:
                raise RestError(f"{problem}; gave up after {self.retries + 1} tries")
            log.warning("%s; retrying", problem)
            await asyncio.sleep(wait * random.uniform(0.9, 1.1))
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")


def _retry_after(resp: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "")))
    except ValueError:
        return default
