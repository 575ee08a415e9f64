"""Fault switches of the local exchange, as methods and as ``POST /_control/<name>``."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from websockets.http11 import Response

from market.exchange.limits import WeightBudget
from market.exchange.responses import json_response as _json

# Where a redirect fault points: the page Binance sends restricted regions to.
DEFAULT_LOCATION = "https://www.binance.com/en/restricted-location"
MINUTE_MS = 60_000
Gaps = tuple[tuple[int, int], ...]


def gap_mask(open_times: np.ndarray, ims: int, gaps: Gaps) -> np.ndarray:
    """True for candles (open times, ``ims`` long) that exist: a candle is missing when
    every minute of it opens inside one of the half-open ``gaps``."""
    keep = np.ones(len(open_times), dtype=bool)
    for a, b in gaps:
        keep &= ~((open_times >= a) & (open_times + ims - MINUTE_MS < b))
    return keep


def without_gaps(cols: dict[str, np.ndarray], ims: int, gaps: Gaps) -> dict[str, np.ndarray]:
    """``SyntheticMarket.closed`` columns minus the candles lost in ``gaps``."""
    if not gaps:
        return cols
    keep = gap_mask(cols["open_time"], ims, gaps)
    return cols if keep.all() else {f: v[keep] for f, v in cols.items()}


class Faults:
    """Mixin of LocalExchange: the switches tests and demos flip."""

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

    def rest_errors(self, fraction: float, status: int = 503) -> None:
        """Answer ``status`` (5xx) to that fraction of REST requests, drawn from a seeded RNG."""
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be in [0, 1]")
        self._rest_errors = (float(fraction), int(status))

    def rest_latency(self, seconds: float) -> None:
        """Hold every REST answer back ``seconds`` (slow answers; 0: none)."""
        if not seconds >= 0:
            raise ValueError("seconds must be >= 0")
        self._rest_latency = float(seconds)

    def redirect(self, seconds: float, status: int = 302, location: str = DEFAULT_LOCATION,
                 scope: str = "all") -> None:
        """Answer handshakes (scope "ws"), REST requests ("rest") or both ("all") with a
        ``status`` redirect to ``location`` for ``seconds``: how a region block can look."""
        if not 300 <= int(status) < 400 or scope not in ("ws", "rest", "all"):
            raise ValueError("status must be 3xx and scope one of ws, rest, all")
        scopes = ("ws", "rest") if scope == "all" else (scope,)
        self._redirect = (time.monotonic() + seconds, int(status), location, scopes)

    def delist(self, symbols: list[str] | tuple[str, ...]) -> None:
        """REST answers 400 {"code": -1121, "msg": "Invalid symbol."} for these symbols
        (as Binance does for a delisted or unknown one); exchangeInfo and ticker omit them."""
        self._delisted = {s.upper() for s in symbols if s}

    def gap(self, symbol: str, start_ms: int, end_ms: int) -> None:
        """The minutes of ``symbol`` opening in [start_ms, end_ms) go missing at the exchange,
        as minutes with no trades or in maintenance are on Binance: REST klines, the stream
        (no kline frames) and dumps leave them out. A longer candle is missing only when all
        of its minutes are (the others are served as generated, not re-aggregated). History
        does not come back: reset_faults leaves gaps alone."""
        symbol, start_ms, end_ms = symbol.upper(), int(start_ms), int(end_ms)
        if not symbol or end_ms <= start_ms:
            raise ValueError("gap needs a symbol and start < end (epoch ms)")
        self._gaps[symbol] = (*self._gaps.get(symbol, ()), (start_ms, end_ms))

    def _in_gap(self, symbol: str, ims: int, open_ms: int) -> bool:
        gaps = self._gaps.get(symbol)
        return bool(gaps) and not gap_mask(np.array([open_ms], dtype=np.int64), ims, gaps)[0]

    def rate_limits(self, on: bool = True, futures: int | None = None, spot: int | None = None,
                    window: str | None = None, ban_seconds: float | None = None) -> None:
        """Enforce (or not) the REST weight budgets; optionally change them. Clears bans."""
        w = dict(futures=futures or self._weights["futures"], spot=spot or self._weights["spot"],
                 window=window or self._weights["window"],
                 ban_seconds=self._weights["ban_seconds"] if ban_seconds is None else ban_seconds)
        budgets = {True: WeightBudget(w["futures"], w["window"], w["ban_seconds"], on),
                   False: WeightBudget(w["spot"], w["window"], w["ban_seconds"], on)}  # may raise: nothing changed
        self._weights, self.budgets = w, budgets

    def dump_style(self, header: bool | None = None, time_unit: str | None = None) -> None:
        """Force the dumps' header row (True/False) and time unit ("ms"/"us"); None: Binance's rule."""
        if time_unit not in (None, "ms", "us"):
            raise ValueError("time_unit must be ms or us")
        self._dump_style = (header, time_unit)

    def reset_faults(self) -> None:
        """Every fault off; the weight budgets keep their settings but forget bans and counts."""
        self._end_stall()
        self._refuse_until, self._duplicate, self._late_ms, self._rest_fail = 0.0, False, 0, (0, 429, 1.0)
        self._rest_errors, self._rest_latency, self._delisted = (0.0, 503), 0.0, set()
        self._redirect = (0.0, 302, DEFAULT_LOCATION, ())
        self._dump_style = (None, None)
        for budget in self.budgets.values():
            budget.clear()
        for conn in self._conns:
            conn.malformed = 0

    def _init_faults(self) -> None:
        cfg = self.config
        self._weights = dict(futures=cfg.futures_weight_limit, spot=cfg.spot_weight_limit,
                             window=cfg.weight_window, ban_seconds=cfg.ban_seconds)
        self.rate_limits(cfg.enforce_weights)
        self._fault_rng = random.Random(cfg.seed)
        self._stall_handle = None
        self._malformed_seq = 0
        self._gaps: dict[str, Gaps] = {}  # symbol -> half-open ms ranges missing at the exchange
        self.reset_faults()

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
            elif name == "rest_errors":
                self.rest_errors(float(q.get("fraction", 1)), int(q.get("status", 503)))
            elif name == "rest_latency":
                self.rest_latency(float(q.get("seconds", 1)))
            elif name == "redirect":
                self.redirect(float(q.get("seconds", 5)), int(q.get("status", 302)),
                              q.get("location", DEFAULT_LOCATION), q.get("scope", "all"))
            elif name == "gap":
                self.gap(q["symbol"], int(q["start"]), int(q["end"]))
            elif name == "delist":
                self.delist(q.get("symbols", "").split(","))
            elif name == "rate_limits":
                self.rate_limits(on("on"), opt("futures"), opt("spot"), q.get("window"),
                                 float(q["ban_seconds"]) if "ban_seconds" in q else None)
                out = {"ok": True, "rateLimits": {"futures": self.budgets[True].rate_limit(),
                                                  "spot": self.budgets[False].rate_limit()}}
            elif name == "dump_style":
                auto = lambda key: None if q.get(key, "auto") == "auto" else q[key]  # noqa: E731
                self.dump_style(None if auto("header") is None else on("header"), auto("time_unit"))
            elif name == "reset":
                self.reset_faults()
            elif name == "stats":
                out = {**asdict(self.stats), "connections_open": len(self._conns), "now": self.now_ms(),
                       "weight_used": {"futures": self.budgets[True].current(), "spot": self.budgets[False].current()}}
            elif name == "history":
                out = self.history_rows(q["symbol"], q.get("interval"), opt("start_ms"), opt("end_ms"))
            else:
                return _json(404, {"error": f"unknown control {name!r}"})
        except (KeyError, ValueError) as exc:
            return _json(400, {"error": f"bad parameters for {name}: {exc!r}"})
        return _json(200, out)

