"""Fault switches of the local exchange, as methods and as ``POST /_control/<name>``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from websockets.http11 import Response

from market.exchange.responses import json_response as _json


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

    def reset_faults(self) -> None:
        self._end_stall()
        self._refuse_until, self._duplicate, self._late_ms, self._rest_fail = 0.0, False, 0, (0, 429, 1.0)
        for conn in self._conns:
            conn.malformed = 0

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

