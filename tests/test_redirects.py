"""Handshakes answered with a redirect, 451 or 403: diagnosed in plain words, never followed.

The peers are real: a tiny HTTP server (``asyncio.start_server``) that answers
every handshake with the status, Location and body a test wants, and the local
exchange's own redirect fault. ``market.stream`` must not follow a 3xx (websockets
would follow one to any ws:// URL): the test counts what reached the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys

import pytest

from market.exchange import LocalExchange
from market.feed import Feed
from market.presets import get_preset
from market.stream import FeedConfig
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(300)  # CI shares its machine

#: what Binance answers a restricted region with (HTTP 451 on the stream, 403 on some REST hosts)
RESTRICTED = (b'{"code":0,"msg":"Service unavailable from a restricted location according to '
              b"'b. Eligibility' in https://www.binance.com/en/terms. Please contact customer service "
              b'if you believe you received this message in error."}')
REASONS = {301: "Moved Permanently", 302: "Found", 307: "Temporary Redirect", 308: "Permanent Redirect",
           403: "Forbidden", 451: "Unavailable For Legal Reasons"}


class RawHTTP:
    """A real peer answering every request with one fixed HTTP response, recording the request lines."""

    def __init__(self, status: int, location: str | None = None, body: bytes = b"") -> None:
        self.status, self.location, self.body = status, location, body
        self.requests: list[str] = []
        self.connections = 0

    async def __aenter__(self) -> RawHTTP:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head.split(b"\r\n", 1)[0].decode())
            lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}",
                     f"Content-Length: {len(self.body)}", "Connection: close"]
            if self.body:
                lines.append("Content-Type: application/json")
            if self.location is not None:
                lines.append(f"Location: {self.location}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + self.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def futures_at(port: int) -> FeedConfig:
    """The binance-futures preset pointed at 127.0.0.1:port (its name stays: "other presets" is checked)."""
    preset = dataclasses.replace(get_preset("binance-futures"), ws_base=f"ws://127.0.0.1:{port}/market",
                                 rest_base=f"http://127.0.0.1:{port}")
    return FeedConfig(preset=preset, symbols=("BTCUSDT", "ETHUSDT"), backfill=False,
                      backoff_base=0.05, backoff_cap=0.3, open_timeout=5.0)


@contextlib.asynccontextmanager
async def feed_running(config: FeedConfig):
    feed = Feed(config, asyncio.Queue())
    task = asyncio.create_task(feed.run())
    try:
        yield feed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


async def offline_reason(feed: Feed, attempts: int = 2) -> str:
    conn = feed.connections[0]
    await wait_for(lambda: conn.status.reconnects >= attempts and conn.status.state == "offline",
                   timeout=120, what="the feed to give up as offline")
    return conn.status.reason


def assert_names_other_presets(text: str, *, demo: bool) -> None:
    assert "--exchange binance-us (for US users)" in text and "--exchange binance-spot" in text
    assert "--exchange binance-futures " not in text and "--exchange binance-futures," not in text
    assert ("--demo" in text) is demo


@pytest.mark.parametrize("status, location", [
    (301, "https://www.binance.com/en/restricted-location"),
    (302, "https://captive.example/login?next=%2F"),
    (307, "https://www.binance.com/en/restricted-location"),
    (308, "/somewhere-else"),  # relative: same host, another path
])
async def test_redirect_to_a_web_page_is_diagnosed_not_followed(status, location, caplog):
    caplog.set_level(logging.WARNING, logger="market.stream")
    async with RawHTTP(status, location, body=b'{"code":0,"msg":"Moved"}') as peer, \
            feed_running(futures_at(peer.port)) as feed:
        reason = await offline_reason(feed)
        described = feed.status().describe()
    assert f"HTTP {status}" in reason and f"to {location}, which we do not follow" in reason
    assert "a region block, a proxy or a captive portal" in reason
    assert_names_other_presets(reason, demo=True)  # FeedConfig's default flags are the dashboard's
    assert described.startswith("offline") and reason in described
    # never followed: every request asked for the stream, none for where we were sent
    assert peer.requests and all(r.startswith("GET /market/stream?streams=btcusdt@kline_1m/") for r in peer.requests)
    logged = [r.getMessage() for r in caplog.records if r.name == "market.stream"]
    assert any(reason in m for m in logged), logged


async def test_redirect_to_another_websocket_host_is_not_followed(caplog):
    caplog.set_level(logging.WARNING, logger="market.stream")
    async with LocalExchange(symbols=("BTCUSDT", "ETHUSDT"), speed=60, history_minutes=5) as elsewhere:
        target = f"{elsewhere.ws_base}/stream?streams=btcusdt@kline_1m"
        async with RawHTTP(307, target) as peer:
            config = dataclasses.replace(futures_at(peer.port), flags=("--exchange",))
            async with feed_running(config) as feed:
                reason = await offline_reason(feed, attempts=3)
            assert elsewhere.stats.connections_total == 0  # a working ws server, and we did not go
        assert peer.connections >= 3
    assert f"HTTP 307) to {target}, which we do not follow" in reason
    assert_names_other_presets(reason, demo=False)


async def test_redirect_without_location_says_so():
    async with RawHTTP(302) as peer, feed_running(futures_at(peer.port)) as feed:
        reason = await offline_reason(feed)
    assert "HTTP 302) to nowhere (no Location header)" in reason


@pytest.mark.parametrize("status", [451, 403])
@pytest.mark.parametrize("body", [RESTRICTED, b""], ids=["binance-json", "empty"])
async def test_region_block_quotes_binance_and_names_other_presets(status, body):
    async with RawHTTP(status, body=body) as peer, feed_running(futures_at(peer.port)) as feed:
        reason = await offline_reason(feed)
    assert f"Binance refused the connection (HTTP {status})" in reason
    assert "not available from your region" in reason
    if body:
        assert '"Service unavailable from a restricted location according to ' in reason
    else:
        assert f"(HTTP {status}):" in reason and '"' not in reason
    assert "\n" not in reason
    assert_names_other_presets(reason, demo=True)


async def test_local_exchange_redirect_fault_then_recovery():
    """The exchange's own switch: a 302 for a while, then the same feed goes live."""
    async with LocalExchange(symbols=("BTCUSDT", "ETHUSDT"), speed=60, history_minutes=5) as ex:
        ex.redirect(3600, 302, scope="ws")
        async with feed_running(futures_at(ex.port)) as feed:
            reason = await offline_reason(feed)
            assert "HTTP 302) to https://www.binance.com/en/restricted-location" in reason
            assert ex.stats.connections_total == 0 and ex.stats.redirected >= 2
            ex.redirect(0)  # the block ends
            conn = feed.connections[0]
            await wait_for(lambda: conn.status.state == "connected" and conn.status.messages > 5,
                           timeout=120, what="recovery after the redirect ends")
            assert feed.status().describe().startswith("live:")


@pytest.mark.parametrize("status, location, body", [
    (302, "https://www.binance.com/en/restricted-location", b""),
    (451, None, RESTRICTED),
])
async def test_ingest_cli_exits_1_saying_why_and_never_suggests_demo(tmp_path, status, location, body):
    async with RawHTTP(status, location, body) as peer:
        base = f"127.0.0.1:{peer.port}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "store.ingest", "--db", str(tmp_path / "m.duckdb"), "--symbols", "BTCUSDT",
            "--exchange", "binance-futures", "--ws-url", f"ws://{base}/market", "--rest-url", f"http://{base}",
            "--log-every", "0.2", cwd=ROOT, stderr=asyncio.subprocess.PIPE)
        # no --duration: a loaded box can spend it all starting up. Stop it (SIGTERM, as a user's
        # Ctrl-C) once a status line said offline; what it says then is what is checked.
        lines: list[str] = []
        try:
            async with asyncio.timeout(120):
                while not any(f"HTTP {status}" in line and "store.ingest: offline" in line for line in lines):
                    line = await proc.stderr.readline()
                    assert line, "".join(lines)  # it exited before saying offline
                    lines.append(line.decode())
                proc.send_signal(signal.SIGTERM)
                lines.append((await proc.stderr.read()).decode())
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = "".join(lines)
    assert proc.returncode == 1, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("python -m store.ingest: error: received nothing in "), last
    assert f"HTTP {status}" in last and "--demo" not in text and "Traceback" not in text
    if location:
        assert f"to {location}, which we do not follow" in last
    else:
        assert "Service unavailable from a restricted location" in last
    # the periodic status line says it too (pipeline status describe())
    assert any(f"HTTP {status}" in line and "store.ingest: offline" in line for line in text.splitlines()), text
