"""dashboard/links.py: the Data page's chart links survive the round trip through a URL."""

from __future__ import annotations

import datetime as dt
import urllib.parse

from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard.links import chart_link, parse_chart_link
from market.schema import INTERVAL_MS


def session_args(url: str) -> dict[str, list[bytes]]:
    """What Bokeh hands the app for a URL's query: name -> list of bytes."""
    return {k: [x.encode() for x in v] for k, v in urllib.parse.parse_qs(url.lstrip("?")).items()}


minutes = st.datetimes(min_value=dt.datetime(2017, 1, 1), max_value=dt.datetime(2035, 1, 1)).map(
    lambda t: t.replace(second=0, microsecond=0))


@settings(deadline=None, max_examples=100)
@given(symbol=st.from_regex(r"[A-Z0-9]{3,12}", fullmatch=True), interval=st.sampled_from(list(INTERVAL_MS)),
       start=minutes, end=minutes)
def test_round_trip(symbol, interval, start, end):
    assert parse_chart_link(session_args(chart_link(symbol, interval, start, end))) == (symbol, interval, start, end)


@settings(deadline=None, max_examples=200)
@given(st.dictionaries(st.sampled_from(["symbol", "timeframe", "from", "to", "x"]),
                       st.lists(st.binary(max_size=30), max_size=2)))
def test_any_query_is_parsed_or_ignored(args):
    symbol, timeframe, start, end = parse_chart_link(args)
    assert symbol is None or symbol == symbol.upper()
    assert timeframe is None or timeframe in INTERVAL_MS
    assert start is None or isinstance(start, dt.datetime)


def test_bad_values_are_ignored():
    assert parse_chart_link({"symbol": ["btcusdt"], "timeframe": ["7m"], "from": ["yesterday"]}) == (
        "BTCUSDT", None, None, None)
