"""market/exchange/dumps.py: the public-data-site tree, on disk and over HTTP."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.exchange import LocalExchange
from market.exchange.dumps import HEADER, corrupt, parse_dump_path, period_days, periods, tree_path, write_tree

pytestmark = pytest.mark.timeout(300)  # CI shares its machine

START = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
DAY = 86_400_000


def ms(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp() * 1000)


def read_zip(data: bytes | Path) -> tuple[str, list[str]]:
    """(csv name, lines) of a dump; exactly one member."""
    with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as zf:
        (name,) = zf.namelist()
        return name, zf.read(name).decode().splitlines()


def check_sum(zip_path: Path) -> bool:
    digest, name = zip_path.with_name(zip_path.name + ".CHECKSUM").read_text().split()
    return name == zip_path.name and digest == hashlib.sha256(zip_path.read_bytes()).hexdigest()


def test_tree_layout_checksums_and_binance_header_rules(tmp_path: Path) -> None:
    zips = write_tree(tmp_path, ["BTCUSDT", "ETHUSDT"], "1m", "2021-11-20", "2022-02-01")
    rel = sorted(str(p.relative_to(tmp_path)) for p in zips)
    assert rel == [f"data/futures/um/monthly/klines/{s}/1m/{s}-1m-{m}.zip"
                   for s in ("BTCUSDT", "ETHUSDT") for m in ("2021-12", "2022-01")]  # Nov is incomplete
    for p in zips:
        assert check_sum(p)
        assert p.with_name(p.name + ".CHECKSUM").read_text().endswith(f"  {p.name}\n")
        name, lines = read_zip(p)
        assert name == p.name.removesuffix(".zip") + ".csv"
        december = "2021-12" in p.name
        assert (lines[0] == HEADER) != december  # futures files have a header from 2022 on
        rows = [line.split(",") for line in lines[(0 if december else 1):]]
        assert len(rows) == 31 * 1440 and {len(r) for r in rows} == {12} and {r[11] for r in rows} == {"0"}
        first = ms("2021-12-01" if december else "2022-01-01")
        assert [int(r[0]) for r in rows] == list(range(first, first + 31 * DAY, 60_000))
        assert all(int(r[6]) == int(r[0]) + 59_999 for r in rows)
    # daily spot files: no header, milliseconds before 2025, microseconds from 2025-01-01 on
    spot = write_tree(tmp_path, ["BTCUSDT"], "1m", "2024-12-31", "2025-01-02", market="spot", monthly=False)
    assert [p.name for p in spot] == ["BTCUSDT-1m-2024-12-31.zip", "BTCUSDT-1m-2025-01-01.zip"]
    assert "data/spot/daily/klines/BTCUSDT/1m" in str(spot[0])
    (_, old), (_, new) = read_zip(spot[0]), read_zip(spot[1])
    assert old[0].split(",")[0] == str(ms("2024-12-31")) and old[0].split(",")[6] == str(ms("2024-12-31") + 59_999)
    assert new[0].split(",")[0] == str(ms("2025-01-01") * 1000)
    assert new[0].split(",")[6] == str((ms("2025-01-01") + 59_999) * 1000 + 999)
    assert old[-1].split(",")[4] == new[0].split(",")[1]  # the days join up: close = next open
    # any style can be forced, from any date
    forced = write_tree(tmp_path / "f", ["BTCUSDT"], "1m", "2020-03-01", "2020-03-02", monthly=False,
                        header=True, time_unit="us")
    _, lines = read_zip(forced[0])
    assert lines[0] == HEADER and lines[1].split(",")[0] == str(ms("2020-03-01") * 1000)
    assert periods("2024-01-15", "2024-04-01", monthly=True) == ["2024-02", "2024-03"]


async def test_rows_equal_rest_and_1h_aggregates_1m_exactly(tmp_path: Path) -> None:
    (one,) = write_tree(tmp_path, ["1000PEPEUSDT"], "1m", "2023-10-02", "2023-10-03", monthly=False)
    (hour,) = write_tree(tmp_path, ["1000PEPEUSDT"], "1h", "2023-10-02", "2023-10-03", monthly=False)
    _, ones = read_zip(one)
    _, hours = read_zip(hour)
    ones, hours = ones[1:], hours[1:]  # futures 2023: header rows
    assert len(ones) == 1440 and len(hours) == 24
    for i, line in enumerate(hours):
        h, part = line.split(","), [r.split(",") for r in ones[60 * i: 60 * i + 60]]
        assert h[0] == part[0][0] and h[1] == part[0][1] and h[4] == part[-1][4] and h[6] == part[-1][6]
        assert Decimal(h[2]) == max(Decimal(r[2]) for r in part) and Decimal(h[3]) == min(Decimal(r[3]) for r in part)
        for col in (5, 7, 9, 10):
            assert Decimal(h[col]) == sum(Decimal(r[col]) for r in part)
        assert int(h[8]) == sum(int(r[8]) for r in part)
    async with LocalExchange(symbols=("1000PEPEUSDT",), speed=0, start_time=START, history_days=60) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        for interval, lines in (("1m", ones[:1000]), ("1h", hours)):
            params = {"symbol": "1000PEPEUSDT", "interval": interval, "startTime": ms("2023-10-02"), "limit": len(lines)}
            rest = (await http.get("/fapi/v1/klines", params=params)).json()
            assert [[str(x) for x in row] for row in rest] == [line.split(",") for line in lines]


async def test_the_exchange_serves_the_tree_over_http(tmp_path: Path) -> None:
    base = "/data/futures/um/{}/klines/BTCUSDT/1m/BTCUSDT-1m-{}.zip"
    async with LocalExchange(symbols=("BTCUSDT", "ETHUSDT"), speed=0, start_time=START, history_days=60) as ex, \
            httpx.AsyncClient(base_url=ex.rest_base, timeout=120) as http:
        day = await http.get(base.format("daily", "2023-11-13"))  # yesterday, by the exchange clock
        assert day.status_code == 200 and day.headers["Content-Type"] == "application/zip"
        digest, name = (await http.get(base.format("daily", "2023-11-13") + ".CHECKSUM")).text.split()
        assert name == "BTCUSDT-1m-2023-11-13.zip" and digest == hashlib.sha256(day.content).hexdigest()
        (disk,) = write_tree(tmp_path, ["BTCUSDT"], "1m", "2023-11-13", "2023-11-14", monthly=False)
        assert disk.read_bytes() == day.content  # the same bytes as write_tree
        month = await http.get(base.format("monthly", "2023-10"))
        assert month.status_code == 200 and len(read_zip(month.content)[1]) == 31 * 1440 + 1
        spot = await http.get("/data/spot/daily/klines/ETHUSDT/1h/ETHUSDT-1h-2023-11-01.zip")
        assert spot.status_code == 200 and read_zip(spot.content)[1][0].count(",") == 11
        missing = [base.format("daily", "2023-11-14"),  # today: not complete yet
                   base.format("monthly", "2023-11"),  # this month
                   base.format("monthly", "2023-09"),  # starts before the history
                   base.format("daily", "2023-09-15"),
                   "/data/futures/um/daily/klines/NOPEUSDT/1m/NOPEUSDT-1m-2023-11-13.zip",
                   "/data/futures/um/daily/klines/BTCUSDT/7m/BTCUSDT-7m-2023-11-13.zip",
                   "/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-11.zip",  # monthly name in daily/
                   "/data/futures/cm/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-11-13.zip"]
        for path in missing:
            assert (await http.get(path)).status_code == 404, path
        await http.post("/_control/dump_style", params={"header": "false", "time_unit": "us"})
        _, lines = read_zip((await http.get(base.format("daily", "2023-11-12"))).content)
        assert lines[0].split(",")[0] == str(ms("2023-11-12") * 1000)
        ex.dump_style()  # back to Binance's rules
        _, lines = read_zip((await http.get(base.format("daily", "2023-11-12"))).content)
        assert lines[0] == HEADER and lines[1].split(",")[0] == str(ms("2023-11-12"))
        assert ex.stats.dumps_served == 6


def test_corrupt_spoils_exactly_one_thing(tmp_path: Path) -> None:
    zips = write_tree(tmp_path, ["BTCUSDT"], "1h", "2024-01-01", "2024-01-05", monthly=False)
    corrupt(zips[0], "checksum")
    assert not check_sum(zips[0]) and read_zip(zips[0])[1][1].count(",") == 11
    corrupt(zips[1], "row")
    assert check_sum(zips[1])
    bad = [line for line in read_zip(zips[1])[1] if ",abc," in line]
    assert len(bad) == 1
    corrupt(zips[2], "truncated")
    with pytest.raises(zipfile.BadZipFile):
        read_zip(zips[2])
    corrupt(zips[3], "missing_checksum")
    assert not zips[3].with_name(zips[3].name + ".CHECKSUM").exists()
    with pytest.raises(ValueError):
        corrupt(zips[3], "nope")


def test_parse_dump_path() -> None:
    assert parse_dump_path("/data/spot/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2024-02.zip.CHECKSUM") == \
        ("spot", True, "BTCUSDT", "1h", "2024-02", True)
    for bad in ("/data/spot/monthly/klines/BTCUSDT/1h/ETHUSDT-1h-2024-02.zip", "/data/spot/monthly/klines/BTCUSDT/1h",
                "/data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2024-02-30.zip", "/data/x"):
        assert parse_dump_path(bad) is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="/dataspotfuresumlyhkinBTCUSD0123456789-.zipCHECKSUM", max_size=90))
def test_parse_dump_path_never_raises(path: str) -> None:
    assert parse_dump_path(path) is None or parse_dump_path(path)[0] in ("spot", "futures/um")


@settings(max_examples=100, deadline=None)
@given(st.dates(dt.date(2017, 1, 1), dt.date(2030, 12, 31)), st.booleans(), st.sampled_from(["spot", "futures/um"]),
       st.sampled_from(["1m", "5m", "1h", "1d"]), st.sampled_from(["BTCUSDT", "1000PEPEUSDT"]))
def test_tree_paths_parse_back(day: dt.date, monthly: bool, market: str, interval: str, symbol: str) -> None:
    period = day.strftime("%Y-%m") if monthly else day.isoformat()
    path = "/" + tree_path(market, monthly, symbol, interval, period)
    assert parse_dump_path(path) == (market, monthly, symbol, interval, period, False)
    assert parse_dump_path(path + ".CHECKSUM") == (market, monthly, symbol, interval, period, True)
    first, end = period_days(period)
    assert first <= day < end and (end - first).days in ((1,) if not monthly else (28, 29, 30, 31))
