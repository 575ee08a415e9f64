"""Links between the pages: the Data page opens a range on the chart with a URL.

``?symbol=BTCUSDT&timeframe=1m&from=2026-01-01T00:00&to=2026-02-01T00:00`` on the
chart page shows that symbol over that range (UTC), pinned to ``timeframe`` when it
fits in one view, else at the Auto level of detail.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse

from market.schema import INTERVAL_MS


def chart_link(symbol: str, interval: str, start: dt.datetime | None, end: dt.datetime | None) -> str:
    """A link to the chart page showing ``symbol`` at ``interval`` over [start, end]."""
    q = {"symbol": symbol, "timeframe": interval}
    if start is not None:
        q["from"] = start.isoformat(timespec="minutes")
    if end is not None:
        q["to"] = end.isoformat(timespec="minutes")
    return "?" + urllib.parse.urlencode(q)


def parse_chart_link(args: dict) -> tuple[str | None, str | None, dt.datetime | None, dt.datetime | None]:
    """(symbol, timeframe, start, end) from a chart link's query arguments; None for what is absent or bad.

    ``args`` is Bokeh's ``session_args`` (name -> list of bytes) or a plain dict of strings.
    """
    def one(name: str) -> str | None:
        value = args.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        return value.strip() if isinstance(value, str) and value.strip() else None

    def when(name: str) -> dt.datetime | None:
        text = one(name)
        try:
            return dt.datetime.fromisoformat(text) if text else None
        except ValueError:
            return None

    symbol = one("symbol")
    timeframe = one("timeframe")
    return (symbol.upper() if symbol else None, timeframe if timeframe in INTERVAL_MS else None,
            when("from"), when("to"))
