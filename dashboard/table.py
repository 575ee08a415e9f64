"""The signal table: one row per symbol, sortable and filterable, numbers formatted by magnitude.

Prices show the decimals the symbol's prices have (its tick: BTC 97,123.4, PEPE
0.0000123), volumes a suffix (1.2B, 340M). The cells keep the numbers, so sorting
and the ``>=`` header filters work on values; formatting happens in the browser
with Bokeh ``HTMLTemplateFormatter`` templates that mirror :func:`format_price`
and :func:`format_volume` (tested against each other in a real browser).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import polars as pl
from bokeh.models import CategoricalColorMapper, HTMLTemplateFormatter, LinearColorMapper, NumberFormatter, StringFormatter
from bokeh.transform import transform

from dashboard.theme import GREEN, MISSING, RED, Theme

#: Signal text colours (market.indicators.SIGNALS): bullish green, bearish red; none grey.
SIGNAL_COLORS = {"cross_up": GREEN, "oversold": GREEN, "cross_down": RED, "overbought": RED}

TABLE_COLUMNS = ("symbol", "price", "change_pct", "quote_volume", "rsi", "stoch_k",
                 "stoch_d", "signal")
TITLES = {"symbol": "Symbol", "price": "Last", "change_pct": "24h %", "quote_volume": "24h vol",
          "rsi": "RSI", "stoch_k": "K", "stoch_d": "D", "signal": "Signal"}
#: The table's natural width (columns fitted to titles, filters and values): the
#: page puts it beside the heatmap only when it gets at least this much.
MIN_WIDTH = 820
MAX_DECIMALS = 8


def price_decimals(prices: Iterable[float]) -> int:
    """The decimals a symbol's prices are quoted with: the most any of them needs (to 1e-8)."""
    most = 0
    for p in prices:
        if p is None or not math.isfinite(p):
            continue
        text = f"{abs(p):.{MAX_DECIMALS}f}".rstrip("0")
        most = max(most, len(text) - text.index(".") - 1)
    return most


def fallback_decimals(price: float) -> int:
    """Decimals by magnitude, before any price of the symbol has been seen to tell."""
    if price is None or not math.isfinite(price) or price <= 0:
        return 2
    return min(MAX_DECIMALS, max(2, 3 - math.floor(math.log10(price))))


def format_price(value: float | None, decimals: int) -> str:
    """``97123.4`` -> ``"97,123.4"`` at 1 decimal; blank when missing (as the browser shows it)."""
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:,.{decimals}f}"


def format_volume(value: float | None) -> str:
    """``1.234e9`` -> ``"1.2B"``, ``3.4e8`` -> ``"340M"``, ``45_300`` -> ``"45.3K"``."""
    if value is None or not math.isfinite(value):
        return ""
    for unit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= unit:
            x = value / unit
            return f"{x:.0f}{suffix}" if abs(x) >= 100 else f"{x:.1f}{suffix}"
    return f"{value:.0f}"


# The same two functions in the browser (Bokeh templates run JavaScript in <% %>).
_PRICE_JS = """<% const dp = (DECIMALS)[symbol]; %><%= (value == null || !isFinite(value)) ? "" :
value.toLocaleString("en-US", {minimumFractionDigits: dp ?? FALLBACK, maximumFractionDigits: dp ?? FALLBACK}) %>"""
_VOLUME_JS = """<%= (v => { if (v == null || !isFinite(v)) return "";
for (const [u, s] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]]) if (Math.abs(v) >= u) {
  const x = v / u; return (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1)) + s }
return v.toFixed(0) })(value) %>"""


def price_formatter(decimals: Mapping[str, int]) -> HTMLTemplateFormatter:
    """Each row's price at its symbol's decimals (``decimals``); 4 for a symbol not in it."""
    js = _PRICE_JS.replace("DECIMALS", json.dumps(dict(decimals))).replace("FALLBACK", "4")
    return HTMLTemplateFormatter(template=js)


def signal_table_frame(tickers: pl.DataFrame | pd.DataFrame,
                       order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per symbol for :func:`signal_table`, from tickers with indicators.

    ``tickers`` has market.schema.TICKER_SCHEMA columns plus ``rsi``, ``stoch_k``,
    ``stoch_d``, ``signal`` (any may be missing or null). With ``order`` the rows
    follow it, one per symbol, so the frame's index is stable between updates;
    otherwise they keep the input order.
    """
    frame = tickers if isinstance(tickers, pl.DataFrame) else pl.from_pandas(tickers)
    if "symbol" not in frame.columns:
        raise ValueError("tickers need a 'symbol' column")

    def num(col: str) -> pl.Expr:
        return (pl.col(col).cast(pl.Float64) if col in frame.columns
                else pl.lit(None, pl.Float64).alias(col))

    out = frame.select(
        pl.col("symbol").cast(pl.String),
        num("last_price").alias("price"), num("price_change_pct").alias("change_pct"),
        num("quote_volume"), num("rsi"), num("stoch_k"), num("stoch_d"),
        (pl.col("signal").cast(pl.String) if "signal" in frame.columns
         else pl.lit(None, pl.String)).fill_null("").alias("signal"),
    )
    if order is not None:
        out = (pl.DataFrame({"symbol": list(order)}, schema={"symbol": pl.String})
               .join(out.unique("symbol", keep="last"), on="symbol", how="left")
               .with_columns(pl.col("signal").fill_null("")))
    df = out.to_pandas()
    for col in ("symbol", "signal"):  # plain objects: Panel's filters test dtype.kind
        df[col] = df[col].astype(object)
    return df


def table_decimals(df: pd.DataFrame, known: Mapping[str, int] | None = None) -> dict[str, int]:
    """Per symbol: ``known`` decimals, else by the magnitude of its price in ``df``."""
    known = dict(known or {})
    for sym, price in zip(df["symbol"], df["price"]):
        if sym not in known and price is not None and not np.isnan(price):
            known[sym] = fallback_decimals(float(price))
    return known


def signal_table(df: pd.DataFrame, *, height: int = 420, decimals: Mapping[str, int] | None = None,
                 theme: Theme | None = None):
    """A sortable, filterable Panel Tabulator of :func:`signal_table_frame` rows.

    Update it with ``table.value = new_frame`` (or ``table.patch``); the user's
    sorters and header filters stay. ``decimals`` maps symbols to their price
    decimals (see :func:`price_decimals`); ``theme`` styles the header filters.
    """
    import panel as pn  # only the table needs Panel; the charts are Bokeh

    theme = theme or Theme()
    # thirds of [-0.015, 0.015]: grey exactly where "+0.00" is shown (|x| < 0.005), not a red "+0.00"
    split = LinearColorMapper(palette=[RED, MISSING, GREEN], low=-0.015, high=0.015)
    signals = CategoricalColorMapper(factors=list(SIGNAL_COLORS),
                                     palette=list(SIGNAL_COLORS.values()), nan_color=MISSING)
    osc = NumberFormatter(format="0.0")
    return pn.widgets.Tabulator(
        df, show_index=False, disabled=True, selectable=1, height=height,
        sizing_mode="stretch_width", layout="fit_data_stretch", frozen_columns=["symbol"],
        titles=dict(TITLES),
        formatters={
            "price": price_formatter(table_decimals(df, decimals)),
            "change_pct": NumberFormatter(format="+0.00", text_color=transform(
                "change_pct", split), font_style="bold"),
            "quote_volume": HTMLTemplateFormatter(template=_VOLUME_JS),
            "rsi": osc, "stoch_k": osc, "stoch_d": osc,
            "signal": StringFormatter(text_color=transform("signal", signals), font_style="bold"),
        },
        header_filters={
            "symbol": {"type": "input", "func": "like", "placeholder": "filter"},
            "change_pct": {"type": "number", "func": ">=", "placeholder": "≥"},
            "quote_volume": {"type": "number", "func": ">=", "placeholder": "≥"},
            "rsi": {"type": "number", "func": ">=", "placeholder": "≥"},
            "signal": {"type": "list", "valuesLookup": True, "func": "in", "multiselect": True},
        },
        text_align={c: "right" for c in TABLE_COLUMNS[1:-1]},
        sorters=[{"field": "quote_volume", "dir": "desc"}],
        stylesheets=[theme.table_css()],
    )
