"""The whole page in a real Chromium, served by ``panel serve dashboard/app.py`` as users run it.

Most tests share one server running the demo feed at 30x speed (a 1m candle closes
every 2 s) with Bokeh reaping closed sessions after ~5 s. One test runs the exact
command from the README (``--args --demo``: 50 symbols at Binance's real pace) and
saves light and dark screenshots to test-artifacts/. What the page shows is read
from the Bokeh models in the browser (tests/browser.py). The last test serves the
page in-process to check that closed sessions leave nothing behind in the server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
import types
import weakref

import pytest

from dashboard.lod import DEFAULT_CANDLES

from tests.browser import (
    ARTIFACTS,
    VIEWPORT,
    Console,
    ServeProcess,
    chromium_path,
    click_tile,
    complete,
    free_port,
    page_state,
    serve_app,
    sessions_shown,
    table_price,
    wait_http,
    wait_state,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="needs Chromium on PATH (Debian: apt-get install chromium)"),
    pytest.mark.timeout(180),
]

SMALL = {"width": 900, "height": 650}
TALL = {"width": 1400, "height": 1700}  # the template scrolls inside: a tall window shows it all
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT",
           "LINKUSDT", "AVAXUSDT"]
# Bokeh reaps a session nobody is connected to after this long (default 15 s). Much
# shorter and a tab that is slow to open its websocket on a loaded machine finds its
# session gone; Bokeh then builds a fresh one that never got the page's resource
# settings, and its stylesheets point at cdn.holoviz.org.
# Closed tabs must be reaped within a test, but a session must not be reaped before a slow
# page (a loaded box) connects to it: Panel then rebuilds it with CDN stylesheets, errors offline.
REAP_MS = (1000, 30_000)
REAP = ["--check-unused-sessions", str(REAP_MS[0]), "--unused-session-lifetime", str(REAP_MS[1])]


def stop_checked(server: ServeProcess) -> None:
    """Ctrl-C the server; it must flush and exit cleanly."""
    code = server.stop(timeout=120)  # SIGINT: final flush and teardown; slow on a loaded box
    log = server.output()
    assert code == 0, f"exit code {code}\n{log[-4000:]}"
    # Tornado logs a traceback when a tab closes mid-send, and Bokeh one when a patch from a
    # closing tab arrives after its session was detached (bokeh/server/connection.py asserts
    # the session): noise inside the server's own teardown of a tab; anything else is a bug
    tracebacks = re.split(r"(?=Traceback \(most recent call last\))", log)[1:]
    noise = ("WebSocketClosedError", "StreamClosedError", "assert self._session is not None")
    bad = [t for t in tracebacks if not any(n in t for n in noise)]
    assert not bad, "\n".join(bad)[-4000:]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``panel serve dashboard/app.py --args --demo --speed 30`` with 10 symbols."""
    tmp = tmp_path_factory.mktemp("demo")
    server = serve_app(
        ["--demo", "--db", str(tmp / "demo.duckdb"), "--symbols", ",".join(SYMBOLS), "--speed", "30",
         "--refresh-ms", "250"],
        tmp / "serve.log", serve_args=REAP)
    try:
        # a static file: polling the app itself builds a session per try, and on a busy
        # box each try outlasts its timeout while the sessions pile up
        wait_http(f"http://127.0.0.1:{server.port}/static/js/bokeh.min.js", 180, server.proc)
        yield server
    finally:
        stop_checked(server)


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


class Pages:
    """Pages opened by one test, each watched for JavaScript errors; closed at the end."""

    def __init__(self, browser) -> None:
        self.browser = browser
        self.console = Console()
        self.open: list = []

    def new(self, url: str, viewport: dict = VIEWPORT):
        page = self.browser.new_page(viewport=viewport)
        self.console.attach(page, f"tab {len(self.open)} {time.strftime('%H:%M:%S')}")
        page.goto(url)
        self.open.append(page)
        return page

    def close(self) -> None:
        for page in self.open:
            if not page.is_closed():
                page.close()
        self.open.clear()


@pytest.fixture
def pages(chromium):
    p = Pages(chromium)
    yield p
    p.close()


def assert_no_js_errors(console: Console) -> None:
    assert console.errors == [], "\n\n".join(console.errors)


# --- one shared demo server at 30x --------------------------------------------------------

def test_page_renders_every_part_with_data(demo, pages):
    page = pages.new(demo.url)
    # complete, and every symbol's backfill done (RSI in every table row)
    s = wait_state(page, lambda st: complete(st) and st["table"]["with_rsi"] == st["table"]["rows"], 60,
                   what="a complete page")
    assert s["symbol"] == "BTCUSDT" and s["timeframe"] == "1m" and s["color_by"] == "24h change %"
    assert s["spacing_ms"] == 60_000
    # the chart opens on its default window plus a margin, filled from the REST backfill's
    # history: at 30x, streaming alone would take 5 minutes to fill it
    assert s["closed_rows"] >= DEFAULT_CANDLES
    panels = s["panels"]
    assert set(panels) == {"Price", "Volume", "RSI", "StochRSI"}
    # RSI needs 14 candles and StochRSI 14 + 3 + 3 more: everything else has values
    assert panels["Price"]["values"] == panels["Volume"]["values"] == s["closed_rows"]
    assert panels["RSI"]["values"] >= s["closed_rows"] - 14
    assert panels["StochRSI"]["values"] >= s["closed_rows"] - 40
    assert s["heatmap"]["symbols"] == SYMBOLS and s["heatmap"]["tiles"] == 10
    assert all(label.endswith("%") for label in s["heatmap"]["labels"])
    assert sorted(s["table"]["symbols"]) == sorted(SYMBOLS) and s["table"]["with_rsi"] == 10
    assert abs(s["last_close"] / table_price(s, "BTCUSDT") - 1) < 0.02  # chart and table agree
    wait_state(page, lambda s: "live:" in s["status"] and sessions_shown(s) is not None, 60,
               what="status 'live'")
    assert_no_js_errors(pages.console)


def test_charts_receive_new_candles_and_ticks(demo, pages):
    page = pages.new(demo.url)
    s0 = wait_state(page, complete, 60, what="a complete page")
    # at 30x a candle closes every 2 s and the forming one changes every ~8 ms
    moved = wait_state(page, lambda s: s["last_close"] != s0["last_close"], 60, what="the live candle to move")
    assert moved["last_time"] >= s0["last_time"]
    later = wait_state(page, lambda s: s["last_time"] >= s0["last_time"] + 2 * 60_000, 60,
                       what="two more closed candles")
    # every candle that closed since s0 is one more row, up to the buffer's 2,000 (then it rolls over)
    closed_since = (later["last_time"] - s0["last_time"]) // 60_000
    assert later["closed_rows"] == min(2000, s0["closed_rows"] + closed_since), (s0, later)
    assert later["spacing_ms"] == 60_000
    labels0 = s0["heatmap"]["labels"]
    wait_state(page, lambda s: s["heatmap"]["labels"] != labels0, 60, what="heatmap values to change")
    assert_no_js_errors(pages.console)


def test_clicking_a_heatmap_tile_charts_that_symbol(demo, pages):
    page = pages.new(demo.url)
    btc = wait_state(page, complete, 60, what="a complete page")["last_close"]
    click_tile(page, "ETHUSDT")
    wait_state(page, lambda s: s["symbol"] == "ETHUSDT", 60, what="the symbol to switch to ETHUSDT")
    s = wait_state(page, lambda s: abs(s["last_close"] / table_price(s, "ETHUSDT") - 1) < 0.02, 60,
                   what="ETHUSDT candles in the chart")
    assert abs(s["last_close"] / btc - 1) > 0.5  # not BTC's chart any more
    assert s["heatmap"]["selected"] == [SYMBOLS.index("ETHUSDT")]
    click_tile(page, "AVAXUSDT")
    wait_state(page, lambda s: s["symbol"] == "AVAXUSDT" and abs(s["last_close"] / table_price(s, "AVAXUSDT") - 1) < 0.02,
               60, what="AVAXUSDT candles in the chart")
    assert_no_js_errors(pages.console)


def test_clicking_a_table_row_charts_that_symbol(demo, pages):
    page = pages.new(demo.url)
    wait_state(page, complete, 60, what="a complete page")
    for symbol in ("SOLUSDT", "DOGEUSDT"):
        # the price cell: the symbol column is frozen and the row is re-rendered on updates
        page.locator(".tabulator-row").filter(has_text=symbol).first.locator(".tabulator-cell").nth(2).click()
        wait_state(page, lambda s, symbol=symbol: s["symbol"] == symbol, 60, what=f"the symbol to be {symbol}")
        wait_state(page, lambda s, symbol=symbol: abs(s["last_close"] / table_price(s, symbol) - 1) < 0.02, 60,
                   what=f"{symbol} candles in the chart")
    assert_no_js_errors(pages.console)


def test_switching_timeframe_redraws_with_coarser_candles(demo, pages):
    page = pages.new(demo.url)
    one = wait_state(page, complete, 60, what="a complete page")
    page.get_by_role("button", name="5m", exact=True).click()
    five = wait_state(page, lambda s: s["spacing_ms"] == 5 * 60_000, 60, what="5m candles")
    assert five["timeframe"] == "5m"
    assert one["closed_rows"] / 6 < five["closed_rows"] < one["closed_rows"]
    assert five["panels"]["RSI"]["values"] >= five["closed_rows"] - 14
    page.get_by_role("button", name="1h", exact=True).click()
    hour = wait_state(page, lambda s: s["spacing_ms"] == 3_600_000, 60, what="1h candles")
    assert hour["timeframe"] == "1h" and 0 < hour["closed_rows"] < five["closed_rows"]
    # the live 1h candle keeps moving with the 1m stream
    wait_state(page, lambda s: s["last_close"] != hour["last_close"], 60, what="the live 1h candle to move")
    page.get_by_role("button", name="1m", exact=True).click()
    wait_state(page, lambda s: s["spacing_ms"] == 60_000 and s["closed_rows"] >= one["closed_rows"], 60,
               what="1m candles again")
    assert_no_js_errors(pages.console)


def test_five_sessions_update_and_closing_them_is_noticed(demo, pages):
    watcher = pages.new(demo.url)
    wait_state(watcher, lambda s: sessions_shown(s) == 1, 180, what="earlier tabs to be reaped")
    tabs = [pages.new(demo.url, SMALL) for _ in range(5)]  # small: six tabs draw on two cores
    first = [wait_state(t, complete, 60, what="a complete page") for t in tabs]
    for tab, s0 in zip(tabs, first):
        wait_state(tab, lambda s, s0=s0: s["last_time"] > s0["last_time"] and s["last_close"] != s0["last_close"],
                   60, what="a new candle in every tab")
    wait_state(watcher, lambda s: sessions_shown(s) == 6, 60, what="6 sessions in the header")
    for tab in tabs:
        tab.close()
    # Bokeh reaps a closed tab's session after --unused-session-lifetime; the view stops
    # its callback and tells the shared feed
    wait_state(watcher, lambda s: sessions_shown(s) == 1, 180, what="the closed tabs' sessions to end")
    assert_no_js_errors(pages.console)


# --- the command from the README ----------------------------------------------------------

def test_demo_command_as_users_run_it(tmp_path, pages):
    """``panel serve dashboard/app.py --args --demo``: 50 symbols at Binance's real pace."""
    ARTIFACTS.mkdir(exist_ok=True)
    server = serve_app(["--demo"], tmp_path / "serve.log", env={"MARKET_DB": str(tmp_path / "demo.duckdb")})
    try:
        wait_http(f"http://127.0.0.1:{server.port}/static/js/bokeh.min.js", 180, server.proc)
        page = pages.new(server.url, TALL)
        s0 = wait_state(page, complete, 240, what="a complete page")
        assert s0["heatmap"]["tiles"] == 50 and s0["table"]["rows"] == 50
        assert s0["spacing_ms"] == 60_000 and s0["closed_rows"] >= DEFAULT_CANDLES
        wait_state(page, lambda s: "live:" in s["status"] and sessions_shown(s) == 1, 60, what="status 'live'")
        # at the real pace the forming candle changes every 250 ms: it keeps moving
        # (60 s, generous: on a loaded 2-core box the browser can stall for seconds)
        closes, deadline = {s0["last_close"]}, time.monotonic() + 60
        while len(closes) < 4 and time.monotonic() < deadline:
            page.wait_for_timeout(250)
            closes.add(page_state(page)["last_close"])
        assert len(closes) >= 4, f"the live candle barely moved in 60 s: {closes}"
        page.screenshot(path=ARTIFACTS / "dashboard-light.png")

        dark = pages.new(server.url + "?theme=dark", TALL)
        wait_state(dark, complete, 60, what="a complete dark page")
        dark.wait_for_timeout(500)
        dark.screenshot(path=ARTIFACTS / "dashboard-dark.png")
        assert_no_js_errors(pages.console)
    finally:
        pages.close()
        stop_checked(server)
    # the candles it streamed and backfilled are in the file (the final flush ran on Ctrl-C)
    import store

    counts = store.query("SELECT count(*) AS n, count(DISTINCT symbol) AS symbols FROM klines",
                         db=tmp_path / "demo.duckdb")
    assert counts["symbols"][0] == 50 and counts["n"][0] >= 50 * 500


# --- in-process: nothing outlives a session --------------------------------------------------

def forget_logged_tracebacks() -> None:
    """Drop the tracebacks pytest's log capture keeps with each record.

    Tornado logs a WebSocketClosedError when a tab closes mid-send; the record's
    traceback holds the frames of the websocket handler and through them the whole
    session. pytest keeps records until the test ends, so that would look like a leak
    that a server (whose log handlers keep nothing) does not have.
    """
    for handler in logging.getLogger().handlers:
        for record in getattr(handler, "records", ()):
            record.exc_info = None


def referrer_chain(obj, ignore=(), depth: int = 25) -> list[str]:
    """Type names on a path from ``obj`` up its referrers to a module or class (for failures)."""
    skip = {id(x) for x in ignore}
    seen, queue = {id(obj)}, [(obj, [type(obj).__qualname__])]
    skip.update({id(seen), id(queue)})
    while queue:
        node, path = queue.pop(0)
        if len(path) > depth:
            continue
        for ref in gc.get_referrers(node):
            if id(ref) in seen or id(ref) in skip or isinstance(ref, types.FrameType) or ref is path:
                continue
            seen.add(id(ref))
            name = type(ref).__qualname__
            if isinstance(ref, dict):
                name += "(" + ",".join(map(str, list(ref)[:4])) + ")"
            if isinstance(ref, (types.ModuleType, type)):
                return [*path, f"{name} {getattr(ref, '__name__', '')}"]
            queue.append((ref, [*path, name]))
    return ["(no path to a module: held by a frame or a thread)"]


def test_closed_sessions_leave_nothing_behind(tmp_path, pages):
    """Each tab's Dashboard (and its figures, streams, callback) is freed once Bokeh reaps it."""
    import panel as pn

    from dashboard.config import AppConfig
    from dashboard.live import CACHE_KEY, shared_feed
    from dashboard.view import Dashboard

    pn.state.reset()
    config = AppConfig(demo=True, db=str(tmp_path / "gc.duckdb"), symbols=SYMBOLS[:4], speed=30, refresh_ms=250)
    made: list[weakref.ref] = []

    def page_factory():  # what dashboard/app.py does per session
        pn.extension("tabulator", notifications=True, design="bootstrap")
        d = Dashboard(shared_feed(config))
        made.append(weakref.ref(d))
        return d

    port = free_port()
    thread = pn.serve({"app": page_factory}, port=port, address="127.0.0.1",
                      websocket_origin=f"127.0.0.1:{port}", threaded=True, show=False, verbose=False,
                      check_unused_sessions_milliseconds=REAP_MS[0],
                      unused_session_lifetime_milliseconds=REAP_MS[1])
    url = f"http://127.0.0.1:{port}/app"
    try:
        wait_http(f"http://127.0.0.1:{port}/static/js/bokeh.min.js", 180)
        for symbol, timeframe in (("ETHUSDT", "5m"), ("SOLUSDT", "1h")):
            page = pages.new(url)
            wait_state(page, lambda s: s["closed_rows"] > 20 and s["heatmap"] is not None, 60, what="a page")
            click_tile(page, symbol)
            wait_state(page, lambda s, symbol=symbol: s["symbol"] == symbol, 60, what=f"{symbol}")
            page.get_by_role("button", name=timeframe, exact=True).click()
            wait_state(page, lambda s, tf=timeframe: s["timeframe"] == tf, 60, what=timeframe)
            page.close()
        feed = pn.state.cache[CACHE_KEY]
        deadline = time.monotonic() + REAP_MS[1] / 1000 + 120
        while feed.sessions or any(ref() is not None for ref in made):
            if time.monotonic() > deadline:
                alive = next((d for ref in made if (d := ref()) is not None), None)
                chain = " <- ".join(referrer_chain(alive, ignore=[made])) if alive is not None else ""
                del alive
                raise AssertionError(f"{feed.sessions} sessions still counted, "
                                     f"{sum(ref() is not None for ref in made)} of {len(made)} Dashboards "
                                     f"still referenced: {chain}")
            time.sleep(0.2)
            forget_logged_tracebacks()
            gc.collect()
        assert len(made) >= 2  # (wait_http's GET made a session too)
    finally:
        feed = pn.state.cache.get(CACHE_KEY)
        if feed is not None and feed.task is not None:
            asyncio.run_coroutine_threadsafe(feed.stop(), feed.loop).result(30)
        thread.stop()
        thread.join(10)
        pn.state.reset()
    assert feed.task.done()
