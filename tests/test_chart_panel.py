"""dashboard/chart_panel.py: the whole history on one chart, in-process and in a real Chromium.

In-process tests drive a ``ChartPanel`` on a real DuckDB file and the pipeline's
real ``LiveState`` (an unstarted ``SharedFeed``), the way the browser's range
events do (``on_range``). The browser test serves ``panel serve dashboard/app.py
--args --demo`` on a store holding a year of 1m candles while the demo exchange
keeps streaming, and pans and zooms with real mouse drags and wheel notches in Chromium.
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

    move(p, x1 - 5 * DAY, x1)  # zoomed out to 5 days: 5m holds 1,440 of them
    assert p.timeframe == "5m" and p.buttons.value == "5m" and spacing(p) == {5 * MIN}
    move(p, x1 - 15 * DAY, x1)
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

# The Price figure's x range, its plot frame's centre and width on the page.
VIEW_JS = r"""
() => {
  function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
  for (const root of Bokeh.index.roots) for (const v of walk(root)) {
    const m = v.model;
    if (m.type === "Figure" && m.left.some((a) => a.axis_label === "Price")) {
      const box = v.el.getBoundingClientRect();
      return {start: m.x_range.start, end: m.x_range.end, width: v.frame.bbox.width,
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
# The drawn closed candles (the largest chart source of the Price figure) with open_time in [t0, t1].
CANDLES_JS = r"""
([t0, t1]) => {
  function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
  for (const root of Bokeh.index.roots) for (const v of walk(root)) {
    const m = v.model;
    if (!(m.type === "Figure" && m.left.some((a) => a.axis_label === "Price"))) continue;
    let src = null;
    for (const r of m.renderers) {
      const s = r.data_source;
      if (s && s.data.time && (!src || s.data.time.length > src.data.time.length)) src = s;
    }
    const out = {};
    for (const c of ["time", "open", "high", "low", "close", "volume", "left", "right"]) out[c] = [];
    const t = src.data.time;
    for (let i = 0; i < t.length; i++) if (t[i] >= t0 && t[i] <= t1)
      for (const c in out) out[c].push(src.data[c][i]);
    return out;
  }
  return null;
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


def drag(page, x: float, y: float, dx: float, hold_ms: float = 0) -> None:
    """A real mouse drag: press, hold ``hold_ms``, move in steps, release.

    Bokeh's pan starts on the first move past 5 px and pans on the moves after it, so a
    single jump to the end (Playwright's default, steps=1) pans nothing. And Bokeh 3.9 made
    a pointer held still 300 ms a "press" that no later move pans: Playwright waits for the
    page to take each event, so on a busy page the first move came 0.4 s after the press and
    the drag did nothing (why this test once moved the range itself). The chart now waits
    2 s for that (history_chart.HOLD_THEN_DRAG_JS); ``hold_ms`` checks a user's pause."""
    page.mouse.move(x, y)
    page.mouse.down()
    if hold_ms:
        page.wait_for_timeout(hold_ms)
    page.mouse.move(x + dx, y, steps=20)
    page.mouse.up()


def wheel_until(page, at: tuple[float, float], dy: float, done, what: str, notches: int = 80) -> dict:
    """Wheel over ``at`` a notch at a time until ``done(view)``."""
    page.mouse.move(*at)
    for _ in range(notches):
        v = page.evaluate(VIEW_JS)
        if done(v):
            return v
        page.mouse.wheel(0, dy)
        page.wait_for_timeout(150)
    raise AssertionError(f"{notches} wheel notches did not reach {what}; view {page.evaluate(VIEW_JS)}")


def stored_candles(frame: pl.DataFrame, every: str) -> pl.DataFrame:
    """The candles the store's 1m rows make at ``every`` (open first, high max, low min, close last)."""
    return frame.sort("open_time").group_by_dynamic("open_time", every=every).agg(
        pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
        pl.col("volume").sum(), pl.len().alias("n"))


def assert_drawn_equal_stored(page, frame: pl.DataFrame, timeframe: str, upto: float) -> int:
    """The drawn candles of ``timeframe`` older than ``upto`` (ms) are those of the stored 1m rows
    (whole periods only): values, times and widths. Returns how many were compared."""
    step = {"1m": MIN, "1h": HOUR, "1d": DAY}[timeframe]
    want = stored_candles(frame, {"1m": "1m", "1h": "1h", "1d": "1d"}[timeframe]).filter(pl.col("n") == step // MIN)
    want = want.with_columns(time=pl.col("open_time").dt.epoch("ms").cast(pl.Float64))
    got = page.evaluate(CANDLES_JS, [float(want["time"][0]), upto - step])
    assert got is not None and len(got["time"]) > 0, f"no {timeframe} candles drawn before {upto}"
    t = np.array(got["time"], dtype=float)
    assert set(np.diff(t)) == {float(step)}, f"{timeframe} candles not {step} ms apart"
    # bodies 80 % of the candle's period, centred on its open time
    np.testing.assert_allclose(np.array(got["right"]) - np.array(got["left"]), 0.8 * step)
    np.testing.assert_allclose((np.array(got["right"]) + np.array(got["left"])) / 2, t)
    rows = pl.DataFrame({"time": t.astype(float)}).join(want, on="time", how="inner", maintain_order="left")
    assert rows.height == len(t), f"drawn {timeframe} candles missing from the store: {set(t) - set(rows['time'])}"
    for c in ("open", "high", "low", "close", "volume"):
        np.testing.assert_allclose(got[c], rows[c].to_numpy(), rtol=1e-9, err_msg=f"{timeframe} {c}")
    return len(t)


@pytest.fixture(scope="module")
def history_server(tmp_path_factory):
    """The demo app at 30x on a file already holding a year of BTC 1m candles up to now."""
    tmp = tmp_path_factory.mktemp("history")
    db = tmp / "history.duckdb"
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, second=0, microsecond=0)
    n = 366 * 1440
    btc = random_klines([BTC], n, start=now - dt.timedelta(minutes=n + 5), seed=11)
    # at a year's swing (a geometric walk ends anywhere in 0.05x..20x of its start) ending near
    # the demo exchange's BTC (~52,000 these days), so the screenshots show no cliff at the join
    last = btc["close"][-1]
    btc = btc.with_columns((52_000 * (pl.col(c) / last) ** 0.3).alias(c) for c in ("open", "high", "low", "close"))
    w = Writer(db, market="demo")  # what --demo records
    w.add_klines(btc)
    w.add_klines(random_klines([ETH], 2 * 1440, start=now - dt.timedelta(minutes=2 * 1440 + 5), seed=12))
    w.close()
    server = serve_app(["--demo", "--db", str(db), "--symbols", f"{BTC},{ETH}", "--speed", "30",
                        "--refresh-ms", "250"], tmp / "serve.log")
    server.btc = btc
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
@pytest.mark.timeout(900)  # server start and first page take minutes on an overloaded box
def test_pan_zoom_go_to_date_and_live_in_chromium(history_server):
    """A year of history with the mouse: wheel out to daily candles, drag back across months
    at 1h, wheel in to 1m, all while the demo exchange keeps streaming."""
    from playwright.sync_api import sync_playwright

    from tests.browser import launch, table_price

    btc = history_server.btc
    old = ms(btc["open_time"][-1]) - 2 * DAY  # older than this, nothing but the fixture wrote candles
    ARTIFACTS.mkdir(exist_ok=True)
    console = Console()
    with sync_playwright() as pw:
        chromium = launch(pw)
        page = chromium.new_page(viewport={"width": 1400, "height": 1100})
        console.attach(page)
        page.goto(history_server.url, timeout=120_000)
        s = wait_state(page, lambda st: st["spacing_ms"] == MIN and st["panels"]["RSI"]["values"] > 100, 90,
                       what="1m candles with RSI")
        assert s["timeframe"] == "1m"
        live_time = s["last_time"]
        # the live candle moves: its close changes, new candles follow
        wait_state(page, lambda st: (st["last_time"], st["last_close"]) != (s["last_time"], s["last_close"]), 30,
                   what="the live candle to update")
        v = page.evaluate(VIEW_JS)
        assert v["start"] < live_time < v["end"]

        def streaming(before: dict) -> dict:
            """The exchange keeps streaming: the status line and the table's BTC price move on."""
            return wait_state(page, lambda st: st["status"] != before["status"]
                              and table_price(st, BTC) != table_price(before, BTC), 30,
                              what="the feed to move on")

        # wheel out past the whole stored year: Auto goes to coarser candles (4h up to
        # VIEW_CANDLES candles, 250 days), then daily ones, at most MAX_CANDLES drawn
        v = wheel_until(page, (page.evaluate(X_OF_JS, live_time), v["y"]), 400,
                        lambda v: v["end"] - v["start"] > lod.MAX_CANDLES * 4 * HOUR, "all of the year in view")
        s = wait_state(page, lambda st: st["spacing_ms"] == DAY and st["timeframe"] == "1d", 60,
                       what="daily candles when zoomed out to the whole year")
        assert s["closed_rows"] <= lod.MAX_CANDLES and s["panels"]["RSI"]["values"] > 200
        assert assert_drawn_equal_stored(page, btc, "1d", old) >= 300
        page.screenshot(path=str(ARTIFACTS / "chart-zoomed-out.png"))
        s = streaming(s)

        # wheel in around 4 months back to about two months in view: hourly candles
        # (1h while VIEW_CANDLES of them span the view: 15.6 to 62.5 days)
        at = live_time - 120 * DAY
        v = wheel_until(page, (page.evaluate(X_OF_JS, at), v["y"]), -150,
                        lambda v: v["end"] - v["start"] <= 60 * DAY, "about two months in view")
        assert 17 * DAY < v["end"] - v["start"] and v["start"] < at < v["end"]
        s = wait_state(page, lambda st: st["spacing_ms"] == HOUR and st["timeframe"] == "1h", 60,
                       what="hourly candles at two months")

        # drag the chart to the right three times: back across months, older candles from the store
        first = s["first_time"]
        for n in range(3):
            before = page.evaluate(VIEW_JS)
            span = before["end"] - before["start"]
            # the first one as a user who presses, pauses, then drags
            drag(page, before["x"] - before["width"] / 4, before["y"], before["width"] / 2, 600 if n == 0 else 0)
            shift = span / 2
            v = wait_view(page, lambda v: abs((before["start"] - v["start"]) - shift) < 0.05 * span,
                          f"the view to move {shift / DAY:.0f} days back from {before}")
            assert v["end"] - v["start"] == pytest.approx(span)
            s = wait_state(page, lambda st: st["first_time"] <= max(v["start"], ms(btc["open_time"][0]))
                           and st["spacing_ms"] == HOUR, 30, what="the candles of the dragged-to view")
        # the view went 1.5 spans back and the window's margin is at most half a span:
        # a span (17-60 days) of older candles came in at least
        assert first - s["first_time"] > 0.9 * span
        assert live_time - v["end"] > 100 * DAY
        assert assert_drawn_equal_stored(page, btc, "1h", old) > 1000
        assert s["timeframe"] == "1h"

        # scrolled back, the view stays put while the exchange keeps streaming
        s = streaming(s)
        assert page.evaluate(VIEW_JS)["start"] == v["start"]

        # wheel in to single minutes around a stored day
        at = (v["start"] + v["end"]) / 2
        v = wheel_until(page, (page.evaluate(X_OF_JS, at), v["y"]), -400,
                        lambda v: v["end"] - v["start"] <= 12 * HOUR, "half a day in view")
        s = wait_state(page, lambda st: st["spacing_ms"] == MIN and st["timeframe"] == "1m", 60,
                       what="1m candles when zoomed in")
        assert s["first_time"] <= v["start"] and s["last_time"] >= v["end"] - MIN
        assert assert_drawn_equal_stored(page, btc, "1m", old) >= 400
        page.screenshot(path=str(ARTIFACTS / "chart-zoomed-in-history.png"))

        # and a drag at 1m: the minutes just before, from the store
        before = v
        drag(page, v["x"] - v["width"] / 3, v["y"], v["width"] / 2)
        v = wait_view(page, lambda v: v["start"] < before["start"] - (before["end"] - before["start"]) / 3,
                      "a drag at 1m")
        s = wait_state(page, lambda st: st["first_time"] <= v["start"] and st["spacing_ms"] == MIN, 30,
                       what="the minutes before")
        assert_drawn_equal_stored(page, btc, "1m", old)

        # go to a date 60 days back
        day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=60)).date()
        assert page.evaluate(SET_DATE_JS, day.isoformat())
        day_ms = ms(dt.datetime(day.year, day.month, day.day))
        v = wait_view(page, lambda v: v["start"] < day_ms < v["end"], f"the view to show {day}")
        # the window around the date (the one before, months back, also starts before it)
        s = wait_state(page, lambda st: st["first_time"] <= day_ms <= st["last_time"], 30, what=f"candles of {day}")
        assert s["spacing_ms"] == MIN and s["last_time"] >= day_ms  # same zoom, same timeframe
        page.screenshot(path=str(ARTIFACTS / "chart-go-to-date.png"))

        # back to live: the newest candles, and the view follows them
        page.get_by_role("button", name=re.compile("Go to live")).click()
        s = wait_state(page, lambda st: st["last_time"] > live_time, 30, what="the live end")
        v = page.evaluate(VIEW_JS)
        assert v["start"] < s["last_time"] < v["end"]
        s2 = wait_state(page, lambda st: st["last_time"] > s["last_time"], 30, what="a new candle")
        # the candle and the scroll are separate model changes: the view may follow a poll later
        wait_view(page, lambda v2: v2["end"] > v["end"] and v2["start"] < s2["last_time"] < v2["end"],
                  "the view to follow the new candle")
        page.screenshot(path=str(ARTIFACTS / "chart-live.png"))
        chromium.close()
    assert console.errors == [], "\n\n".join(console.errors)
