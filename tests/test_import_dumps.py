"""python -m store.import_dumps: real dump files in tmp_path, a real DuckDB file, real HTTP over loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import polars as pl
import talib
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import store
from market.exchange import LocalExchange
from market.exchange.dumps import corrupt, write_tree
from market.indicators import add_indicators, add_signal
from store import import_dumps
from store.bulk import session
from store.import_dumps import main
from tests.conftest import ROOT, random_klines
from tests.test_dumps import month_of, write_dump

TOL = 1e-9


def run(capsys, *argv: str, today: dt.date | None = None) -> tuple[int, str, str]:
    code = main(["--no-progress", *map(str, argv)], today=today)
    out, err = capsys.readouterr()
    return code, out, err


def klines(db: Path, symbol: str | None = None) -> pl.DataFrame:
    where, params = ("WHERE symbol = ?", [symbol]) if symbol else ("", None)
    return store.query(f"SELECT * FROM klines {where} ORDER BY symbol, interval, open_time", params, db=db)


def indicators(db: Path) -> pl.DataFrame:
    return store.query("SELECT * FROM indicators ORDER BY symbol, interval, open_time", db=db)


def assert_full_history_indicators(db: Path) -> None:
    """Stored indicators equal a full-history computation over everything stored, row for row."""
    ref = add_signal(add_indicators(klines(db).select("symbol", "interval", "open_time", "close")))
    got = indicators(db)
    assert got.height == ref.height
    assert got.select("symbol", "interval", "open_time").equals(ref.select("symbol", "interval", "open_time"))
    for col in ("rsi", "stoch_k", "stoch_d"):
        a, b = got[col], ref[col]
        assert a.is_null().equals(b.is_null()), col
        assert ((a - b).abs().max() or 0.0) <= TOL, col
    assert got["signal"].equals(ref["signal"])


# --------------------------------------------------------------------------- loading


def test_monthly_daily_header_and_no_header_exact_and_once(tmp_path, capsys):
    db, tree = tmp_path / "m.duckdb", tmp_path / "dumps"
    jan = month_of("BTCUSDT", 2024, 1, seed=1)
    feb_days = month_of("BTCUSDT", 2024, 2, seed=2).filter(pl.col("open_time") < dt.datetime(2024, 2, 3))
    old = month_of("ETHUSDT", 2021, 6, seed=3)  # an old futures file: no header
    write_dump(tree, jan, header=True)
    for day in (1, 2):
        part = feb_days.filter(pl.col("open_time").dt.day() == day)
        write_dump(tree, part, dt.date(2024, 2, day), header=True)
    write_dump(tree, old, header=False)
    code, out, err = run(capsys, "--db", db, tree)
    assert code == 0, out + err
    assert "BTCUSDT-1m-2024-01.zip: 44,640 rows, 0 replaced" in out
    assert "BTCUSDT-1m-2024-02-02.zip: 1,440 rows" in out
    assert "4 files loaded (90,720 rows, 0 replaced), 0 refused" in out
    expected = pl.concat([jan, feb_days, old]).sort("symbol", "interval", "open_time")
    assert_frame_equal(klines(db), expected, check_exact=True)
    assert_full_history_indicators(db)


def test_spot_ms_and_us_and_1h(tmp_path, capsys):
    db, tree = tmp_path / "spot.duckdb", tmp_path / "dumps"
    dec = month_of("BTCUSDT", 2024, 12, seed=4)  # spot in ms
    jan = month_of("BTCUSDT", 2025, 1, seed=5)  # spot in microseconds from 2025 on
    hourly = month_of("ETHUSDT", 2025, 1, interval="1h", seed=6)
    write_dump(tree, dec, market="spot")
    write_dump(tree, jan, market="spot", micros=True)
    write_dump(tree, hourly, market="spot", micros=True)
    # files named one by one, as a shell glob names them (CHECKSUMs included)
    code, out, err = run(capsys, "--db", db, "--exchange", "binance-spot", *sorted(tree.rglob("*")))
    assert code == 0, out + err
    assert "3 files loaded" in out
    assert_frame_equal(klines(db), pl.concat([dec, jan, hourly]).sort("symbol", "interval", "open_time"),
                       check_exact=True)
    assert store.query("SELECT value FROM meta WHERE key = 'market'", db=db).item() == "binance-spot"
    assert_full_history_indicators(db)


def test_bad_files_refused_and_named_good_ones_load(tmp_path, capsys):
    db, tree = tmp_path / "m.duckdb", tmp_path / "dumps"
    good = write_dump(tree, month_of("BTCUSDT", 2024, 1))
    tampered = write_dump(tree, month_of("ETHUSDT", 2024, 1))
    raw = bytearray(tampered.read_bytes())
    raw[-40] ^= 1
    tampered.write_bytes(bytes(raw))
    malformed = write_dump(tree, month_of("SOLUSDT", 2024, 1), fmt="csv")
    lines = malformed.read_bytes().splitlines(keepends=True)
    lines[99] = lines[99].replace(b",", b",abc", 1)
    malformed.write_bytes(b"".join(lines))
    misnamed = write_dump(tree, month_of("XRPUSDT", 2024, 1), name="XRPUSDT-klines-2024-01.zip")
    code, out, _ = run(capsys, "--db", db, tree)
    assert code == 1
    assert f"loaded   {good}: 44,640 rows" in out
    assert f"REFUSED  {tampered}: ETHUSDT-1m-2024-01.zip: checksum mismatch" in out
    assert f"REFUSED  {malformed}: SOLUSDT-1m-2024-01.csv line 100: open 'abc" in out
    assert f"REFUSED  {misnamed}: XRPUSDT-klines-2024-01.zip: not a kline dump name" in out
    assert "1 files loaded (44,640 rows, 0 replaced), 3 refused" in out
    assert store.query("SELECT DISTINCT symbol FROM klines", db=db)["symbol"].to_list() == ["BTCUSDT"]
    assert store.query("SELECT DISTINCT symbol FROM indicators", db=db)["symbol"].to_list() == ["BTCUSDT"]


def test_a_folder_without_dumps_is_an_error(tmp_path, capsys):
    (tmp_path / "dumps").mkdir()
    (tmp_path / "dumps" / "notes.txt").write_text("no klines here\n")
    db = tmp_path / "m.duckdb"
    code, out, err = run(capsys, "--db", db, tmp_path / "dumps")
    assert code == 1 and out == ""
    assert err.strip() == f"error: no kline dumps (.zip or .csv) in {tmp_path / 'dumps'}; nothing imported"


def test_reimport_changes_nothing_and_overlap_replaces(tmp_path, capsys):
    db, tree = tmp_path / "m.duckdb", tmp_path / "dumps"
    feb = month_of("BTCUSDT", 2024, 2, seed=8)
    write_dump(tree, feb)
    assert run(capsys, "--db", db, tree)[0] == 0
    before_k, before_i = klines(db), indicators(db)
    code, out, _ = run(capsys, "--db", db, tree)
    assert code == 0 and "41,760 rows, 41,760 replaced (0 changed)" in out
    assert_frame_equal(klines(db), before_k, check_exact=True)
    assert_frame_equal(indicators(db), before_i, check_exact=True)
    # a daily file with corrected prices for one day: newest wins, 1,440 replaced
    day = feb.filter(pl.col("open_time").dt.day() == 10).with_columns(pl.col("close") * 1.01)
    daily = write_dump(tmp_path / "fix", day, dt.date(2024, 2, 10))
    code, out, _ = run(capsys, "--db", db, daily)
    assert code == 0 and "1,440 rows, 1,440 replaced (1,440 changed)" in out
    expected = feb.update(day, on=["symbol", "interval", "open_time"])
    assert_frame_equal(klines(db), expected, check_exact=True)
    assert_full_history_indicators(db)


def test_indicators_equal_talib(tmp_path, capsys):
    db, tree = tmp_path / "m.duckdb", tmp_path / "dumps"
    frame = month_of("BTCUSDT", 2024, 4, seed=9)
    write_dump(tree, frame, header=True)
    assert run(capsys, "--db", db, tree)[0] == 0
    got = indicators(db)
    closes = frame["close"].to_numpy()
    rsi = talib.RSI(closes, timeperiod=14)
    k, d = talib.STOCH(rsi, rsi, rsi, fastk_period=14, slowk_period=3, slowk_matype=0,
                       slowd_period=3, slowd_matype=0)
    assert got["open_time"].equals(frame["open_time"])
    ours = got["rsi"].to_numpy()
    assert np.array_equal(np.isnan(ours), np.isnan(rsi))
    assert np.nanmax(np.abs(ours - rsi)) <= TOL
    for col, ref in (("stoch_k", k), ("stoch_d", d)):
        mine = got[col].to_numpy()
        both = ~np.isnan(mine) & ~np.isnan(ref)
        assert both.sum() > frame.height - 40
        assert np.max(np.abs(mine[both] - ref[both])) <= TOL, col


def test_seam_with_stored_candles_before_and_after(tmp_path, capsys):
    """Candles stored live (writer) after the imported range, and an import after older ones."""
    db, tree = tmp_path / "m.duckdb", tmp_path / "dumps"
    history = random_klines(["BTCUSDT"], 3 * 1440, start=dt.datetime(2024, 5, 1), seed=11)
    first, mid, last = (history.filter(pl.col("open_time").dt.day() == d) for d in (1, 2, 3))
    # day 3 arrives first, live, with indicators computed over what was known then (day 3 only)
    writer = store.Writer(db, market="binance-futures")
    writer.add("klines", last)
    writer.add("indicators", add_signal(add_indicators(last)).select(
        "symbol", "interval", "open_time", "rsi", "stoch_k", "stoch_d", "signal"))
    writer.close()
    # then day 2 is imported (older history prepended: day 3's RSI must change), then day 1
    for day, part in ((2, mid), (1, first)):
        write_dump(tree, part, dt.date(2024, 5, day))
        code, out, _ = run(capsys, "--db", db, tree / f"data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-05-0{day}.zip")
        assert code == 0, out
        assert_full_history_indicators(db)
    assert_frame_equal(klines(db), history, check_exact=True)
    # an import killed between candles and indicators left day 1 without them: the next import heals it
    with session(db, "binance-futures") as con:
        con.execute("DELETE FROM indicators WHERE open_time < ?", [dt.datetime(2024, 5, 2)])
    write_dump(tree, random_klines(["BTCUSDT"], 1440, start=dt.datetime(2024, 5, 4), seed=12), dt.date(2024, 5, 4))
    code, out, _ = run(capsys, "--db", db, tree / "data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-05-04.zip")
    assert code == 0, out
    assert_full_history_indicators(db)


def _ms(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp() * 1000)


def _truth(symbols: tuple[str, ...], interval: str, start: str, end: str) -> pl.DataFrame:
    """What the local exchange serves over REST for [start, end): the dumps' rows, as candles."""
    ex = LocalExchange(symbols=symbols, speed=0, start_time=_ms(end), history_days=(
        dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days + 1)
    return pl.concat([ex.history(s, interval, _ms(start), _ms(end) - 1) for s in symbols]).sort(
        "symbol", "interval", "open_time")


def test_exchange_tree_end_to_end(tmp_path, capsys):
    """The local exchange's dump tree (Binance's header and time-unit rules), three spoiled files."""
    tree, db = tmp_path / "tree", tmp_path / "f.duckdb"
    # December 2021 has no header row, January 2022 has one
    write_tree(tree, ["BTCUSDT", "ETHUSDT"], "1m", "2021-12-01", "2022-02-01")
    hourly = write_tree(tree, ["BTCUSDT"], "1h", "2021-12-01", "2021-12-05", monthly=False)
    spoiled = write_tree(tree, ["SOLUSDT"], "1h", "2022-01-01", "2022-01-04", monthly=False)
    for path, kind in zip(spoiled, ("checksum", "row", "truncated")):
        corrupt(path, kind)
    corrupt(spoiled[2], "missing_checksum")  # so the zip itself is what is judged
    code, out, _ = run(capsys, "--db", db, tree)
    assert code == 1
    assert "8 files loaded" in out and "3 refused" in out
    assert f"REFUSED  {spoiled[0]}: SOLUSDT-1h-2022-01-01.zip: checksum mismatch" in out
    assert f"REFUSED  {spoiled[1]}: SOLUSDT-1h-2022-01-02.zip:SOLUSDT-1h-2022-01-02.csv line " in out
    assert ": close 'abc' is not a number" in out
    assert f"REFUSED  {spoiled[2]}: SOLUSDT-1h-2022-01-03.zip: unreadable zip" in out
    expected = pl.concat([_truth(("BTCUSDT", "ETHUSDT"), "1m", "2021-12-01", "2022-02-01"),
                          _truth(("BTCUSDT",), "1h", "2021-12-01", "2021-12-05")]).sort("symbol", "interval", "open_time")
    assert_frame_equal(klines(db), expected, check_exact=True)
    assert len(hourly) == 4 and "SOLUSDT" not in store.query("SELECT DISTINCT symbol FROM klines", db=db)["symbol"]
    assert_full_history_indicators(db)
    # the spot tree: milliseconds in 2024, microseconds from 2025-01-01 on, never a header
    spot_db = tmp_path / "s.duckdb"
    write_tree(tree, ["BTCUSDT"], "1m", "2024-12-30", "2025-01-02", market="spot", monthly=False)
    code, out, _ = run(capsys, "--db", spot_db, "--exchange", "binance-spot", tree / "data/spot")
    assert code == 0, out
    assert_frame_equal(klines(spot_db), _truth(("BTCUSDT",), "1m", "2024-12-30", "2025-01-02"), check_exact=True)


async def test_download_from_the_local_exchange(tmp_path, capsys):
    """Monthly files for whole months, then yesterday's days, over loopback; an unknown symbol is a 404."""
    db, dest = tmp_path / "m.duckdb", tmp_path / "got"
    start = _ms("2023-11-14") + 22 * 3_600_000  # the exchange clock: Nov 14th, 22:00 UTC
    async with LocalExchange(symbols=("BTCUSDT", "ETHUSDT"), speed=0, start_time=start, history_days=60) as ex:
        code = await asyncio.to_thread(
            main, ["--no-progress", "--db", str(db), "--download", "--symbols", "BTCUSDT,ETHUSDT,NOPEUSDT",
                   "--since", "2023-10", "--dumps-url", ex.rest_base, "--dest", str(dest)],
            today=dt.date(2023, 11, 14))
        served = ex.stats.dumps_served
    out = capsys.readouterr().out
    assert code == 0, out
    # per symbol: 1 monthly + 13 daily files, each with its CHECKSUM; NOPEUSDT: 14 reported 404s
    assert served == 2 * 14 * 2
    assert "missing  NOPEUSDT 1m: 14 file(s) not on the site (HTTP 404): NOPEUSDT-1m-2023-10 .. NOPEUSDT-1m-2023-11-13" in out
    assert "28 files loaded" in out
    expected = _truth(("BTCUSDT", "ETHUSDT"), "1m", "2023-10-01", "2023-11-14")
    assert_frame_equal(klines(db), expected, check_exact=True)
    assert_full_history_indicators(db)
    # a second run finds the files already downloaded and verified: nothing fetched, nothing changes
    code = await asyncio.to_thread(
        main, ["--no-progress", "--db", str(db), "--download", "--symbols", "BTCUSDT", "--since", "2023-10",
               "--until", "2023-10", "--dumps-url", "http://127.0.0.1:9", "--dest", str(dest)],
        today=dt.date(2023, 11, 14))
    assert code == 0 and "44,640 rows, 44,640 replaced (0 changed)" in capsys.readouterr().out


def test_file_held_by_another_process_nothing_lost_nothing_half(tmp_path, hold_file):
    db, tree = tmp_path / "m.duckdb", tmp_path / "dumps"
    paths = [write_dump(tree, month_of(s, 2024, 1).head(1440), dt.date(2024, 1, 1)) for s in ("AAAUSDT", "BBBUSDT")]
    store.prepare(db, "binance-futures")
    holder = hold_file(db)
    result = import_dumps.import_files(paths, db, import_dumps.get_preset("binance-futures"), progress=False,
                                       timeout=0.5)
    holder.release()
    assert [r.rows for r in result.reports] == [0, 0]
    assert all("not stored" in r.error and "held by" in r.error for r in result.reports)
    assert klines(db).height == 0
    # once the file is free, the same files load
    result = import_dumps.import_files(paths, db, import_dumps.get_preset("binance-futures"), progress=False)
    assert [r.rows for r in result.reports] == [1440, 1440] and klines(db).height == 2880


# --------------------------------------------------------------------------- markets


def test_market_of_files_and_database(tmp_path, capsys):
    db, tree = tmp_path / "m.duckdb", tmp_path / "dumps"
    spot = write_dump(tree, month_of("BTCUSDT", 2024, 1), market="spot")
    code, out, _ = run(capsys, "--db", db, spot)
    assert code == 1 and "spot dump" in out and "--exchange binance-spot" in out
    assert klines(db).height == 0
    fut = write_dump(tree, month_of("BTCUSDT", 2024, 1))
    assert run(capsys, "--db", db, fut)[0] == 0
    code, out, err = run(capsys, "--db", db, "--exchange", "binance-spot", spot)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "holds binance-futures candles" in err


# --------------------------------------------------------------------------- download


class _Site:
    """The dump tree served over loopback HTTP, as data.binance.vision serves it."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_Quiet, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_download_months_then_days_404_reported(tmp_path, capsys):
    site, db, dest = tmp_path / "site", tmp_path / "m.duckdb", tmp_path / "got"
    today = dt.date(2024, 3, 4)
    jan, feb = month_of("BTCUSDT", 2024, 1, seed=12), month_of("BTCUSDT", 2024, 2, seed=13)
    march = random_klines(["BTCUSDT"], 3 * 1440, start=dt.datetime(2024, 3, 1), seed=14)
    write_dump(site, jan, header=True)
    # February's monthly file is not out yet on March 4th: its days stand in
    for day in range(1, 30):
        write_dump(site, feb.filter(pl.col("open_time").dt.day() == day), dt.date(2024, 2, day), header=True)
    for day in (1, 2, 3):
        write_dump(site, march.filter(pl.col("open_time").dt.day() == day), dt.date(2024, 3, day))
    # a symbol listed on Feb 1st: January is a 404, reported, not fatal
    write_dump(site, month_of("NEWUSDT", 2024, 2, seed=15))
    web = _Site(site)
    try:
        code, out, err = run(capsys, "--db", db, "--download", "--symbols", "BTCUSDT,NEWUSDT", "--since", "2024-01",
                             "--dumps-url", web.url, "--dest", dest, today=today)
    finally:
        web.close()
    assert code == 0, out + err
    assert "missing  NEWUSDT 1m: 4 file(s) not on the site (HTTP 404): NEWUSDT-1m-2024-01 .. NEWUSDT-1m-2024-03-03" in out
    assert (dest / "data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-03-03.zip.CHECKSUM").exists()
    assert_frame_equal(klines(db, "BTCUSDT"), pl.concat([jan, feb, march]), check_exact=True)
    assert klines(db, "NEWUSDT").height == 29 * 1440
    assert_full_history_indicators(db)


def test_download_bad_checksum_is_refused(tmp_path, capsys):
    site, db, dest = tmp_path / "site", tmp_path / "m.duckdb", tmp_path / "got"
    path = write_dump(site, month_of("BTCUSDT", 2024, 1), market="spot")
    sums = path.with_name(path.name + ".CHECKSUM")
    sums.write_text("0" * 64 + "  " + path.name + "\n")
    web = _Site(site)
    try:
        code, out, _ = run(capsys, "--db", db, "--download", "--market", "spot", "--symbols", "BTCUSDT",
                           "--since", "2024-01", "--until", "2024-01", "--dumps-url", web.url, "--dest", dest)
    finally:
        web.close()
    assert code == 1 and "checksum mismatch" in out and "REFUSED" in out
    assert not (dest / "data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01.zip").exists()
    assert klines(db).height == 0


# --------------------------------------------------------------------------- arguments


def test_bad_arguments_one_line_exit_2(tmp_path):
    cases = [
        [],
        ["--exchange", "nope", str(tmp_path)],
        ["--download", "--symbols", "BTCUSDT", "--since", "2024-1"],
        ["--download", "--symbols", "BTCUSDT", "--since", "2024-01", "--interval", "7m"],
        ["--download", "--since", "2024-01"],
        ["--symbols", "BTCUSDT", str(tmp_path)],
        [str(tmp_path / "nowhere")],
        ["--db", str(tmp_path), str(tmp_path)],
        ["--download", "--symbols", "BTCUSDT", "--since", "2024-01", "--dest", str(ROOT / "README.md")],
        ["--download", "--symbols", "BTCUSDT", "--since", "2024-01", "--until", "2023-12"],
        ["--download", "--symbols", "BTCUSDT", "--since", "2024-01", "--market", "spot", "--exchange", "binance-futures"],
    ]
    for argv in cases:
        out = subprocess.run([sys.executable, "-m", "store.import_dumps", *argv], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 2, (argv, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, (argv, out.stderr)


def test_cli_process_progress_on_stderr_report_on_stdout(tmp_path):
    path = write_dump(tmp_path / "dumps", month_of("BTCUSDT", 2024, 1).head(1440), dt.date(2024, 1, 1))
    out = subprocess.run([sys.executable, "-m", "store.import_dumps", "--db", str(tmp_path / "m.duckdb"), str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "import: 100%" in out.stderr and "B/s" in out.stderr
    assert f"loaded   {path}: 1,440 rows, 0 replaced (0 changed)" in out.stdout
    assert "indicators BTCUSDT 1m: 1,440 rows written" in out.stdout


_WORDS = st.sampled_from(["--download", "--symbols", "BTCUSDT", "a,b", "--since", "2024-01", "2024-13", "--until",
                          "2024-02-30", "--interval", "1h", "9x", "--exchange", "binance-spot", "x", "--market",
                          "spot", "futures", "--dumps-url", "ftp://x", "http://127.0.0.1:1", "--concurrency", "0",
                          "--db", "", "-", "--", "\n"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_WORDS, max_size=8))
def test_parse_args_property(argv):
    try:
        args = import_dumps.parse_args(argv, today=dt.date(2026, 6, 15))
    except import_dumps.BadArgs as exc:
        assert "\n" not in str(exc)
        return
    except SystemExit:  # --help is not in the alphabet; nothing else may exit
        raise AssertionError(argv) from None
    assert args.paths or args.download
    if args.download:
        assert args.download.since <= args.download.until
