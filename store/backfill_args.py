"""Arguments of ``python -m store.backfill``: declared once, checked before anything runs.

Every bad argument is a ``ValueError`` with one plain sentence (what is wrong, what
is allowed); ``store.backfill.main`` prints it and exits 2.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from market import cli
from market.presets import DEFAULT_PRESET, PRESETS, Preset, custom_preset, get_preset
from market.schema import INTERVAL_MS, interval_ms


PROG = "python -m store.backfill"


@dataclasses.dataclass(frozen=True)
class BackfillConfig:
    """One backfill or repair run."""

    db: Path | None = None
    symbols: tuple[str, ...] = ()
    top: int | None = None  # the N symbols with the highest 24h quote volume
    intervals: tuple[str, ...] = ("1m",)  # empty: every interval the store holds (--repair)
    since_ms: int | None = None
    until_ms: int | None = None  # default: the server's now
    exchange: str = DEFAULT_PRESET
    rest_url: str | None = None
    repair: bool = False
    concurrency: int = 4  # requests in flight; the weight budget paces them
    flush_every: float = 1.0  # seconds between writes to the store
    progress: bool = True

    def preset(self) -> Preset:
        base = get_preset(self.exchange)
        if self.rest_url:
            return custom_preset(base.ws_base, self.rest_url, like=base.name)
        return base


def parse_date(text: str) -> int:
    """``2026-01-01``, ``2026-01-01T12:30``, ``2026-01-01 12:30:00Z`` or with an offset -> epoch ms
    (UTC unless an offset says otherwise)."""
    raw = text.strip()
    try:
        when = dt.datetime.fromisoformat(raw.replace(" ", "T", 1) if " " in raw else raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if not dt.datetime(2000, 1, 1, tzinfo=dt.UTC) <= when <= dt.datetime(2100, 1, 1, tzinfo=dt.UTC):
        raise ValueError(f"{text!r} is out of range; give a date between 2000 and 2100")
    return int(when.timestamp() * 1000)


def parse_symbols(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for raw in text.split(","):
        sym = raw.strip().upper()
        if not sym:
            continue
        if not (sym.isascii() and sym.isalnum() and len(sym) <= 20):
            raise ValueError(f"symbol {raw.strip()!r} is not like BTCUSDT (letters and digits)")
        if sym not in out:
            out.append(sym)
    if not out:
        raise ValueError("--symbols is empty; give a comma-separated list like BTCUSDT,ETHUSDT")
    return tuple(out)


def parse_args(argv: list[str] | None = None) -> BackfillConfig:
    p = cli.ArgumentParser(prog=PROG, description="Backfill or repair kline history over REST.")
    p.add_argument("--db", type=Path, help="database file (default: $MARKET_DB or store/market.duckdb)")
    p.add_argument("--symbols", help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    p.add_argument("--top", help="the N symbols with the highest 24h quote volume (one ticker/24hr call)")
    p.add_argument("--interval", default=None, help="1m (default), 5m, 1h, ...; comma-separated for several")
    p.add_argument("--since", help="first candle wanted, UTC: YYYY-MM-DD[THH:MM]")
    p.add_argument("--until", help="end of the wanted window (exclusive), UTC; default: now")
    p.add_argument("--exchange", default=DEFAULT_PRESET, help=f"preset: {', '.join(PRESETS)}")
    p.add_argument("--rest-url", help="REST base, e.g. https://fapi.binance.com (limits of --exchange)")
    p.add_argument("--repair", action="store_true",
                   help="fetch exactly the holes of every stored series (or of --symbols/--interval)")
    p.add_argument("--concurrency", default="4", help="requests in flight (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)

    symbols = parse_symbols(a.symbols) if a.symbols is not None else ()
    top = None
    if a.top is not None:
        if symbols:
            raise ValueError("give --symbols or --top, not both")
        if not a.top.strip().isdigit() or not 1 <= int(a.top) <= 1000:
            raise ValueError(f"--top must be a whole number from 1 to 1000, got {a.top!r}")
        top = int(a.top)
    if not a.repair and not symbols and top is None:
        raise ValueError("say which symbols: --symbols A,B or --top N (or --repair for every stored series)")
    if not a.repair and a.since is None:
        raise ValueError("--since DATE is required (the first candle wanted, e.g. --since 2026-01-01)")
    # --repair without --interval: every interval the store holds (decided once it is read)
    intervals: tuple[str, ...] = () if a.repair else ("1m",)
    if a.interval is not None:
        intervals = tuple(dict.fromkeys(i.strip() for i in a.interval.split(",") if i.strip()))
        if not intervals:
            raise ValueError(f"--interval is empty; use one of {', '.join(INTERVAL_MS)}")
        for i in intervals:
            interval_ms(i)  # ValueError naming the valid ones
    since = parse_date(a.since) if a.since is not None else None
    until = parse_date(a.until) if a.until is not None else None
    if until is not None and since is None:
        raise ValueError("--until needs --since")
    if since is not None and until is not None and until <= since:
        raise ValueError(f"--until ({a.until}) must be after --since ({a.since})")
    if not a.concurrency.strip().isdigit() or not 1 <= int(a.concurrency) <= 64:
        raise ValueError(f"--concurrency must be a whole number from 1 to 64, got {a.concurrency!r}")
    config = BackfillConfig(
        db=a.db, symbols=symbols, top=top, intervals=intervals, since_ms=since, until_ms=until,
        exchange=a.exchange, rest_url=a.rest_url, repair=a.repair, concurrency=int(a.concurrency),
        progress=not a.no_progress)
    config.preset()  # unknown preset, bad URL: ValueError now, before any file or network
    return config
