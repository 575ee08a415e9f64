"""The synthetic market's symbols: price level, volatility and turnover of each.

The table holds the ~50 most traded USD-M futures pairs at plausible 2024-2026 levels;
any other symbol gets a deterministic made-up spec, so tests can invent symbols.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class SymbolSpec:
    """How one synthetic symbol trades: price level, volatility and turnover."""

    symbol: str
    price: float  # starting price
    sigma: float  # per-minute log-return std in a calm market
    daily_quote: float  # quote (USDT) volume per day
    rho: float = 0.6  # correlation with the market factor

    @cached_property
    def price_decimals(self) -> int:
        return int(min(7, max(1, 5 - math.floor(math.log10(self.price)))))

    @cached_property
    def qty_decimals(self) -> int:
        return int(min(3, max(0, round(math.log10(self.price)) - 1)))

    @cached_property
    def quote_decimals(self) -> int:
        return self.price_decimals + self.qty_decimals


# (symbol, price, per-minute sigma in %, daily quote volume in M USDT)
_TABLE = """
BTCUSDT 68000 .08 15000|ETHUSDT 3200 .11 8000|SOLUSDT 150 .16 2500|XRPUSDT 0.55 .15 1500
DOGEUSDT 0.12 .18 1200|BNBUSDT 580 .10 600|ADAUSDT 0.45 .16 400|1000PEPEUSDT 0.011 .25 600
SUIUSDT 1.2 .22 700|LINKUSDT 14 .17 400|AVAXUSDT 30 .18 350|LTCUSDT 80 .14 300
BCHUSDT 400 .15 300|DOTUSDT 6.5 .16 200|TRXUSDT 0.12 .09 150|NEARUSDT 5 .19 250
UNIUSDT 8 .18 200|APTUSDT 8 .20 200|ARBUSDT 0.8 .20 200|OPUSDT 1.8 .20 150
ATOMUSDT 7 .17 120|FILUSDT 4.5 .19 150|ETCUSDT 25 .16 150|INJUSDT 22 .22 150
SEIUSDT 0.4 .24 120|TIAUSDT 6 .24 120|WIFUSDT 2 .30 400|1000SHIBUSDT 0.018 .18 150
1000BONKUSDT 0.025 .28 200|ORDIUSDT 35 .28 200|AAVEUSDT 150 .18 300|MKRUSDT 2200 .17 80
LDOUSDT 1.8 .21 120|FETUSDT 1.3 .24 250|RENDERUSDT 7 .23 150|TAOUSDT 350 .26 200
ENAUSDT 0.6 .26 400|WLDUSDT 2.5 .26 300|STXUSDT 1.8 .22 80|ICPUSDT 9 .20 100
HBARUSDT 0.08 .19 200|XLMUSDT 0.1 .15 150|ALGOUSDT 0.15 .18 80|GALAUSDT 0.03 .22 80
SANDUSDT 0.4 .20 80|CRVUSDT 0.4 .24 150|DYDXUSDT 1.5 .24 80|JUPUSDT 0.9 .25 120
PENDLEUSDT 4 .26 100|ONDOUSDT 1.0 .25 200
"""


def _parse_table() -> tuple[SymbolSpec, ...]:
    specs = []
    for item in _TABLE.replace("\n", "|").split("|"):
        if item.strip():
            sym, price, sigma, vol = item.split()
            rho = {"BTCUSDT": 0.95, "ETHUSDT": 0.85}.get(sym, 0.6)
            specs.append(SymbolSpec(sym, float(price), float(sigma) / 100, float(vol) * 1e6, rho))
    return tuple(specs)


DEFAULT_SPECS: tuple[SymbolSpec, ...] = _parse_table()
DEFAULT_SYMBOLS: tuple[str, ...] = tuple(s.symbol for s in DEFAULT_SPECS)


def spec_for(symbol: str) -> SymbolSpec:
    """The table's spec, or a deterministic made-up one for an unknown symbol."""
    for spec in DEFAULT_SPECS:
        if spec.symbol == symbol:
            return spec
    h = zlib.crc32(symbol.encode())
    return SymbolSpec(symbol, 10 ** ((h % 4000) / 1000 - 2), 0.002, 50e6)
