"""dashboard/chart_panel.py: the whole history on one chart, in-process and in a real Chromium.

In-process tests drive a ``ChartPanel`` on a real DuckDB file and the pipeline's
real ``LiveState`` (an unstarted ``SharedFeed``), the way the browser's range
events do (``on_range``). The browser test serves ``panel serve dashboard/app.py
--args --demo`` on a store holding 120 days of 1m candles while the demo exchange
keeps streaming, and pans and zooms with the mouse wheel and drags in Chromium.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import polars as pl
import pytest

from dashboard import lod
from dashboard.chart_panel import ChartPanel
from dashboard.config import AppConfig
from dashboard.live import SharedFeed
from market.binance import Kline
from market.stream import Batch
from store.writer import Writer
from tests.browser import ARTIFACTS, Console, chromium_path, page_state, serve_app, wait_http, wait_state
from tests.conftest import random_klines

BTC, ETH = "BTCUSDT", "ETHUSDT"
T0 = dt.datetime(2026, 1, 1)
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
EPOCH = dt.datetime(1970, 1, 1)


def ms(t: dt.datetime) -> float:
    return (t - EPOCH) / dt.timedelta(milliseconds=1)


@pytest.fixture(scope="module")
def months(tmp_path_factory):
    """20 days of BTC 1m candles: 19 in the file, the last 2000 minutes in the pipeline's memory."""
    db = tmp_path_factory.mktemp("panel") / "months.duckdb"
    full = random_klines([BTC], 20 * 1440, start=T0, seed=9)
    w = Writer(db)
    w.add_klines(full[: 19 * 1440])
    w.close()
    return db, full


def panel_for(db, full) -> ChartPanel:
    feed = SharedFeed(AppConfig(db=str(db), symbols=[BTC]))
    feed.state.seed(full.tail(2000))
    return ChartPanel(feed, BTC)


def move(panel: ChartPanel, x0: float, x1: float) -> None:
    """What a pan or zoom in the browser does: the x range syncs, then RangesUpdate fires."""
    panel.chart.x_range.update(start=x0, end=x1)
    panel.on_range(x0, x1)


def spacing(panel: ChartPanel) -> set[float]:
    return set(np.diff(panel.chart.closed.data["time"]))


def test_opens_at_the_live_end_in_1m_and_zooming_out_goes_coarser(months):
    db, full = months
    p = panel_for(db, full)
    last = ms(full["open_time"][-1])
    x0, x1 = p.chart.view()
    assert p.timeframe == "1m" and p.auto and p.at_live
    assert x0 <= last <= x1 and x1 - x0 == pytest.approx(153 * MIN)
    assert p.chart.closed.data["time"][-1] == last and spacing(p) == {MIN}

    move(p, x1 - 10 * DAY, x1)  # zoomed out to 10 days: 5m holds 2,880 of them
    assert p.timeframe == "5m" and p.buttons.value == "5m" and spacing(p) == {5 * MIN}
    move(p, x1 - 19 * DAY, x1)
    assert p.timeframe == "15m" and p.buttons.value == "15m"
    assert len(p.chart.closed.data["time"]) <= lod.MAX_CANDLES
    move(p, x1 - 2 * HOUR, x1)  # zoomed back in
    assert p.timeframe == "1m" and spacing(p) == {MIN} and p.at_live


def test_panning_left_loads_older_candles_with_exact_indicators(months):
    db, full = months
    p = panel_for(db, full)
    loads = p.loads
    x0, x1 = p.chart.view()
    move(p, x0 - 20 * MIN, x1 - 20 * MIN)  # a small pan stays inside the loaded window
    assert p.loads == loads
    day3 = ms(T0 + dt.timedelta(days=3))
    move(p, day3, day3 + 6 * HOUR)  # far into the stored history: loaded from the file
    assert p.loads == loads + 1 and not p.at_live and p.timeframe == "1m"
    t = p.chart.closed.data["time"]
    assert t[0] <= day3 and t[-1] >= day3 + 6 * HOUR and spacing(p) == {MIN}
    i = int(np.searchsorted(ms_col(full), t[0]))
    from market.indicators import add_indicators

    want = add_indicators(full)["rsi"].to_numpy()[i:i + len(t)]
    np.testing.assert_allclose(p.chart.closed.data["rsi"], want, rtol=0, atol=1e-8)


def ms_col(frame: pl.DataFrame) -> np.ndarray:
    return frame["open_time"].dt.epoch("ms").to_numpy().astype(float)


def test_pinned_timeframe_stays_and_caps_the_zoom(months):
    db, full = months
    p = panel_for(db, full)
    p.buttons.value = "1h"  # a click on 1h
    assert not p.auto and p.timeframe == "1h" and spacing(p) == {HOUR}
    assert p.chart.x_range.max_interval == lod.MAX_CANDLES * HOUR
    x0, x1 = p.chart.view()
    move(p, x1 - 3 * HOUR, x1)  # zooming in keeps 1h while pinned
    assert p.timeframe == "1h"
    p.auto_button.value = True  # Auto again: the zoom decides
    assert p.auto and p.timeframe == "1m" and p.buttons.value == "1m"


def test_go_to_date_and_go_live_and_the_view_follows_only_at_the_live_end(months):
    db, full = months
    p = panel_for(db, full)
    p.go_to_date(dt.date(2026, 1, 5))
    x0, x1 = p.chart.view()
    day = ms(dt.datetime(2026, 1, 5))
    assert x0 < day < x1 and not p.at_live
    assert p.chart.closed.data["time"][0] <= day <= p.chart.closed.data["time"][-1]
    assert p.live_button.color == "warning"  # says there is a way back

    state, last = p.feed.state, full["open_time"][-1]
    nxt = last + dt.timedelta(minutes=1)

    def candle(t: dt.datetime, close: float, closed: bool) -> Kline:
        s = int(ms(t))
        return Kline(BTC, "1m", s, s + MIN - 1, close, close + 1, close - 1, close, 5.0, 5 * close, 7, 2.5,
                     2.5 * close, closed, s + 1000)

    state.apply(Batch(finals=[candle(nxt, 123.0, True)], forming={BTC: candle(nxt + dt.timedelta(minutes=1), 124.0, False)}))
    p.tick()
    assert p.chart.view() == (x0, x1)  # scrolled back: not yanked to the present

    p.go_live()
    x0, x1 = p.chart.view()
    assert p.at_live and p.live_button.color == "default"
    assert p.chart.closed.data["close"][-1] == 123.0 and p.chart.forming.data["close"][-1] == 124.0
    later = nxt + dt.timedelta(minutes=1)
    state.apply(Batch(finals=[candle(later, 125.0, True)], forming={BTC: candle(later + dt.timedelta(minutes=1), 126.0, False)}))
    p.tick()
    assert p.chart.closed.data["close"][-1] == 125.0 and p.chart.forming.data["close"][-1] == 126.0
    assert p.chart.view() == pytest.approx((x0 + MIN, x1 + MIN))  # at the live end: follows
    xr = p.chart.x_range  # and the reset tool returns to the live end, not to 1970
    assert (xr.reset_start, xr.reset_end) == pytest.approx((x0 + MIN, x1 + MIN))


# --- in a real Chromium ------------------------------------------------------------------------

browser = pytest.mark.skipif(chromium_path() is None, reason="needs Chromium on PATH")

# The Price figure's x range and its plot frame's centre on the page.
VIEW_JS = r"""
() => {
  function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
  for (const root of Bokeh.index.roots) for (const v of walk(root)) {
    const m = v.model;
    if (m.type === "Figure" && m.left.some((a) => a.axis_label === "Price")) {
      const box = v.el.getBoundingClientRect();
      return {start: m.x_range.start, end: m.x_range.end,
              x: box.left + v.frame.bbox.hcenter, y: box.top + v.frame.bbox.vcenter};
    }
  }
  return null;
}
"""
X_OF_JS = r"""
(t) => {
  function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
  for (const root of Bokeh.index.roots) for (const v of walk(root)) {
    const m = v.model;
    if (m.type === "Figure" && m.left.some((a) => a.axis_label === "Price"))
      return v.el.getBoundingClientRect().left + v.frame.x_scale.compute(t);
  }
  return null;
}
"""
PAN_JS = r"""
(frac) => {
  function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
  for (const root of Bokeh.index.roots) for (const v of walk(root)) {
    const m = v.model;
    if (m.type === "Figure" && m.left.some((a) => a.axis_label === "Price")) {
      const xr = m.x_range, shift = frac * (xr.end - xr.start);
      xr.setv({start: xr.start - shift, end: xr.end - shift});
      v.trigger_ranges_update_event();
      return true;
    }
  }
  return false;
}
"""
SET_DATE_JS = r"""
(day) => { for (const m of Bokeh.documents[0].all_models) if (m.type === "DatePicker") { m.value = day; return true } return false }
"""


def wait_view(page, check, what: str, timeout: float = 30.0) -> dict:
    """Poll the chart's x range until ``check(view)``."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        v = page.evaluate(VIEW_JS)
        if v is not None and check(v):
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last view {v}")
        page.wait_for_timeout(100)


@pytest.fixture(scope="module")
def history_server(tmp_path_factory):
    """The demo app at 30x on a file already holding 120 days of 1m candles up to now."""
    tmp = tmp_path_factory.mktemp("history")
    db = tmp / "history.duckdb"
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, second=0, microsecond=0)
    n = 120 * 1440
    w = Writer(db, market="demo")  # what --demo records
    w.add_klines(random_klines([BTC, ETH], n, start=now - dt.timedelta(minutes=n + 5), seed=11))
    w.close()
    server = serve_app(["--demo", "--db", str(db), "--symbols", f"{BTC},{ETH}", "--speed", "30",
                        "--refresh-ms", "250"], tmp / "serve.log")
    try:
        # a static file: polling the app itself opens a session per try, and on a busy
        # box each try that times out leaves one more session building
        wait_http(f"http://127.0.0.1:{server.port}/static/js/bokeh.min.js", 120, server.proc)
        yield server
    finally:
        code = server.stop()
        assert code == 0, server.output()[-3000:]
        bad = [t for t in re.split(r"(?=Traceback)", server.output())[1:]
               if "WebSocketClosedError" not in t and "StreamClosedError" not in t]
        assert not bad, "\n".join(bad)[-3000:]


@browser
@pytest.mark.browser
@pytest.mark.timeout(600)  # server start and first page take minutes on an overloaded box
def test_pan_zoom_go_to_date_and_live_in_chromium(history_server):
    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    ARTIFACTS.mkdir(exist_ok=True)
    console = Console()
    with sync_playwright() as pw:
        chromium = launch(pw)
        page = chromium.new_page(viewport={"width": 1400, "height": 1100})
        console.attach(page)
        page.goto(history_server.url, timeout=120_000)
        s = wait_state(page, lambda st: st["spacing_ms"] == MIN and st["panels"]["RSI"]["values"] > 100, 90,
                       what="1m candles with RSI")
        live_time = s["last_time"]
        v = page.evaluate(VIEW_JS)
        assert v["start"] < live_time < v["end"]

        # zoom out with the wheel until the candles get coarser (Auto picks the timeframe)
        page.mouse.move(v["x"], v["y"])
        for _ in range(60):
            page.mouse.wheel(0, 400)
            page.wait_for_timeout(60)
            s = page_state(page)
            if s and s["spacing_ms"] and s["spacing_ms"] >= HOUR:
                break
        s = wait_state(page, lambda st: st["spacing_ms"] >= HOUR, 30, what="coarser candles when zoomed out")
        assert s["timeframe"] == {HOUR: "1h", 4 * HOUR: "4h", DAY: "1d"}[s["spacing_ms"]]
        assert s["closed_rows"] <= lod.MAX_CANDLES and s["panels"]["RSI"]["values"] > 0
        wide = page.evaluate(VIEW_JS)
        assert wide["end"] - wide["start"] > 30 * DAY
        page.screenshot(path=str(ARTIFACTS / "chart-zoomed-out.png"))

        # pan left by 60 %: older candles come in from the store. Playwright's mouse drags
        # did not reach Bokeh's pan tool in this headless Chromium (wheel events do), so
        # the pan is what the tool does on release: move the range, then RangesUpdate.
        first = s["first_time"]
        assert page.evaluate(PAN_JS, 0.6)
        if first > live_time - 119 * DAY:  # the zoom did not already load all 120 days
            s = wait_state(page, lambda st: st["first_time"] < first, 30, what="older candles after a pan left")
        else:
            s = page_state(page)
        panned = page.evaluate(VIEW_JS)
        assert panned["end"] < wide["end"]

        # scrolled back, the view stays put while the demo exchange keeps streaming
        status = s["status"]
        wait_state(page, lambda st: st["status"] != status, 30, what="the feed to move on")
        still = page.evaluate(VIEW_JS)
        assert (still["start"], still["end"]) == (panned["start"], panned["end"])

        # zoom back in to single minutes, around a time the store holds (30 days back)
        at = live_time - 30 * DAY
        if not panned["start"] < at < panned["end"]:
            assert page.evaluate(PAN_JS, (panned["start"] + panned["end"]) / 2 / (panned["end"] - panned["start"])
                                 - at / (panned["end"] - panned["start"]))
            panned = wait_view(page, lambda v: v["start"] < at < v["end"], "the view to hold 30 days back")
        page.mouse.move(page.evaluate(X_OF_JS, at), panned["y"])
        for _ in range(80):
            page.mouse.wheel(0, -400)
            page.wait_for_timeout(60)
            s = page_state(page)
            if s and s["spacing_ms"] == MIN:
                break
        s = wait_state(page, lambda st: st["spacing_ms"] == MIN and st["timeframe"] == "1m", 30,
                       what="1m candles when zoomed in")
        page.screenshot(path=str(ARTIFACTS / "chart-zoomed-in-history.png"))

        # go to a date 60 days back
        day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=60)).date()
        assert page.evaluate(SET_DATE_JS, day.isoformat())
        day_ms = ms(dt.datetime(day.year, day.month, day.day))
        v = wait_view(page, lambda v: v["start"] < day_ms < v["end"], f"the view to show {day}")
        s = wait_state(page, lambda st: st["first_time"] <= day_ms, 30, what=f"candles of {day}")
        assert s["spacing_ms"] == MIN and s["last_time"] >= day_ms  # same zoom, same timeframe
        page.screenshot(path=str(ARTIFACTS / "chart-go-to-date.png"))

        # back to live: the newest candles, and the view follows them
        page.get_by_role("button", name=re.compile("Go to live")).click()
        s = wait_state(page, lambda st: st["last_time"] > live_time, 30, what="the live end")
        v = page.evaluate(VIEW_JS)
        assert v["start"] < s["last_time"] < v["end"]
        s2 = wait_state(page, lambda st: st["last_time"] > s["last_time"], 30, what="a new candle")
        v2 = page.evaluate(VIEW_JS)
        assert v2["end"] > v["end"] and v2["start"] < s2["last_time"] < v2["end"]
        page.screenshot(path=str(ARTIFACTS / "chart-live.png"))
        chromium.close()
    assert console.errors == [], "\n\n".join(console.errors)
