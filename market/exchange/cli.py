"""``python -m market.exchange``: the local exchange as a command.

Prints one JSON line (ws and rest bases, port) once it listens, serves until SIGINT
or SIGTERM, then exits 0. A bad argument: one plain line on stderr and exit 2; a
port it cannot listen on: one plain line and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import re
import signal
import sys

from market.exchange.config import ExchangeConfig, read_recording
from market.exchange.limits import parse_window
from market.exchange.server import LocalExchange
from market.schema import INTERVAL_MS
from market.synthetic import DEFAULT_SYMBOLS

PROG = "python -m market.exchange"
_SYMBOL = re.compile(r"[A-Z0-9]{1,20}")


class UsageError(Exception):
    """A bad command line, in one plain line (control characters of the input escaped)."""

    def __init__(self, message: str) -> None:
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the usage and exit itself
        raise UsageError(message)


def _number(kind: type, what: str, lo: float, hi: float | None = None):
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; {what}") from None
        if math.isnan(value) or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; {what}")
        return value
    return convert


def _every(text: str) -> int:
    """A period of the 250 ms sim clock that divides a minute."""
    value = _number(int, "use a multiple of 250 that divides 60000, e.g. 250, 1000, 2000", 250, 60_000)(text)
    if value % 250 or 60_000 % value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a multiple of 250 that divides 60000; "
                                         "use e.g. 250, 500, 1000, 2000, 5000")
    return value


def _parser() -> _Parser:
    ap = _Parser(prog=PROG, description="A local Binance-compatible exchange (WebSocket streams, "
                 "REST and kline dumps on one port).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=_number(int, "use 0 (any free port) to 65535", 0, 65535), default=8765)
    ap.add_argument("--symbols", default="50", help=f"a count (1-{len(DEFAULT_SYMBOLS)}) of the default list, or A,B,...")
    ap.add_argument("--interval", default="1m", choices=list(INTERVAL_MS), metavar="INTERVAL")
    ap.add_argument("--speed", type=_number(float, "use a number >= 0 (0 or inf: as fast as clients read)", 0),
                    default=1.0)
    ap.add_argument("--replay", default=None, help="replay a recording (fixtures format) instead")
    ap.add_argument("--no-loop", action="store_true", help="replay once")
    ap.add_argument("--seed", type=_number(int, "use an integer >= 0", 0), default=0)
    ap.add_argument("--history-minutes", type=_number(int, "use 0 to 5256000 (ten years)", 0, 3650 * 1440),
                    default=3 * 1440)
    ap.add_argument("--history-days", type=_number(float, "use 0 to 3650 days (ten years)", 0, 3650), default=None,
                    help="days of REST history and dumps (overrides --history-minutes)")
    ap.add_argument("--kline-ms", type=_every, default=250,
                    help="ms between forming-candle updates (Binance futures 250, spot 1000-2000)")
    ap.add_argument("--ticker-ms", type=_every, default=1000, help="ms between 24h ticker updates")
    ap.add_argument("--enforce-weights", action="store_true",
                    help="answer 429 over the REST weight budget and 418 to requests during Retry-After")
    ap.add_argument("--futures-weight-limit", type=_number(int, "use an integer >= 1", 1), default=2400)
    ap.add_argument("--spot-weight-limit", type=_number(int, "use an integer >= 1", 1), default=6000)
    ap.add_argument("--weight-window", default="1m", help="the budget's window: 1m, 10s, 1h, ...")
    ap.add_argument("--ban-seconds", type=_number(float, "use a number of seconds >= 0", 0), default=120.0)
    return ap


def parse_args(argv: list[str]) -> ExchangeConfig:
    """The configuration a command line asks for; UsageError (one plain line) if it is bad."""
    args = _parser().parse_args(argv)
    text = args.symbols.strip()
    symbols: int | tuple[str, ...]
    if text.isdigit():
        symbols = int(text)
        if not 1 <= symbols <= len(DEFAULT_SYMBOLS):
            raise UsageError(f"argument --symbols: {text} is out of range; use 1-{len(DEFAULT_SYMBOLS)} or A,B,...")
    else:
        symbols = tuple(s.strip().upper() for s in text.split(",") if s.strip())
        bad = [s for s in symbols if not _SYMBOL.fullmatch(s)]
        if not symbols or bad:
            raise UsageError(f"argument --symbols: {args.symbols!r} names no valid symbol; "
                             "use a count or symbols like BTCUSDT,ETHUSDT")
    try:
        parse_window(args.weight_window)
    except ValueError as exc:
        raise UsageError(f"argument --weight-window: {exc}") from None
    if args.replay is not None:
        try:
            read_recording(args.replay)
        except (OSError, UnicodeDecodeError, IndexError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a recording"
            raise UsageError(f"argument --replay: cannot read {args.replay!r} ({reason}); "
                             "give a recording in the fixtures format") from None
    try:
        return ExchangeConfig(
            host=args.host, port=args.port, symbols=symbols, interval=args.interval, speed=args.speed,
            seed=args.seed, replay=args.replay, loop=not args.no_loop, history_minutes=args.history_minutes,
            history_days=args.history_days, enforce_weights=args.enforce_weights,
            futures_weight_limit=args.futures_weight_limit, spot_weight_limit=args.spot_weight_limit,
            weight_window=args.weight_window, ban_seconds=args.ban_seconds, kline_ms=args.kline_ms,
            ticker_ms=args.ticker_ms)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM, then exit 0 (2: bad argument, 1: cannot listen)."""
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(_serve_until_signal(config))
    except OSError as exc:
        print(f"{PROG}: error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0


async def _serve_until_signal(config: ExchangeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LocalExchange(config) as ex:
        print(json.dumps({"ws": ex.ws_base, "rest": ex.rest_base, "port": ex.port,
                          "symbols": len(config.symbols), "speed": config.speed}), flush=True)
        await stop.wait()


if __name__ == "__main__":
    sys.exit(main())
