"""The local exchange's configuration, counters and recording reader."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from market.exchange.limits import parse_window
from market.schema import interval_ms
from market.synthetic import DEFAULT_SYMBOLS, STEP_MS

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
    history_days: float | None = None  # if set, overrides history_minutes (days * 1440)
    start_time: int | None = None  # ms; default now (floored to 250 ms)
    ticker_ms: int = 1000
    #: ms between forming-candle updates on a kline stream (Binance: futures 250, spot
    #: 1000-2000); finals are sent at every close whatever it is
    kline_ms: int = STEP_MS
    rest_forming: bool = True  # REST's last row may be the forming candle, like Binance
    # REST request weight (market.exchange.limits): always counted and reported in
    # X-MBX-USED-WEIGHT-*; 429 / 418 only when enforced
    enforce_weights: bool = False
    futures_weight_limit: int = 2400
    spot_weight_limit: int = 6000
    weight_window: str = "1m"  # "1m", "10s", ...: the window and the header's suffix
    ban_seconds: float = 120.0  # how long a 418 lasts

    def __post_init__(self) -> None:
        syms = self.symbols
        if isinstance(syms, int):
            syms = DEFAULT_SYMBOLS[:syms]
        object.__setattr__(self, "symbols", tuple(s.upper() for s in syms))
        interval_ms(self.interval)
        if self.history_days is not None:
            if not 0 <= self.history_days <= 3650:  # ten years: trade ids stay positive
                raise ValueError("history_days must be in [0, 3650]")
            object.__setattr__(self, "history_minutes", round(self.history_days * 1440))
        if not self.speed >= 0 or self.seed < 0 or not 0 <= self.history_minutes <= 3650 * 1440:
            raise ValueError("speed and seed must be >= 0, history_minutes in [0, 5256000] (ten years)")
        parse_window(self.weight_window)
        if self.futures_weight_limit < 1 or self.spot_weight_limit < 1 or not self.ban_seconds >= 0:
            raise ValueError("weight limits must be >= 1 and ban_seconds >= 0")
        for name in ("ticker_ms", "kline_ms"):
            every = getattr(self, name)
            if every <= 0 or every % STEP_MS or 60_000 % every:
                raise ValueError(f"{name} must be a multiple of {STEP_MS} that divides a minute (60000)")
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
    refused: int = 0  # WebSocket handshakes refused
    redirected: int = 0  # handshakes and REST requests answered with a redirect
    http_429: int = 0  # REST answers 429 (over the weight budget, or rest_fail)
    http_418: int = 0  # REST answers 418 (ignored a Retry-After: banned, or rest_fail)
    http_5xx: int = 0  # REST answers 5xx (rest_fail, rest_errors)
    dumps_served: int = 0  # /data/... zips and CHECKSUMs



def read_recording(path: str | Path) -> tuple[str, list[tuple[float, str]]]:
    """(url, [(receive time, raw frame), ...]) from a fixtures-format recording."""
    lines = Path(path).read_text().splitlines()
    url, sep, _ = lines[0].rpartition(" <-> ") if lines else ("", "", "")
    if not sep:  # a recording starts with "<stream url> <-> <connect time>"
        raise ValueError(f"{path}: the first line is not '<stream url> <-> <time>'")
    frames = []
    for line in lines[1:]:
        ts, sep, raw = line.partition(": ")
        if sep:
            frames.append((float(ts), raw))
    if not frames:
        raise ValueError(f"{path}: no '<time>: <frame>' lines")
    return url, frames

