"""Every entry point's bad input: one plain line and exit code 2, or a clear exit 1 at start.

Covers ``python -m store.ingest``, ``python -m store.sql`` and the dashboard's
``--args`` (dashboard/config.py), all parsed through market/cli.py. Hypothesis
throws arbitrary argument lists at each parser: the answer is a valid config or
one line (what is wrong, what is allowed), never a traceback. Subprocess tests
check the real commands, a database that cannot be used (reported before any
network traffic) and a feed that delivers nothing (exit 1 saying why).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard.config import AppConfig, ConfigError
from market.cli import UsageError
from market.exchange import LocalExchange
from market.schema import INTERVAL_MS
import store
from store import ingest, sql
from tests.conftest import ROOT
from tests.test_redirects import RawHTTP

pytestmark = pytest.mark.timeout(300)

FLAGS = ["--db", "--symbols", "--interval", "--exchange", "--ws-url", "--rest-url", "--duration",
         "--no-backfill", "--lookback", "--flush-every", "--log-every", "--max-pending", "--format",
         "--max-rows", "--timeout", "--demo", "--refresh-ms", "--speed"]
VALUES = ["1m", "5m", "7m", "1M", "BTCUSDT,ETHUSDT", "btcusdt", ",,", "BTC-USDT", " , ", "-5", "0", "-1",
          "30", "2.5", "1e400", "nan", "inf", "-inf", "10000", "99", "ws://127.0.0.1:9/market",
          "wss://fstream.binance.com/market/stream", "http://127.0.0.1:9", "https://fapi.binance.com",
          "ws://[", "http://h:99999", "ws://:80", "binance-spot", "BINANCE-US", "kraken", "table", "csv",
          "json", "xml", "", " ", "--", "-", "x=y", "a\nb", "SELECT 1", "/tmp/x.duckdb"]
INGEST = FLAGS[:12]
SQL = ["--db", "--format", "--max-rows", "--timeout"]
DASHBOARD = ["--demo", "--db", "--exchange", "--ws-url", "--rest-url", "--symbols", "--interval",
             "--refresh-ms", "--speed"]
SWITCHES = {"--no-backfill", "--demo"}
GOOD = {"--db": ["/tmp/x.duckdb", "m.duckdb"], "--symbols": ["BTCUSDT,ETHUSDT", "btcusdt", "SOLUSDT, ,XRPUSDT"],
        "--interval": ["1m", "5m", "1h"], "--exchange": ["binance-spot", "BINANCE-US", "binance-futures"],
        "--duration": ["30", "0.5", "1e3"], "--lookback": ["1", "500"], "--flush-every": ["1", "0.25"],
        "--log-every": ["10"], "--max-pending": ["10"], "--format": ["csv", "json", "table"],
        "--max-rows": ["-1", "5"], "--timeout": ["0", "2.5"], "--refresh-ms": ["100", "500", "10000"],
        "--speed": ["0", "60", "1.5"]}


def argvs(flags: list[str]) -> st.SearchStrategy[list[str]]:
    """Arbitrary tokens, or mostly well-formed ``--flag value`` pairs of one command (so that
    valid configs are common too), with an arbitrary token slipped in now and then."""
    token = st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES), st.text(max_size=12),
                      st.builds(lambda f, v: f"{f}={v}", st.sampled_from(FLAGS), st.sampled_from(VALUES)))
    def pair(flag: str) -> st.SearchStrategy[list[str]]:
        if flag in SWITCHES:
            return st.just([flag])
        good = st.sampled_from(GOOD.get(flag, VALUES))
        value = st.one_of(*[good] * 8, st.sampled_from(VALUES), st.text(max_size=8))
        return value.map(lambda v: [flag, v])

    pair = st.sampled_from(flags).flatmap(pair)
    pairs = st.lists(pair, max_size=5).map(lambda ps: [t for p in ps for t in p])
    return st.one_of(st.lists(token, max_size=8), pairs, pairs,
                     st.builds(lambda ps, extra: [*ps, extra], pairs, token))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def asked_for_help(argv: list[str]) -> bool:
    return any(a.startswith(("-h", "--h")) for a in argv)


def one_line(text: str) -> bool:
    return bool(text) and "\n" not in text.strip() and "Traceback" not in text


def outcome(parse, argv):
    """(result or exception, what it printed on stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parse(argv), err.getvalue()
        except (UsageError, SystemExit) as exc:
            return exc, err.getvalue()


# --------------------------------------------------------------------------- properties


@FUZZ
@given(argvs(INGEST))
def test_ingest_arguments_parse_or_fail_in_one_line(argv):
    got, printed = outcome(ingest.parse_args, argv)
    if isinstance(got, SystemExit):
        assert got.code == 0 and asked_for_help(argv), (argv, got)
        return
    if isinstance(got, UsageError):
        assert printed == "" and one_line(str(got)), (argv, str(got))
        assert str(got).endswith("see python -m store.ingest --help") or "; use one of" in str(got) \
            or "e.g." in str(got), str(got)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert ingest.main(argv) == 2
        assert err.getvalue().startswith("python -m store.ingest: error: ") and one_line(err.getvalue())
        return
    config, duration, log_every = got
    assert printed == ""
    assert config.interval in INTERVAL_MS
    assert config.symbols and all(s.isascii() and s.isalnum() and s == s.upper() for s in config.symbols)
    assert len(set(config.symbols)) == len(config.symbols)
    assert duration is None or (math.isfinite(duration) and duration > 0)
    assert math.isfinite(log_every) and log_every > 0 and math.isfinite(config.flush_every) and config.flush_every > 0
    assert config.lookback >= 1 and config.flags == ("--exchange",)
    preset = config.preset()
    assert preset.ws_base.startswith(("ws://", "wss://")) and preset.rest_base.startswith(("http://", "https://"))


@FUZZ
@given(argvs(SQL), st.one_of(st.sampled_from(["SELECT 1", "  ", ""]), st.text(max_size=10)))
def test_sql_arguments_parse_or_fail_in_one_line(argv, statement):
    argv = [statement, *argv]
    got, printed = outcome(sql.parse_args, argv)
    if isinstance(got, SystemExit):
        assert got.code == 0 and asked_for_help(argv), (argv, got)
        return
    if isinstance(got, UsageError):
        assert printed == "" and one_line(str(got)), (argv, str(got))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert sql.main(argv) == 2
        assert err.getvalue().startswith("python -m store.sql: error: ") and one_line(err.getvalue())
        return
    assert got.sql.strip() and got.format in ("table", "csv", "json")
    assert got.max_rows >= -1 and math.isfinite(got.timeout) and got.timeout >= 0


@FUZZ
@given(argvs(DASHBOARD))
def test_dashboard_args_parse_or_fail_in_one_line(argv):
    got, printed = outcome(AppConfig.from_args, argv)
    if isinstance(got, SystemExit):
        assert got.code == 0 and asked_for_help(argv), (argv, got)
        return
    if isinstance(got, UsageError):
        assert isinstance(got, ConfigError) and printed == ""
        assert one_line(str(got)) and str(got).startswith("panel serve dashboard/app.py --args: error: "), str(got)
        return
    assert got.interval in INTERVAL_MS and got.symbols and 100 <= got.refresh_ms <= 10_000
    assert all(s.isascii() and s.isalnum() and s == s.upper() for s in got.symbols)
    got.ingest_config().feed_config()  # whatever parsed also starts


# --------------------------------------------------------------------------- the real commands


def run(module: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, "MARKET_DB": "/nonexistent/never-used.duckdb"})


@pytest.mark.parametrize("module, args, words", [
    ("store.ingest", ["--interval", "7m"], "argument --interval: '7m' is not a kline interval; use one of 1m, 3m"),
    ("store.ingest", ["--symbols", ",,"], "argument --symbols: ',,' names no symbol; give comma-separated"),
    ("store.ingest", ["--duration", "-5"], "argument --duration: '-5' is not a number of seconds; give a finite"),
    ("store.ingest", ["--exchange", "kraken"], "unknown exchange preset 'kraken'; use one of binance-futures"),
    ("store.sql", ["--format", "xml", "SELECT 1"], "invalid choice: 'xml' (choose from 'table', 'csv', 'json')"),
    ("store.sql", ["--timeout", "nan", "SELECT 1"], "argument --timeout: 'nan' is not a number of seconds"),
])
def test_bad_argument_is_one_line_and_exit_2(module, args, words):
    res = run(module, *args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr and res.stdout == ""
    assert res.stderr.startswith(f"python -m {module}: error: ") and words in res.stderr, res.stderr


async def ingest_proc(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "store.ingest", *args, cwd=ROOT,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, err.decode()


async def ingest_until(said, *args: str) -> tuple[int, str]:
    """store.ingest without --duration, stopped with SIGTERM (a user's Ctrl-C) once its log
    satisfies ``said(text)``: a loaded box can spend a short --duration just starting up."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "store.ingest", "--log-every", "0.2", *args,
                                                cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    text = ""
    try:
        async with asyncio.timeout(180):
            while not said(text):
                line = await proc.stderr.readline()
                assert line, text  # it exited before saying it
                text += line.decode()
            proc.send_signal(signal.SIGTERM)
            text += (await proc.stderr.read()).decode()
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, text


@pytest.mark.parametrize("kind", ["not-duckdb", "folder", "unwritable", "other-market"])
async def test_unusable_database_is_reported_before_any_traffic(tmp_path, kind):
    if kind == "not-duckdb":
        db = tmp_path / "notes.txt"
        db.write_text("not a database\n" * 100)
        words = "is not a DuckDB database"
    elif kind == "folder":
        db = tmp_path
        words = "is a folder, not a database file"
    elif kind == "other-market":
        db = tmp_path / "spot.duckdb"
        store.prepare(db, "binance-spot")
        words = "binance-spot"
    else:
        if os.geteuid() == 0:  # root may write any folder: /proc takes no new files, even from root
            db, words = f"/proc/m{os.getpid()}.duckdb", "cannot open"
        else:
            folder = tmp_path / "ro"
            folder.mkdir(mode=0o500)
            db, words = folder / "m.duckdb", "permission denied"
    async with RawHTTP(200) as peer:
        base = f"127.0.0.1:{peer.port}"
        code, err = await ingest_proc("--db", str(db), "--symbols", "BTCUSDT", "--duration", "30",
                                      "--ws-url", f"ws://{base}/market", "--rest-url", f"http://{base}")
    assert code == 1, err
    assert peer.connections == 0  # checked before any network traffic
    assert err.strip().count("\n") == 0 and words in err and "Traceback" not in err, err
    if kind == "not-duckdb":
        assert db.read_text() == "not a database\n" * 100  # left alone


async def test_unreachable_exchange_for_the_whole_duration_exits_1_saying_why(tmp_path):
    async with RawHTTP(200) as peer:
        port = peer.port  # a port that was ours and is now closed: connections are refused
    code, err = await ingest_until(lambda text: "cannot reach the exchange" in text,
                                   "--db", str(tmp_path / "m.duckdb"), "--symbols", "BTCUSDT,ETHUSDT",
                                   "--ws-url", f"ws://127.0.0.1:{port}/market", "--rest-url", f"http://127.0.0.1:{port}")
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m store.ingest: error: received nothing in ") and "cannot reach the exchange" in last
    assert "stopped: 0 rows written" in err and "Traceback" not in err


async def test_an_exchange_that_never_answers_the_handshake_is_not_called_connected(tmp_path):
    # a peer that accepts TCP and says nothing (a firewall that swallows traffic)
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        code, err = await ingest_proc("--db", str(tmp_path / "m.duckdb"), "--symbols", "BTCUSDT",
                                      "--duration", "3", "--ws-url", f"ws://127.0.0.1:{port}/market",
                                      "--rest-url", f"http://127.0.0.1:{port}")
    finally:
        silent.close()
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m store.ingest: error: received nothing in "), last
    # on a loaded box the 10 s open timeout may or may not have run out within the 3 s
    assert "still connecting" in last or "no answer within" in last, last
    assert "connected, but" not in last and "Traceback" not in err


async def test_unknown_symbol_exits_1_naming_it(tmp_path):
    db = tmp_path / "m.duckdb"
    async with LocalExchange(symbols=("BTCUSDT",), speed=60, history_minutes=30) as ex:
        # stopped once BTCUSDT's candles were written and NOPEUSDT's backfill was refused
        code, err = await ingest_until(
            lambda text: "backfill of NOPEUSDT failed" in text and re.search(r"; [1-9]\d* candles written", text),
            "--db", str(db), "--symbols", "BTCUSDT,NOPEUSDT", "--lookback", "20",
            "--ws-url", ex.ws_base, "--rest-url", ex.rest_base)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m store.ingest: error: received nothing for NOPEUSDT in "), last
    assert "BTCUSDT" not in last.split(":", 2)[2].split(" in ")[0]
    assert "NOPEUSDT" in last and ("unknown symbol" in last or "Invalid symbol" in last), last


# --------------------------------------------------------------------------- the dashboard's --args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_bad_args_end_a_warm_start_with_one_line_and_exit_2():
    res = subprocess.run([sys.executable, "-m", "panel", "serve", "--warm", "dashboard/app.py", "--port",
                          str(free_port()), "--args", "--interval", "7m"], capture_output=True, text=True,
                         cwd=ROOT, timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert out.strip() == ("panel serve dashboard/app.py --args: error: argument --interval: '7m' is not a kline "
                           "interval; use one of 1m, 3m, 5m, 15m, 30m, 1h, 2h, 4h, 6h, 8h, 12h, 1d; see panel "
                           "serve dashboard/app.py --args --help"), out


def test_dashboard_bad_args_without_warm_log_one_line_and_no_traceback(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "panel", "serve", "dashboard/app.py", "--port", str(port),
                                 "--args", "--symbols", "BTC-USDT"], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 180
        while "'BTC-USDT' is not letters and digits" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                assert httpx.get(f"http://127.0.0.1:{port}/app", timeout=30).status_code == 200
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text and "Error running application handler" not in text, text
    errors = [line for line in text.splitlines() if "error:" in line]
    assert errors and all(line.endswith("see panel serve dashboard/app.py --args --help") for line in errors), text
