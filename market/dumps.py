"""Binance's public kline dumps (data.binance.vision): names, layout, CSV reading, checksums, download.

The site lays files out as
``data/<market>/<monthly|daily>/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM[-DD]>.zip``
(market ``spot``, ``futures/um`` or ``futures/cm``); each zip holds one CSV of the
same stem, and ``<zip>.CHECKSUM`` beside it reads ``<sha256 hex>  <zip name>``.
A row (spot, 2025-01-01 on, timestamps in microseconds; futures stay in ms and
start with a header row from 2022 on, spot never has one)::

    1735689600000000,93576.00000000,93610.93000000,93537.50000000,93610.93000000,8.21827000,1735689659999999,768978.52773760,2331,3.95688000,370258.88047220,0

Reading is vectorised (polars ``read_csv`` on the bytes, then column checks);
only when something is wrong is the file re-read line by line to name the first
bad line, so a refusal always says which file and which 1-based line. ``plan``
says which files cover a date range; ``download`` fetches them (httpx, a few at
a time, checksums verified). The database side is store/import_dumps.py.
"""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import datetime as dt
import hashlib
import io
import re
import zipfile
from pathlib import Path

import httpx
import polars as pl

from market.schema import INTERVAL_MS, KLINE_SCHEMA

COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
    "count", "taker_buy_volume", "taker_buy_quote_volume", "ignore",
)
_TYPES = dict(zip(COLUMNS, [pl.Int64] + [pl.Float64] * 5 + [pl.Int64, pl.Float64, pl.Int64]
                  + [pl.Float64] * 2 + [pl.String]))
_FLOATS = [c for c, t in _TYPES.items() if t == pl.Float64]
_NAME = re.compile(r"^([A-Z0-9]+)-([0-9]+[a-zA-Z]+)-(\d{4})-(\d{2})(?:-(\d{2}))?\.(zip|csv)$")
#: a millisecond timestamp stays below this until the year 5138; microseconds are above it
MICROS_FROM = 10**14
MARKETS = {"spot": "spot", "futures": "futures/um"}  # --market value -> site folder


class DumpError(ValueError):
    """A file that must not be imported, worded for the user (names the file and line)."""


@dataclasses.dataclass(frozen=True, order=True)
class Dump:
    """One dump file's identity: what its name says."""

    symbol: str
    interval: str
    year: int
    month: int
    day: int | None = None  # None: a monthly file

    @property
    def period(self) -> str:
        return "monthly" if self.day is None else "daily"

    @property
    def stem(self) -> str:
        date = f"{self.year:04d}-{self.month:02d}" + ("" if self.day is None else f"-{self.day:02d}")
        return f"{self.symbol}-{self.interval}-{date}"

    @property
    def start(self) -> dt.datetime:
        return dt.datetime(self.year, self.month, self.day or 1)

    @property
    def end(self) -> dt.datetime:
        if self.day is not None:
            return self.start + dt.timedelta(days=1)
        return dt.datetime(self.year + self.month // 12, self.month % 12 + 1, 1)

    def relpath(self, market: str) -> str:
        """Where the site keeps the zip, e.g. ``data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01.zip``."""
        return f"data/{market}/{self.period}/klines/{self.symbol}/{self.interval}/{self.stem}.zip"


def parse_name(path: str | Path) -> Dump:
    """The Dump a file name stands for; a DumpError says why it is not a kline dump.

    >>> parse_name("BTCUSDT-1m-2024-01.zip")
    Dump(symbol='BTCUSDT', interval='1m', year=2024, month=1, day=None)
    """
    name = Path(path).name
    m = _NAME.match(name)
    if not m:
        raise DumpError(
            f"{name}: not a kline dump name (expected SYMBOL-INTERVAL-YYYY-MM.zip or "
            "SYMBOL-INTERVAL-YYYY-MM-DD.zip, or .csv)"
        )
    symbol, interval, year, month, day = m.group(1, 2, 3, 4, 5)
    if interval not in INTERVAL_MS:
        raise DumpError(f"{name}: interval {interval!r} is not stored here; use one of {', '.join(INTERVAL_MS)}")
    try:
        dump = Dump(symbol, interval, int(year), int(month), None if day is None else int(day))
        dump.start  # noqa: B018 - validates the date
    except ValueError:
        raise DumpError(f"{name}: {year}-{month}{'-' + day if day else ''} is not a date") from None
    return dump


def market_of(path: str | Path) -> str | None:
    """``spot``, ``futures/um`` or ``futures/cm`` when the path has the site's layout, else None."""
    parts = Path(path).parts
    for i in range(len(parts) - 1):
        if parts[i] == "data" and parts[i + 1] == "spot":
            return "spot"
        if parts[i] == "data" and parts[i + 1] == "futures" and i + 2 < len(parts):
            return f"futures/{parts[i + 2]}"
    return None


def parse_checksum(text: str, zip_name: str) -> str:
    """The sha256 hex digest in a ``.CHECKSUM`` file's text (``<hex>  <zip name>``)."""
    fields = text.split()
    if not fields or not re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
        raise DumpError(f"{zip_name}.CHECKSUM: not a sha256 checksum file")
    if len(fields) > 1 and fields[1].lstrip("*") != zip_name:
        raise DumpError(f"{zip_name}.CHECKSUM names {fields[1]}, not {zip_name}")
    return fields[0].lower()


def verify_checksum(data: bytes, expected: str, name: str) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise DumpError(f"{name}: checksum mismatch (CHECKSUM says {expected[:12]}..., file is {got[:12]}...)")


def read_file(path: Path) -> tuple[Dump, pl.DataFrame]:
    """Read one .zip (checksum verified when a ``.CHECKSUM`` is beside it) or .csv dump.

    Returns its Dump and its candles in KLINE_SCHEMA; any problem is a DumpError.
    """
    dump = parse_name(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DumpError(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    if path.suffix == ".zip":
        sums = path.with_name(path.name + ".CHECKSUM")
        if sums.exists():
            verify_checksum(raw, parse_checksum(sums.read_text(errors="replace"), path.name), path.name)
        raw, inner = unzip(raw, path.name)
        if Path(inner).stem != dump.stem:
            # a renamed zip would store one symbol's candles under another's name
            raise DumpError(f"{path.name} holds {inner}, not {dump.stem}.csv: renamed? Import it under its own name")
        source = f"{path.name}:{inner}"
    else:
        source = path.name
    return dump, read_csv(raw, dump, source)


def unzip(data: bytes, name: str) -> tuple[bytes, str]:
    """The one CSV inside a dump zip, and its name."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            if len(members) != 1 or not members[0].filename.lower().endswith(".csv"):
                raise DumpError(f"{name}: expected one CSV inside, found {[m.filename for m in members]}")
            return zf.read(members[0]), members[0].filename
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, DumpError):
            raise
        raise DumpError(f"{name}: unreadable zip ({exc})") from None


def _has_header(data: bytes) -> bool:
    first = data[:64].split(b",", 1)[0]
    return first.strip().lower() in (b"open_time", b"\xef\xbb\xbfopen_time")


def read_csv(data: bytes, dump: Dump, source: str) -> pl.DataFrame:
    """Parse and check one dump CSV (header and time unit detected); KLINE_SCHEMA out.

    Checks every row: 12 fields, numbers where numbers belong, finite values,
    open_time aligned to the interval, within the file's month or day and
    increasing, close_time = open_time + interval - 1 ms (after unit conversion).
    """
    header = _has_header(data)
    try:
        frame = pl.read_csv(data, has_header=False, skip_rows=int(header), new_columns=list(COLUMNS),
                            schema=_TYPES, quote_char=None)
    except Exception:  # noqa: BLE001 - whatever polars says, the exact reader names the line
        frame = None
    if frame is not None and _first_bad(frame, dump) is None:
        return _to_klines(frame, dump)
    frame = _read_exact(data, header, source)  # raises on a malformed field
    bad = _first_bad(frame, dump)
    if bad is not None:
        row, why = bad
        raise DumpError(f"{source} line {frame['_line'][row]}: {why}")
    return _to_klines(frame, dump)


def _read_exact(data: bytes, header: bool, source: str) -> pl.DataFrame:
    """Line-by-line reading (still vectorised) that names the first malformed line.

    Blank lines are skipped (they hold no candle); the frame keeps each row's
    1-based line number in ``_line``.
    """
    lines = data.decode("utf-8", errors="replace").split("\n")
    rows = pl.DataFrame({"text": lines}, schema={"text": pl.String}).with_row_index("_line", offset=1)
    rows = rows.slice(int(header)).with_columns(pl.col("text").str.strip_chars_end("\r"))
    rows = rows.filter(pl.col("text").str.strip_chars() != "")
    split = rows["text"].str.split(",")
    counts = split.list.len()
    wrong = (counts != len(COLUMNS)).arg_true()
    first_bad = int(wrong[0]) if len(wrong) else rows.height
    why = f"expected {len(COLUMNS)} comma-separated fields"
    cols = {"_line": rows["_line"]}
    for i, col in enumerate(COLUMNS):
        text_col = split.list.get(i, null_on_oob=True)
        typed = text_col.cast(_TYPES[col], strict=False)
        bad = (typed.is_null() & text_col.is_not_null()).arg_true()
        if col != "ignore" and len(bad) and int(bad[0]) < first_bad:
            kind = "an integer" if _TYPES[col] == pl.Int64 else "a number"
            first_bad, why = int(bad[0]), f"{col} {text_col[int(bad[0])]!r} is not {kind}"
        cols[col] = typed
    if first_bad < rows.height:
        raise DumpError(f"{source} line {rows['_line'][first_bad]}: {why}")
    return pl.DataFrame(cols)


def _first_bad(frame: pl.DataFrame, dump: Dump) -> tuple[int, str] | None:
    """(row index, reason) of the first row that breaks a rule, or None."""
    if frame.height == 0:
        return None
    step, unit = INTERVAL_MS[dump.interval], _unit(frame)
    start = int(dump.start.replace(tzinfo=dt.UTC).timestamp() * 1000)
    end = int(dump.end.replace(tzinfo=dt.UTC).timestamp() * 1000)
    t, c = pl.col("open_time"), pl.col("close_time")
    ms = t // unit
    rules = [
        (pl.any_horizontal(pl.col(col).is_null() for col in COLUMNS[:-1]), "missing field"),
        (pl.any_horizontal(~pl.col(col).is_finite() for col in _FLOATS), "not a finite number"),
        ((pl.col("count") < 0) | pl.any_horizontal(pl.col(col) < 0 for col in _FLOATS if "volume" in col),
         "negative volume or count"),
        (t % (step * unit) != 0, f"open_time {{}} is not aligned to {dump.interval}"),
        ((ms < start) | (ms >= end), f"open_time {{}} is outside {dump.stem}"
         + (" (mixed time units?)" if unit == 1000 else "")),
        (c // unit != ms + step - 1, "close_time is not open_time + interval - 1 ms"),
        (t <= t.shift(1), "open_time {} is not after the previous row's"),
    ]
    flags = frame.select([rule.fill_null(False).alias(f"r{i}") for i, (rule, _) in enumerate(rules)])
    any_bad = flags.select(pl.any_horizontal(pl.all()).arg_true().first()).item()
    if any_bad is None:
        return None
    row = flags.row(any_bad)
    why = rules[row.index(True)][1]
    return any_bad, why.format(frame["open_time"][any_bad])


def _unit(frame: pl.DataFrame) -> int:
    """1000 for a file in microseconds (judged by its first row), else 1 (milliseconds)."""
    first = frame["open_time"][0] if frame.height else None
    return 1000 if first is not None and first >= MICROS_FROM else 1


def _to_klines(frame: pl.DataFrame, dump: Dump) -> pl.DataFrame:
    step = INTERVAL_MS[dump.interval]
    ms = pl.col("open_time") // _unit(frame)
    return frame.select(
        symbol=pl.lit(dump.symbol),
        interval=pl.lit(dump.interval),
        open_time=(ms * 1000).cast(pl.Datetime("us")),
        close_time=((ms + step - 1) * 1000).cast(pl.Datetime("us")),
        open="open", high="high", low="low", close="close", volume="volume",
        quote_volume="quote_volume", trades="count", taker_buy_volume="taker_buy_volume",
        taker_buy_quote_volume="taker_buy_quote_volume",
    ).cast(KLINE_SCHEMA)


# --------------------------------------------------------------------------- download plan


def month_end(year: int, month: int) -> dt.date:
    return dt.date(year, month, calendar.monthrange(year, month)[1])


def plan(symbols: list[str], interval: str, since: dt.date, until: dt.date, today: dt.date) -> list[Dump]:
    """The files covering ``since`` (a month's first day) .. ``until`` (inclusive), as the site has them.

    Whole months that are over by ``until`` come as monthly files; the rest of the
    last month as daily files up to ``until``, which never passes yesterday (a day's
    file appears the day after).
    """
    last = min(until, today - dt.timedelta(days=1))
    out: list[Dump] = []
    for symbol in symbols:
        y, m = since.year, since.month
        while dt.date(y, m, 1) <= last:
            if month_end(y, m) <= last:
                out.append(Dump(symbol, interval, y, m))
            else:
                out.extend(Dump(symbol, interval, y, m, d) for d in range(1, last.day + 1))
            y, m = y + m // 12, m % 12 + 1
    return out


def days_of(dump: Dump, today: dt.date) -> list[Dump]:
    """Daily files standing in for a monthly file not published yet (early in the next month)."""
    last = min(month_end(dump.year, dump.month), today - dt.timedelta(days=1))
    if dump.day is not None or dt.date(dump.year, dump.month, 1) > last:
        return []
    return [dataclasses.replace(dump, day=d) for d in range(1, last.day + 1)]


# --------------------------------------------------------------------------- download


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What became of one file to download."""

    dump: Dump
    status: str  # "ok" (downloaded), "cached" (already here, checksum good), "missing" (404), "failed"
    path: Path | None = None
    detail: str = ""


async def download(
    dumps: list[Dump], base_url: str, market: str, dest: Path, *,
    concurrency: int = 4, retries: int = 3, on_done=None,
) -> list[Fetched]:
    """Fetch ``dumps`` (zip + CHECKSUM, verified) into ``dest`` in the site's layout, a few at a time.

    A file the site does not have (HTTP 404: a symbol listed later, a day not
    published yet) is ``missing``, not an error; a bad checksum or another HTTP
    error is ``failed`` and nothing of it is kept. ``on_done(Fetched)`` is called
    as each finishes (progress bars).
    """
    sem = asyncio.Semaphore(concurrency)
    base = base_url.rstrip("/")
    async with httpx.AsyncClient(timeout=60.0, follow_redirects=True) as client:
        async def one(dump: Dump) -> Fetched:
            async with sem:
                result = await _fetch(client, base, market, dest, dump, retries)
            if on_done is not None:
                on_done(result)
            return result

        return list(await asyncio.gather(*(one(d) for d in dumps)))


async def _get(client: httpx.AsyncClient, url: str, retries: int) -> httpx.Response:
    for attempt in range(retries + 1):
        try:
            resp = await client.get(url)
            if resp.status_code < 500 or attempt == retries:
                return resp
        except httpx.TransportError:
            if attempt == retries:
                raise
        await asyncio.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


async def _fetch(client: httpx.AsyncClient, base: str, market: str, dest: Path, dump: Dump,
                 retries: int) -> Fetched:
    rel = dump.relpath(market)
    target = dest / rel
    sums = target.with_name(target.name + ".CHECKSUM")
    if target.exists() and sums.exists():
        try:
            verify_checksum(target.read_bytes(), parse_checksum(sums.read_text(), target.name), target.name)
            return Fetched(dump, "cached", target)
        except DumpError:
            pass  # a broken earlier download: fetch again
    try:
        got = []
        for url in (f"{base}/{rel}.CHECKSUM", f"{base}/{rel}"):
            resp = await _get(client, url, retries)
            if resp.status_code == 404:
                return Fetched(dump, "missing", None, f"{url}: not on the site (HTTP 404)")
            if resp.status_code != 200:
                return Fetched(dump, "failed", None, f"{url}: HTTP {resp.status_code}")
            got.append(resp.content)
        verify_checksum(got[1], parse_checksum(got[0].decode(errors="replace"), target.name), target.name)
    except httpx.HTTPError as exc:
        return Fetched(dump, "failed", None, f"{base}/{rel}: {type(exc).__name__}: {exc}")
    except DumpError as exc:
        return Fetched(dump, "failed", None, str(exc))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        part.write_bytes(got[1])
        part.replace(target)  # atomic: a half-written zip never carries the final name
        sums.write_bytes(got[0])
    except OSError as exc:
        return Fetched(dump, "failed", None, f"cannot save {target}: {exc.strerror or exc}")
    return Fetched(dump, "ok", target)
