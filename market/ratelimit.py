"""Request-weight budget for Binance REST: pace under it, resync from the server, obey bans.

Binance counts a *weight* per request and IP in windows listed by ``exchangeInfo``
(``rateLimits`` entries with ``rateLimitType: REQUEST_WEIGHT``, e.g. 2400 per 1
MINUTE on futures, 6000 on spot). Over budget it answers 429 with ``Retry-After``;
a request sent during that wait earns 418, an IP ban of 2 minutes to 3 days. So:

- ``WeightLimiter.acquire(weight)`` waits until the request fits under
  ``margin`` (90 %) of every window, counting our own requests in a sliding log
  (conservative whether the server's windows are sliding or calendar-aligned);
- ``observe(headers)`` resyncs from ``X-MBX-USED-WEIGHT-<n><unit>``, the server's
  truth, which also counts other processes on the same IP;
- ``block(seconds)`` (a 429 or 418) stops *every* ``acquire`` until then.

One limiter per REST host per process (``limiter_for``), so the live feed's gap
repair and a backfill in the same process share one budget.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

log = logging.getLogger("market.ratelimit")

UNIT_MS = {"SECOND": 1_000, "MINUTE": 60_000, "HOUR": 3_600_000, "DAY": 86_400_000}

#: Binance's documented budgets, used when exchangeInfo cannot be read.
DEFAULT_FUTURES_WEIGHT = 2400
DEFAULT_SPOT_WEIGHT = 6000


@dataclasses.dataclass(frozen=True)
class Window:
    """One REQUEST_WEIGHT rule: ``limit`` weight per ``num`` ``unit``."""

    limit: int
    num: int = 1
    unit: str = "MINUTE"

    def __post_init__(self) -> None:
        if self.unit not in UNIT_MS:
            raise ValueError(f"unknown rate-limit interval {self.unit!r}; expected one of {', '.join(UNIT_MS)}")
        if self.limit <= 0 or self.num <= 0:
            raise ValueError(f"rate limit must be positive, got {self.limit} per {self.num} {self.unit}")

    @property
    def ms(self) -> int:
        return self.num * UNIT_MS[self.unit]

    @property
    def header(self) -> str:
        """The response header that reports this window's used weight (lower case)."""
        return f"x-mbx-used-weight-{self.num}{self.unit[0].lower()}"

    def describe(self) -> str:
        return f"{self.limit} per {self.num} {self.unit.lower()}{'s' if self.num > 1 else ''}"


def default_windows(spot: bool) -> tuple[Window, ...]:
    return (Window(DEFAULT_SPOT_WEIGHT if spot else DEFAULT_FUTURES_WEIGHT, 1, "MINUTE"),)


def windows_from_exchange_info(info: Mapping) -> tuple[Window, ...]:
    """The REQUEST_WEIGHT windows of an ``exchangeInfo`` answer (empty if it lists none).

    Real payload (futures, trimmed)::

        {"timezone": "UTC", "serverTime": 1765000000000, "rateLimits": [
          {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
          {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200}], ...}
    """
    out = []
    for rule in info.get("rateLimits") or ():
        if not isinstance(rule, Mapping) or rule.get("rateLimitType") != "REQUEST_WEIGHT":
            continue
        try:
            out.append(Window(int(rule["limit"]), int(rule.get("intervalNum", 1)), str(rule["interval"]).upper()))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring a rate limit rule I cannot read: %s (%s)", rule, exc)
    return tuple(out)


def klines_weight(limit: int, spot: bool) -> int:
    """Weight of one klines request: futures 1/2/5/10 for limit <100/<500/<=1000/>1000, spot 2."""
    if spot:
        return 2
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


def best_page(max_limit: int, spot: bool) -> int:
    """The page size that buys the most candles per unit of weight (ties: the larger).

    Futures: 499 rows for weight 2 (250 a weight) beat 1500 for 10 (150 a weight),
    so a weight-bound backfill moves ~1.7x the candles with 499-row pages.
    """
    candidates = {n for n in (99, 499, 1000, max_limit) if 1 <= n <= max_limit}
    return max(candidates, key=lambda n: (n / klines_weight(n, spot), n))


class WeightLimiter:
    """See the module docstring. ``clock`` returns seconds (monotonic); tests may pass their own."""

    def __init__(self, windows: Iterable[Window], *, margin: float = 0.9, slack: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.margin = margin
        #: seconds our entries outlive the window: the server books a request when it
        #: arrives, a little after we sent it
        self.slack = slack
        self.clock = clock
        self._blocked_until = 0.0
        self.in_flight = 0  # weight of requests sent and not answered yet
        self.waited = 0.0  # seconds spent pacing, for the benchmark and the logs
        self.set_windows(windows)

    def set_windows(self, windows: Iterable[Window]) -> None:
        """Replace the budget (e.g. once exchangeInfo has been read); keeps what was spent."""
        windows = tuple(windows)
        if not windows:
            raise ValueError("a weight limiter needs at least one window")
        old = getattr(self, "_logs", {})
        self.windows = windows
        self._logs: dict[Window, collections.deque[list]] = {}
        for w in windows:
            # every window sees every request we made, whatever window it was first booked in
            merged = sorted((e for log_ in old.values() for e in log_), key=lambda e: e[0])
            self._logs[w] = collections.deque(dict((id(e), e) for e in merged).values())

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self.clock())

    def used(self, window: Window | None = None) -> int:
        """Weight spent in ``window`` (default: the fullest one, relative to its limit)."""
        now = self.clock()
        if window is None:
            return max((self._used(w, now) for w in self.windows), default=0)
        return self._used(window, now)

    def _used(self, w: Window, now: float) -> int:
        log_ = self._logs[w]
        span = w.ms / 1000 + self.slack  # the same sum as in delay(), so both agree to the bit
        while log_ and log_[0][0] + span <= now:
            log_.popleft()
        return sum(e[1] for e in log_)

    def delay(self, weight: int) -> float:
        """Seconds until ``weight`` more fits in every window (0: now)."""
        now = self.clock()
        wait = max(0.0, self._blocked_until - now)
        for w in self.windows:
            cap = max(1, int(w.limit * self.margin))
            if weight > cap:
                raise ValueError(f"a request of weight {weight} can never fit a budget of {w.describe()}")
            used = self._used(w, now)
            if used + weight <= cap:
                continue
            # the oldest entries must age out until the request fits
            need, freed = used + weight - cap, 0
            for at, spent in self._logs[w]:
                freed += spent
                if freed >= need:
                    wait = max(wait, (at + (w.ms / 1000 + self.slack)) - now)
                    break
        return wait

    async def acquire(self, weight: int) -> None:
        """Wait until ``weight`` fits, then book it as spent now; pair with ``settle``.

        No lock: the check and the booking run without an ``await`` between them, so
        concurrent callers that wake together re-check and cannot overbook.
        """
        while (wait := self.delay(weight)) > 0:
            self.waited += wait
            await asyncio.sleep(wait + 0.001)
        entry = [self.clock(), weight]
        for log_ in self._logs.values():
            log_.append(entry)
        self.in_flight += weight

    def settle(self, weight: int, headers: Mapping[str, str] | None = None) -> None:
        """The request booked with ``acquire(weight)`` got an answer (``headers``) or failed (None)."""
        self.in_flight = max(0, self.in_flight - weight)
        if headers is not None:
            self.observe(headers, in_flight=self.in_flight)

    def observe(self, headers: Mapping[str, str], in_flight: int = 0) -> None:
        """Resync from the server's ``X-MBX-USED-WEIGHT-*`` headers.

        ``in_flight``: weight of our other requests sent but not yet answered, which
        the server may not have counted yet; we keep counting them ourselves.
        """
        now = self.clock()
        headers = {k.lower(): v for k, v in headers.items() if k[:1] in "xX"}
        for w in self.windows:
            raw = headers.get(w.header)
            if raw is None:
                continue
            try:
                server = int(raw)
            except ValueError:
                continue
            mine = self._used(w, now)
            truth = server + in_flight
            log_ = self._logs[w]
            if truth > mine:
                # other processes on this IP (or requests we lost track of): count them as spent now
                log_.append([now, truth - mine])
            elif truth < mine:
                # the server's window started afresh: forget our oldest entries down to its count
                excess = mine - truth
                while log_ and excess > 0:
                    e = log_[0]
                    if e[1] <= excess:
                        excess -= e[1]
                        log_.popleft()
                    else:
                        log_[0] = [e[0], e[1] - excess]
                        excess = 0

    def block(self, seconds: float) -> None:
        """Stop every request for ``seconds`` (a 429's or 418's Retry-After): a request sent
        during that wait earns a ban. What was spent is resynced from the next answer."""
        self._blocked_until = max(self._blocked_until, self.clock() + seconds)


_limiters: dict[str, WeightLimiter] = {}


def limiter_for(rest_base: str, spot: bool) -> WeightLimiter:
    """The process's one limiter for the REST host of ``rest_base`` (budget: defaults until
    ``set_windows``); every client of that host shares it."""
    key = urlsplit(rest_base).netloc or rest_base
    lim = _limiters.get(key)
    if lim is None:
        lim = _limiters[key] = WeightLimiter(default_windows(spot))
    return lim
