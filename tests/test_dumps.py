"""market.dumps: names, layout, checksums, and the CSV reader (exact values, refusals naming the line)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from market import dumps
from market.dumps import Dump, DumpError, parse_name, read_csv
from market.schema import KLINE_SCHEMA, interval_ms
from tests.conftest import random_klines


def dump_csv(frame: pl.DataFrame, *, header: bool = False, micros: bool = False) -> bytes:
    """The CSV Binance would publish for ``frame`` (KLINE_SCHEMA rows of one symbol+interval)."""
    ms = pl.col("open_time").dt.epoch("ms")
    close_ms = pl.col("close_time").dt.epoch("ms")
    out = frame.select(
        open_time=ms * 1000 if micros else ms,
        open="open", high="high", low="low", close="close", volume="volume",
        # microsecond files end a candle at ...59999999 (1 us before the next), not ...59999000
        close_time=close_ms * 1000 + 999 if micros else close_ms,
        quote_volume="quote_volume", count="trades", taker_buy_volume="taker_buy_volume",
        taker_buy_quote_volume="taker_buy_quote_volume", ignore=pl.lit("0"),
    )
    return out.write_csv(include_header=header).encode()


def write_dump(
    folder: Path, frame: pl.DataFrame, day: dt.date | None = None, *, market: str = "futures/um",
    header: bool = False, micros: bool = False, checksum: bool = True, fmt: str = "zip",
    month: tuple[int, int] | None = None, name: str | None = None,
) -> Path:
    """Write ``frame`` as the site lays it out under ``folder``; returns the file's path.

    Monthly unless ``day`` is given; the month defaults to the first candle's.
    """
    first = frame["open_time"][0]
    year, mon = month or (first.year, first.month)
    stem_dump = Dump(frame["symbol"][0], frame["interval"][0], year, mon, None if day is None else day.day)
    target = folder / stem_dump.relpath(market)
    target = target.with_name(name or target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = dump_csv(frame, header=header, micros=micros)
    if fmt == "csv":
        target = target.with_suffix(".csv")
        target.write_bytes(data)
        return target
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(Path(target.name).with_suffix(".csv").name, data)
    target.write_bytes(buf.getvalue())
    if checksum:
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        target.with_name(target.name + ".CHECKSUM").write_text(f"{digest}  {target.name}\n")
    return target


def month_of(symbol: str, year: int, month: int, interval: str = "1m", seed: int = 0) -> pl.DataFrame:
    start = dt.datetime(year, month, 1)
    end = Dump(symbol, interval, year, month).end
    n = int((end - start) / dt.timedelta(milliseconds=interval_ms(interval)))
    return random_klines([symbol], n, start=start, interval_s=interval_ms(interval) // 1000,
                         seed=seed, interval=interval)


# --------------------------------------------------------------------------- names and layout


def test_parse_name_monthly_daily_and_refusals():
    assert parse_name("BTCUSDT-1m-2024-01.zip") == Dump("BTCUSDT", "1m", 2024, 1)
    assert parse_name("/x/ETHUSDT-1h-2025-02-28.csv") == Dump("ETHUSDT", "1h", 2025, 2, 28)
    d = parse_name("BTCUSDT-1m-2024-02.zip")
    assert (d.start, d.end) == (dt.datetime(2024, 2, 1), dt.datetime(2024, 3, 1))
    assert parse_name("BTCUSDT-1d-2024-12-31.zip").end == dt.datetime(2025, 1, 1)
    assert d.relpath("futures/um") == "data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip"
    for bad, why in [
        ("BTCUSDT-1m-2024-01.txt", "not a kline dump"),
        ("BTCUSDT-aggTrades-2024-01.zip", "not a kline dump"),
        ("BTCUSDT-1s-2024-01.zip", "interval '1s'"),
        ("BTCUSDT-1m-2024-13.zip", "not a date"),
        ("BTCUSDT-1m-2023-02-29.zip", "not a date"),
        ("klines.zip", "not a kline dump"),
    ]:
        with pytest.raises(DumpError, match=why):
            parse_name(bad)


def test_market_of_layout():
    assert dumps.market_of("/d/data/spot/daily/klines/BTCUSDT/1m/x.zip") == "spot"
    assert dumps.market_of("data/futures/um/monthly/klines/BTCUSDT/1m/x.zip") == "futures/um"
    assert dumps.market_of("data/futures/cm/monthly/klines/BTCUSD_PERP/1m/x.zip") == "futures/cm"
    assert dumps.market_of("/tmp/BTCUSDT-1m-2024-01.zip") is None


def test_checksum_file():
    digest = "ab" * 32
    assert dumps.parse_checksum(f"{digest}  BTCUSDT-1m-2024-01.zip\n", "BTCUSDT-1m-2024-01.zip") == digest
    with pytest.raises(DumpError, match="names"):
        dumps.parse_checksum(f"{digest}  OTHER.zip", "BTCUSDT-1m-2024-01.zip")
    with pytest.raises(DumpError, match="not a sha256"):
        dumps.parse_checksum("<html>404</html>", "x.zip")
    with pytest.raises(DumpError, match="checksum mismatch"):
        dumps.verify_checksum(b"data", digest, "x.zip")


def test_plan_monthly_then_daily_up_to_yesterday():
    today = dt.date(2026, 3, 4)
    got = dumps.plan(["BTCUSDT"], "1m", dt.date(2026, 1, 1), dt.date(2099, 1, 1), today)
    assert [d.stem for d in got] == [
        "BTCUSDT-1m-2026-01", "BTCUSDT-1m-2026-02",
        "BTCUSDT-1m-2026-03-01", "BTCUSDT-1m-2026-03-02", "BTCUSDT-1m-2026-03-03",
    ]
    # --until a day inside a past month: months before it whole, then its days
    got = dumps.plan(["A", "B"], "1h", dt.date(2025, 11, 1), dt.date(2025, 12, 2), today)
    assert [d.stem for d in got] == ["A-1h-2025-11", "A-1h-2025-12-01", "A-1h-2025-12-02",
                                     "B-1h-2025-11", "B-1h-2025-12-01", "B-1h-2025-12-02"]
    # the monthly file of last month may not be out yet: its days stand in
    assert [d.day for d in dumps.days_of(Dump("A", "1m", 2026, 2), today)] == list(range(1, 29))
    assert dumps.days_of(Dump("A", "1m", 2026, 3), dt.date(2026, 3, 1)) == []


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("header,micros", [(False, False), (True, False), (False, True)])
def test_read_csv_exact(header, micros):
    frame = month_of("BTCUSDT", 2025, 1, seed=3).head(3000)
    got = read_csv(dump_csv(frame, header=header, micros=micros), parse_name("BTCUSDT-1m-2025-01.csv"), "f")
    assert_frame_equal(got, frame, check_exact=True)
    assert got.schema == pl.Schema(KLINE_SCHEMA)


def test_read_real_rows():
    # one futures row (header, ms) and one spot row (no header, us), as published
    fut = (b"open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
           b"taker_buy_quote_volume,ignore\r\n"
           b"1704067200000,42314.00,42335.80,42289.60,42331.90,323.406,1704067259999,13686682.14470,3220,"
           b"182.969,7743534.78760,0\r\n")
    got = read_csv(fut, parse_name("BTCUSDT-1m-2024-01.zip"), "f")
    assert got.row(0) == ("BTCUSDT", "1m", dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, 0, 0, 59, 999000),
                          42314.0, 42335.8, 42289.6, 42331.9, 323.406, 13686682.1447, 3220, 182.969, 7743534.7876)
    spot = (b"1735689600000000,93576.00000000,93610.93000000,93537.50000000,93610.93000000,8.21827000,"
            b"1735689659999999,768978.52773760,2331,3.95688000,370258.88047220,0\n")
    got = read_csv(spot, parse_name("BTCUSDT-1m-2025-01-01.zip"), "f")
    assert got["open_time"][0] == dt.datetime(2025, 1, 1)
    assert got["close_time"][0] == dt.datetime(2025, 1, 1, 0, 0, 59, 999000)


def _lines(frame: pl.DataFrame) -> list[bytes]:
    return dump_csv(frame).splitlines(keepends=True)


@pytest.mark.parametrize("mutate,line,why", [
    (lambda ls: ls.__setitem__(4, b"1,2,3\n"), 5, "expected 12"),
    (lambda ls: ls.__setitem__(9, ls[9].replace(b",", b",x", 1)), 10, "open 'x"),
    (lambda ls: ls.__setitem__(2, ls[2].replace(b"000,", b"001,", 1)), 3, "not aligned"),
    (lambda ls: ls.__setitem__(6, ls[5]), 7, "not after the previous"),
    (lambda ls: ls.__setitem__(3, ls[3].replace(b"999,", b"998,", 1)), 4, "close_time"),
    (lambda ls: ls.__setitem__(7, ls[7].replace(b",0\n", b",0,0\n")), 8, "expected 12"),
    (lambda ls: ls.insert(0, b"open_tim,open\n"), 1, "expected 12"),
])
def test_read_csv_refusal_names_the_line(mutate, line, why):
    lines = _lines(month_of("BTCUSDT", 2024, 3).head(20))
    mutate(lines)
    with pytest.raises(DumpError, match=rf"^BTCUSDT-1m-2024-03.csv line {line}: .*{why}"):
        read_csv(b"".join(lines), parse_name("BTCUSDT-1m-2024-03.csv"), "BTCUSDT-1m-2024-03.csv")


def test_read_csv_outside_the_file_period_and_blank_lines():
    frame = month_of("BTCUSDT", 2024, 3).head(5)
    with pytest.raises(DumpError, match="line 1: open_time .* outside BTCUSDT-1m-2024-04"):
        read_csv(dump_csv(frame), parse_name("BTCUSDT-1m-2024-04.csv"), "f")
    # a blank line holds no candle: skipped, and later lines keep their numbers
    lines = _lines(frame)
    lines.insert(2, b"\n")
    assert read_csv(b"".join(lines), parse_name("BTCUSDT-1m-2024-03.csv"), "f").height == 5
    lines[4] = b"nan" + lines[4][lines[4].index(b","):]
    with pytest.raises(DumpError, match="line 5: open_time 'nan'"):
        read_csv(b"".join(lines), parse_name("BTCUSDT-1m-2024-03.csv"), "f")


def test_read_file_zip_checksum_and_corruption(tmp_path):
    frame = month_of("BTCUSDT", 2024, 2).head(100)
    path = write_dump(tmp_path, frame, header=True)
    dump, got = dumps.read_file(path)
    assert dump == Dump("BTCUSDT", "1m", 2024, 2)
    assert_frame_equal(got, frame, check_exact=True)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DumpError, match="checksum mismatch"):
        dumps.read_file(path)
    path.with_name(path.name + ".CHECKSUM").unlink()
    with pytest.raises(DumpError, match="unreadable zip|BTCUSDT-1m-2024-02.zip"):
        dumps.read_file(path)
    renamed = write_dump(tmp_path / "r", frame, checksum=False)
    renamed = renamed.rename(renamed.with_name("ETHUSDT-1m-2024-02.zip"))
    with pytest.raises(DumpError, match="ETHUSDT-1m-2024-02.zip holds BTCUSDT-1m-2024-02.csv"):
        dumps.read_file(renamed)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(DumpError, match="unreadable zip"):
        dumps.read_file(path)


# --------------------------------------------------------------------------- properties

_DUMP = parse_name("BTCUSDT-1m-2024-03.csv")
_GOOD = _lines(month_of("BTCUSDT", 2024, 3, seed=7).head(30))
_FIELD = st.one_of(
    st.sampled_from(["", "0", "-1", "1e3", "nan", "inf", "1.5", "x", "1709251200000", "1709251259999",
                     "9" * 25, " 1", '"1"', "\x00", "é"]),
    st.text(max_size=8),
)


def _check(data: bytes) -> None:
    try:
        out = read_csv(data, _DUMP, "f.csv")
    except DumpError as exc:
        assert str(exc).startswith("f.csv line "), str(exc)
        return
    assert out.schema == pl.Schema(KLINE_SCHEMA)
    assert out["open_time"].is_unique().all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_GOOD) - 1), st.integers(0, 11), _FIELD)
def test_mutated_field_never_crashes(row, col, value):
    lines = list(_GOOD)
    fields = lines[row].rstrip(b"\n").split(b",")
    fields[col] = value.encode("utf-8", "replace")
    lines[row] = b",".join(fields) + b"\n"
    _check(b"".join(lines))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data):
    _check(data)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(_GOOD + [b"\n", b"1,2\n", b"open_time\n"]), max_size=12))
def test_shuffled_lines_are_a_frame_or_a_named_line(lines):
    _check(b"".join(lines))
