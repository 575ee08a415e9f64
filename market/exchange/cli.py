"""``python -m market.exchange``: the local exchange as a command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from market.exchange.config import ExchangeConfig
from market.exchange.server import LocalExchange


def main(argv: list[str] | None = None) -> int:
    """``python -m market.exchange``: serve until SIGINT/SIGTERM, then exit 0."""
    ap = argparse.ArgumentParser(prog="python -m market.exchange", description="A local Binance-compatible exchange (WebSocket streams and REST on one port).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    ap.add_argument("--symbols", default="50", help="a count of the default list, or A,B,...")
    ap.add_argument("--interval", default="1m")
    ap.add_argument("--speed", type=float, default=1.0, help="sim speed; 0 or inf: as fast as possible")
    ap.add_argument("--replay", default=None, help="replay a recording (fixtures format) instead")
    ap.add_argument("--no-loop", action="store_true", help="replay once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--history-minutes", type=int, default=3 * 1440)
    args = ap.parse_args(argv)
    symbols: int | tuple[str, ...] = (int(args.symbols) if args.symbols.isdigit()
                                      else tuple(s for s in args.symbols.split(",") if s))
    config = ExchangeConfig(host=args.host, port=args.port, symbols=symbols, interval=args.interval,
                            speed=args.speed, seed=args.seed, replay=args.replay, loop=not args.no_loop,
                            history_minutes=args.history_minutes)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve_until_signal(config))
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
