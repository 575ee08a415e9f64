"""store/backfill.py (+ store/ranges.py): REST backfill and repair against the local exchange.

Real HTTP over loopback to ``LocalExchange`` with its weight budget enforced, a real
DuckDB file in tmp_path, real ``python -m store.backfill`` subprocesses for the
kill -9 and CLI tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import signal
import sys

import httpx
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import store
from market.binance import RejectCounter, parse_rest_klines
from market.exchange import LocalExchange
from market.schema import KLINE_SCHEMA
from store import ranges
from store.backfill import Backfill, main, plan
from store.backfill_args import parse_args, parse_date
from tests.conftest import ROOT, wait_for

MINUTE = 60_000
pytestmark = pytest.mark.timeout(240)


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M")


def floor(ms: int) -> int:
    return ms - ms % MINUTE


def stored(db, symbol: str) -> pl.DataFrame:
    return store.query("SELECT * FROM klines WHERE symbol = ? ORDER BY interval, open_time", [symbol],
                       db=db).select(list(KLINE_SCHEMA))


def truth(ex: LocalExchange, symbol: str, start: int, end_excl: int) -> pl.DataFrame:
    """The exchange's own closed candles with open_time in [start, end_excl)."""
    return ex.history(symbol, "1m", start, end_excl - 1)


async def run(argv: list[str]) -> Backfill:
    b = Backfill(parse_args([*argv, "--no-progress"]))
    await b.run()
    return b


def exchange(symbols, **kw) -> LocalExchange:
    kw.setdefault("history_minutes", 3000)
    return LocalExchange(symbols=tuple(symbols), speed=1, **kw)


# ----------------------------------------------------------------------------- end to end


async def test_backfill_under_a_small_budget_with_errors_and_slow_answers(tmp_path):
    db = tmp_path / "b.duckdb"
    syms = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    async with exchange(syms, history_minutes=9000, enforce_weights=True, futures_weight_limit=60,
                        weight_window="10s") as ex:
        ex.rest_errors(0.15, 503)
        ex.rest_latency(0.05)
        ex.rest_fail(1, 429, 1)  # the first answer: over the budget, come back in 1 s
        since = floor(ex.now_ms()) - 8000 * MINUTE
        b = await run(["--db", str(db), "--symbols", ",".join(syms), "--since", iso(since),
                       "--rest-url", ex.rest_base])
        assert b.result.exit_code == 0, b.result
        # 4 x 8000 candles in 499-row pages (weight 2) plus exchangeInfo: > 2 windows of 54
        assert b.result.weight > 120
        assert ex.stats.http_5xx > 0  # errors did happen and were retried
        # the injected 429 was waited out and retried; the pacing never earned one of its own
        # (the limiter's block of every request during a Retry-After: tests/test_ratelimit.py)
        assert ex.stats.http_418 == 0 and ex.stats.http_429 == 1
        end = floor(b.now)  # the server's now when the run started: the forming minute
        for s in syms:
            got = stored(db, s)
            assert_frame_equal(got, truth(ex, s, since, end))
            assert got.height == 8000 or got.height == (end - since) // MINUTE
            assert got["open_time"].dt.epoch("ms").max() == end - MINUTE  # forming minute not stored
        assert store.query("SELECT count(*) - count(DISTINCT (symbol, open_time)) AS d FROM klines", db=db)["d"][0] == 0


async def test_kill_9_part_way_then_the_same_command_completes(tmp_path):
    db = tmp_path / "k.duckdb"
    syms = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    async with exchange(syms, history_minutes=9000, enforce_weights=True, futures_weight_limit=60,
                        weight_window="10s") as ex:
        since = floor(ex.now_ms()) - 8000 * MINUTE
        argv = [sys.executable, "-m", "store.backfill", "--db", str(db), "--symbols", ",".join(syms),
                "--since", iso(since), "--rest-url", ex.rest_base, "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        first = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env=env, stderr=asyncio.subprocess.DEVNULL)

        def rows() -> int:
            if not db.exists():
                return 0
            try:
                return store.query("SELECT count(*) AS n FROM klines", db=db, timeout=2)["n"][0]
            except store.StoreError:
                return 0

        await wait_for(lambda: rows() > 0, timeout=120, every=0.1, what="first rows in the store")
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        at_kill = rows()
        assert 0 < at_kill < 3 * 8000  # really part-way
        before = ex.now_ms()
        second = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(second.communicate(), 200)
        after = ex.now_ms()
        assert second.returncode == 0, err.decode()
        assert ex.stats.http_418 == 0
        for s in syms:
            got = stored(db, s)
            last = got["open_time"].dt.epoch("ms").max()
            assert floor(before) - MINUTE <= last < floor(after)  # up to the rerun's now, closed only
            assert_frame_equal(got, truth(ex, s, since, last + MINUTE))  # no hole, no duplicate
        check_indicators(db, [(s, "1m") for s in syms])  # whenever the kill came


async def test_repair_fills_each_hole_with_one_request(tmp_path):
    db = tmp_path / "r.duckdb"
    syms = ["BTCUSDT", "ETHUSDT"]
    async with exchange(syms, history_minutes=3000) as ex:
        start = floor(ex.now_ms()) - 2900 * MINUTE
        end = start + 2800 * MINUTE
        cuts = {"BTCUSDT": [(10, 11), (100, 105), (400, 520), (1000, 2400)],  # 1, 5, 120, 1400 candles
                "ETHUSDT": [(50, 53)]}
        w = store.Writer(db, market="binance-futures")
        for s in syms:
            full = truth(ex, s, start, end)
            keep = [not any(a <= i < b for a, b in cuts[s]) for i in range(full.height)]
            w.add_klines(full.filter(pl.Series(keep)))
        five = ex.history("BTCUSDT", "5m", start, end - 1)  # another interval, one hole of 7
        w.add_klines(five.filter(pl.Series([not 100 <= i < 107 for i in range(five.height)])))
        w.close()
        assert sum(len(h) for h in ranges.holes(syms, "1m", db=db).values()) == 5
        before = ex.stats.rest_requests
        b = await run(["--db", str(db), "--repair", "--rest-url", ex.rest_base])
        assert b.result.exit_code == 0, b.result
        # exchangeInfo plus one request per hole of every stored series, each with a limit just big enough
        assert ex.stats.rest_requests - before == 1 + 5 + 1
        assert b.result.weight == 1 + (1 + 1 + 2 + 10) + 1 + 1
        for s in syms:
            assert_frame_equal(stored(db, s).filter(pl.col("interval") == "1m"), truth(ex, s, start, end))
        assert_frame_equal(stored(db, "BTCUSDT").filter(pl.col("interval") == "5m"), five)
        assert ranges.holes(syms, "1m", db=db) == {} and ranges.holes(["BTCUSDT"], "5m", db=db) == {}
        # nothing left to do: a second repair asks for exchangeInfo only
        before = ex.stats.rest_requests
        await run(["--db", str(db), "--repair", "--rest-url", ex.rest_base])
        assert ex.stats.rest_requests - before == 1


async def test_empty_ranges_are_recorded_and_not_asked_again(tmp_path):
    db = tmp_path / "e.duckdb"
    async with exchange(["BTCUSDT"], history_minutes=600) as ex:
        first = truth(ex, "BTCUSDT", 0, 2**62)["open_time"].dt.epoch("ms").min()  # the listing, so to say
        since, until = first - 300 * MINUTE, first + 400 * MINUTE
        argv = ["--db", str(db), "--symbols", "BTCUSDT", "--since", iso(since), "--until", iso(until),
                "--rest-url", ex.rest_base]
        b = await run(argv)
        assert b.result.exit_code == 0 and b.result.empty_recorded == 1
        assert_frame_equal(stored(db, "BTCUSDT"), truth(ex, "BTCUSDT", since, until))
        assert ranges.empty(["BTCUSDT"], "1m", db=db) == {"BTCUSDT": [(since, first)]}
        got = store.query("SELECT symbol, interval, epoch_ms(end_time) - epoch_ms(start_time) AS span "
                          "FROM empty_ranges", db=db)
        assert got.rows() == [("BTCUSDT", "1m", 300 * MINUTE)]
        before = ex.stats.rest_requests
        b = await run(argv)  # and again: nothing is missing, only exchangeInfo is asked
        assert ex.stats.rest_requests - before == 1 and b.result.empty_recorded == 0
        await run(["--db", str(db), "--repair", "--since", iso(since), "--until", iso(until),
                   "--rest-url", ex.rest_base])
        assert ex.stats.rest_requests - before == 2


async def test_top_n_picks_the_highest_quote_volume(tmp_path):
    db = tmp_path / "t.duckdb"
    syms = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT"]
    async with exchange(syms, history_minutes=120) as ex:
        async with httpx.AsyncClient() as http:
            tickers = (await http.get(f"{ex.rest_base}/fapi/v1/ticker/24hr")).json()
        want = [t["symbol"] for t in sorted(tickers, key=lambda t: -float(t["quoteVolume"]))[:2]]
        b = await run(["--db", str(db), "--top", "2", "--since", iso(floor(ex.now_ms()) - 30 * MINUTE),
                       "--rest-url", ex.rest_base])
        assert b.result.exit_code == 0
        got = store.query("SELECT DISTINCT symbol FROM klines ORDER BY symbol", db=db)["symbol"].to_list()
        assert got == sorted(want)


async def test_unknown_symbol_is_one_plain_message_and_the_others_continue(tmp_path):
    db = tmp_path / "u.duckdb"
    async with exchange(["BTCUSDT"], history_minutes=120) as ex:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "store.backfill", "--db", str(db), "--symbols", "NOPEUSDT,BTCUSDT",
            "--since", iso(floor(ex.now_ms()) - 60 * MINUTE), "--rest-url", ex.rest_base, "--no-progress",
            cwd=ROOT, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    text = err.decode()
    assert proc.returncode == 1
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if "NOPEUSDT" in line]
    assert lines and all("unknown symbol" in line and "Invalid symbol" in line for line in lines)
    assert lines[0].startswith("skipping NOPEUSDT")
    # 61 when the exchange's clock passed a minute boundary while the subprocess started
    assert store.query("SELECT count(*) AS n FROM klines WHERE symbol = 'BTCUSDT'", db=db)["n"][0] in (60, 61)


async def test_redirect_is_diagnosed_never_followed(tmp_path):
    db = tmp_path / "x.duckdb"
    async with exchange(["BTCUSDT"], history_minutes=120) as ex:
        ex.redirect(60, 302, "https://www.binance.com/en/restricted", scope="rest")
        b = await run(["--db", str(db), "--symbols", "BTCUSDT", "--since", iso(floor(ex.now_ms()) - 60 * MINUTE),
                       "--rest-url", ex.rest_base])
        assert ex.stats.redirected == 1  # one answer, nothing followed or retried
    msg = b.result.fatal or ""
    assert b.result.exit_code == 1
    assert "HTTP 302" in msg and "https://www.binance.com/en/restricted" in msg and "region block" in msg
    assert "--exchange binance-us" in msg and "--exchange binance-futures " not in msg + " "
    assert "--demo" not in msg


async def test_weight_spent_by_another_process_is_respected(tmp_path):
    """Someone else on our IP used most of the budget: the headers say so and we wait."""
    db = tmp_path / "w.duckdb"
    async with exchange(["BTCUSDT"], history_minutes=3000, enforce_weights=True, futures_weight_limit=60,
                        weight_window="10s") as ex:
        async with httpx.AsyncClient() as http:
            for _ in range(5):  # 50 of 60, outside our limiter's knowledge
                await http.get(f"{ex.rest_base}/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "1m",
                                                                         "limit": 1500})
        b = await run(["--db", str(db), "--symbols", "BTCUSDT", "--since",
                       iso(floor(ex.now_ms()) - 2500 * MINUTE), "--rest-url", ex.rest_base])
        assert b.result.exit_code == 0, b.result
        assert ex.stats.http_429 == 0 and ex.stats.http_418 == 0


# ----------------------------------------------------------------------------- pure parts


def test_plan_one_request_per_range_that_fits_else_weight_efficient_pages():
    assert plan((0, 5 * MINUTE), MINUTE, 1500, 499) == [(0, 5 * MINUTE, 5)]
    assert plan((0, 1500 * MINUTE), MINUTE, 1500, 499) == [(0, 1500 * MINUTE, 1500)]
    pages = plan((0, 1600 * MINUTE), MINUTE, 1500, 499)
    assert [p[2] for p in pages] == [499, 499, 499, 103]
    assert pages[0][0] == 0 and pages[-1][1] == 1600 * MINUTE
    assert all(a[1] == b[0] for a, b in zip(pages, pages[1:]))


def test_absent_ranges_of_an_answer():
    from market.rest import absent_ranges
    m = MINUTE
    # asked for [0, 10): got 2, 3, 7 -> absent before 2, between 3 and 7, after 7 (the caller decides)
    assert absent_ranges([2 * m, 3 * m, 7 * m], 0, 10 * m, m) == [(0, 2 * m), (4 * m, 7 * m), (8 * m, 10 * m)]
    assert absent_ranges([], 0, 3 * m, m) == [(0, 3 * m)]
    assert absent_ranges([0, m, 2 * m], 0, 3 * m, m) == []
    assert absent_ranges([-m, 0, 5 * m, 12 * m], 0, 6 * m, m) == [(m, 5 * m)]  # rows outside are ignored


@pytest.mark.parametrize("argv, says", [
    (["--since", "2026-01-01"], "--symbols A,B or --top N"),
    (["--symbols", "BTCUSDT"], "--since DATE is required"),
    (["--symbols", "BTCUSDT", "--since", "yesterday"], "is not a date"),
    (["--symbols", "BTCUSDT", "--since", "2026-02-30"], "is not a date"),
    (["--symbols", "BTCUSDT", "--since", "2026-01-02", "--until", "2026-01-01"], "must be after --since"),
    (["--symbols", "BTCUSDT", "--since", "2026-01-01", "--interval", "7m"], "unknown interval '7m'"),
    (["--symbols", "BTCUSDT", "--since", "2026-01-01", "--exchange", "kraken"], "unknown exchange preset"),
    (["--symbols", "BTC-USDT", "--since", "2026-01-01"], "is not like BTCUSDT"),
    (["--top", "0", "--since", "2026-01-01"], "--top must be"),
    (["--top", "3", "--symbols", "BTCUSDT", "--since", "2026-01-01"], "not both"),
    (["--symbols", "BTCUSDT", "--since", "2026-01-01", "--rest-url", "ftp://x"], "--rest-url must start"),
    (["--symbols", "BTCUSDT", "--since", "2026-01-01", "--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_are_one_plain_line_and_exit_2(tmp_path, capsys, argv, says):
    db = tmp_path / "never.duckdb"
    assert main(["--db", str(db), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and err.startswith("python -m store.backfill: error: ")
    assert not db.exists()  # nothing touched before the arguments are good


def test_cli_bad_argument_exits_2_without_traceback(tmp_path):
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "store.backfill", "--top", "x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--top must be" in proc.stderr


@settings(max_examples=300)
@given(st.text(max_size=30))
def test_any_since_text_is_a_date_or_a_plain_error(text):
    try:
        ms = parse_date(text)
    except ValueError as exc:
        assert str(exc).count("\n") == 0
    else:
        assert 946_684_800_000 <= ms <= 4_102_444_800_000


@given(st.lists(st.sampled_from(["--symbols", "BTCUSDT", "--top", "3", "--since", "2026-01-01", "--until",
                                 "2025-01-01", "--interval", "1h", "5x", "--repair", "--exchange", "binance-spot",
                                 "nope", ",", "--concurrency", "0", "--db"]), max_size=8))
def test_any_argument_mix_parses_or_is_a_plain_error(argv):
    try:
        cfg = parse_args(argv)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert cfg.repair or cfg.symbols or cfg.top
        assert cfg.until_ms is None or cfg.since_ms is not None and cfg.until_ms > cfg.since_ms


_num = st.integers(1, 10**6).map(lambda n: f"{n / 100:.2f}")


@given(st.lists(st.tuples(st.integers(0, 10**6), _num, st.integers(0, 10**4)), max_size=20))
def test_rest_kline_rows_parse_exactly(specs):
    """parse_rest_klines (market/binance.py) on valid Binance rows: every one kept, values exact."""
    rows = []
    for minute, price, trades in specs:
        t = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE + minute * MINUTE
        rows.append([t, price, price, price, price, "1.5", t + MINUTE - 1, "2.5", trades, "0.5", "0.7", "0"])
    frame = parse_rest_klines(rows, "btcusdt", "1m")
    assert frame.height == len(rows)
    assert frame["open_time"].dt.epoch("ms").to_list() == [r[0] for r in rows]
    assert frame["close"].to_list() == [float(r[4]) for r in rows]
    assert frame["trades"].to_list() == [r[8] for r in rows]
    assert set(frame["symbol"]) <= {"BTCUSDT"}


@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                          st.lists(st.one_of(st.integers(), st.text(max_size=4), st.floats()), max_size=13)),
                max_size=10))
def test_rest_kline_junk_rows_are_counted_never_raised(rows):
    counter = RejectCounter()
    frame = parse_rest_klines(rows, "BTCUSDT", "1m", counter)
    assert frame.height + sum(counter.rejected.values()) == len(rows)


# ----------------------------------------------------------------------------- the live pipeline


def test_feed_empty_ranges_skip_and_merge():
    from market.feed import EmptyRanges
    e = EmptyRanges()
    e.load({"BTCUSDT": [(0, 10), (10, 20)]})
    assert e.skip("BTCUSDT", 5) == 20 and e.skip("BTCUSDT", 20) == 20 and e.skip("ETHUSDT", 5) == 5
    e.found("BTCUSDT", 3, 8)  # already known: nothing new to record
    e.found("BTCUSDT", 30, 40)
    assert e.take_new() == [("BTCUSDT", 30, 40)] and e.take_new() == []
    assert e.skip("BTCUSDT", 35) == 40


async def test_live_pipeline_records_what_rest_proves_absent(tmp_path):
    """The ingest pipeline's first backfill asks for more than the exchange has (lookback
    100 minutes, history 30): the stretch before its first candle lands in empty_ranges."""
    from store.ingest import IngestConfig, Pipeline
    db = tmp_path / "live.duckdb"
    async with exchange(["BTCUSDT"], history_minutes=30) as ex:
        first = truth(ex, "BTCUSDT", 0, 2**62)["open_time"].dt.epoch("ms").min()
        p = Pipeline(IngestConfig(db=db, symbols=("BTCUSDT",), ws_url=ex.ws_base, rest_url=ex.rest_base,
                                  lookback=100, flush_every=0.2))
        task = asyncio.create_task(p.run())

        def recorded() -> dict:
            try:
                return ranges.empty(["BTCUSDT"], "1m", db=db) if db.exists() else {}
            except store.StoreError:
                return {}
        try:
            await wait_for(lambda: recorded(), timeout=90, every=0.2, what="an empty range recorded")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    [(a, b)] = recorded()["BTCUSDT"]
    assert b == first and b - a >= 60 * MINUTE  # about 70 minutes before the history starts


async def test_a_long_range_before_the_listing_costs_one_probe(tmp_path):
    """--since long before the symbol's first candle: one weight-1 request finds where its
    history starts, the stretch before it is recorded absent, and only the rest is paged."""
    db = tmp_path / "p.duckdb"
    async with exchange(["BTCUSDT"], history_minutes=600) as ex:
        first = truth(ex, "BTCUSDT", 0, 2**62)["open_time"].dt.epoch("ms").min()
        since, until = first - 5000 * MINUTE, first + 300 * MINUTE
        before = ex.stats.rest_requests
        b = await run(["--db", str(db), "--symbols", "BTCUSDT", "--since", iso(since), "--until", iso(until),
                       "--rest-url", ex.rest_base])
        assert b.result.exit_code == 0
        assert ex.stats.rest_requests - before == 3  # exchangeInfo, the probe, one page of 300
        assert_frame_equal(stored(db, "BTCUSDT"), truth(ex, "BTCUSDT", since, until))
        assert ranges.empty(["BTCUSDT"], "1m", db=db) == {"BTCUSDT": [(since, first)]}


async def test_spot_preset_uses_spot_paths_weights_and_market(tmp_path, capsys):
    db = tmp_path / "s.duckdb"
    async with exchange(["BTCUSDT"], history_minutes=600) as ex:
        since = floor(ex.now_ms()) - 900 * MINUTE  # 300 before the history, 600 in it: one page
        b = await run(["--db", str(db), "--symbols", "BTCUSDT", "--since", iso(since), "--exchange", "binance-spot",
                       "--rest-url", ex.rest_base])
        assert b.result.exit_code == 0, b.result
        assert b.client.preset.klines_path == "/api/v3/klines"
        assert b.result.weight == 20 + 2  # spot exchangeInfo, one klines request (spot: always 2)
        assert_frame_equal(stored(db, "BTCUSDT"), truth(ex, "BTCUSDT", since, floor(b.now)))
    assert store.query("SELECT value FROM meta WHERE key = 'market'", db=db)["value"][0] == "binance-spot"
    # a spot file refuses futures candles, before any network traffic
    assert main(["--db", str(db), "--symbols", "BTCUSDT", "--since", iso(since), "--rest-url",
                 "http://127.0.0.1:9", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "holds binance-spot candles, not binance-futures" in err and "127.0.0.1:9" not in err


# ----------------------------------------------------------------------------- indicators of what was stored


def check_indicators(db, series: list[tuple[str, str]]) -> None:
    """Every stored candle has exactly one indicator row; RSI, StochRSI K and D equal TA-Lib's
    over the stored closes (null exactly where TA-Lib's are) and the signal follows the rule
    of market/indicators.py (tests/conftest.py's ``talib_indicators``)."""
    import numpy as np

    from store import history
    from tests.conftest import talib_indicators
    dups = store.query("SELECT count(*) AS n FROM (SELECT symbol, interval, open_time FROM indicators "
                       "GROUP BY ALL HAVING count(*) > 1)", db=db)["n"][0]
    orphans = store.query("SELECT count(*) AS n FROM indicators i ANTI JOIN klines k "
                          "USING (symbol, interval, open_time)", db=db)["n"][0]
    assert dups == 0 and orphans == 0
    for symbol, interval in series:
        rows = history.with_indicators(symbol, interval, db=db)
        closes = rows["close"].to_numpy()
        assert len(closes) > 100, (symbol, interval)
        want = talib_indicators(closes)
        for name in ("rsi", "stoch_k", "stoch_d"):
            have = rows[name].cast(pl.Float64).to_numpy()  # null (no row, or warming up) -> NaN
            ref = want[name]
            assert np.array_equal(np.isnan(have), np.isnan(ref)), f"{symbol} {interval} {name}: null masks differ"
            assert np.abs(have - ref)[~np.isnan(ref)].max() <= 1e-9, (symbol, interval, name)
        assert rows["signal"].to_list() == want["signal"], (symbol, interval)


async def test_backfill_prepend_and_repair_leave_indicators_equal_to_talib(tmp_path):
    db = tmp_path / "i.duckdb"
    syms = ["BTCUSDT", "ETHUSDT"]
    async with exchange(syms, history_minutes=3000) as ex:
        now = floor(ex.now_ms())
        argv = ["--db", str(db), "--symbols", ",".join(syms), "--rest-url", ex.rest_base]
        b = await run([*argv, "--since", iso(now - 900 * MINUTE)])
        assert b.result.exit_code == 0, b.result
        assert b.result.indicator_series == 2 and b.result.indicator_rows >= 2 * 900
        check_indicators(db, [(s, "1m") for s in syms])
        # older history in front: the seam and the later candles' values change (RSI's seed)
        t, rsi = store.query("SELECT open_time, rsi FROM indicators WHERE symbol = 'BTCUSDT' "
                             "ORDER BY open_time LIMIT 1 OFFSET 20", db=db).row(0)
        b = await run([*argv, "--since", iso(now - 2000 * MINUTE)])
        assert b.result.exit_code == 0, b.result
        check_indicators(db, [(s, "1m") for s in syms])
        moved = store.query("SELECT rsi FROM indicators WHERE symbol = 'BTCUSDT' AND open_time = ?", [t], db=db)
        assert moved.height == 1 and abs(moved["rsi"][0] - rsi) > 1e-6  # recomputed, not left as it was
        # nothing to fetch and nothing stale: no indicator row rewritten
        b = await run([*argv, "--since", iso(now - 2000 * MINUTE)])
        assert b.result.indicator_rows == 0

    # --repair: holes (stored by another tool, without indicators) in a 1m and a 5m series
    db = tmp_path / "r.duckdb"
    async with exchange(syms, history_minutes=3000) as ex:
        start = floor(ex.now_ms()) - 2900 * MINUTE
        end = start + 2800 * MINUTE
        w = store.Writer(db, market="binance-futures")
        for s in syms:
            full = truth(ex, s, start, end)
            w.add_klines(full.filter(pl.Series([not (300 <= i < 340 or 1000 <= i < 1003) for i in range(full.height)])))
        five = ex.history("BTCUSDT", "5m", start, end - 1)
        w.add_klines(five.filter(pl.Series([not 100 <= i < 107 for i in range(five.height)])))
        w.close()
        b = await run(["--db", str(db), "--repair", "--rest-url", ex.rest_base])
        assert b.result.exit_code == 0, b.result
        assert b.result.indicator_series == 3
        assert ranges.holes(syms, "1m", db=db) == {}
        check_indicators(db, [("BTCUSDT", "1m"), ("ETHUSDT", "1m"), ("BTCUSDT", "5m")])


async def test_candles_without_indicators_are_finished_by_the_next_run(tmp_path):
    """The state a kill -9 between a series' candles and its indicators leaves: older candles
    stored in front of a series with indicators, none for them, the later ones stale. The
    same command, with nothing left to fetch, brings them up to date."""
    db = tmp_path / "s.duckdb"
    async with exchange(["BTCUSDT"], history_minutes=3000) as ex:
        now = floor(ex.now_ms())
        argv = ["--db", str(db), "--symbols", "BTCUSDT", "--rest-url", ex.rest_base]
        assert (await run([*argv, "--since", iso(now - 600 * MINUTE)])).result.exit_code == 0
        first = store.query("SELECT epoch_ms(min(open_time)) AS t FROM klines", db=db)["t"][0]
        w = store.Writer(db, market="binance-futures")
        w.add_klines(truth(ex, "BTCUSDT", first - 1000 * MINUTE, first))  # as if killed right after this
        w.close()
        before = ex.stats.rest_requests
        b = await run([*argv, "--since", iso(first - 1000 * MINUTE)])
        assert b.result.exit_code == 0, b.result
        assert ex.stats.rest_requests - before <= 2  # exchangeInfo (and the minutes since the first run)
        assert b.result.indicator_series == 1 and b.result.indicator_rows >= 1000
        check_indicators(db, [("BTCUSDT", "1m")])


async def test_minutes_missing_at_the_exchange_are_recorded_once(tmp_path):
    """``LocalExchange.gap``: minutes the exchange itself lacks (no trades, maintenance). A
    backfill over them and a --repair of the hole they leave record them in empty_ranges,
    a second run does not ask for them again, and ``history.gaps()`` says they are missing
    at the exchange, not to be repaired."""
    from store import history
    async with exchange(["BTCUSDT", "ETHUSDT"], history_minutes=3000) as ex:
        now = floor(ex.now_ms())
        since = now - 2500 * MINUTE
        gap = (since + 1480 * MINUTE, since + 1510 * MINUTE)  # straddles a seam of 499-row pages (1497)
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{ex.rest_base}/_control/gap",
                                params={"symbol": "BTCUSDT", "start": gap[0], "end": gap[1]})
        assert r.json() == {"ok": True}
        assert truth(ex, "BTCUSDT", gap[0] - MINUTE, gap[1] + MINUTE).height == 2

        db = tmp_path / "g.duckdb"
        argv = ["--db", str(db), "--symbols", "BTCUSDT,ETHUSDT", "--since", iso(since), "--rest-url", ex.rest_base]
        b = await run(argv)
        assert b.result.exit_code == 0, b.result
        got = stored(db, "BTCUSDT")
        assert_frame_equal(got, truth(ex, "BTCUSDT", since, got["open_time"].dt.epoch("ms").max() + MINUTE))
        assert ranges.empty(["BTCUSDT", "ETHUSDT"], "1m", db=db) == {"BTCUSDT": [gap]}
        assert ranges.holes(["BTCUSDT"], "1m", db=db) == {"BTCUSDT": [gap]}
        check_indicators(db, [("BTCUSDT", "1m"), ("ETHUSDT", "1m")])  # over the candles that exist
        until = iso(floor(b.now))
        before = ex.stats.rest_requests
        b = await run([*argv, "--until", until])  # the same window again: only exchangeInfo
        assert ex.stats.rest_requests - before == 1 and b.result.empty_recorded == 0
        before = ex.stats.rest_requests
        await run(["--db", str(db), "--repair", "--rest-url", ex.rest_base])
        assert ex.stats.rest_requests - before == 1
        found = history.gaps("1m", db=db)
        assert found.select("symbol", "missing", "at_exchange").rows() == [("BTCUSDT", 30, True)]
        assert found["gap_start"].dt.epoch("ms").to_list() == [gap[0]]

        # --repair of a store that holds the exchange's candles around the gap: one request
        # for the hole, which comes back empty and is recorded; then never asked again
        db = tmp_path / "gr.duckdb"
        w = store.Writer(db, market="binance-futures")
        w.add_klines(truth(ex, "BTCUSDT", since, since + 2000 * MINUTE))
        w.close()
        assert ranges.holes(["BTCUSDT"], "1m", db=db) == {"BTCUSDT": [gap]}
        assert not history.gaps("1m", db=db)["at_exchange"].any()  # not known yet: a hole to repair
        before = ex.stats.rest_requests
        b = await run(["--db", str(db), "--repair", "--rest-url", ex.rest_base])
        assert b.result.exit_code == 0 and b.result.candles == 0 and b.result.empty_recorded == 1
        assert ex.stats.rest_requests - before == 2  # exchangeInfo, the hole
        assert ranges.empty(["BTCUSDT"], "1m", db=db) == {"BTCUSDT": [gap]}
        before = ex.stats.rest_requests
        await run(["--db", str(db), "--repair", "--rest-url", ex.rest_base])
        assert ex.stats.rest_requests - before == 1
        found = history.gaps("1m", db=db)
        assert found.select("symbol", "missing", "at_exchange").rows() == [("BTCUSDT", 30, True)]
        check_indicators(db, [("BTCUSDT", "1m")])  # the stale-check refreshed the Writer's candles


async def test_candles_held_back_by_a_busy_file_get_their_indicators_on_the_next_run(tmp_path, hold_file):
    """Another process takes the file mid-run and keeps it: the candles are spooled, their
    indicators cannot be computed (one plain error, exit 1); the next run writes the spool
    first and then brings the indicators up to date."""
    db = tmp_path / "h.duckdb"
    async with exchange(["BTCUSDT"], history_minutes=3000) as ex:
        ex.rest_latency(2.0)  # six pages one at a time: the run outlasts the holder's start
        argv = ["--db", str(db), "--symbols", "BTCUSDT", "--since", iso(floor(ex.now_ms()) - 2900 * MINUTE),
                "--rest-url", ex.rest_base, "--concurrency", "1", "--no-progress"]
        # no flush before the end, so nothing of ours has the file open when the holder takes it
        b = Backfill(dataclasses.replace(parse_args(argv), flush_every=3600))
        task = asyncio.create_task(b.run())
        await wait_for(lambda: b.result.candles > 0, timeout=60, what="a first page queued")
        holder = await asyncio.to_thread(hold_file, db)
        result = await task
        holder.release()
        assert result.exit_code == 1 and result.candles >= 2900
        assert "indicators of 1 series not refreshed" in result.fatal and "run the same command again" in result.fatal
        assert store.query("SELECT count(*) AS n FROM klines", db=db)["n"][0] == 0  # all spooled
        ex.rest_latency(0)
        b = await run(argv[:-1])
        assert b.result.exit_code == 0, b.result
        assert b.result.indicator_series == 1
        got = stored(db, "BTCUSDT")
        assert got.height >= 2900
        assert_frame_equal(got, truth(ex, "BTCUSDT", got["open_time"].dt.epoch("ms").min(),
                                      got["open_time"].dt.epoch("ms").max() + MINUTE))
        check_indicators(db, [("BTCUSDT", "1m")])
