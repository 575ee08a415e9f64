"""dashboard/lod.py: which timeframe a view shows and which candles it loads (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard import lod
from market.schema import interval_ms

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000


@pytest.mark.parametrize(("span", "want"), [
    (10 * MIN, "1m"),
    (DAY, "1m"),                # 1,440 one-minute candles
    (1.1 * DAY, "5m"),          # 1,584 would be too many
    (5 * DAY, "5m"),            # 1,440
    (15 * DAY, "15m"),          # 1,440
    (60 * DAY, "1h"),           # 1,440
    (240 * DAY, "4h"),          # 1,440
    (365 * DAY, "1d"),          # 2,190 at 4h
    (50 * 365 * DAY, "1d"),     # nothing coarser: 1d however wide
])
def test_pick_timeframe_is_the_finest_under_the_cap(span, want):
    assert lod.pick_timeframe(span) == want


def test_pick_timeframe_bad_input():
    with pytest.raises(ValueError, match="no timeframes"):
        lod.pick_timeframe(DAY, timeframes=())
    with pytest.raises(ValueError, match="unknown interval"):
        lod.pick_timeframe(DAY, timeframes=("7m",))


@settings(deadline=None)  # a loaded 2-core box
@given(st.floats(min_value=1, max_value=1e13, allow_nan=False))
def test_picked_timeframe_fits_and_no_finer_one_does(span):
    tf = lod.pick_timeframe(span)
    i = lod.TIMEFRAMES.index(tf)
    if tf != lod.TIMEFRAMES[-1]:
        assert span / interval_ms(tf) <= lod.VIEW_CANDLES
    for finer in lod.TIMEFRAMES[:i]:
        assert span / interval_ms(finer) > lod.VIEW_CANDLES


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=2_000_000_000_000),
       st.integers(min_value=1, max_value=20 * 365 * DAY),
       st.sampled_from(lod.TIMEFRAMES))
def test_load_window_covers_the_view_within_the_cap(x0, span, tf):
    x1 = x0 + span
    w = lod.load_window(x0, x1, tf)
    step = interval_ms(tf)
    assert w.timeframe == tf
    assert w.start % step == 0 and w.end % step == 0       # whole candles, epoch-aligned
    assert 0 < w.candles <= lod.MAX_CANDLES
    if span / step <= lod.MAX_CANDLES - 2:                   # the view fits: all of it is loaded
        assert w.covers(x0, x1)
        assert w.start <= x0 and x1 <= w.end


def test_load_window_adds_half_the_view_on_each_side_when_there_is_room():
    w = lod.load_window(1000 * MIN, 1100 * MIN, "1m")       # 100 candles in view
    assert (w.start, w.end) == (950 * MIN, 1150 * MIN)
    wide = lod.load_window(0, 2500 * MIN, "1m")             # 2,500 in view: 250 on each side
    assert (wide.start, wide.end) == (-250 * MIN, 2750 * MIN) and wide.candles == 3000


def test_load_window_aligns_days_to_midnight_utc_and_refuses_empty_views():
    w = lod.load_window(10.5 * DAY, 40.25 * DAY, "1d")
    assert w.start % DAY == 0 and w.end % DAY == 0
    with pytest.raises(ValueError, match="empty view"):
        lod.load_window(5, 5, "1m")


def test_covers_ignores_what_lies_before_the_history_or_after_the_live_end():
    w = lod.Window("1m", 100 * MIN, 200 * MIN)
    assert w.covers(120 * MIN, 180 * MIN)
    assert not w.covers(50 * MIN, 180 * MIN)
    assert w.covers(50 * MIN, 180 * MIN, first=100 * MIN)        # nothing stored before 100
    assert not w.covers(150 * MIN, 260 * MIN)
    assert w.covers(150 * MIN, 260 * MIN, last=200 * MIN)        # nothing exists after the live end


def test_default_view_and_zoom_limits():
    x0, x1 = lod.view_for(1000 * MIN, "1m")
    assert (x0, x1) == (1000 * MIN - 150 * MIN, 1003 * MIN)
    assert lod.zoom_limits("1m") == (10 * MIN, 3000 * MIN)          # pinned: at most 3,000 candles
    assert lod.zoom_limits(None) == (10 * MIN, 3000 * DAY)          # auto: up to 3,000 days at 1d
