"""One session's main chart: the whole stored history, level of detail, live right edge.

The toolbar above the chart works as TradingView users expect: "Auto" picks the
timeframe from the zoom (the finest with at most ``lod.VIEW_CANDLES`` candles in
view) and the timeframe buttons show which one is drawn; clicking a timeframe
pins it (zooming out then stops at ``MAX_CANDLES`` candles), clicking Auto again
releases it. Panning or zooming past the loaded candles loads the window around
the view from the store (``dashboard.windows``); the live end comes from the
shared pipeline's memory through a ``Series`` and keeps streaming. The view
follows new candles only while its right edge is at the live end; "Go to live"
returns there, the date picker jumps to a day.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np
import panel as pn
import polars as pl

from dashboard import lod
from dashboard.history_chart import CandleChart, columns, empty_columns
from dashboard.windows import closed_empty, window_candles
from dashboard.series import Series
from market.schema import interval_ms
from store.db import StoreError
from store.history import span as stored_span

log = logging.getLogger("dashboard.chart")
_EPOCH = dt.datetime(1970, 1, 1)


def _ms(t: dt.datetime | dt.date) -> float:
    if not isinstance(t, dt.datetime):
        t = dt.datetime(t.year, t.month, t.day)
    return (t.replace(tzinfo=None) - _EPOCH) / dt.timedelta(milliseconds=1)


class ChartPanel:
    """Chart, timeframe buttons, Auto, go-to-date and go-to-live for one session."""

    def __init__(self, feed, symbol: str, height: int = 720) -> None:
        self.feed = feed
        self.symbol = symbol
        self.auto = True
        self.timeframe = lod.TIMEFRAMES[0]
        self.series: Series | None = None
        self.window: lod.Window | None = None
        self.loads = 0  # windows loaded since the page opened (tests, benchmarks)
        self.last_load_ms = 0.0
        self._span: tuple[float | None, float | None] | None = None  # stored first/last, ms
        self._setting = False  # our own widget updates are not user clicks
        self.chart = CandleChart(height)
        self.chart.on_ranges(self._range_event)
        self._pending: tuple[float, float] | None = None  # the latest view not answered yet
        self.buttons = pn.widgets.RadioButtonGroup(options=list(lod.TIMEFRAMES), value=self.timeframe,
                                                   stylesheets=[_ACTIVE_CSS])
        self.auto_button = pn.widgets.Toggle(label="Auto", value=True, color="primary", width=70)
        self.date = pn.widgets.DatePicker(width=150, description="Go to date (UTC)")
        self.live_button = pn.widgets.Button(label="Go to live ▶", color="default", width=120,
                                             description="Back to the newest candles")
        self.buttons.param.watch(self._pin, "value")
        self.auto_button.param.watch(self._auto, "value")
        self.date.param.watch(lambda e: e.new and self.go_to_date(e.new), "value")
        self.live_button.on_click(lambda e: self.go_live())
        self.pane = pn.pane.Bokeh(self.chart.layout, sizing_mode="stretch_width", height=height + 40)
        self.toolbar = pn.Row(self.auto_button, self.buttons, self.date, self.live_button,
                              sizing_mode="stretch_width", margin=(0, 5))
        self.show(symbol)

    def __panel__(self):
        return pn.Column(self.toolbar, self.pane, sizing_mode="stretch_width")

    # -- what is drawn ------------------------------------------------------------
    @property
    def live_end(self) -> float | None:
        """Right edge (ms) of the newest candle, forming or closed, at the shown timeframe."""
        data = self.chart.forming.data if len(self.chart.forming.data["time"]) else self.chart.closed.data
        if not len(data["time"]):
            return None
        return float(data["time"][-1]) + interval_ms(self.timeframe)

    @property
    def at_live(self) -> bool:
        """The loaded window reaches the live end (new candles go into it)."""
        return self.window is not None and self.window.end == _LIVE

    def show(self, symbol: str, timeframe: str | None = None) -> None:
        """Chart ``symbol`` at the live end (a new symbol, or the page opening)."""
        self.symbol = symbol
        self._span = None  # read when first needed: the first page needs no extra file open
        self._load_live(timeframe or self.timeframe)

    def _stored(self) -> tuple[float | None, float | None]:
        """(oldest candle's open, newest candle's end) stored for the symbol, in ms."""
        if self._span is None:
            try:
                first, last = stored_span(self.symbol, db=self.feed.pipeline.db)
            except StoreError as exc:
                log.info("no stored span for %s: %s", self.symbol, exc)
                first = last = None
            self._span = (None if first is None else _ms(first),
                          None if last is None else _ms(last) + interval_ms(lod.TIMEFRAMES[0]))
        return self._span

    def _load_live(self, timeframe: str, candles: int = lod.DEFAULT_CANDLES) -> None:
        self._series_for(timeframe)
        closed, forming = self.series.initial()
        self._fresh = False
        end = self._end_of(closed, forming) or self._stored()[1]  # memory, else the newest stored candle
        if end is None:  # nothing anywhere yet: the next minutes, filled when the feed starts
            end = _ms(dt.datetime.now(dt.UTC).replace(tzinfo=None)) + interval_ms(timeframe)
        x0, x1 = lod.view_for(end, timeframe, candles)
        self._load(x0, x1, timeframe, closed=closed, forming=forming)
        # the reset tool returns here (Bokeh's default would be the range's first value)
        self.chart.x_range.update(reset_start=x0, reset_end=x1)

    def _series_for(self, timeframe: str) -> None:
        if self.series is None or self.series.timeframe != timeframe or self.series.symbol != self.symbol:
            self.series = Series(self.feed, self.symbol, timeframe)
            self._fresh = True

    @staticmethod
    def _end_of(closed: pl.DataFrame, forming: pl.DataFrame) -> float | None:
        last = forming if forming.height else closed
        if not last.height:
            return None
        return _ms(last["open_time"][-1]) + interval_ms(last["interval"][-1])

    def _load(self, x0: float, x1: float, timeframe: str, *, closed: pl.DataFrame | None = None,
              forming: pl.DataFrame | None = None) -> None:
        """Load the window around [x0, x1] at ``timeframe`` and show [x0, x1]."""
        started = time.perf_counter()
        self.timeframe = timeframe
        win = lod.load_window(x0, x1, timeframe)
        live = closed is not None or self._reaches_memory(win)
        if live and closed is None:  # the live series only when its candles are in the window
            self._series_for(timeframe)
            closed, forming = self.series.initial() if self._fresh else self.series.current()
            self._fresh = False
        try:
            frame = window_candles(self.symbol, win, db=self.feed.pipeline.db, recent=closed if live else None)
        except StoreError as exc:
            log.info("chart window from memory only: %s", exc)
            frame = closed.filter(pl.col("open_time") >= _EPOCH + dt.timedelta(milliseconds=win.start)) \
                if live else closed_empty()
        self.window = lod.Window(timeframe, win.start, _LIVE if live else win.end)
        forming_cols = columns(forming, timeframe) if live and forming is not None else empty_columns()
        with _held():
            self.chart.show(columns(frame, timeframe), forming_cols)
            self.chart.set_view(x0, x1)
            lo, hi = lod.zoom_limits(None if self.auto else timeframe)
            self.chart.x_range.update(min_interval=lo, max_interval=hi)
            self._sync_buttons()
        self.loads += 1
        self.last_load_ms = (time.perf_counter() - started) * 1000
        log.debug("loaded %s %s %d candles in %.0f ms", self.symbol, timeframe, len(frame), self.last_load_ms)

    def _reaches_memory(self, win: lod.Window) -> bool:
        """The window ends after the first candle the pipeline holds in memory (or memory is empty)."""
        mem = self.feed.state.candles(self.symbol)
        return mem.height == 0 or win.end > _ms(mem["open_time"][0])

    def _sync_buttons(self) -> None:
        self._setting = True
        try:
            self.buttons.value = self.timeframe
            self.auto_button.value = self.auto
            self.auto_button.color = "primary" if self.auto else "default"
            at_live = self.at_live and self.live_end is not None and self.chart.view()[1] >= self.live_end
            self.live_button.color = "default" if at_live else "warning"
        finally:
            self._setting = False

    # -- user actions ---------------------------------------------------------------
    def _range_event(self, x0: float | None, x1: float | None) -> None:
        """Answer only the latest of a burst of range events (a wheel zoom sends one per
        notch): loads queued behind each other would answer views long gone."""
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:
            self.on_range(x0, x1)
            return
        first = self._pending is None
        self._pending = (x0, x1)
        if first:
            doc.add_timeout_callback(self._settle, _SETTLE_MS)

    def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.on_range(*pending)

    def on_range(self, x0: float | None, x1: float | None) -> None:
        """A pan or zoom ended: switch timeframe or load more if the view needs it."""
        if x0 is None or x1 is None or not x1 > x0:
            return
        tf = lod.pick_timeframe(x1 - x0) if self.auto else self.timeframe
        if tf != self.timeframe or self.window is None or not (
                self.window.covers(x0, x1, None, self.live_end)
                or self.window.covers(x0, x1, self._stored()[0], self.live_end)):
            self._load(x0, x1, tf)
        else:
            self._sync_buttons()

    def _pin(self, event) -> None:
        if self._setting:
            return
        self.auto = False
        # TradingView keeps the right edge and shows the default number of candles
        _, x1 = self.chart.view()
        end = self.live_end
        if self.at_live and end is not None and x1 >= end:
            self._load_live(event.new)
        else:
            step = interval_ms(event.new)
            self._load(x1 - 3 * step - lod.DEFAULT_CANDLES * step, x1, event.new)

    def _auto(self, event) -> None:
        if self._setting:
            return
        self.auto = event.new
        self.on_range(*self.chart.view())
        self._sync_buttons()

    def go_live(self) -> None:
        """Back to the newest candles (the view then follows them again)."""
        self._load_live(self.timeframe)

    def go_to_range(self, start: dt.datetime, end: dt.datetime, timeframe: str | None = None) -> None:
        """Show [start, end] (UTC): at ``timeframe`` if given (pinned), else the Auto level of detail."""
        x0, x1 = _ms(start), _ms(end)
        if x1 <= x0:
            return self.go_to_date(start)
        if timeframe in lod.TIMEFRAMES and (x1 - x0) / interval_ms(timeframe) <= lod.MAX_CANDLES:
            self.auto = False
            self._load(x0, x1, timeframe)
        else:
            self._load(x0, x1, lod.pick_timeframe(x1 - x0))
        self._sync_buttons()

    def go_to_date(self, day: dt.date | dt.datetime) -> None:
        """Show the candles from the start of ``day`` (UTC) on, at the current zoom."""
        x0, x1 = self.chart.view()
        span = x1 - x0
        t = _ms(day)
        start = t - span / 3  # a little context before the day
        tf = lod.pick_timeframe(span) if self.auto else self.timeframe
        self._load(start, start + span, tf)

    # -- updates (the session's periodic callback) -------------------------------------
    def tick(self) -> None:
        if self.series is None:
            return
        if self.series.stale:  # history changed behind the chart (a backfill landed): reload
            x0, x1 = self.chart.view()
            end = self.live_end
            self._fresh = True
            if self.at_live and (end is None or x1 >= end - interval_ms(self.timeframe)):
                # watching the live end: stay there, at the same zoom
                self._load_live(self.timeframe, max(1, round((x1 - x0) / interval_ms(self.timeframe)) - 3))
            else:
                self._load(x0, x1, self.timeframe)
            return
        new, forming = self.series.poll()
        if not self.at_live or (not new.height and forming is None):
            return
        old_end = self.live_end
        with _held():
            self.chart.append(columns(new, self.timeframe), None if forming is None else columns(forming, self.timeframe),
                              rollover=2 * lod.MAX_CANDLES)
            self._follow(old_end)

    def _follow(self, old_end: float | None) -> None:
        """Scroll with new candles while the right edge is at the live end."""
        end = self.live_end
        if end is None or old_end is None:
            return
        x0, x1 = self.chart.view()
        step = interval_ms(self.timeframe)
        xr = self.chart.x_range
        if end > old_end and xr.reset_start is not None and xr.reset_end is not None:
            xr.update(reset_start=xr.reset_start + end - old_end, reset_end=xr.reset_end + end - old_end)
        if end > old_end and x1 >= old_end - 0.5 * step:
            shift = end - old_end
            self.chart.set_view(x0 + shift, x1 + shift)
        elif x1 >= end - step:
            self.chart.fit_y(x0, x1, grow_only=True)  # the live candle broke out of the axis


#: Range events within this many ms of the first are answered together, by the last view.
_SETTLE_MS = 120

#: ``Window.end`` of a window that reaches the live end.
_LIVE = np.iinfo(np.int64).max

_ACTIVE_CSS = """
.bk-btn.bk-active { font-weight: 600; }
"""


class _held:
    """Send the changes of one update as one message (Bokeh's document hold)."""

    def __enter__(self):
        self.doc = pn.state.curdoc
        if self.doc is not None and self.doc.session_context is not None:
            self.doc.hold("combine")
        else:
            self.doc = None

    def __exit__(self, *exc):
        if self.doc is None:
            return
        session = getattr(self.doc.session_context, "session", None)
        if session is not None and getattr(session, "_pending_writes", []) is None:
            # Not under the document lock: Panel runs a widget's event in an unlocked
            # coroutine while other changes are pending, and Bokeh refuses changes sent
            # from there. The changes stay held and go out on the next tick, locked.
            self.doc.add_next_tick_callback(self.doc.unhold)
        else:
            self.doc.unhold()
