"""market/presets.py: exchange presets, default symbols and combined-stream URLs."""

from __future__ import annotations

import pytest

from market import presets


def test_stream_names():
    assert presets.stream_names(["BTCUSDT", "ethusdt", "BTCUSDT"], "1m") == [
        "btcusdt@kline_1m", "btcusdt@ticker", "ethusdt@kline_1m", "ethusdt@ticker"]
    assert presets.stream_names(["BTCUSDT"], "5m", tickers=False) == ["btcusdt@kline_5m"]
    with pytest.raises(ValueError, match="unknown interval"):
        presets.stream_names(["BTCUSDT"], "7m")
    with pytest.raises(ValueError, match="alphanumeric"):
        presets.stream_names(["BTC/USDT"], "1m")


def test_stream_urls_split():
    streams = [f"s{i}usdt@kline_1m" for i in range(450)]
    urls = presets.stream_urls("wss://fstream.binance.com/market/", streams, 200)
    assert len(urls) == 3
    prefix = "wss://fstream.binance.com/market/stream?streams="
    assert all(u.startswith(prefix) for u in urls)
    parts = [u[len(prefix):].split("/") for u in urls]
    assert [len(p) for p in parts] == [200, 200, 50]
    assert sum(parts, []) == streams
    assert presets.stream_urls("ws://h", ["a", "b"], 1024) == ["ws://h/stream?streams=a/b"]
    assert presets.stream_urls("ws://h", [], 10) == []


def test_presets():
    assert presets.DEFAULT_PRESET == "binance-futures"
    fut = presets.get_preset("binance-futures")
    assert fut.ws_base == "wss://fstream.binance.com/market"
    assert fut.klines_url == "https://fapi.binance.com/fapi/v1/klines"
    assert (fut.max_streams, fut.kline_limit, fut.control_rate, fut.spot) == (200, 1500, 10, False)
    spot = presets.get_preset("binance-spot")
    assert (spot.ws_base, spot.klines_path, spot.max_streams, spot.kline_limit, spot.spot) == (
        "wss://stream.binance.com:9443", "/api/v3/klines", 1024, 1000, True)
    assert set(presets.PRESETS) == {"binance-futures", "binance-spot", "binance-us",
                               "binance-futures-testnet", "binance-spot-testnet"}
    with pytest.raises(TypeError):
        presets.PRESETS["mine"] = fut
    with pytest.raises(ValueError, match="binance-spot-testnet"):
        presets.get_preset("kraken")
    assert len(presets.DEFAULT_SYMBOLS) == len(set(presets.DEFAULT_SYMBOLS)) == 50
    assert presets.DEFAULT_SYMBOLS[:3] == ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    assert all(s == s.upper() and s.isalnum() for s in presets.DEFAULT_SYMBOLS)


def test_custom_preset():
    local = presets.custom_preset("ws://127.0.0.1:9000/stream", "http://127.0.0.1:9000/")
    assert (local.name, local.ws_base, local.rest_base) == (
        "custom", "ws://127.0.0.1:9000", "http://127.0.0.1:9000")
    assert local.klines_path == "/fapi/v1/klines" and local.max_streams == 200
    assert presets.custom_preset("ws://h", "http://h", like="binance-spot").klines_path \
        == "/api/v3/klines"
    known = presets.custom_preset("wss://data-stream.binance.vision", "https://api.binance.com")
    assert known.klines_path == "/api/v3/klines" and known.max_streams == 1024
    with pytest.raises(ValueError, match="ws-url"):
        presets.custom_preset("http://h", "http://h")
    with pytest.raises(ValueError, match="rest-url"):
        presets.custom_preset("ws://h", "h:80")


def test_region_block_message():
    # default: the flags every command has (store.ingest has no --demo)
    msg = presets.region_block_message("binance-futures", 451)
    assert "HTTP 451" in msg and "region" in msg and "--demo" not in msg
    assert "--exchange binance-us (for US users)" in msg
    assert "binance-spot" in msg and "--exchange binance-futures " not in msg + " "
    us = presets.region_block_message("binance-us", 403, flags=("--exchange", "--demo"))
    assert "HTTP 403" in us and "binance-us" not in us and "binance-futures" in us
    assert us.endswith("or --demo to use the local exchange.")
    assert presets.region_block_message("binance-spot", 451, flags=()).endswith("(a region block).")
    moved = presets.region_block_message("binance-futures", 302, location="https://www.binance.com/en/x\r\nSet-Cookie: a")
    assert "HTTP 302" in moved and "https://www.binance.com/en/x Set-Cookie: a" in moved
    assert "region block, a proxy or a captive portal" in moved and "\n" not in moved
    said = presets.region_block_message("binance-futures", 451, detail="Service unavailable from a restricted location")
    assert '(HTTP 451): "Service unavailable from a restricted location"' in said
