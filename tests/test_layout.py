"""The finished layout in a real Chromium at 1366x768 and 1920x1080, light and dark.

One server (``panel serve --warm dashboard/app.py --args --demo``, the 50 default
symbols, so 1000SHIB, 1000BONK, RENDER... are on the heatmap) and four pages,
each saved whole to test-artifacts/layout-<width>-<theme>.png. What is asserted
is read from the page: the DOM (Playwright's CSS selectors reach into Panel's
shadow roots) and the Bokeh models and views that draw the heatmap.
"""

from __future__ import annotations

import math
import re

import pytest

import store
from dashboard.heatmap import short_name
from dashboard.table import format_price, format_volume, price_decimals
from market.presets import DEFAULT_SYMBOLS
from tests.browser import ARTIFACTS, Console, chromium_path, complete, serve_app, wait_http, wait_state

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="needs Chromium on PATH (Debian: apt-get install chromium)"),
    pytest.mark.timeout(900),
]

SIZES = [(1366, 768), (1920, 1080)]

# Per heatmap tile: its on-screen box and the rendered width of its name at its font size.
TILES_JS = r"""
() => {
  function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
  for (const root of Bokeh.index.roots) for (const v of walk(root)) {
    if (v.model.type !== "Figure") continue;
    for (const r of v.model.renderers) {
      const d = r.data_source && r.data_source.data;
      if (!(d && "name_size" in d)) continue;
      const ctx = document.createElement("canvas").getContext("2d");
      const xs = v.frame.x_scale, ys = v.frame.y_scale, out = [];
      for (let i = 0; i < d.symbol.length; i++) {
        const width = Math.abs(xs.compute(d.right[i]) - xs.compute(d.left[i]));
        const height = Math.abs(ys.compute(d.top[i]) - ys.compute(d.bottom[i]));
        ctx.font = `bold ${d.name_size[i]} helvetica`;
        const name = ctx.measureText(d.name[i]).width;
        ctx.font = `normal ${d.label_size[i]} helvetica`;
        const label = ctx.measureText(d.label[i]).width;
        out.push({symbol: d.symbol[i], name: d.name[i], width, height, name_px: name, label_px: label,
                  name_size: parseFloat(d.name_size[i]), label_size: parseFloat(d.label_size[i])});
      }
      return {tiles: out, figure_width: v.frame.bbox.width};
    }
  }
  return null;
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layout")
    srv = serve_app(["--demo", "--db", str(tmp / "demo.duckdb"), "--speed", "5"], tmp / "serve.log",
                    # a session must outlive a slow page load: a tab that connects after Bokeh
                    # reaped its session gets a rebuilt one whose stylesheets point at the CDN
                    serve_args=["--warm", "--unused-session-lifetime", "600000"])
    try:
        wait_http(srv.url.removesuffix("/app") + "/static/extensions/panel/panel.min.js", 120, srv.proc)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


def whole_page(page, path) -> None:
    """Grow the window to the template's scrolled content, screenshot, restore (the main area scrolls inside)."""
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    full = page.locator("#main").evaluate("e => e.scrollHeight + e.getBoundingClientRect().top")
    page.set_viewport_size({"width": width, "height": max(height, math.ceil(full) + 20)})
    page.wait_for_timeout(1500)  # Bokeh re-lays out its canvases
    page.screenshot(path=path)
    page.set_viewport_size({"width": width, "height": height})


def luminance(css_color: str) -> float:
    """0 (black) .. 1 (white) of a computed ``rgb(...)`` colour."""
    r, g, b = (int(v) for v in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def overflow(page, selector: str) -> list[tuple[str, int, int]]:
    """Elements matching ``selector`` whose content is wider than their box (text cut or scrolled)."""
    return page.locator(selector).evaluate_all(
        "els => els.filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)"
        ".map(e => [e.textContent, e.scrollWidth, e.clientWidth])")


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("width, height", SIZES)
def test_layout_fits_and_reads(server, chromium, tmp_path, width, height, theme):
    ARTIFACTS.mkdir(exist_ok=True)
    page = chromium.new_page(viewport={"width": width, "height": height})
    console = Console()
    console.attach(page)
    try:
        page.goto(server.url + ("?theme=dark" if theme == "dark" else ""), timeout=300_000)
        state = wait_state(page, lambda s: complete(s) and s["table"]["with_rsi"] == s["table"]["rows"], 400,
                           what="a complete page")
        page.wait_for_timeout(2500)  # a table refresh with the prices' decimals known
        # Tabulator's own stylesheet (a <link> in its shadow root) can arrive long after the
        # models on a loaded box: until it does, header and cells stack like plain text
        for _ in range(600):
            if page.locator(".tabulator-col").first.evaluate("e => getComputedStyle(e).display") != "block":
                break
            page.wait_for_timeout(200)
        whole_page(page, ARTIFACTS / f"layout-{width}-{theme}.png")

        # nothing scrolls sideways: the page, the main area, the table
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert page.locator("#main").evaluate("e => e.scrollWidth <= e.clientWidth + 1")
        assert page.locator(".tabulator-tableholder").evaluate("e => e.scrollWidth <= e.clientWidth + 1")
        # every column title and every value whole
        titles = page.locator(".tabulator-col-title").all_text_contents()
        assert {"Symbol", "Last", "24h %", "24h vol", "RSI", "K", "D", "Signal"} <= set(titles)
        assert overflow(page, ".tabulator-col-title") == []
        assert overflow(page, ".tabulator-cell") == []

        # prices at the decimals of the symbol's prices; volumes with a suffix;
        # the rendered rows and the table model's numbers, read at the same moment
        rows, model = page.locator(".tabulator-row").evaluate_all("""rows => {
            let model = null;
            for (const d of Bokeh.documents) for (const m of d.all_models)
              if (m.type && m.type.endsWith('DataTabulator'))
                model = [Array.from(m.source.data.symbol), Array.from(m.source.data.quote_volume)];
            return [rows.map(r => Object.fromEntries([...r.querySelectorAll('.tabulator-cell')]
                      .map(c => [c.getAttribute('tabulator-field'), c.textContent.trim()]))), model] }""")
        shown = {r["symbol"]: r for r in rows if r.get("symbol")}
        assert len(shown) >= 5
        table = state["table"]
        db = next(a for a in server.proc.args if a.endswith(".duckdb"))
        for symbol in ("BTCUSDT", "ETHUSDT", "1000PEPEUSDT", "DOGEUSDT"):
            if symbol not in shown:
                continue  # not in the rendered (virtual) rows
            stored = store.query("SELECT open, high, low, close FROM klines WHERE symbol = ? "
                                 "ORDER BY open_time DESC LIMIT 200", [symbol], db=db)
            dp = price_decimals([v for c in stored.columns for v in stored[c].to_list()])
            text = shown[symbol]["price"]
            decimals = len(text.split(".")[1]) if "." in text else 0
            assert decimals == dp, f"{symbol} price {text!r}: {decimals} decimals, its prices have {dp}"
            price = float(text.replace(",", ""))
            held = table["prices"][table["symbols"].index(symbol)]
            assert abs(price / held - 1) < 0.01, (symbol, text, held)
        for row in shown.values():
            assert re.fullmatch(r"\d+(\.\d)?[KMBT]?", row["quote_volume"]), f"volume shown as {row['quote_volume']!r}"
        by_symbol = dict(zip(*model))
        for symbol, row in shown.items():  # the browser's formatting is format_volume's
            assert row["quote_volume"] == format_volume(by_symbol[symbol]), (symbol, row, by_symbol[symbol])

        # heatmap names fit their tiles (abbreviated 1000x contracts, smaller type on small tiles)
        tiles = page.evaluate(TILES_JS)
        assert tiles is not None
        names = {t["symbol"]: t["name"] for t in tiles["tiles"]}
        assert names["1000SHIBUSDT"] == "1kSHIB" == short_name("1000SHIBUSDT")
        for t in tiles["tiles"]:
            assert t["name_size"] >= 7, t
            assert t["name_px"] <= t["width"] - 2, f"{t['name']} spills its tile: {t}"
            if t["label_size"]:
                assert t["label_px"] <= t["width"] - 2, f"{t['name']}'s value spills its tile: {t}"

        # dark mode reaches the table's header filters and grid, and the chart's buttons
        dark = theme == "dark"
        bg = page.locator(".tabulator-header-filter input").first.evaluate("e => getComputedStyle(e).backgroundColor")
        assert (luminance(bg) < 0.3) if dark else (luminance(bg) > 0.7), f"header filter background {bg}"
        # the colours of the drawn borders of a cell and its row
        rules = page.locator(".tabulator-row .tabulator-cell").first.evaluate("""c => [c, c.parentElement]
            .flatMap(e => { const st = getComputedStyle(e); return ["Top", "Right", "Bottom", "Left"]
              .filter(side => parseFloat(st[`border${side}Width`]) > 0 && st[`border${side}Style`] !== "none")
              .map(side => st[`border${side}Color`]) })""")
        assert rules, "the table draws no grid lines"
        if dark:  # Tabulator's Bootstrap theme drew them white on the dark page
            assert all(luminance(c) < 0.45 for c in rules), f"table grid colours {rules}"
        for name in ("Go to live ▶", "5m", "1d"):
            bg = page.get_by_role("button", name=name, exact=True).evaluate(
                "e => getComputedStyle(e).backgroundColor")
            assert (luminance(bg) < 0.3) if dark else (luminance(bg) > 0.7), f"{name} button background {bg}"

        # the header links to the data page; the sidebar says when recording started
        assert page.get_by_role("link", name="Data").get_attribute("href") == "?page=data"
        assert page.get_by_text("when the server started").count() == 1
        assert console.errors == [], "\n".join(console.errors)
    finally:
        page.close()


def test_treemap_sizes_tiles_by_volume(server, chromium):
    page = chromium.new_page(viewport={"width": 1920, "height": 1080})
    try:
        page.goto(server.url, timeout=300_000)
        wait_state(page, complete, 400, what="a complete page")
        grid = page.evaluate(TILES_JS)["tiles"]
        assert len({round(t["width"]) for t in grid}) == 1  # the grid: equal tiles
        box = page.locator("input[type=checkbox]")
        assert box.count() == 1
        box.check()

        def treemap_drawn():
            tiles = page.evaluate(TILES_JS)["tiles"]
            areas = {t["symbol"]: t["width"] * t["height"] for t in tiles}
            return areas if max(areas.values()) > 3 * min(areas.values()) else None

        deadline_state = None
        for _ in range(240):
            deadline_state = treemap_drawn()
            if deadline_state:
                break
            page.wait_for_timeout(250)
        assert deadline_state, "tiles did not resize by volume"
        volumes = page.evaluate("""() => { for (const d of Bokeh.documents) for (const m of d.all_models)
            for (const r of (m.renderers || [])) { const s = r.data_source && r.data_source.data;
              if (s && 'name_size' in s) return [Array.from(s.symbol), Array.from(s.volume)] } }""")
        vol = dict(zip(*volumes))
        biggest_volume = max(vol, key=lambda s: vol[s] or 0)
        biggest_tile = max(deadline_state, key=deadline_state.get)
        assert biggest_tile == biggest_volume
        page.screenshot(path=ARTIFACTS / "layout-treemap.png")
        tiles = page.evaluate(TILES_JS)["tiles"]
        for t in tiles:  # labels still fit (or are left out on the smallest tiles)
            if t["name_size"]:
                assert t["name_px"] <= t["width"] - 2, t
    finally:
        page.close()


def test_symbols_cover_the_abbreviations():
    assert {"1000SHIBUSDT", "1000BONKUSDT", "1000FLOKIUSDT", "RENDERUSDT"} <= set(DEFAULT_SYMBOLS)
    assert short_name("1000FLOKIUSDT") == "1kFLOKI" and short_name("BTCUSDT") == "BTC"
    assert format_price(97123.4, 1) == "97,123.4" and format_price(float("nan"), 2) == ""
