"""The Data page in a real Chromium against `panel serve dashboard/app.py` ingesting at speed.

The app ingests from a local exchange in its own process (`python -m market.exchange`),
so the test can ask that exchange for the truth afterwards: whatever the page did to
the file (slow queries, refused escapes), every closed candle must be stored once.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import httpx
import polars as pl
import pytest

import store
from tests.browser import ARTIFACTS, ROOT, Console, browser, free_port, serve_app, wait_http
from tests.conftest import random_klines

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium on PATH")]
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
RUN = "Run  (read-only)"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explorer")
    port = free_port()
    exchange = subprocess.Popen(
        [sys.executable, "-m", "market.exchange", "--port", str(port), "--symbols", ",".join(SYMBOLS),
         "--speed", "60"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp / "exchange.log").open("wb"))
    db = tmp / "explore.duckdb"
    server = serve_app(["--db", str(db), "--symbols", ",".join(SYMBOLS),
                        "--ws-url", f"ws://127.0.0.1:{port}/market", "--rest-url", f"http://127.0.0.1:{port}"],
                       tmp / "serve.log", serve_args=["--warm"])  # recording starts with the server
    try:
        wait_http(f"http://127.0.0.1:{port}/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1", 60)
        wait_http(f"http://127.0.0.1:{server.port}/static/js/bokeh.min.js", 180, server.proc)
        yield server, db, f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        exchange.terminate()
        exchange.wait(20)


def stored_count(db, symbol: str) -> int:
    try:
        return store.query("SELECT count(*) FROM klines WHERE symbol = ?", [symbol], db=db).item()
    except store.StoreError:
        return 0


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.2)


def run_sql(page, sql: str) -> None:
    page.locator(".sql-editor textarea").fill(sql)
    page.get_by_role("button", name=RUN).click()


def test_data_page_queries_escapes_and_no_lost_candles(app):
    server, db, rest = app
    wait_until(lambda: stored_count(db, "BTCUSDT") >= 500, 180, "backfilled history in the file")
    errors = Console()
    with browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        errors.attach(page)
        page.goto(server.url + "?page=data")

        # browse: the klines table, counted and paged on the server
        info = page.locator(".browse-info").get_by_text(re.compile(r"rows .* of"))
        info.wait_for(timeout=60_000)
        total = int(re.search(r"of ([\d,]+)", info.inner_text()).group(1).replace(",", ""))
        assert "rows 1–100 of" in info.inner_text() and total >= 500 * len(SYMBOLS)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "data-browse.png"))

        # an ordinary query returns the right rows
        cutoff = store.query("SELECT max(open_time) - INTERVAL 10 MINUTE FROM klines WHERE symbol = 'ETHUSDT'",
                             db=db).item()
        want = store.query("SELECT count(*) AS n, round(sum(close), 6) AS s FROM klines "
                           "WHERE symbol = 'ETHUSDT' AND open_time <= ?", [cutoff], db=db).row(0)
        page.locator(".bk-tab", has_text="SQL").click()
        run_sql(page, "SELECT count(*) AS n, round(sum(close), 6) AS s FROM klines "
                      f"WHERE symbol = 'ETHUSDT' AND open_time <= TIMESTAMP '{cutoff:%Y-%m-%d %H:%M:%S}'")
        page.locator(".sql-info").get_by_text("1 rows").wait_for(timeout=60_000)
        cells = page.locator(".sql-result .tabulator-cell").all_inner_texts()
        assert str(want[0]) in [c.replace(",", "") for c in cells], (cells, want)

        # escapes are refused in plain words
        for sql, words in [("WITH x AS (SELECT 1) DELETE FROM klines", "DELETE statements are not allowed"),
                           ("SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
                           ("ATTACH '/tmp/x.duckdb' AS x", "ATTACH statements are not allowed"),
                           ("SET threads = 8", "SET statements are not allowed")]:
            run_sql(page, sql)
            page.locator(".sql-error").get_by_text(words).wait_for(timeout=60_000)
            assert "Traceback" not in page.content()

        # a query that holds the file until the time limit cancels it
        run_sql(page, "SELECT count(*) FROM range(1000000000000)")
        page.locator(".sql-error").get_by_text("was cancelled").wait_for(timeout=90_000)
        page.screenshot(path=str(ARTIFACTS / "data-sql.png"))

        # the quick chart appears for a time + numbers result
        page.get_by_role("button", name="1h candles in SQL").click()
        page.get_by_role("button", name=RUN).click()
        page.locator(".sql-info").get_by_text("rows").wait_for(timeout=60_000)

        page.locator(".bk-tab", has_text="Coverage").click()
        first_symbol = page.locator('.coverage-rows .tabulator-cell[tabulator-field="symbol"]').first
        first_symbol.wait_for(timeout=60_000)
        assert first_symbol.inner_text() == "BTCUSDT"
        first_symbol.click()
        link = page.get_by_text("open this range on the chart")
        link.wait_for(timeout=60_000)
        link.click()
        page.wait_for_url(re.compile(r"symbol=BTCUSDT&timeframe=1m&from="), timeout=60_000)
        # the chart page opens on that range: the 1m button is the one shown, Auto is off
        page.locator(".bk-btn.bk-active", has_text="1m").wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "data-coverage-link.png"))
        page.close()
    assert not [e for e in errors.errors if "favicon" not in e], errors.errors

    # nothing was lost while the page held the file: the store equals the exchange
    now = httpx.get(rest + "/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "1m", "limit": 1}).json()
    last_closed = now[-1][0] - 60_000
    wait_until(lambda: store.query("SELECT max(epoch_ms(open_time)) FROM klines WHERE symbol = 'BTCUSDT'",
                                   db=db).item() >= last_closed, 120, "ingest caught up after the slow query")
    for symbol in SYMBOLS:
        got = store.query("SELECT epoch_ms(open_time) AS t, close FROM klines WHERE symbol = ? "
                          "AND epoch_ms(open_time) <= ? ORDER BY t", [symbol, last_closed], db=db)
        first = got["t"][0]
        rows = httpx.get(rest + "/fapi/v1/klines", params={
            "symbol": symbol, "interval": "1m", "startTime": first, "endTime": last_closed, "limit": 1500}).json()
        want = pl.DataFrame({"t": [r[0] for r in rows], "close": [float(r[4]) for r in rows]})
        assert got["t"].n_unique() == got.height, f"{symbol}: duplicated candles"
        assert got.equals(want), f"{symbol}: stored candles differ from the exchange's"


def test_sql_box_needs_credentials_when_auth_is_on(tmp_path):
    """With Panel's basic auth, no page (and so no SQL box) without logging in."""
    db = tmp_path / "auth.duckdb"
    w = store.Writer(db, market="binance-futures")
    w.add_klines(random_klines(["BTCUSDT"], 50))
    w.flush()
    server = serve_app(["--db", str(db), "--symbols", "BTCUSDT", "--ws-url", "ws://127.0.0.1:9/market",
                        "--rest-url", "http://127.0.0.1:9"], tmp_path / "serve.log",
                       serve_args=["--basic-auth", "s3cret-pass", "--cookie-secret", "test-cookie-secret-0123456789"])
    try:
        login = f"http://127.0.0.1:{server.port}/login"
        wait_http(login, 120, server.proc)
        anonymous = httpx.get(server.url + "?page=data", follow_redirects=False, timeout=30)
        assert anonymous.status_code in (302, 303) and "/login" in anonymous.headers["location"]
        assert "sql-editor" not in anonymous.text
        # the session WebSocket is refused without the login cookie too
        ws = httpx.get(f"http://127.0.0.1:{server.port}/app/ws", follow_redirects=False, timeout=30,
                       headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                "Origin": f"http://127.0.0.1:{server.port}"})
        assert ws.status_code != 101
        with httpx.Client(timeout=60) as client:
            bad = client.post(login, data={"username": "me", "password": "wrong"}, follow_redirects=True)
            assert "sql-editor" not in bad.text
            good = client.post(login, data={"username": "me", "password": "s3cret-pass"}, follow_redirects=False)
            assert good.status_code in (302, 303)
            page = client.get(server.url + "?page=data", follow_redirects=True)
            assert page.status_code == 200 and "bokeh" in page.text.lower()
    finally:
        server.stop()
