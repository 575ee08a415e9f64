"""Binance's wire format, as the local exchange writes it (kline and ticker frames,
REST rows). It plays Binance, so it must not import our parser (market/binance.py)."""

from __future__ import annotations

import numpy as np
import polars as pl

from market.synthetic import Candle, SymbolSpec


def fixed(units: int, decimals: int) -> str:
    """``units`` * 10^-decimals as an exact decimal string ("12.3400")."""
    if decimals == 0:
        return str(units)
    sign, digits = ("-", str(-units)) if units < 0 else ("", str(units))
    digits = digits.rjust(decimals + 1, "0")
    return f"{sign}{digits[:-decimals]}.{digits[-decimals:]}"


def fixed_series(units: np.ndarray, decimals: int) -> pl.Series:
    """``fixed`` for a whole column of non-negative units, as a polars String column."""
    text = pl.Series(units, dtype=pl.Int64).cast(pl.String)
    if decimals == 0:
        return text
    text = text.str.zfill(decimals + 1)
    return text.str.head(-decimals) + "." + text.str.tail(decimals)


def fixed_list(units: np.ndarray, decimals: int) -> list[str]:
    """``fixed`` for a whole column of non-negative units."""
    return fixed_series(units, decimals).to_list()


def rest_rows(spec: SymbolSpec, cols: dict[str, np.ndarray], interval_ms: int) -> list[list]:
    """REST klines rows of closed candles given as columns (``SyntheticMarket.closed``)."""
    pd, qd, sd = spec.price_decimals, spec.qty_decimals, spec.quote_decimals
    opens = cols["open_time"].tolist()
    return [list(row) for row in zip(
        opens, fixed_list(cols["o"], pd), fixed_list(cols["h"], pd), fixed_list(cols["l"], pd),
        fixed_list(cols["c"], pd), fixed_list(cols["v"], qd), [t + interval_ms - 1 for t in opens],
        fixed_list(cols["q"], sd), cols["n"].tolist(), fixed_list(cols["bv"], qd), fixed_list(cols["bq"], sd),
        ["0"] * len(opens))]


def kline_data(spec: SymbolSpec, interval: str, k: Candle, event_ms: int, final: bool) -> str:
    """The ``data`` object of a futures ``<sym>@kline_<interval>`` frame, as JSON text."""
    pd, qd, sd = spec.price_decimals, spec.qty_decimals, spec.quote_decimals
    s = spec.symbol
    return (
        f'{{"e":"kline","E":{event_ms},"s":"{s}","k":{{"t":{k.open_time},"T":{k.close_time},'
        f'"s":"{s}","i":"{interval}","f":{k.first_id},"L":{k.last_id},"o":"{fixed(k.o, pd)}",'
        f'"c":"{fixed(k.c, pd)}","h":"{fixed(k.h, pd)}","l":"{fixed(k.l, pd)}","v":"{fixed(k.v, qd)}",'
        f'"n":{k.n},"x":{"true" if final else "false"},"q":"{fixed(k.q, sd)}","V":"{fixed(k.bv, qd)}",'
        f'"Q":"{fixed(k.bq, sd)}","B":"0"}}}}'
    )


def ticker_data(spec: SymbolSpec, w: Candle, event_ms: int) -> str:
    """The ``data`` object of a futures ``<sym>@ticker`` (24hrTicker) frame."""
    pd, qd, sd = spec.price_decimals, spec.qty_decimals, spec.quote_decimals
    s = spec.symbol
    avg = w.q / w.v / 10**pd if w.v else w.c / 10**pd
    return (
        f'{{"e":"24hrTicker","E":{event_ms},"s":"{s}","p":"{fixed(w.c - w.o, pd)}",'
        f'"P":"{100 * (w.c - w.o) / w.o:.3f}","w":"{avg:.{pd}f}","c":"{fixed(w.c, pd)}",'
        f'"Q":"{fixed(w.last_qty, qd)}","o":"{fixed(w.o, pd)}","h":"{fixed(w.h, pd)}",'
        f'"l":"{fixed(w.l, pd)}","v":"{fixed(w.v, qd)}","q":"{fixed(w.q, sd)}",'
        f'"O":{w.open_time},"C":{w.close_time},"F":{w.first_id},"L":{w.last_id},"n":{w.n}}}'
    )


def rest_row(spec: SymbolSpec, k: Candle) -> list:
    """One REST klines row, exactly as Binance prints it."""
    pd, qd, sd = spec.price_decimals, spec.qty_decimals, spec.quote_decimals
    return [k.open_time, fixed(k.o, pd), fixed(k.h, pd), fixed(k.l, pd), fixed(k.c, pd),
            fixed(k.v, qd), k.close_time, fixed(k.q, sd), k.n, fixed(k.bv, qd),
            fixed(k.bq, sd), "0"]


def ticker_24hr(spec: SymbolSpec, w: Candle, futures: bool) -> dict:
    """One ``ticker/24hr`` entry, Binance's field names, e.g. (futures)::

        {"symbol": "BTCUSDT", "priceChange": "-94.99", "priceChangePercent": "-0.140",
         "weightedAvgPrice": "68012.31", "lastPrice": "67905.01", "lastQty": "0.012", ...
         "openTime": 1699913640000, "closeTime": 1700000040000, "firstId": 28385,
         "lastId": 28460, "count": 76}
    """
    pd, qd, sd = spec.price_decimals, spec.qty_decimals, spec.quote_decimals
    avg = w.q / w.v / 10**pd if w.v else w.c / 10**pd
    out = {"symbol": spec.symbol, "priceChange": fixed(w.c - w.o, pd),
           "priceChangePercent": f"{100 * (w.c - w.o) / w.o:.3f}", "weightedAvgPrice": f"{avg:.{pd}f}",
           "lastPrice": fixed(w.c, pd), "lastQty": fixed(w.last_qty, qd)}
    if not futures:  # spot also reports the book's top; one tick either side of the last price
        out |= {"prevClosePrice": fixed(w.o, pd), "bidPrice": fixed(max(1, w.c - 1), pd), "bidQty": fixed(1, qd),
                "askPrice": fixed(w.c + 1, pd), "askQty": fixed(1, qd)}
    return out | {"openPrice": fixed(w.o, pd), "highPrice": fixed(w.h, pd), "lowPrice": fixed(w.l, pd),
                  "volume": fixed(w.v, qd), "quoteVolume": fixed(w.q, sd), "openTime": w.open_time,
                  "closeTime": w.close_time, "firstId": w.first_id, "lastId": w.last_id, "count": w.n}


def symbol_info(spec: SymbolSpec, futures: bool) -> dict:
    """One ``exchangeInfo`` symbol: status, assets, precisions and tick/lot filters."""
    base = spec.symbol.removesuffix("USDT")
    filters = [{"filterType": "PRICE_FILTER", "tickSize": fixed(1, spec.price_decimals),
                "minPrice": fixed(1, spec.price_decimals), "maxPrice": "1000000"},
               {"filterType": "LOT_SIZE", "stepSize": fixed(1, spec.qty_decimals),
                "minQty": fixed(1, spec.qty_decimals), "maxQty": "10000000"}]
    if futures:
        return {"symbol": spec.symbol, "pair": spec.symbol, "contractType": "PERPETUAL", "status": "TRADING",
                "baseAsset": base, "quoteAsset": "USDT", "marginAsset": "USDT",
                "pricePrecision": spec.price_decimals, "quantityPrecision": spec.qty_decimals,
                "baseAssetPrecision": 8, "quotePrecision": 8, "filters": filters}
    return {"symbol": spec.symbol, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
            "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8, "filters": filters}
