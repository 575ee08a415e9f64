"""market/schema.py: the batch shapes every layer shares."""

import polars as pl
import pytest

from market.schema import INTERVAL_MS, KLINE_SCHEMA, conform, empty, interval_ms
from tests.conftest import random_klines


def test_interval_ms_and_its_error():
    assert interval_ms("1m") == 60_000 and interval_ms("1d") == 86_400_000
    assert list(INTERVAL_MS.values()) == sorted(INTERVAL_MS.values())
    with pytest.raises(ValueError, match="unknown interval '7m'; use one of 1m, 3m"):
        interval_ms("7m")


def test_conform_orders_casts_and_names_missing_columns():
    frame = random_klines(["BTCUSDT"], 2)
    shuffled = frame.select(reversed(frame.columns)).with_columns(pl.col("trades").cast(pl.Int32))
    assert conform(shuffled, KLINE_SCHEMA).schema == pl.Schema(KLINE_SCHEMA)
    with pytest.raises(ValueError, match=r"missing columns \['close'\]"):
        conform(frame.drop("close"), KLINE_SCHEMA)
    assert empty(KLINE_SCHEMA).schema == pl.Schema(KLINE_SCHEMA)
