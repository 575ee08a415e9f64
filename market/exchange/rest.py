"""REST handlers of the local exchange: klines, ticker/24hr, exchangeInfo, ping, time.

Every answer under ``/fapi/v1`` (futures) and ``/api/v3`` (spot) carries the market's
``X-MBX-USED-WEIGHT-<n><unit>`` header; faults (latency, redirects, rate limits,
failures) apply in that order before the handler runs.
"""

from __future__ import annotations

import asyncio
import re
import time

from websockets.http11 import Response

from market.exchange.limits import kline_weight, ticker_weight
from market.exchange.responses import error as _err
from market.exchange.responses import json_response as _json
from market.schema import interval_ms
from market.exchange.wire import rest_row, symbol_info, ticker_24hr

_INT = re.compile(r"-?[0-9]{1,20}")
_SYMBOL = re.compile(r"[A-Z0-9\-_.]{1,20}")
PREFIXES = {"/fapi/v1/": True, "/api/v3/": False}  # prefix -> futures?
MAX_LIMIT = {True: 1500, False: 1000}
_FIXED_WEIGHT = {("ping", True): 1, ("ping", False): 1, ("time", True): 1, ("time", False): 1,
                 ("exchangeInfo", True): 1, ("exchangeInfo", False): 20}
_FUTURES_LIMITS = [{"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                   {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300}]
_SPOT_LIMITS = [{"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000}]
_FAIL_MSG = {429: (-1003, "Too many requests; please use the websocket for live updates."),
             418: (-1003, "Way too many requests; IP banned until further notice.")}


def rest_route(path: str) -> tuple[bool, str] | None:
    """(futures?, endpoint) for ``/fapi/v1/klines`` -> (True, "klines"); None if not REST."""
    for prefix, futures in PREFIXES.items():
        if path.startswith(prefix):
            return futures, path.removeprefix(prefix)
    return None


def request_weight(futures: bool, endpoint: str, q: dict[str, str]) -> int:
    """Binance's weight of one request (unknown endpoints cost 1)."""
    if endpoint == "klines":
        limit = q.get("limit")
        return kline_weight(futures, int(limit) if limit and _INT.fullmatch(limit) else None)
    if endpoint == "ticker/24hr":
        return ticker_weight(futures, "symbol" in q)
    return _FIXED_WEIGHT.get((endpoint, futures), 1)


class Rest:
    """Mixin of LocalExchange: answers the REST paths."""

    async def _rest(self, futures: bool, endpoint: str, q: dict[str, str]) -> Response:
        """Faults first (latency, redirect, weight, failures), then the endpoint."""
        self.stats.rest_requests += 1
        if self._rest_latency > 0:
            await asyncio.sleep(self._rest_latency)
        redirect = self._redirect_response("rest")
        if redirect is not None:
            return redirect
        budget = self.budgets[futures]
        status, retry = budget.charge(request_weight(futures, endpoint, q))
        if status == 200:
            status, retry = self._injected_failure()
        if status != 200:
            if status in _FAIL_MSG:
                code, msg = _FAIL_MSG[status]
            else:
                code, msg = -1001, "Internal error; unable to process your request. Please try again."
            if status in (418, 429):
                setattr(self.stats, f"http_{status}", getattr(self.stats, f"http_{status}") + 1)
            elif status >= 500:
                self.stats.http_5xx += 1
            extra = (("Retry-After", f"{retry:g}"),) if retry else ()
            response = _json(status, {"code": code, "msg": msg}, extra)
        else:
            response = self._endpoint(futures, endpoint, q)
        response.headers[budget.header] = str(budget.used)
        return response

    def _injected_failure(self) -> tuple[int, float]:
        """(status, Retry-After) of a switched-on failure, (200, 0) when none applies."""
        n, status, retry = self._rest_fail
        if n > 0:
            self._rest_fail = (n - 1, status, retry)
            return status, retry
        fraction, status = self._rest_errors
        if fraction > 0 and self._fault_rng.random() < fraction:
            return status, 0
        return 200, 0

    def _endpoint(self, futures: bool, endpoint: str, q: dict[str, str]) -> Response:
        if endpoint == "klines":
            return self._klines(MAX_LIMIT[futures], futures, q)
        if endpoint == "ticker/24hr":
            return self._ticker(futures, q)
        if endpoint == "exchangeInfo":
            return self._exchange_info(futures)
        if endpoint == "ping":
            return _json(200, {})
        if endpoint == "time":
            return _json(200, {"serverTime": self.now_ms()})
        return _json(404, {"code": -1, "msg": f"Unknown path {endpoint}"})

    def _symbols(self) -> list[str]:
        """The symbols REST answers for (delisted ones answer -1121)."""
        known = list(self.market.specs) if self.market else sorted(self._recorded_symbols)
        return [s for s in known if s not in self._delisted]

    def _check_symbol(self, sym: str) -> Response | None:
        if not _SYMBOL.fullmatch(sym):
            return _err(-1100, "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.")
        if sym not in self._symbols():
            return _err(-1121, "Invalid symbol.")
        return None

    def _exchange_info(self, futures: bool) -> Response:
        specs = self.market.specs if self.market else {}
        return _json(200, {
            "timezone": "UTC", "serverTime": self.now_ms(),
            "rateLimits": [self.budgets[futures].rate_limit(), *(_FUTURES_LIMITS if futures else _SPOT_LIMITS)],
            "exchangeFilters": [],
            "symbols": [symbol_info(specs[s], futures) for s in self._symbols() if s in specs]})

    def _ticker(self, futures: bool, q: dict[str, str]) -> Response:
        if "symbol" in q:
            bad = self._check_symbol(q["symbol"])
            if bad is not None:
                return bad
        if self.market is None:  # a replay knows no 24 h windows
            return _json(200, []) if "symbol" not in q else _err(-1121, "Invalid symbol.")
        now = self.now_ms()
        out = []
        for sym in [q["symbol"]] if "symbol" in q else self._symbols():
            w = self.market.window(sym, now)
            if w is not None:
                out.append(ticker_24hr(self.market.specs[sym], w, futures))
        if "symbol" in q:
            return _json(200, out[0]) if out else _err(-1121, "Invalid symbol.")
        return _json(200, out)

    def _klines(self, max_limit: int, futures: bool, q: dict[str, str]) -> Response:
        sym, interval = q.get("symbol", ""), q.get("interval", "")
        for name, value in (("symbol", sym), ("interval", interval)):
            if not value:
                return _err(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        if not _SYMBOL.fullmatch(sym):
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
        bad = self._check_symbol(sym)
        if bad is not None:
            return bad
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
        rows = self._closed_rows(sym, ims, lo, hi, now)
        if sym in self._gaps:  # missing minutes do not count toward the limit: read on past them
            first = self.market.first_ms - self.market.first_ms % ims
            top = now if end is None else min(end, now)
            while len(rows) < limit and start is not None and hi + ims <= top:
                lo2, hi = hi + ims, min(top - top % ims, hi + (limit - len(rows)) * ims)
                rows += self._closed_rows(sym, ims, lo2, hi, now)
            while len(rows) < limit and start is None and lo - ims >= first:
                hi2, lo = lo - ims, max(first, lo - (limit - len(rows)) * ims)
                rows[:0] = self._closed_rows(sym, ims, lo, hi2, now)
        forming = now - now % ims
        if self.config.rest_forming and lo <= forming <= hi:  # Binance's last row: close_time in the future
            k = None if self._in_gap(sym, ims, forming) else self.market.candle(sym, ims, forming, now)
            if k is not None:
                rows.append(rest_row(self.market.specs[sym], k))
        return rows[:limit] if start is not None else rows[-limit:]

    def _redirect_response(self, scope: str) -> Response | None:
        """A switched-on redirect (see Faults.redirect) for a ``scope`` ("ws" or "rest") request."""
        until, status, location, scopes = self._redirect
        if time.monotonic() >= until or scope not in scopes:
            return None
        self.stats.redirected += 1
        return _json(status, {"code": 0, "msg": f"Moved to {location}"}, (("Location", location),))
