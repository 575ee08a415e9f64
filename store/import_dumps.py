"""Load Binance public-data kline dumps into the store, all or nothing per file.

    python -m store.import_dumps --db market.duckdb data/futures/um/monthly/klines/BTCUSDT/1m/
    python -m store.import_dumps --exchange binance-spot BTCUSDT-1m-2025-01.zip
    python -m store.import_dumps --download --symbols BTCUSDT,ETHUSDT --interval 1m --since 2025-01

Files are read (checksum, unzip, parse, check: market/dumps.py) two at a time in
worker threads while the main thread writes the previous one, so reading and
writing overlap. Each series (symbol+interval) is written while holding the file,
one transaction per dump file, then its indicators are brought up to date
(store/bulk.py). Exit codes: 0 all loaded, 1 a file was refused (or the database
holds another market), 2 a bad argument.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from market import cli, dumps
from market.presets import DEFAULT_PRESET, PRESETS, Preset, get_preset
from store.bulk import load_klines, prepare, refresh_indicators, session
from store.db import MarketMismatch, StoreError, StoreLocked, resolve_db

DEFAULT_DUMPS_URL = "https://data.binance.vision"


PROG = "python -m store.import_dumps"
BadArgs = cli.UsageError


@dataclasses.dataclass(frozen=True)
class Download:
    symbols: tuple[str, ...]
    interval: str
    since: dt.date
    until: dt.date
    url: str
    market: str  # the site's folder: spot or futures/um
    dest: Path
    concurrency: int = 4


@dataclasses.dataclass(frozen=True)
class Args:
    db: Path
    preset: Preset
    paths: tuple[Path, ...]
    download: Download | None
    progress: bool = True


@dataclasses.dataclass
class FileReport:
    path: Path
    rows: int = 0
    replaced: int = 0
    changed: int = 0
    error: str | None = None


def _month(text: str, flag: str) -> dt.date:
    if not re.fullmatch(r"\d{4}-\d{2}", text or ""):
        raise BadArgs(f"{flag} must be YYYY-MM (e.g. 2024-01), got {text!r}")
    try:
        return dt.date(int(text[:4]), int(text[5:]), 1)
    except ValueError:
        raise BadArgs(f"{flag} {text!r} is not a month") from None


def parse_args(argv: list[str] | None = None, today: dt.date | None = None) -> Args:
    """Validated arguments; a BadArgs says what is wrong in one line."""
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help=".zip or .csv dumps, or folders of them")
    p.add_argument("--db", type=Path, help="database file (default: $MARKET_DB or store/market.duckdb)")
    p.add_argument("--exchange", help=f"the files' market, a preset: {', '.join(PRESETS)} (default {DEFAULT_PRESET})")
    p.add_argument("--download", action="store_true", help="fetch dumps from the public data site first")
    p.add_argument("--symbols", type=cli.symbols, help="with --download: comma-separated, e.g. BTCUSDT,ETHUSDT")
    p.add_argument("--interval", type=cli.interval, help="with --download: candle interval (default 1m)")
    p.add_argument("--since", help="with --download: first month, YYYY-MM")
    p.add_argument("--until", help="with --download: last month or day, YYYY-MM[-DD] (default: yesterday)")
    p.add_argument("--dumps-url", help=f"with --download: site base (default {DEFAULT_DUMPS_URL})")
    p.add_argument("--market", choices=sorted(dumps.MARKETS), help="with --download: site market (default: from --exchange)")
    p.add_argument("--dest", type=Path, help="with --download: folder for the files (default: dumps/ beside the database)")
    p.add_argument("--concurrency", type=cli.integer(1, 32), default=4, help="with --download: files fetched at once")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    if a.market and a.exchange is None:
        a.exchange = "binance-spot" if a.market == "spot" else "binance-futures"
    try:
        preset = get_preset(a.exchange or DEFAULT_PRESET)
    except ValueError as exc:
        raise BadArgs(str(exc)) from None
    site_market = "spot" if preset.spot else "futures/um"
    if a.market and dumps.MARKETS[a.market] != site_market:
        raise BadArgs(f"--market {a.market} does not match --exchange {preset.name}; "
                      f"use --exchange {'binance-spot' if a.market == 'spot' else 'binance-futures'}")
    db = resolve_db(a.db)
    for path in a.paths:
        if not path.exists():
            raise BadArgs(f"{str(path)!r}: no such file or folder")
    extra = [f for f in ("symbols", "interval", "since", "until", "dumps_url", "market", "dest")
             if getattr(a, f) is not None]
    download = None
    if not a.download:
        if extra:
            raise BadArgs(f"--{extra[0].replace('_', '-')} goes with --download")
        if not a.paths:
            raise BadArgs("give dump files or folders to import (PATH ...), or --download --symbols A,B --since YYYY-MM")
    else:
        if not a.symbols or not a.since:
            raise BadArgs("--download needs --symbols A,B and --since YYYY-MM")
        symbols, interval = a.symbols, a.interval or "1m"
        since = _month(a.since, "--since")
        today = today or dt.datetime.now(dt.UTC).date()
        yesterday = today - dt.timedelta(days=1)
        if a.until is None:
            until = yesterday
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", a.until):
            try:
                until = dt.date.fromisoformat(a.until)
            except ValueError:
                raise BadArgs(f"--until {a.until!r} is not a date") from None
        else:
            m = _month(a.until, "--until")
            until = dumps.month_end(m.year, m.month)
        if since > min(until, yesterday):
            raise BadArgs(f"--since {a.since} is after the last day to fetch ({min(until, yesterday)}): nothing to download")
        url = (a.dumps_url or DEFAULT_DUMPS_URL).rstrip("/")
        if not re.match(r"https?://[^/]+", url):
            raise BadArgs(f"--dumps-url must start with http:// or https://, got {a.dumps_url!r}")
        dest = a.dest or db.parent / "dumps"
        if dest.exists() and not dest.is_dir():
            raise BadArgs(f"--dest {str(dest)!r} is a file; give a folder for the downloaded dumps")
        download = Download(symbols, interval, since, until, url, site_market, dest, a.concurrency)
    return Args(db, preset, tuple(a.paths), download, not a.no_progress)


def collect(paths: tuple[Path, ...] | list[Path]) -> list[Path]:
    """The files to import: given files as they are (a .CHECKSUM is read beside its zip, so
    ``dir/*`` works), folders searched for .zip and .csv."""
    out: dict[Path, Path] = {}  # resolved -> as found, so a file named twice loads once
    for path in paths:
        found = [f for f in sorted(path.rglob("*")) if f.is_file() and f.suffix.lower() in (".zip", ".csv")] \
            if path.is_dir() else [] if path.name.endswith(".CHECKSUM") else [path]  # read beside its zip
        for f in found:
            out.setdefault(f.resolve(), f)
    return list(out.values())


def check_market(path: Path, preset: Preset) -> None:
    """Refuse a file whose place in the site's layout says it is another market's."""
    market = dumps.market_of(path.resolve())
    if market is None or market == ("spot" if preset.spot else "futures/um"):
        return
    if market == "spot":
        raise dumps.DumpError(f"{path.name}: a spot dump (its path says data/spot/), but --exchange is "
                              f"{preset.name}; import it with --exchange binance-spot into a spot database")
    if market == "futures/um":
        raise dumps.DumpError(f"{path.name}: a USD-M futures dump (data/futures/um/), but --exchange is "
                              f"{preset.name}; import it with --exchange binance-futures")
    raise dumps.DumpError(f"{path.name}: a {market} dump; only USD-M futures (futures/um) and spot are supported")


@dataclasses.dataclass
class Imported:
    reports: list[FileReport]  # one per file, in the order given
    lines: list[str]  # one per series: indicators written, or why not
    failed_series: int = 0  # series whose indicators could not be refreshed


def import_files(files: list[Path], db: Path, preset: Preset, *, progress: bool = True,
                 workers: int = 2, indicators: bool = True, timeout: float = 30.0) -> Imported:
    """Import ``files``, one series (symbol+interval) at a time, each file all or nothing.

    ``indicators=False`` skips the indicator refresh (the benchmark times it apart);
    ``timeout``: seconds to wait for the file while another process holds it.
    """
    reports = {f: FileReport(f) for f in files}
    series: dict[tuple[str, str], list[tuple[dumps.Dump, Path]]] = collections.defaultdict(list)
    for f in files:
        try:
            dump = dumps.parse_name(f)
            check_market(f, preset)
            series[(dump.symbol, dump.interval)].append((dump, f))
        except dumps.DumpError as exc:
            reports[f].error = str(exc)
    out = Imported([], [])
    ordered = [(key, [p for _, p in sorted(items, key=lambda it: (*_key(it[0]), str(it[1])))])
               for key, items in sorted(series.items())]
    queue = [path for _, paths in ordered for path in paths]
    sizes = {p: p.stat().st_size for p in queue}
    bar = tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="import", file=sys.stderr,
               disable=not progress)
    with ThreadPoolExecutor(workers) as pool:
        futures: dict[Path, Future] = {}

        def next_frame(path: Path):
            # Reading runs ahead in the pool, in a bounded window (parsed files wait in memory).
            while queue and len(futures) < workers + 2:
                ahead = queue.pop(0)
                futures[ahead] = pool.submit(dumps.read_file, ahead)
            try:
                return futures.pop(path).result()[1]
            except dumps.DumpError as exc:
                reports[path].error = str(exc)
            except Exception as exc:  # noqa: BLE001 - refuse the file, keep going
                reports[path].error = f"{path.name}: unreadable ({type(exc).__name__}: {exc})"
            return None

        for (symbol, interval), paths in ordered:
            since, started, done = None, time.perf_counter(), set()
            try:
                with session(db, preset.market, timeout=timeout) as con:
                    for path in paths:
                        frame = next_frame(path)
                        if frame is not None:
                            reports[path].replaced, reports[path].changed = load_klines(con, frame)
                            reports[path].rows = frame.height
                            if frame.height:
                                since = frame["open_time"][0] if since is None else min(since, frame["open_time"][0])
                        done.add(path)
                        bar.update(sizes[path])
                    if since is not None and indicators:
                        written = refresh_indicators(con, symbol, interval, since)
                        out.lines.append(f"indicators {symbol} {interval}: {written:,} rows written "
                                         f"({time.perf_counter() - started:.2f} s with its candles)")
            except MarketMismatch:
                raise
            except StoreError as exc:
                for path in paths:
                    if path not in done:
                        reports[path].error = f"{path.name}: not stored: {exc}"
                        future = futures.pop(path, None)
                        if future is not None:
                            future.cancel()
                        elif path in queue:
                            queue.remove(path)
                        bar.update(sizes[path])
                if since is not None:
                    out.failed_series += 1
                    out.lines.append(f"indicators {symbol} {interval}: NOT refreshed ({exc}); "
                                     "import the same files again to retry")
    bar.close()
    out.reports = [reports[f] for f in files]
    return out


def _key(d: dumps.Dump) -> tuple[int, int, int]:
    return d.year, d.month, d.day or 0


def fetch(d: Download, today: dt.date, progress: bool) -> tuple[list[Path], list[str], int, list[FileReport]]:
    """Download ``d``'s files; returns the files to import, notes on missing ones, their count, failures."""
    wanted = dumps.plan(list(d.symbols), d.interval, d.since, d.until, today)
    bar = tqdm(total=len(wanted), unit="file", desc="download", file=sys.stderr, disable=not progress)
    got = asyncio.run(dumps.download(wanted, d.url, d.market, d.dest, concurrency=d.concurrency,
                                     on_done=lambda _: bar.update()))
    # The last month's monthly file appears a few days into the next: its days stand in,
    # for symbols the site knows (some other file of theirs came, or none was asked for).
    last_month = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    known = {f.dump.symbol for f in got if f.status != "missing"}
    asked_days = {f.dump.symbol for f in got if f.dump.day is not None}
    late = [f for f in got if f.status == "missing" and f.dump.day is None
            and dt.date(f.dump.year, f.dump.month, 1) == last_month
            and (f.dump.symbol in known or f.dump.symbol not in asked_days)]
    stand_ins = [day for f in late for day in dumps.days_of(f.dump, today)]
    if stand_ins:
        bar.total += len(stand_ins)
        got = [f for f in got if f not in late]
        got += asyncio.run(dumps.download(stand_ins, d.url, d.market, d.dest, concurrency=d.concurrency,
                                          on_done=lambda _: bar.update()))
    bar.close()
    files = [f.path for f in got if f.status in ("ok", "cached")]
    by_series: dict[tuple[str, str], list[dumps.Dump]] = collections.defaultdict(list)
    for f in got:
        if f.status == "missing":
            by_series[(f.dump.symbol, f.dump.interval)].append(f.dump)
    missing = [f"missing  {sym} {interval}: {len(ds)} file(s) not on the site (HTTP 404): "
               f"{min(ds, key=_key).stem} .. {max(ds, key=_key).stem}" for (sym, interval), ds in by_series.items()]
    failed = [FileReport(d.dest / f.dump.relpath(d.market), error=f.detail) for f in got if f.status == "failed"]
    return files, missing, sum(map(len, by_series.values())), failed


def main(argv: list[str] | None = None, today: dt.date | None = None) -> int:
    try:
        args = parse_args(argv, today)
    except BadArgs as exc:
        print(cli.usage_line(PROG, exc), file=sys.stderr)
        return 2
    try:
        prepare(args.db, args.preset.market)  # before any download: a wrong file fails fast
    except (MarketMismatch, StoreLocked) as exc:  # the right file, of another market or busy
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:  # not a database, a folder, not writable: a bad --db
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    files, notes, n_missing, failed = collect(args.paths), [], 0, []
    if args.paths and not files and not args.download:
        print(f"error: no kline dumps (.zip or .csv) in {', '.join(map(str, args.paths))}; nothing imported",
              file=sys.stderr)
        return 1
    if args.download:
        got, notes, n_missing, failed = fetch(args.download, today or dt.datetime.now(dt.UTC).date(), args.progress)
        files += [f for f in got if f not in files]
    try:
        result = import_files(files, args.db, args.preset, progress=args.progress)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    reports, lines = result.reports + failed, result.lines
    for r in reports:
        if r.error is None:
            print(f"loaded   {r.path}: {r.rows:,} rows, {r.replaced:,} replaced ({r.changed:,} changed)")
        else:
            print(f"REFUSED  {r.path}: {r.error}")
    for line in notes + lines:
        print(line)
    refused = sum(r.error is not None for r in reports)
    rows = sum(r.rows for r in reports)
    seconds = time.perf_counter() - started
    print(f"{len(reports) - refused} files loaded ({rows:,} rows, {sum(r.replaced for r in reports):,} replaced), "
          f"{refused} refused, " + (f"{n_missing} missing at the site, " if args.download else "")
          + f"in {seconds:.1f} s into {args.db}")
    return 1 if refused or result.failed_series else 0


if __name__ == "__main__":
    sys.exit(main())
