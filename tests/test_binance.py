"""market.binance: presets, stream URLs and parsing real and broken Binance frames."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from market import binance as bn
from market.binance import Kline, Parser, RejectCounter, Skip, Ticker
from market.schema import KLINE_SCHEMA, TICKER_SCHEMA
from tests.conftest import FIXTURES

FUTURES = FIXTURES / "binance_futures_2021-07-22.ws"
SPOT = FIXTURES / "binance_spot_2021-10-12.ws"

# A real frame from FUTURES (the CTKUSDT candle's closing update).
CTK_CLOSE = (
    '{"stream":"ctkusdt@kline_1m","data":{"e":"kline","E":1626992760791,"s":"CTKUSDT",'
    '"k":{"t":1626992700000,"T":1626992759999,"s":"CTKUSDT","i":"1m","f":23961275,'
    '"L":23961360,"o":"1.01000","c":"1.01200","h":"1.01200","l":"1.01000","v":"11074",'
    '"n":86,"x":true,"q":"11193.49000","V":"8674","Q":"8769.44400","B":"0"}}}'
)

# 24hrTicker payloads shaped as Binance documents them (the fixtures hold none).
FUTURES_TICKER = {
    "e": "24hrTicker", "E": 1626992761000, "s": "BTCUSDT", "p": "-512.30", "P": "-1.589",
    "w": "32011.42", "c": "31720.50", "Q": "0.010", "o": "32232.80", "h": "32450.00",
    "l": "31500.10", "v": "254321.123", "q": "8141234567.89", "O": 1626906360000,
    "C": 1626992760999, "F": 100, "L": 2000099, "n": 2000000, "ps": "BTCUSDT", "st": "x",
}
SPOT_TICKER = {
    "e": "24hrTicker", "E": 1633998512000, "s": "NKNUSDT", "p": "0.01200000",
    "P": "3.521", "w": "0.34000000", "x": "0.34080000", "c": "0.35280000", "Q": "58.0",
    "b": "0.35270000", "B": "100.0", "a": "0.35290000", "A": "200.0", "o": "0.34080000",
    "h": "0.36000000", "l": "0.33000000", "v": "12345678.0", "q": "4200000.5",
    "O": 1633912112000, "C": 1633998512000, "F": 1, "L": 5000, "n": 5000,
}


def combined(stream: str, data: dict) -> bytes:
    return json.dumps({"stream": stream, "data": data}).encode()


def ctk(**changes) -> bytes:
    """CTK_CLOSE with some of its k fields changed (None deletes the field)."""
    frame = json.loads(CTK_CLOSE)
    for key, value in changes.items():
        if value is None:
            del frame["data"]["k"][key]
        else:
            frame["data"]["k"][key] = value
    return json.dumps(frame).encode()


# --------------------------------------------------------------------------- fixtures


def scan(path: Path) -> dict[str, int]:
    """Independent count with the stdlib json module."""
    out = {"frames": 0, "klines": 0, "closed": 0, "tickers": 0}
    lines = path.read_text().splitlines()[1:]
    for line in filter(None, lines):
        msg = json.loads(line.split(": ", 1)[1])
        out["frames"] += 1
        if "@kline_" in msg["stream"]:
            out["klines"] += 1
            out["closed"] += msg["data"]["k"]["x"] is True
        if msg["stream"].endswith("@ticker"):
            out["tickers"] += 1
    return out


@pytest.mark.parametrize("path, klines, closed, frames", [
    (FUTURES, 67, 4, 1535), (SPOT, 2, 0, 265)])
def test_fixture_recordings_parse(path, klines, closed, frames):
    assert scan(path) == {"frames": frames, "klines": klines, "closed": closed, "tickers": 0}
    url, _ = bn.recording_header(path)
    requested = {s.split("@")[0].upper() for s in url.split("streams=")[1].split("/")}
    for parser in (Parser(), Parser(requested)):
        got = [parser.parse(raw) for _, raw in bn.read_recording(path)]
        ks = [r for r in got if isinstance(r, Kline)]
        assert len(got) == frames
        assert len(ks) == klines and sum(k.closed for k in ks) == closed
        assert not any(isinstance(r, (Ticker, list)) for r in got)
        assert parser.rejected == {}
        assert parser.ignored == {"unknown_stream": frames - klines}
        assert all(r.reason == "unknown_stream" for r in got if isinstance(r, Skip))


def test_parsed_kline_matches_raw_json():
    frames = [raw for _, raw in bn.read_recording(FUTURES) if b'"x":true' in raw]
    raw = frames[1]
    assert raw.decode() == CTK_CLOSE
    d = json.loads(raw)["data"]
    k = d["k"]
    got = Parser().parse(raw)
    assert got == Kline(
        symbol="CTKUSDT", interval="1m", open_time=1626992700000, close_time=1626992759999,
        open=1.01, high=1.012, low=1.01, close=1.012, volume=11074.0,
        quote_volume=11193.49, trades=86, taker_buy_volume=8674.0,
        taker_buy_quote_volume=8769.444, closed=True, event_time=1626992760791)
    assert (got.open, got.close, got.quote_volume) == (float(k["o"]), float(k["c"]), float(k["q"]))
    assert got.event_time == d["E"] and type(got.trades) is int
    # The raw (non-combined) payload parses the same.
    assert Parser().parse(json.dumps(d)) == got


def test_read_recording_yields_times_and_frames():
    rows = list(bn.read_recording(FUTURES))
    assert len(rows) == 1535
    assert rows[0] == (1626992741.06217, rows[0][1])
    assert rows[0][1].startswith(b'{"stream":"sushiusdt@bookTicker"')
    assert all(a[0] <= b[0] for a, b in zip(rows, rows[1:]))
    assert bn.recording_header(FUTURES)[1] == 1626992740.179554


def test_read_recording_skips_malformed_lines(tmp_path, caplog):
    path = tmp_path / "x.ws"
    path.write_bytes(b"wss://x/stream?streams=a <-> 1.5\n2.0: {\"a\":1}\ngarbage\n\n3.0: []\n")
    with caplog.at_level(logging.WARNING, "market.binance"):
        assert list(bn.read_recording(path)) == [(2.0, b'{"a":1}'), (3.0, b"[]")]
    assert "skipped 1 malformed" in caplog.text


# --------------------------------------------------------------------------- tickers


def test_tickers_futures_and_spot():
    parser = Parser(["btcusdt", "NKNUSDT"])
    fut = parser.parse(combined("btcusdt@ticker", FUTURES_TICKER))
    assert fut == Ticker("BTCUSDT", 1626992761000, 31720.5, -512.3, -1.589, 32232.8, 32450.0,
                         31500.1, 254321.123, 8141234567.89, 2000000)
    spot = parser.parse(json.dumps(SPOT_TICKER))  # raw payload, extra spot keys
    assert spot.symbol == "NKNUSDT" and spot.last_price == 0.3528 and spot.trades == 5000
    assert parser.parse(combined("ethusdt@ticker", {**FUTURES_TICKER, "s": "ETHUSDT"})) \
        == Skip("unrequested_symbol", "ETHUSDT")
    bad = parser.parse(combined("btcusdt@ticker", {**FUTURES_TICKER, "c": "NaN"}))
    assert bad.reason == "bad_number" and "c=" in bad.detail
    assert parser.parse(combined("btcusdt@ticker", {**FUTURES_TICKER, "h": "1"})).reason \
        == "bad_number"
    assert parser.parse(combined("btcusdt@ticker", {
        k: v for k, v in FUTURES_TICKER.items() if k != "q"})).reason == "missing_field"
    assert parser.rejected == {"unrequested_symbol": 1, "bad_number": 2, "missing_field": 1}


def test_ticker_array_keeps_requested_symbols_only():
    items = [FUTURES_TICKER, {**FUTURES_TICKER, "s": "ETHUSDT"}, {**SPOT_TICKER, "v": "-1"}]
    parser = Parser(["BTCUSDT", "NKNUSDT"])
    got = parser.parse(combined("!ticker@arr", items))
    assert [t.symbol for t in got] == ["BTCUSDT"]
    assert parser.rejected == {"bad_number": 1}  # ETHUSDT is dropped silently
    mini = [{"e": "24hrMiniTicker", "E": 1, "s": "BTCUSDT", "c": "1"}]
    assert parser.parse(combined("!miniTicker@arr", mini)).reason == "unknown_stream"


# --------------------------------------------------------------------------- bad frames

BAD_FRAMES = [
    ("not_json", b"{not json"),
    ("not_json", b""),
    ("not_object", b'[1, 2, 3]'),
    ("not_object", b'{"stream":"ctkusdt@kline_1m","data":"x"}'),
    ("missing_field", combined("ctkusdt@kline_1m", {"e": "kline", "E": 1, "s": "CTKUSDT"})),
    ("missing_field", ctk(V=None)),
    ("missing_field", b'{"hello":"world"}'),
    ("bad_number", ctk(c="abc")),
    ("bad_number", ctk(o="NaN")),
    ("bad_number", ctk(h="Infinity")),
    ("bad_number", ctk(v="-5")),
    ("bad_number", ctk(h="1.0", l="1.02")),  # high < low
    ("bad_number", ctk(l="0")),
    ("bad_number", ctk(n="86")),
    ("misaligned_time", ctk(t=1626992700001, T=1626992760000)),
    ("misaligned_time", ctk(T=1626992760000)),
    ("bad_interval", ctk(i="7m")),
    ("unrequested_symbol", combined("ethusdt@kline_1m", {
        **json.loads(CTK_CLOSE)["data"], "s": "ETHUSDT"})),
    ("control", b'{"result":null,"id":1}'),
    ("control", b'{"stream":"x","data":{"e":"serverShutdown","E":1}}'),
    ("unknown_stream", b'{"stream":"ctkusdt@aggTrade","data":{"e":"aggTrade","s":"CTKUSDT"}}'),
]


@pytest.mark.parametrize("reason, raw", BAD_FRAMES)
def test_bad_frame_gives_reason(reason, raw):
    parser = Parser(["CTKUSDT"])
    got = parser.parse(raw)
    assert isinstance(got, Skip) and got.reason == reason, got
    assert isinstance(got.detail, str) and got.detail
    counts = parser.rejected if reason in bn.REJECT_REASONS else parser.ignored
    assert counts == {reason: 1}


def test_counters_add_up_and_good_frames_still_parse():
    parser = Parser(["CTKUSDT"])
    results = [parser.parse(raw) for _, raw in BAD_FRAMES]
    assert parser.parse(CTK_CLOSE).closed is True
    assert parser.parse(CTK_CLOSE.encode()).closed is True  # bytes and str both work
    rejected, ignored = parser.rejected, parser.ignored
    assert sum(rejected.values()) == sum(r.reason in bn.REJECT_REASONS for r in results) == 18
    assert ignored == {"control": 2, "unknown_stream": 1}
    assert rejected["bad_number"] == 7 and rejected["not_json"] == 2
    assert set(rejected) <= bn.REJECT_REASONS and set(ignored) <= bn.IGNORE_REASONS


def test_old_candles_are_not_rejected():
    old = ctk(t=60_000, T=119_999)
    assert Parser().parse(old).open_time == 60_000


def test_bad_frame_logging_is_rate_limited(caplog):
    now = [1000.0]
    parser = Parser(counter=RejectCounter(log_every=60.0, clock=lambda: now[0]))
    with caplog.at_level(logging.WARNING, "market.binance"):
        parser.parse(b"nope")
        parser.parse(b"nope")
        parser.parse(ctk(o="NaN"))
        parser.parse(b'{"result":null,"id":1}')  # control: counted, never logged
        assert len(caplog.records) == 2
        now[0] += 61
        parser.parse(b"nope")
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3
    assert "not_json (1 so far)" in msgs[0] and "not_json (3 so far)" in msgs[2]
    assert "bad_number" in msgs[1] and all(r.name == "market.binance" for r in caplog.records)
    assert parser.rejected == {"not_json": 3, "bad_number": 1}


def test_subscribe_error_reply_is_control_but_logged(caplog):
    parser = Parser()
    with caplog.at_level(logging.WARNING, "market.binance"):
        got = parser.parse(b'{"error":{"code":2,"msg":"Invalid request"},"id":3}')
    assert got.reason == "control" and "Invalid request" in caplog.text
    assert parser.rejected == {} and parser.ignored == {"control": 1}


# --------------------------------------------------------------------------- frames


def test_kline_frame_schema_and_values():
    parser = Parser()
    ks = [r for _, raw in bn.read_recording(FUTURES) if isinstance(r := parser.parse(raw), Kline)]
    frame = bn.kline_frame(ks)
    assert frame.schema == pl.Schema(KLINE_SCHEMA)
    assert frame.height == 67
    row = frame.row(ks.index(parser.parse(CTK_CLOSE)), named=True)
    assert row["open_time"] == datetime(2021, 7, 22, 22, 25, 0)
    assert row["close_time"] == datetime(2021, 7, 22, 22, 25, 59, 999000)
    assert (row["symbol"], row["close"], row["trades"]) == ("CTKUSDT", 1.012, 86)
    assert bn.kline_frame([]).schema == pl.Schema(KLINE_SCHEMA)


def test_ticker_frame_schema_and_values():
    t = Parser().parse(combined("btcusdt@ticker", FUTURES_TICKER))
    frame = bn.ticker_frame([t, t._replace(symbol="ETHUSDT")])
    assert frame.schema == pl.Schema(TICKER_SCHEMA)
    assert frame["event_time"][0] == datetime(2021, 7, 22, 22, 26, 1)
    assert frame["symbol"].to_list() == ["BTCUSDT", "ETHUSDT"]
    assert frame.row(0) == (t[0], datetime(2021, 7, 22, 22, 26, 1), *t[2:])
    assert bn.ticker_frame([]).schema == pl.Schema(TICKER_SCHEMA)


# --------------------------------------------------------------------------- REST

REST_ROWS = [
    [1626992640000, "1.00900", "1.01100", "1.00800", "1.01000", "9000", 1626992699999,
     "9090.1", 70, "4000", "4040.2", "0"],
    [1626992700000, "1.01000", "1.01200", "1.01000", "1.01200", "11074", 1626992759999,
     "11193.49000", 86, "8674", "8769.44400", "0"],
    [1626992760000, "1.01200", "1.01300", "1.01100", "1.01300", "10", 1626992819999,
     "10.1", 3, "5", "5.05", "0"],
]


def test_parse_rest_klines_good_rows():
    frame = bn.parse_rest_klines(REST_ROWS, "ctkusdt", "1m")
    assert frame.schema == pl.Schema(KLINE_SCHEMA)
    assert frame["symbol"].to_list() == ["CTKUSDT"] * 3
    assert frame["open_time"].to_list() == [datetime(2021, 7, 22, 22, m) for m in (24, 25, 26)]
    ws = bn.kline_frame([Parser().parse(CTK_CLOSE)])
    assert frame.row(1) == ws.row(0)  # REST and WebSocket agree on the same candle
    # The still-open last candle can be dropped without counting it as bad.
    assert bn.parse_rest_klines(REST_ROWS, "CTKUSDT", "1m",
                                closed_before=1626992760000).height == 2
    micro = [[r[0] * 1000, *r[1:6], r[6] * 1000 + 999, *r[7:]] for r in REST_ROWS]
    assert bn.parse_rest_klines(micro, "CTKUSDT", "1m").equals(frame)


def test_parse_rest_klines_skips_bad_rows(caplog):
    rows = [REST_ROWS[0], [1626992700000, "oops"], REST_ROWS[1],
            [*REST_ROWS[2][:2], "NaN", *REST_ROWS[2][3:]], None]
    counter = RejectCounter()
    with caplog.at_level(logging.WARNING, "market.binance"):
        frame = bn.parse_rest_klines(rows, "CTKUSDT", "1m", counter=counter)
    assert frame.height == 2 and len(rows) - frame.height == 3
    assert frame["trades"].to_list() == [70, 86]
    assert counter.rejected == {"missing_field": 2, "bad_number": 1}
    assert "REST CTKUSDT" in caplog.text
    with pytest.raises(ValueError, match="unknown interval"):
        bn.parse_rest_klines(REST_ROWS, "CTKUSDT", "7m")


def test_parse_never_raises_on_odd_field_values():
    base = json.loads(CTK_CLOSE)
    odd = [None, [], {}, "x", -1, 0, 1.5, True, "NaN", "1e400", 10**30, ""]
    parser = Parser(["CTKUSDT"])
    for where in ("data", "k"):
        keys = list(base["data"] if where == "data" else base["data"]["k"])
        for key in keys:
            for value in odd:
                frame = json.loads(CTK_CLOSE)
                target = frame["data"] if where == "data" else frame["data"]["k"]
                target[key] = value
                got = parser.parse(json.dumps(frame))
                assert isinstance(got, (Kline, Skip)), (key, value, got)
                if isinstance(got, Skip):
                    assert got.reason in bn.REJECT_REASONS | bn.IGNORE_REASONS
    # Unused fields (f, L, B, k.s) may hold anything; the ones we read may not.
    assert parser.rejected["bad_number"] > 0 and parser.rejected["missing_field"] > 0
    for tick in [{**FUTURES_TICKER, key: value} for key in FUTURES_TICKER for value in odd]:
        got = parser.parse(combined("btcusdt@ticker", tick))
        assert isinstance(got, (Ticker, Skip))
