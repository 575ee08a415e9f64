"""A local exchange that speaks Binance's public market-data protocol on one port.

For the offline demo, tests (real sockets on 127.0.0.1) and benchmarks. Modules:
server (LocalExchange: lifecycle, history, HTTP routing), streams (WebSockets and the
sim clock), rest (klines, ticker/24hr, exchangeInfo), limits (request weights, 429 /
418), control (fault switches), dumps (the public data site's kline tree), wire
(Binance's wire format), config (ExchangeConfig, stats, recordings), cli
(``python -m market.exchange``). The market itself is market/synthetic.py.
"""

from market.exchange.config import MALFORMED_KINDS, ExchangeConfig, ExchangeStats, read_recording
from market.exchange.server import LocalExchange

__all__ = ["MALFORMED_KINDS", "ExchangeConfig", "ExchangeStats", "LocalExchange", "main", "read_recording"]


def main(argv: list[str] | None = None) -> int:
    """``python -m market.exchange`` (see market.exchange.cli)."""
    from market.exchange.cli import main as run

    return run(argv)
