"""Kline dumps in the layout of Binance's public data site, from the synthetic history.

Layout (``market``: ``spot`` or ``futures/um``)::

    data/<market>/<monthly|daily>/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM[-DD]>.zip
    ...and <zip>.CHECKSUM, which reads "<sha256 hex>  <zip name>"

Each zip holds one CSV of the same stem with 12 columns (open_time, open, high, low,
close, volume, close_time, quote_volume, count, taker_buy_volume,
taker_buy_quote_volume, ignore); a real spot row from 2025 on::

    1735689600000000,93576.00000000,93610.93000000,93537.50000000,93610.93000000,8.21827000,1735689659999999,768978.15808790,1681,3.82407000,357837.28183790,0

Binance's rules, which ``header`` / ``time_unit`` can override for tests: futures
files of 2022 on start with a header row, spot and older futures files have none;
spot times are microseconds for periods from 2025-01-01 on, milliseconds before;
futures times are always milliseconds. Values are the REST rows' strings.

``write_tree`` writes such a tree to a folder (no HTTP); the local exchange serves the
same bytes under ``/data/...`` (see ``DumpSite``); ``corrupt`` spoils one file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import polars as pl
from websockets.http11 import Response

from market.exchange.control import Gaps, without_gaps
from market.exchange.responses import bytes_response
from market.exchange.wire import fixed_series
from market.schema import INTERVAL_MS, interval_ms
from market.synthetic import DAY_MS, SyntheticMarket, SymbolSpec, spec_for

HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,"
          "taker_buy_volume,taker_buy_quote_volume,ignore")
MARKETS = ("spot", "futures/um")
_EPOCH = dt.date(1970, 1, 1)
_NAME = re.compile(r"([A-Z0-9]{1,20})-(\w+)-(\d{4}-\d{2}(?:-\d{2})?)\.zip(\.CHECKSUM)?")


def _date(value: dt.date | str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def default_header(market: str, period_start: dt.date) -> bool:
    """Futures files of 2022 on have a header row; spot files and older futures ones do not."""
    return market.startswith("futures") and period_start >= dt.date(2022, 1, 1)


def default_time_unit(market: str, period_start: dt.date) -> str:
    """Spot periods from 2025-01-01 on are in microseconds; everything else in milliseconds."""
    return "us" if market == "spot" and period_start >= dt.date(2025, 1, 1) else "ms"


def _day_lines(m: SyntheticMarket, spec: SymbolSpec, day: int, ims: int, unit: str, gaps: Gaps = ()) -> pl.Series:
    """CSV lines of one UTC day at an interval that divides a day (exact 1m aggregates)."""
    cols = without_gaps(m.closed(spec.symbol, ims, day * DAY_MS, (day + 1) * DAY_MS - ims), ims, gaps)
    opens = cols["open_time"]
    closes = opens + ims - 1
    if unit == "us":
        opens, closes = opens * 1000, closes * 1000 + 999
    pd, qd, sd = spec.price_decimals, spec.qty_decimals, spec.quote_decimals
    parts = [pl.Series(opens).cast(pl.String), fixed_series(cols["o"], pd), fixed_series(cols["h"], pd),
             fixed_series(cols["l"], pd), fixed_series(cols["c"], pd), fixed_series(cols["v"], qd),
             pl.Series(closes).cast(pl.String), fixed_series(cols["q"], sd), pl.Series(cols["n"]).cast(pl.String),
             fixed_series(cols["bv"], qd), fixed_series(cols["bq"], sd), pl.repeat("0", len(opens), eager=True)]
    return pl.DataFrame({str(i): part for i, part in enumerate(parts)}).select(
        pl.concat_str(pl.all(), separator=",")).to_series()


def period_days(period: str) -> tuple[dt.date, dt.date]:
    """[first day, day after the last) of "2024-03" (a month) or "2024-03-05" (a day)."""
    if len(period) == 10:
        first = dt.date.fromisoformat(period)
        return first, first + dt.timedelta(days=1)
    first = dt.date.fromisoformat(period + "-01")
    return first, (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def dump_zip(m: SyntheticMarket, symbol: str, interval: str, period: str, market: str = "futures/um",
             header: bool | None = None, time_unit: str | None = None, gaps: Gaps = ()) -> tuple[str, bytes]:
    """(zip name, zip bytes) of one period; the bytes are the same every time (fixed zip dates).
    ``gaps``: half-open ms ranges of minutes missing at the exchange (``LocalExchange.gap``)."""
    if market not in MARKETS or time_unit not in (None, "ms", "us"):
        raise ValueError(f"market must be one of {MARKETS} and time_unit ms or us")
    ims = interval_ms(interval)
    first, end = period_days(period)
    spec = m.specs.get(symbol) or spec_for(symbol)
    unit = time_unit or default_time_unit(market, first)
    lines = [HEADER] if (default_header(market, first) if header is None else header) else []
    for day in range((first - _EPOCH).days, (end - _EPOCH).days):
        day_lines = _day_lines(m, spec, day, ims, unit, gaps)
        if len(day_lines):  # a day lost whole in a gap adds no blank line
            lines.append("\n".join(day_lines.to_list()))
    stem = f"{symbol}-{interval}-{period}"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(f"{stem}.csv", date_time=(first.year, first.month, first.day, 0, 0, 0)),
                    "\n".join(lines) + "\n", compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    return f"{stem}.zip", buf.getvalue()


def checksum_text(name: str, data: bytes) -> str:
    """The CHECKSUM file's text: "<sha256 hex>  <zip name>\\n"."""
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n"


def periods(start: dt.date | str, end: dt.date | str, monthly: bool) -> list[str]:
    """Every month (monthly) or day lying entirely in [start, end)."""
    start, end = _date(start), _date(end)
    out, day = [], start
    while day < end:
        if monthly:
            first, nxt = period_days(day.strftime("%Y-%m"))
            if first >= start and nxt <= end:
                out.append(day.strftime("%Y-%m"))
            day = nxt
        else:
            out.append(day.isoformat())
            day += dt.timedelta(days=1)
    return out


def tree_path(market: str, monthly: bool, symbol: str, interval: str, period: str) -> str:
    """``data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-03.zip``."""
    kind = "monthly" if monthly else "daily"
    return f"data/{market}/{kind}/klines/{symbol}/{interval}/{symbol}-{interval}-{period}.zip"


def write_tree(root: str | Path, symbols: Iterable[str], interval: str, start: dt.date | str,
               end: dt.date | str, market: str = "futures/um", monthly: bool = True, *, seed: int = 0,
               header: bool | None = None, time_unit: str | None = None) -> list[Path]:
    """Write the zips (and CHECKSUMs) of every month (``monthly``) or day lying in
    [start, end) under ``root``, as ``root/data/<market>/...``; returns the zip paths.

    The rows equal what ``LocalExchange(seed=seed)`` serves over REST for the same
    minutes. ``header`` / ``time_unit`` ("ms" / "us") force a style; None: Binance's rule.
    """
    m = SyntheticMarket(tuple(spec_for(s) for s in symbols), seed)
    written = []
    for sym in m.specs:
        for period in periods(start, end, monthly):
            name, data = dump_zip(m, sym, interval, period, market, header, time_unit)
            path = Path(root) / tree_path(market, monthly, sym, interval, period)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.with_name(name + ".CHECKSUM").write_text(checksum_text(name, data))
            written.append(path)
    return written


def corrupt(zip_path: str | Path, kind: str = "checksum") -> None:
    """Spoil one dump: "checksum" (the CHECKSUM names another hash), "row" (one row's
    close becomes "abc"; the CHECKSUM is updated so only the row is bad), "truncated"
    (the zip loses its second half) or "missing_checksum"."""
    path = Path(zip_path)
    sums = path.with_name(path.name + ".CHECKSUM")
    if kind == "checksum":
        sums.write_text(checksum_text(path.name, path.read_bytes() + b"x"))
    elif kind == "row":
        with zipfile.ZipFile(path) as zf:
            (info,) = zf.infolist()
            lines = zf.read(info).decode().splitlines()
        i = len(lines) // 2
        cells = lines[i].split(",")
        cells[4] = "abc"
        lines[i] = ",".join(cells)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(info, "\n".join(lines) + "\n", compress_type=zipfile.ZIP_DEFLATED)
        path.write_bytes(buf.getvalue())
        sums.write_text(checksum_text(path.name, buf.getvalue()))
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "missing_checksum":
        sums.unlink()
    else:
        raise ValueError(f"unknown corruption {kind!r}; use checksum, row, truncated or missing_checksum")


def parse_dump_path(path: str) -> tuple[str, bool, str, str, str, bool] | None:
    """(market, monthly, symbol, interval, period, is_checksum) of a ``/data/...`` URL path,
    None if it is not one (a wrong layout, name or interval)."""
    for market in MARKETS:
        for kind in ("monthly", "daily"):
            prefix = f"/data/{market}/{kind}/klines/"
            if not path.startswith(prefix):
                continue
            parts = path.removeprefix(prefix).split("/")
            if len(parts) != 3:
                return None
            symbol, interval, name = parts
            m = _NAME.fullmatch(name)
            if (m is None or m[1] != symbol or m[2] != interval or interval not in INTERVAL_MS
                    or (len(m[3]) == 7) != (kind == "monthly")):
                return None
            try:
                period_days(m[3])
            except ValueError:
                return None
            return market, kind == "monthly", symbol, interval, m[3], bool(m[4])
    return None


class DumpSite:
    """Mixin of LocalExchange: serves ``/data/...`` like the public data site. Only
    complete periods inside the history and in the past of the exchange clock exist."""

    async def _dump(self, path: str) -> Response:
        parsed = parse_dump_path(path)
        if parsed is None or self.market is None:
            return _not_found(path)
        market, _, symbol, interval, period, checksum = parsed
        first, end = period_days(period)
        history_day = self.market.first_ms // DAY_MS + (self.market.first_ms % DAY_MS > 0)
        if (symbol not in self._symbols() or (first - _EPOCH).days < history_day
                or (end - _EPOCH).days * DAY_MS > self.now_ms()):
            return _not_found(path)
        header, unit = self._dump_style
        gaps = self._gaps.get(symbol, ())
        key = (market, symbol, interval, period, header, unit, gaps)
        hit = self._dump_cache.get(key)
        if hit is None:
            async with self._dump_lock:  # one builder thread: the dump market is not shared
                if self._dump_market is None:
                    self._dump_market = SyntheticMarket(tuple(self.market.specs.values()), self.market.seed)
                hit = await asyncio.to_thread(dump_zip, self._dump_market, symbol, interval, period, market,
                                              header, unit, gaps)
            self._dump_cache[key] = hit
            while len(self._dump_cache) > 16:
                self._dump_cache.pop(next(iter(self._dump_cache)))
        name, data = hit
        self.stats.dumps_served += 1
        if checksum:
            return bytes_response(200, checksum_text(name, data).encode(), "text/plain")
        return bytes_response(200, data, "application/zip")


def _not_found(path: str) -> Response:
    return bytes_response(404, f"<Error><Code>NoSuchKey</Code><Key>{path}</Key></Error>".encode(), "application/xml")
