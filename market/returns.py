"""What came next: forward returns after indicator conditions, per symbol (and interval).

The question a trader asks of a long history: after RSI fell below 30 (or rose
above 70), did the price go up over the next ``horizon`` candles, and by how
much, compared with any candle? Pure polars; give it candles with ``rsi``
(``market.indicators.add_indicators``) of one interval or several.

Forward return of a row = ``close`` ``horizon`` candles later (same symbol and
interval, ``open_time`` order) / ``close`` - 1; null where the history ends
sooner. Candles, not clock time: across a hole the later close is further away.
"""

from __future__ import annotations

import polars as pl

from market.indicators import group_keys, sort_groups

def conditions(low: float = 30.0, high: float = 70.0) -> tuple[str, str, str]:
    """The ``condition`` labels ``after_rsi`` gives, in its row order: "RSI < 30", "RSI > 70", "any candle"."""
    return f"RSI < {low:g}", f"RSI > {high:g}", "any candle"


def forward_returns(frame: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """``frame`` sorted by (symbol[, interval], open_time) with ``fwd_return`` added (a fraction)."""
    if horizon < 1:
        raise ValueError(f"horizon must be 1 candle or more, got {horizon}")
    keys = group_keys(frame)
    ordered = sort_groups(frame, keys)
    ahead = pl.col("close").shift(-horizon).over(keys)
    return ordered.with_columns(fwd_return=ahead / pl.col("close") - 1)


def after_rsi(frame: pl.DataFrame, horizon: int, low: float = 30.0, high: float = 70.0) -> pl.DataFrame:
    """Forward returns after ``rsi < low``, after ``rsi > high``, and after any candle, per group.

    One row per (symbol[, interval], condition): ``events`` (candles meeting the
    condition whose forward return is known), ``mean_pct`` and ``median_pct``
    (forward return in percent), ``up_share`` (fraction of events followed by a
    rise). "any candle" is the baseline to compare with. Rows sorted by the group
    keys, then condition in ``conditions(low, high)`` order.
    """
    keys = group_keys(frame, needs=("close", "rsi"))
    labels = conditions(low, high)
    with_fwd = forward_returns(frame, horizon).filter(pl.col("fwd_return").is_not_null())
    labelled = pl.concat(
        [
            with_fwd.filter(pl.col("rsi") < low).with_columns(condition=pl.lit(labels[0])),
            with_fwd.filter(pl.col("rsi") > high).with_columns(condition=pl.lit(labels[1])),
            with_fwd.with_columns(condition=pl.lit(labels[2])),
        ]
    )
    order = pl.col("condition").replace_strict(list(labels), [0, 1, 2])
    return (
        labelled.group_by(*keys, "condition")
        .agg(
            events=pl.len(),
            mean_pct=100 * pl.col("fwd_return").mean(),
            median_pct=100 * pl.col("fwd_return").median(),
            up_share=(pl.col("fwd_return") > 0).mean(),
        )
        .sort(*keys, order)
    )
