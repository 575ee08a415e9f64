"""Level of detail for the main chart: which timeframe and which candles a view needs.

Pure functions of milliseconds, no Panel or Bokeh, so they are tested directly.
The chart shows the finest timeframe whose visible range holds at most
``VIEW_CANDLES`` candles (a year at 1d, a day at 1m), and loads the visible range
plus a margin on each side, never more than ``MAX_CANDLES`` candles in all, so
small pans are answered from what is already drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from market.schema import interval_ms

#: The chart's timeframes, finest first (the buttons above the chart).
TIMEFRAMES = ("1m", "5m", "15m", "1h", "4h", "1d")
#: Most candles one view draws: above this a pan redraws too slowly in the browser.
MAX_CANDLES = 3000
#: Most candles in the visible range before Auto goes coarser: a year at 4h would be
#: 2,190 candles under a pixel wide each on a laptop screen; at 1d it is 365, as a
#: trader expects. Half of MAX_CANDLES, so the loaded margins still fit.
VIEW_CANDLES = 1500
#: Fewest candles a view may shrink to (zooming in further only magnifies glyphs).
MIN_CANDLES = 10
#: Candles shown when the chart opens or a timeframe is picked (TradingView's default zoom).
DEFAULT_CANDLES = 150


def pick_timeframe(span_ms: float, max_candles: int = VIEW_CANDLES,
                   timeframes: tuple[str, ...] = TIMEFRAMES) -> str:
    """The finest timeframe for which ``span_ms`` holds at most ``max_candles`` candles.

    >>> pick_timeframe(24 * 3_600_000)        # a day at 1m is 1,440 candles
    '1m'
    >>> pick_timeframe(365 * 86_400_000)      # a year: 2,190 at 4h, 365 at 1d
    '1d'
    """
    if not timeframes:
        raise ValueError("no timeframes to pick from")
    for tf in timeframes:
        if span_ms / interval_ms(tf) <= max_candles:
            return tf
    return timeframes[-1]


@dataclass(frozen=True)
class Window:
    """Candles loaded into the chart: ``timeframe`` candles with open_time in [start, end) ms."""

    timeframe: str
    start: int
    end: int

    @property
    def candles(self) -> int:
        return (self.end - self.start) // interval_ms(self.timeframe)

    def covers(self, x0: float, x1: float, first: float | None = None, last: float | None = None) -> bool:
        """True if the view [x0, x1] needs nothing more than this window.

        ``first`` / ``last``: the oldest candle stored and the live end, in ms; a
        view reaching past them needs no candles from there.
        """
        lo = x0 if first is None else max(x0, first)
        hi = x1 if last is None else min(x1, last)
        return self.start <= lo and hi <= self.end


def load_window(x0: float, x1: float, timeframe: str, max_candles: int = MAX_CANDLES) -> Window:
    """The window to load for the view [x0, x1] ms at ``timeframe``.

    The view plus up to half its width on each side, cut so the whole stays
    within ``max_candles`` candles, aligned to whole candles from the epoch (so
    1d candles start at 00:00 UTC, as Binance's do).
    """
    if not x1 > x0:
        raise ValueError(f"empty view: start {x0} is not before end {x1}")
    step = interval_ms(timeframe)
    span = x1 - x0
    room = max(0.0, max_candles * step - span)
    margin = min(span / 2, room / 2)
    start = math.floor((x0 - margin) / step) * step
    end = math.ceil((x1 + margin) / step) * step
    if (end - start) // step > max_candles:  # the view alone is wider: its middle part
        start = math.floor(((x0 + x1) / 2) / step - max_candles // 2) * step
        end = start + max_candles * step
    return Window(timeframe, int(start), int(end))


def view_for(end_ms: float, timeframe: str, candles: int = DEFAULT_CANDLES) -> tuple[float, float]:
    """A view of the last ``candles`` candles up to ``end_ms``, plus a 3-candle margin on the right."""
    step = interval_ms(timeframe)
    return end_ms - candles * step, end_ms + 3 * step


def zoom_limits(timeframe: str | None) -> tuple[int, int]:
    """(min, max) view width in ms: pinned timeframes stop at ``MAX_CANDLES`` candles,
    auto (None) at ``MAX_CANDLES`` days; never narrower than ``MIN_CANDLES`` minutes."""
    coarsest = interval_ms(timeframe or TIMEFRAMES[-1])
    return MIN_CANDLES * interval_ms(TIMEFRAMES[0]), MAX_CANDLES * coarsest
