"""Binance's REST request-weight budget, as the local exchange enforces it.

Binance counts the weight of every REST request per IP in fixed windows aligned to
the clock (a minute by default) and reports the count in a header on every answer::

    X-MBX-USED-WEIGHT-1M: 2390

Over the budget it answers HTTP 429 with ``Retry-After`` (seconds until the window
resets); a client that sends anything during that wait is banned: HTTP 418, also
with ``Retry-After``. Futures and spot keep separate budgets (2400 and 6000 a minute).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_UNITS = {"s": ("SECOND", 1), "m": ("MINUTE", 60), "h": ("HOUR", 3600), "d": ("DAY", 86400)}
# A client that waited the whole Retry-After may still be a hair early by our wall clock
# (its timer runs on another clock): that is a 429 again, not a ban.
_CLOCK_SLACK = 0.05
_WINDOW = re.compile(r"([1-9][0-9]{0,4})([smhd])")


def parse_window(text: str) -> tuple[str, int, int]:
    """("MINUTE", 1, 60) for "1m", ("SECOND", 10, 10) for "10s": interval, intervalNum, seconds."""
    m = _WINDOW.fullmatch(text.strip().lower())
    if m is None:
        raise ValueError(f"weight window {text!r} is not like 1m, 10s, 1h or 1d")
    name, unit = _UNITS[m[2]]
    return name, int(m[1]), int(m[1]) * unit


def kline_weight(futures: bool, limit: int | None) -> int:
    """Futures: 1 / 2 / 5 / 10 for limit < 100 / < 500 / <= 1000 / more (default 500); spot: 2."""
    if not futures:
        return 2
    limit = 500 if limit is None else limit
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def ticker_weight(futures: bool, one_symbol: bool) -> int:
    """``ticker/24hr``: one symbol 1 (futures) / 2 (spot); all symbols 40 / 80."""
    if one_symbol:
        return 1 if futures else 2
    return 40 if futures else 80


@dataclass
class WeightBudget:
    """One market's budget. ``charge`` says what the answer to a request must be."""

    limit: int
    window: str = "1m"
    ban_seconds: float = 120.0
    enforce: bool = False
    clock: Callable[[], float] = time.time
    used: int = 0
    _window_id: int = field(default=-1, repr=False)
    _retry_until: float = field(default=0.0, repr=False)
    _banned_until: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.interval, self.interval_num, self.seconds = parse_window(self.window)
        if self.limit < 1 or self.ban_seconds < 0:
            raise ValueError("a weight limit must be >= 1 and a ban >= 0 s")

    @property
    def header(self) -> str:
        """``X-MBX-USED-WEIGHT-1M`` for a one-minute window."""
        return f"X-MBX-USED-WEIGHT-{self.interval_num}{self.interval[0]}"

    def rate_limit(self) -> dict:
        """This budget as an ``exchangeInfo`` ``rateLimits`` entry."""
        return {"rateLimitType": "REQUEST_WEIGHT", "interval": self.interval,
                "intervalNum": self.interval_num, "limit": self.limit}

    def _roll(self, now: float) -> None:
        wid = math.floor(now / self.seconds)
        if wid != self._window_id:
            self._window_id, self.used = wid, 0

    def charge(self, weight: int) -> tuple[int, int]:
        """(HTTP status, Retry-After seconds) for a request of ``weight``: 200 (0), 429 or 418.

        The weight is counted whatever the answer, as Binance does.
        """
        now = self.clock()
        self._roll(now)
        self.used += weight
        if not self.enforce:
            return 200, 0
        if now < self._banned_until:
            return 418, max(1, math.ceil(self._banned_until - now))
        if now < self._retry_until - _CLOCK_SLACK:  # ignored a Retry-After: banned
            self._banned_until = now + self.ban_seconds
            return 418, max(1, math.ceil(self.ban_seconds))
        if self.used > self.limit:
            self._retry_until = (self._window_id + 1) * self.seconds
            return 429, max(1, math.ceil(self._retry_until - now))
        return 200, 0

    def current(self) -> int:
        """The weight used in the current window (0 once it has rolled over)."""
        self._roll(self.clock())
        return self.used

    def clear(self) -> None:
        """Forget bans, waits and the count (tests start clean)."""
        self._retry_until = self._banned_until = 0.0
        self.used, self._window_id = 0, -1
