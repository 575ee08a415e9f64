"""The whole page in a real Chromium: served in-process and as ``panel serve`` the way users run it.

The in-process server runs the demo feed at 30x speed (a 1m candle closes every 2 s)
with Bokeh reaping closed sessions after 1 s. What the page shows is read from the
Bokeh models in the browser (tests/browser.py): chart sources, heatmap tiles, table
rows and the status header. Screenshots (light and dark) go to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from tests.browser import (
    ARTIFACTS, VIEWPORT, Console, chromium_path, click_tile, complete, free_port, page_state, serve_app,
    wait_http, wait_state,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="needs Chromium on PATH (Debian: apt-get install chromium)"),
    pytest.mark.timeout(180),
]

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT",
           "LINKUSDT", "AVAXUSDT"]


class InProcess:
    """``pn.serve`` of the dashboard in a thread of this process, with the feed reachable."""

    def __init__(self, tmp_path) -> None:
        import panel as pn

        from dashboard.config import AppConfig
        from dashboard.live import CACHE_KEY, shared_feed
        from dashboard.view import Dashboard

        pn.state.reset()
        self.config = AppConfig(demo=True, db=str(tmp_path / "app.duckdb"), symbols=SYMBOLS, speed=30,
                                refresh_ms=250)
        self.dashboards: list[weakref.ref] = []
        self.cache_key = CACHE_KEY

        def page():  # what dashboard/app.py does per session
            pn.extension("tabulator", notifications=True, design="bootstrap")
            d = Dashboard(shared_feed(self.config))
            self.dashboards.append(weakref.ref(d))
            return d

        self.port = free_port()
        self.thread = pn.serve(
            {"app": page}, port=self.port, address="127.0.0.1", websocket_origin=f"127.0.0.1:{self.port}",
            threaded=True, show=False, start=True, verbose=False,
            # reap a closed tab's session after ~1 s instead of Bokeh's 15-30 s
            check_unused_sessions_milliseconds=300, unused_session_lifetime_milliseconds=1000,
        )
        self.url = f"http://127.0.0.1:{self.port}/app"
        wait_http(self.url, 60)

    @property
    def feed(self):
        import panel as pn

        return pn.state.cache.get(self.cache_key)

    def live_dashboards(self) -> int:
        gc.collect()
        return sum(ref() is not None for ref in self.dashboards)

    def stop(self) -> None:
        import panel as pn

        feed = self.feed
        if feed is not None and feed.loop is not None and feed.task is not None:
            asyncio.run_coroutine_threadsafe(feed.stop(), feed.loop).result(30)
        self.thread.stop()
        self.thread.join(10)
        pn.state.reset()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    server = InProcess(tmp_path_factory.mktemp("app"))
    try:
        yield server
    finally:
        server.stop()
    assert server.feed is None or server.feed.task.done()


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

    def new(self, url: str):
        page = self.browser.new_page(viewport=VIEWPORT)
        self.console.attach(page)
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


def wait_sessions(app: InProcess, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while app.feed is None or app.feed.sessions != n:
        assert time.monotonic() < deadline, f"{app.feed.sessions} sessions open, expected {n}"
        time.sleep(0.1)


# --- the in-process server (fast demo clock) ------------------------------------------------

def test_page_renders_every_part_with_data(app, pages):
    page = pages.new(app.url)
    s = wait_state(page, complete, 60, what="a complete page")
    assert s["symbol"] == "BTCUSDT" and s["timeframe"] == "1m" and s["color_by"] == "24h change %"
    assert s["spacing_ms"] == 60_000
    panels = s["panels"]
    assert set(panels) == {"Price", "Volume", "RSI", "StochRSI"}
    # RSI needs 14 candles and StochRSI 14 + 3 + 3 more: the rest must have values
    assert panels["Price"]["values"] == panels["Volume"]["values"] == s["closed_rows"]
    assert panels["RSI"]["values"] >= s["closed_rows"] - 14
    assert panels["StochRSI"]["values"] >= s["closed_rows"] - 40
    assert s["heatmap"]["symbols"] == SYMBOLS and s["heatmap"]["tiles"] == 10
    assert all(label.endswith("%") for label in s["heatmap"]["labels"])
    assert sorted(s["table"]["symbols"]) == sorted(SYMBOLS) and s["table"]["with_rsi"] == 10
    wait_state(page, lambda s: "live:" in s["status"], 30, what="status 'live'")
    # the chart shows what the server holds for BTCUSDT
    memory = app.feed.state.candles("BTCUSDT")
    assert s["closed_rows"] >= min(memory.height - 5, 1000)
    assert_no_js_errors(pages.console)


def test_charts_receive_new_candles_and_ticks(app, pages):
    page = pages.new(app.url)
    s0 = wait_state(page, complete, 60, what="a complete page")
    # at 30x a candle closes every 2 s and the forming one changes every ~8 ms of real time
    moved = wait_state(page, lambda s: s["last_close"] != s0["last_close"], 10, what="the live candle to move")
    assert moved["last_time"] >= s0["last_time"]
    later = wait_state(page, lambda s: s["last_time"] >= s0["last_time"] + 2 * 60_000, 20,
                       what="two more closed candles")
    assert later["closed_rows"] >= s0["closed_rows"] + 1  # (older ones may roll off at 2000)
    assert later["spacing_ms"] == 60_000
    labels0 = s0["heatmap"]["labels"]
    wait_state(page, lambda s: s["heatmap"]["labels"] != labels0, 10, what="heatmap values to change")
    assert_no_js_errors(pages.console)


def test_clicking_a_heatmap_tile_charts_that_symbol(app, pages):
    page = pages.new(app.url)
    wait_state(page, complete, 60, what="a complete page")
    click_tile(page, "ETHUSDT")
    s = wait_state(page, lambda s: s["symbol"] == "ETHUSDT", 15, what="the symbol to switch to ETHUSDT")
    eth = app.feed.state.candles("ETHUSDT")["close"][-1]
    btc = app.feed.state.candles("BTCUSDT")["close"][-1]
    s = wait_state(page, lambda s: abs(s["last_close"] / eth - 1) < 0.05, 15, what="ETHUSDT candles")
    assert abs(s["last_close"] / btc - 1) > 0.5  # not BTC's chart any more
    assert s["heatmap"]["selected"] == [SYMBOLS.index("ETHUSDT")]
    click_tile(page, "AVAXUSDT")
    wait_state(page, lambda s: s["symbol"] == "AVAXUSDT", 15, what="the symbol to switch to AVAXUSDT")
    assert_no_js_errors(pages.console)


def test_clicking_a_table_row_charts_that_symbol(app, pages):
    page = pages.new(app.url)
    wait_state(page, complete, 60, what="a complete page")
    for symbol in ("SOLUSDT", "DOGEUSDT"):
        page.locator(".tabulator-row").filter(has_text=symbol).first.locator(".tabulator-cell").nth(2).click()
        s = wait_state(page, lambda s, symbol=symbol: s["symbol"] == symbol, 15, what=f"the symbol to be {symbol}")
        close = app.feed.state.candles(symbol)["close"][-1]
        wait_state(page, lambda s, close=close: abs(s["last_close"] / close - 1) < 0.05, 15,
                   what=f"{symbol} candles")
    assert_no_js_errors(pages.console)


def test_switching_timeframe_redraws_with_coarser_candles(app, pages):
    page = pages.new(app.url)
    one = wait_state(page, complete, 60, what="a complete page")
    page.get_by_role("button", name="5m", exact=True).click()
    five = wait_state(page, lambda s: s["spacing_ms"] == 5 * 60_000, 20, what="5m candles")
    assert five["timeframe"] == "5m"
    assert 0 < five["closed_rows"] < one["closed_rows"]
    assert five["panels"]["RSI"]["values"] > 0
    page.get_by_role("button", name="1h", exact=True).click()
    hour = wait_state(page, lambda s: s["spacing_ms"] == 3_600_000, 20, what="1h candles")
    assert hour["timeframe"] == "1h" and 0 < hour["closed_rows"] < five["closed_rows"]
    # the live 1h candle keeps moving with the 1m stream
    wait_state(page, lambda s: s["last_close"] != hour["last_close"], 10, what="the live 1h candle to move")
    assert_no_js_errors(pages.console)


def test_five_sessions_update_and_closing_them_releases_everything(app, pages):
    wait_sessions(app, 0)  # earlier tests' tabs are closed and reaped
    assert app.live_dashboards() == 0, "closed sessions' Dashboards are still referenced"
    tabs = [pages.new(app.url) for _ in range(5)]
    first = [wait_state(p, complete, 60, what="a complete page") for p in tabs]
    wait_sessions(app, 5, 10)
    for tab, s0 in zip(tabs, first):
        wait_state(tab, lambda s, s0=s0: s["last_time"] > s0["last_time"], 15, what="a new candle in every tab")
    assert "5 sessions" in page_state(tabs[0])["status"]
    errors = list(pages.console.errors)
    pages.close()
    wait_sessions(app, 0)
    assert app.live_dashboards() == 0, "closed sessions' Dashboards are still referenced"
    assert errors == [], "\n\n".join(errors)


# --- the command users run ---------------------------------------------------------------

def test_demo_command_as_users_run_it(tmp_path, pages):
    """``panel serve dashboard/app.py --args --demo``: 50 symbols at Binance's real pace."""
    ARTIFACTS.mkdir(exist_ok=True)
    server = serve_app(["--demo"], tmp_path / "serve.log", env={"MARKET_DB": str(tmp_path / "demo.duckdb")})
    try:
        wait_http(server.url, 60, server.proc)
        page = pages.new(server.url)
        s0 = wait_state(page, complete, 90, what="a complete page")
        assert s0["heatmap"]["tiles"] == 50 and s0["table"]["rows"] == 50
        assert s0["spacing_ms"] == 60_000 and s0["closed_rows"] >= 500
        wait_state(page, lambda s: "live:" in s["status"] and "1 session" in s["status"], 30,
                   what="status 'live'")
        # at the real pace the forming candle changes every 250 ms: it keeps moving
        closes, deadline = {s0["last_close"]}, time.monotonic() + 8
        while len(closes) < 4 and time.monotonic() < deadline:
            page.wait_for_timeout(250)
            closes.add(page_state(page)["last_close"])
        assert len(closes) >= 4, f"the live candle barely moved in 8 s: {closes}"
        page.screenshot(path=ARTIFACTS / "dashboard-light.png", full_page=True)

        dark = pages.new(server.url + "?theme=dark")
        wait_state(dark, complete, 30, what="a complete dark page")
        dark.wait_for_timeout(500)
        dark.screenshot(path=ARTIFACTS / "dashboard-dark.png", full_page=True)
        assert_no_js_errors(pages.console)
    finally:
        pages.close()
        code = server.stop()
    log = server.output()
    assert "Traceback" not in log, log[-3000:]
    assert code == 0, log[-3000:]
    # the closed candles it streamed are in the file (the final flush ran on Ctrl-C)
    import store

    counts = store.query("SELECT count(*) AS n, count(DISTINCT symbol) AS symbols FROM klines",
                         db=tmp_path / "demo.duckdb")
    assert counts["symbols"][0] == 50 and counts["n"][0] >= 50 * 500
