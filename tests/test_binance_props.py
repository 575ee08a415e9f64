"""Properties of market/binance.py's parsers on arbitrary and mutated input (hypothesis).

Seeds are the real frames recorded from Binance in tests/fixtures/*.ws (klines,
and the depth/bookTicker/aggTrade streams we ignore) plus one ticker payload in
Binance's documented shape. Mutations delete, replace, retype and corrupt keys
and values, or truncate the bytes. Whatever comes in: ``Parser.parse`` never
raises, every skip has a known reason, and every record it returns is sane
(non-empty upper-case symbol, finite prices, low <= open/close <= high,
non-negative volumes, a whole candle in time) and fits KLINE_SCHEMA/TICKER_SCHEMA.
``parse_rest_klines`` likewise, and it accounts for every row.
"""

from __future__ import annotations

import json
import logging
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.binance import (
    IGNORE_REASONS,
    REJECT_REASONS,
    Kline,
    Parser,
    RejectCounter,
    Skip,
    Ticker,
    kline_frame,
    parse_rest_klines,
    read_recording,
    refusal_text,
    ticker_frame,
)
from market.schema import INTERVAL_MS
from tests.conftest import FIXTURES

FRAMES = [raw for path in sorted(FIXTURES.glob("*.ws")) for _, raw in read_recording(path)]
KLINE_FRAMES = [raw for raw in FRAMES if b'"e":"kline"' in raw]
#: A futures 24h ticker in Binance's documented shape (the recordings hold none).
TICKER = (b'{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","E":1700000000123,"s":"BTCUSDT",'
          b'"p":"-94.99","P":"-0.140","w":"67812.31","c":"67690.10","Q":"0.012","o":"67785.09",'
          b'"h":"68400.00","l":"67100.50","v":"182734.551","q":"12391238123.12","O":1699913600000,'
          b'"C":1700000000100,"F":4800000000,"L":4801234567,"n":1234567}}')
SEEDS = KLINE_FRAMES + [TICKER] + FRAMES[:: max(1, len(FRAMES) // 60)]
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])



@pytest.fixture(autouse=True)
def quiet_rejects():
    """Each example's fresh parser warns on its first reject: thousands of log records slow
    the run ~2x and prove nothing here (the messages are still built: that code runs)."""
    log = logging.getLogger("market.binance")
    level = log.level
    log.setLevel(logging.ERROR)
    yield
    log.setLevel(level)


json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1", "0", "", " 1", "0x10", "1_0",
                     "BTCUSDT", "btcusdt", "", "BTC-USDT", "BTCUSDT\u00e9", "1m", "7m", "1000"]))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=6)


def _dumps(doc: object) -> bytes:
    # the standard library writes integers past 64 bits (orjson refuses them); the parser must cope
    return json.dumps(doc, separators=(",", ":")).encode()


def _containers(doc: object) -> list[dict]:
    """Every dict in a parsed frame (the envelope, data, data.k)."""
    out, todo = [], [doc]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            out.append(node)
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return out


@st.composite
def mutated_frames(draw) -> bytes:
    raw = draw(st.sampled_from(SEEDS))
    doc = orjson.loads(raw)
    for _ in range(draw(st.integers(0, 4))):
        boxes = _containers(doc)
        box = draw(st.sampled_from(boxes))
        if not box:
            continue
        key = draw(st.sampled_from(sorted(box)))
        action = draw(st.sampled_from(["delete", "replace", "retype", "rename", "negate"]))
        if action == "delete":
            del box[key]
        elif action == "replace":
            box[key] = draw(json_value)
        elif action == "retype":  # "1.5" <-> 1.5, 7 <-> "7", true <-> "true"
            v = box[key]
            box[key] = (v if not isinstance(v, str) else
                        draw(st.sampled_from([v, None])) if not v.lstrip("-").replace(".", "", 1).isdigit()
                        else float(v))
            if not isinstance(v, str):
                box[key] = str(v).lower() if isinstance(v, bool) else str(v)
        elif action == "rename":
            box[draw(st.text(max_size=2))] = box.pop(key)
        elif action == "negate" and isinstance(box[key], str) and box[key][:1].isdigit():
            box[key] = "-" + box[key]
    out = _dumps(doc)
    if draw(st.integers(0, 9)) == 0:  # sometimes truncated mid-frame
        out = out[: draw(st.integers(0, len(out)))]
    return out


frames = st.one_of(mutated_frames(), mutated_frames(), st.binary(max_size=64), st.text(max_size=64),
                   json_value.map(lambda v: _dumps(v)))


def sane_symbol(s: object) -> bool:
    return isinstance(s, str) and s != "" and s.isascii() and s.isalnum() and s == s.upper() and s.isupper()


def check_kline(k: Kline) -> None:
    assert k.__class__ is Kline and sane_symbol(k.symbol), k
    ims = INTERVAL_MS[k.interval]
    assert type(k.open_time) is int and k.open_time >= 0 and k.open_time % ims == 0, k
    assert k.close_time == k.open_time + ims - 1, k
    for price in (k.open, k.high, k.low, k.close):
        assert type(price) is float and math.isfinite(price) and price > 0, k
    assert k.low <= min(k.open, k.close) and k.high >= max(k.open, k.close), k
    for volume in (k.volume, k.quote_volume, k.taker_buy_volume, k.taker_buy_quote_volume):
        assert type(volume) is float and math.isfinite(volume) and volume >= 0, k
    assert type(k.trades) is int and k.trades >= 0 and type(k.closed) is bool, k
    assert type(k.event_time) is int and k.event_time >= 0, k


def check_ticker(t: Ticker) -> None:
    assert t.__class__ is Ticker and sane_symbol(t.symbol), t
    prices = (t.last_price, t.price_change, t.price_change_pct, t.open_price, t.high_price, t.low_price)
    assert all(type(p) is float and math.isfinite(p) for p in prices), t
    assert 0 < t.low_price <= t.high_price and t.last_price > 0 and t.open_price > 0, t
    assert all(type(v) is float and math.isfinite(v) and v >= 0 for v in (t.volume, t.quote_volume)), t
    assert type(t.trades) is int and t.trades >= 0 and type(t.event_time) is int and t.event_time >= 0, t


def check_parse(parser: Parser, raw: bytes | str) -> None:
    rec = parser.parse(raw)  # must not raise
    if rec.__class__ is Skip:
        assert rec.reason in REJECT_REASONS | IGNORE_REASONS, rec
        assert isinstance(rec.detail, str)
    elif rec.__class__ is Kline:
        check_kline(rec)
        assert parser.symbols is None or rec.symbol in parser.symbols
        kline_frame([rec])  # fits KLINE_SCHEMA (no Int64 overflow, no type surprise)
    elif rec.__class__ is Ticker:
        check_ticker(rec)
        ticker_frame([rec])
    else:
        assert isinstance(rec, list), rec
        for t in rec:
            check_ticker(t)
        ticker_frame(rec)
    assert set(parser.rejected) <= REJECT_REASONS and set(parser.ignored) <= IGNORE_REASONS


def test_seeds_parse_into_records():
    """The unmutated seeds give records, so the properties below start from real data."""
    parser = Parser()
    records = [parser.parse(raw) for raw in KLINE_FRAMES + [TICKER]]
    assert len(KLINE_FRAMES) > 50
    assert all(r.__class__ in (Kline, Ticker) for r in records), parser.rejected
    for r in records:
        check_kline(r) if r.__class__ is Kline else check_ticker(r)


@PROPS
@given(frames)
def test_parser_without_filter_never_raises_and_returns_only_sane_records(raw):
    check_parse(Parser(), raw)


@PROPS
@given(frames, st.lists(st.sampled_from(["btcusdt", "CTKUSDT", "NKNUSDT", "LRCBTC", "BTCUSDT"]), max_size=3))
def test_parser_with_filter_never_raises_and_returns_only_requested_symbols(raw, symbols):
    check_parse(Parser(symbols), raw)


@pytest.mark.parametrize("symbol, reason", [
    ("", "bad_symbol"), ("btcusdt", "bad_symbol"), ("BTC-USDT", "bad_symbol"), ("BTCUSDT\u00c9", "bad_symbol"),
    ("1000", "bad_symbol"), (" BTCUSDT", "bad_symbol"), (7, "missing_field"),
])
def test_bad_symbols_are_rejected_and_counted(symbol, reason):
    for seed in (KLINE_FRAMES[0], TICKER):
        doc = orjson.loads(seed)
        doc["data"]["s"] = symbol
        parser = Parser()
        rec = parser.parse(orjson.dumps(doc))
        assert rec.__class__ is Skip and rec.reason == reason, rec
        assert parser.rejected == {reason: 1}


@pytest.mark.parametrize("field, value", [
    ("o", "nan"), ("h", "inf"), ("l", "-1"), ("c", "1e400"), ("v", "-0.5"), ("q", "-1"), ("V", "-2"),
    ("h", "0.5"),  # high below open/close
    ("l", "99999"),  # low above open/close
])
def test_inconsistent_candles_are_rejected(field, value):
    doc = orjson.loads(KLINE_FRAMES[0])
    doc["data"]["k"][field] = value
    parser = Parser()
    rec = parser.parse(orjson.dumps(doc))
    assert rec.__class__ is Skip and rec.reason == "bad_number", rec
    assert parser.rejected == {"bad_number": 1}


# --------------------------------------------------------------------------- REST rows


def rest_row(k: Kline) -> list:
    """A REST kline row, ``[openTime, "o", "h", "l", "c", "v", closeTime, "q", n, "V", "Q", "0"]``."""
    return [k.open_time, repr(k.open), repr(k.high), repr(k.low), repr(k.close), repr(k.volume), k.close_time,
            repr(k.quote_volume), k.trades, repr(k.taker_buy_volume), repr(k.taker_buy_quote_volume), "0"]


SEED_ROWS = [rest_row(k) for k in (Parser().parse(raw) for raw in KLINE_FRAMES) if k.__class__ is Kline]


@st.composite
def mutated_rows(draw) -> object:
    row = list(draw(st.sampled_from(SEED_ROWS)))
    for _ in range(draw(st.integers(0, 3))):
        if not row:
            break
        i = draw(st.integers(0, len(row) - 1))
        action = draw(st.sampled_from(["replace", "delete", "retype", "micro", "truncate"]))
        if action == "replace":
            row[i] = draw(json_value)
        elif action == "delete":
            del row[i]
        elif action == "retype":
            row[i] = str(row[i]) if not isinstance(row[i], str) else draw(st.sampled_from([None, 1.5, [], {}]))
        elif action == "micro" and isinstance(row[0], int) and len(row) > 6 and isinstance(row[6], int):
            row[0], row[6] = row[0] * 1000, row[6] * 1000 + 999  # spot's microsecond rows
        elif action == "truncate":
            row = row[: draw(st.integers(0, len(row)))]
    return row


rows = st.lists(st.one_of(mutated_rows(), mutated_rows(), mutated_rows(), json_value), max_size=12)


@PROPS
@given(rows, st.sampled_from(["1m", "5m"]), st.sampled_from(["btcusdt", "CTKUSDT"]))
def test_rest_rows_never_raise_and_every_row_is_a_sane_candle_or_counted(batch, interval, symbol):
    counter = RejectCounter()
    frame = parse_rest_klines(batch, symbol, interval, counter=counter)  # must not raise
    assert frame.height + sum(counter.rejected.values()) == len(batch), (batch, counter.rejected)
    assert set(counter.rejected) <= REJECT_REASONS
    for rec in frame.iter_rows(named=True):
        assert rec["symbol"] == symbol.upper() and rec["interval"] == interval
        assert all(math.isfinite(rec[c]) and rec[c] > 0 for c in ("open", "high", "low", "close")), rec
        assert rec["low"] <= min(rec["open"], rec["close"]) and rec["high"] >= max(rec["open"], rec["close"]), rec
        assert all(rec[c] >= 0 and math.isfinite(rec[c]) for c in ("volume", "quote_volume", "taker_buy_volume",
                                                                   "taker_buy_quote_volume")), rec
        assert rec["trades"] >= 0 and rec["close_time"] > rec["open_time"]


def test_rest_rejects_a_bad_symbol_argument():
    for bad in ("", "BTC-USDT", None):
        with pytest.raises(ValueError, match="letters and digits"):
            parse_rest_klines(SEED_ROWS[:1], bad, "1m")


# --------------------------------------------------------------------------- refusal bodies


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300), json_value.map(_dumps)))
@settings(deadline=None)
def test_refusal_text_is_one_short_line(body):
    text = refusal_text(body)
    assert isinstance(text, str) and "\n" not in text and len(text) <= 203


def test_refusal_text_quotes_binance():
    body = (b'{"code":0,"msg":"Service unavailable from a restricted location according to \'b. Eligibility\' '
            b'in https://www.binance.com/en/terms. Please contact customer service if you believe you '
            b'received this message in error."}')
    assert refusal_text(body).startswith("Service unavailable from a restricted location according to")
    assert refusal_text(b"<html><body>Log in to the Wi-Fi</body></html>") == ""
    assert refusal_text(b"Forbidden") == "Forbidden"
    assert refusal_text(b"") == "" and refusal_text(None) == ""
