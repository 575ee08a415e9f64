"""REST handlers of the local exchange (klines, ping, time)."""

from __future__ import annotations

import re

from websockets.http11 import Response

from market.exchange.responses import error as _err
from market.exchange.responses import json_response as _json
from market.schema import interval_ms
from market.synthetic import rest_row

_INT = re.compile(r"-?[0-9]{1,20}")


class Rest:
    """Mixin of LocalExchange: answers the REST paths."""

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

