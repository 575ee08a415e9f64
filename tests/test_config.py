"""dashboard/config.py: ``panel serve dashboard/app.py --args ...`` parsing and what it feeds the pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.config import DEMO_DB, TIMEFRAMES, AppConfig, ConfigError
from market.presets import DEFAULT_PRESET, DEFAULT_SYMBOLS
from store.db import DEFAULT_DB


@pytest.fixture(autouse=True)
def no_market_db(monkeypatch):
    monkeypatch.delenv("MARKET_DB", raising=False)


def test_defaults_follow_live_binance_futures():
    c = AppConfig.from_args([])
    assert c.demo is False
    assert c.db is None
    assert c.exchange == DEFAULT_PRESET == "binance-futures"
    assert c.symbols == list(DEFAULT_SYMBOLS) and len(c.symbols) == 50
    assert c.interval == "1m"
    assert c.refresh_ms == 500
    assert c.speed == 1.0
    assert c.db_path() == DEFAULT_DB
    ing = c.ingest_config()
    assert ing.symbols == tuple(DEFAULT_SYMBOLS)
    assert ing.db == DEFAULT_DB
    assert (ing.ws_url, ing.rest_url) == (None, None)
    assert ing.preset().name == "binance-futures"


def test_every_flag(tmp_path):
    db = tmp_path / "x.duckdb"
    c = AppConfig.from_args([
        "--demo", "--db", str(db), "--exchange", "binance-spot", "--symbols", " btcusdt, ethUSDT ,,SOLUSDT",
        "--interval", "5m", "--refresh-ms", "250", "--speed", "30",
        "--ws-url", "ws://127.0.0.1:9/market", "--rest-url", "http://127.0.0.1:9",
    ])
    assert c.demo is True
    assert c.db_path() == db
    assert c.exchange == "binance-spot"
    assert c.symbols == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert c.interval == "5m"
    assert c.refresh_ms == 250
    assert c.speed == 30.0
    ing = c.ingest_config()
    assert ing.symbols == ("BTCUSDT", "ETHUSDT", "SOLUSDT") and ing.interval == "5m" and ing.db == db
    preset = ing.preset()
    assert preset.ws_base == "ws://127.0.0.1:9/market" and preset.rest_base == "http://127.0.0.1:9"


def test_demo_exchange_urls_override_the_flags(tmp_path):
    c = AppConfig.from_args(["--demo", "--db", str(tmp_path / "x.duckdb"), "--ws-url", "ws://a/market",
                             "--rest-url", "http://a"])
    ing = c.ingest_config("ws://127.0.0.1:1234/market", "http://127.0.0.1:1234")
    assert (ing.ws_url, ing.rest_url) == ("ws://127.0.0.1:1234/market", "http://127.0.0.1:1234")


def test_database_path_rules(tmp_path, monkeypatch):
    # --demo alone never writes synthetic prices into the real history
    assert AppConfig.from_args(["--demo"]).db_path() == DEMO_DB
    assert DEMO_DB.name == "demo.duckdb" and DEMO_DB != DEFAULT_DB
    # MARKET_DB wins over the defaults, demo or not ...
    monkeypatch.setenv("MARKET_DB", str(tmp_path / "env.duckdb"))
    assert AppConfig.from_args(["--demo"]).db_path() == tmp_path / "env.duckdb"
    assert AppConfig.from_args([]).db_path() == tmp_path / "env.duckdb"
    # ... and --db wins over MARKET_DB; ~ is expanded
    assert AppConfig.from_args(["--db", str(tmp_path / "flag.duckdb")]).db_path() == tmp_path / "flag.duckdb"
    assert AppConfig.from_args(["--db", "~/m.duckdb"]).db_path() == Path.home() / "m.duckdb"


@pytest.mark.parametrize("argv, words", [
    (["--interval", "7m"], "--interval: '7m' is not a kline interval; use one of 1m, 3m, 5m"),
    (["--exchange", "kraken"], "unknown exchange preset 'kraken'; use one of binance-futures, binance-spot"),
    (["--refresh-ms", "5"], "--refresh-ms: '5' is not allowed; give a whole number from 100 to 10000"),
    (["--speed", "-1"], "--speed: '-1' is not allowed; give a number from 0"),
    (["--symbols", ",,"], "--symbols: ',,' names no symbol"),
    (["--symbols", "BTC-USDT"], "'BTC-USDT' is not letters and digits"),
    (["--nope"], "unrecognized arguments: --nope"),
    (["--ws-url", "ws://127.0.0.1:9/market"], "--ws-url and --rest-url go together"),
    (["--ws-url", "http://h", "--rest-url", "http://h"], "--ws-url must start with ws:// or wss://"),
])
def test_bad_values_are_one_plain_line(argv, words):
    with pytest.raises(ConfigError) as exc:
        AppConfig.from_args(argv)
    line = str(exc.value)
    assert words in line, line
    assert line.startswith("panel serve dashboard/app.py --args: error: ") and "\n" not in line
    assert isinstance(exc.value, ValueError)


def test_region_block_suggestions_include_demo():
    assert AppConfig.from_args([]).ingest_config().feed_config().flags == ("--exchange", "--demo")


def test_timeframes_offered():
    assert TIMEFRAMES == ("1m", "5m", "15m", "1h", "4h", "1d")
