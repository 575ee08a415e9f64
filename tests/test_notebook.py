"""notebooks/explore.ipynb: executed top to bottom in a real kernel on a real database.

The database is written by the real Writer in tmp_path; the kernel is this venv's
Python (a kernelspec in tmp_path, found first through JUPYTER_PATH) and reads it
through MARKET_DB, as a user's notebook would. Values are read back from the
kernel after the run and compared with what was written.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

import duckdb
import nbclient
import nbformat
import numpy as np
import polars as pl
import pytest

import store
from market.indicators import WARMUP, add_indicators, add_signal
from market.schema import INDICATOR_SCHEMA, TICKER_SCHEMA
from tests.conftest import ROOT, random_klines, talib_indicators

NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"
END = dt.datetime(2026, 1, 3, 2, 0)  # every symbol's history ends just before this
# symbol -> candles stored; ETHUSDT has the most, and is not the first by name
SIZES = {"BTCUSDT": 2400, "ETHUSDT": 3000, "SOLUSDT": 2000}
GAP = (1000, 1030)  # SOLUSDT rows removed: one 30-candle hole

# Read back from the kernel after the notebook ran (not part of the notebook).
PROBE = """
import json, sys
print(json.dumps({
    "executable": sys.executable, "prefix": sys.prefix, "db": str(DB),
    "coverage": cov.to_dicts(), "counts": dict(counts.iter_rows()),
    "symbol": SYMBOL, "source": source, "frame": frame.select("open_time", "rsi", "signal").to_dicts(),
    "hourly": hourly.to_dicts(),
    "movers": movers["symbol"].to_list(), "returns": returns.to_dicts(),
    "signals": signals.to_dicts(),
}, default=str))
"""


def build_klines() -> pl.DataFrame:
    parts = []
    for seed, (sym, n) in enumerate(SIZES.items()):
        part = random_klines([sym], n, start=END - dt.timedelta(minutes=n), seed=seed)
        if sym == "SOLUSDT":
            part = part.slice(0, GAP[0]).vstack(part.slice(GAP[1]))
        parts.append(part)
    return pl.concat(parts)


def build_tickers(klines: pl.DataFrame) -> pl.DataFrame:
    """One 24h ticker per symbol, consistent with its candles."""
    day = klines.filter(pl.col("open_time") > pl.col("open_time").max().over("symbol") - dt.timedelta(hours=24))
    return (
        day.group_by("symbol")
        .agg(
            event_time=pl.col("close_time").max(),
            last_price=pl.col("close").sort_by("open_time").last(),
            open_price=pl.col("open").sort_by("open_time").first(),
            high_price=pl.col("high").max(),
            low_price=pl.col("low").min(),
            volume=pl.col("volume").sum(),
            quote_volume=pl.col("quote_volume").sum(),
            trades=pl.col("trades").sum(),
        )
        .with_columns(price_change=pl.col("last_price") - pl.col("open_price"))
        .with_columns(price_change_pct=100 * pl.col("price_change") / pl.col("open_price"))
        .select(list(TICKER_SCHEMA))
    )


def talib_frame(klines: pl.DataFrame) -> pl.DataFrame:
    """The expected indicators: TA-Lib per symbol over the stored closes (open_time order)."""
    parts = []
    for _, g in klines.sort("symbol", "open_time").group_by("symbol", maintain_order=True):
        ref = talib_indicators(g["close"].to_numpy())
        parts.append(g.select("symbol", "interval", "open_time").with_columns(
            *(pl.Series(name, ref[name]).fill_nan(None) for name in ("rsi", "stoch_k", "stoch_d")),
            pl.Series("signal", ref["signal"], dtype=pl.String)))
    return pl.concat(parts)


def make_db(path: Path, *, with_indicators: bool = True) -> dict:
    klines = build_klines()
    indicators = add_signal(add_indicators(klines))
    tickers = build_tickers(klines)
    writer = store.Writer(path)
    writer.add_klines(klines)
    if with_indicators:
        writer.add_indicators(indicators.select(list(INDICATOR_SCHEMA)))
    writer.add_tickers(tickers)
    assert writer.flush() == klines.height * (2 if with_indicators else 1) + tickers.height
    # what the tests expect comes from TA-Lib, not from the code that filled the table
    return {"db": path, "klines": klines, "indicators": talib_frame(klines), "tickers": tickers}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return make_db(tmp_path_factory.mktemp("nb") / "market.duckdb")


@pytest.fixture
def kernel_env(tmp_path, monkeypatch) -> None:
    """A python3 kernelspec that runs this very interpreter, found before any other."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test venv)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user startup files


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    # cwd notebooks/, as when a user opens the notebook in JupyterLab
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, startup_timeout=60,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    return nb


def text(cell: nbformat.NotebookNode) -> str:
    """Everything a code cell printed or displayed as text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def x_range(cell: nbformat.NotebookNode) -> tuple[float, float]:
    """The shared x range (epoch ms) of a chart rendered by the kernel."""
    html = next(o.data["text/html"] for o in cell.outputs if "application/vnd.holoviews_exec.v0+json" in o.get("data", {}))
    found = set(re.findall(r'"start":(\d{13}(?:\.\d*)?),"end":(\d{13}(?:\.\d*)?)', html))
    assert len(found) == 1, found
    return tuple(float(v) for v in found.pop())


def test_committed_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    # markdown between the steps
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[0] == "markdown" and kinds.count("markdown") >= 6


def test_notebook_runs_on_a_populated_database(data, kernel_env, monkeypatch):
    monkeypatch.setenv("MARKET_DB", str(data["db"]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    execute(nb)

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(c.execution_count for c in code)
    out = json.loads(text(code[-1]))

    # the venv's interpreter, reading MARKET_DB
    assert out["prefix"] == sys.prefix and Path(out["executable"]) == Path(sys.executable)
    assert out["db"] == str(data["db"])
    assert f"{data['db']} (from MARKET_DB)" in text(code[0])

    # 2. what is stored
    klines, indicators, tickers = data["klines"], data["indicators"], data["tickers"]
    stored = text(code[1])
    assert "3 symbols: BTCUSDT, ETHUSDT, SOLUSDT" in stored
    per_symbol = dict(klines.group_by("symbol").len().iter_rows())
    assert {r["symbol"]: (r["candles"], r["missing"]) for r in out["coverage"]} == {
        s: (per_symbol[s], 30 if s == "SOLUSDT" else 0) for s in SIZES
    }
    assert all(r["last"] == str(END - dt.timedelta(minutes=1)) for r in out["coverage"])
    assert out["counts"] == {"klines": klines.height, "indicators": klines.height, "tickers": 3}
    assert "gaps: 1, missing candles in all: 30" in text(code[2])
    assert "SOLUSDT" in text(code[2]) and "2026-01-02 09:20:00" in text(code[2])

    # 3. one symbol: the one with most candles, stored indicators
    symbol = max(SIZES, key=SIZES.get)
    assert out["symbol"] == symbol and out["source"] == "stored"
    mine = indicators.filter(pl.col("symbol") == symbol).tail(WARMUP + 150)
    assert f"{symbol}: {WARMUP + 150} candles" in text(code[3])
    assert [r["open_time"] for r in out["frame"]] == [str(t) for t in mine["open_time"]]
    assert [r["signal"] for r in out["frame"]] == mine["signal"].to_list()
    assert [r["rsi"] for r in out["frame"]] == pytest.approx(mine["rsi"].to_list(), abs=1e-9)
    # the chart rendered in the kernel, opening on the last 150 candles (+ a 3-candle margin)
    x0, x1 = x_range(code[4])
    last_ms = mine["open_time"][-1].timestamp() * 1000  # naive UTC
    assert x1 - x0 == (150 + 3) * 60_000 and x0 < last_ms < x1

    # 4. hourly: 3000 minutes ending on the hour = 50 whole hours
    ours = klines.filter(pl.col("symbol") == symbol)
    hours = ours["open_time"].dt.truncate("1h").n_unique()
    assert hours == 50 and len(out["hourly"]) == hours
    assert f"{symbol}: {SIZES[symbol]} 1m candles -> {hours} hourly candles" in text(code[5])
    first, last = out["hourly"][0], out["hourly"][-1]
    assert first["open"] == pytest.approx(ours["open"][0]) and last["close"] == pytest.approx(ours["close"][-1])
    assert first["open_time"] == str(ours["open_time"][0]) and first["interval"] == "1h"
    assert last["rsi"] is not None and last["stoch_d"] is not None
    hourly_ref = talib_indicators(np.array([r["close"] for r in out["hourly"]], dtype=float))
    hourly_rsi = np.array([np.nan if r["rsi"] is None else r["rsi"] for r in out["hourly"]], dtype=float)
    assert np.array_equal(np.isnan(hourly_rsi), np.isnan(hourly_ref["rsi"]))
    np.testing.assert_allclose(hourly_rsi[14:], hourly_ref["rsi"][14:], rtol=0, atol=1e-9)
    x0, x1 = x_range(code[5])  # fewer than 150 hours: all of them in view
    assert x0 < ours["open_time"][0].timestamp() * 1000 and x1 > ours["open_time"][-1].timestamp() * 1000

    # 5. SQL: movers in ticker order, 24h returns from the candles
    assert out["movers"] == tickers.sort("price_change_pct", descending=True)["symbol"].to_list()
    want = {r["symbol"]: r for r in tickers.to_dicts()}
    assert [r["symbol"] for r in out["returns"]] == out["movers"]  # same window, same ranking
    day = klines.filter(pl.col("open_time") >= END - dt.timedelta(hours=24))
    assert {r["symbol"]: r["candles"] for r in out["returns"]} == dict(day.group_by("symbol").len().iter_rows())
    assert {r["candles"] for r in out["returns"]} == {1440, 1410}  # SOLUSDT's gap is in the window
    for row in out["returns"]:
        assert row["return_pct"] == pytest.approx(want[row["symbol"]]["price_change_pct"], rel=1e-9)
    newest = text(code[8])  # bound parameters: SYMBOL's newest 5 candles, newest first
    stamps = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", newest)
    assert stamps == [str(t) for t in ours["open_time"].tail(5).reverse()]

    # 6. signals now: the latest stored row per symbol
    latest = indicators.group_by("symbol").last().sort("symbol")
    assert [r["symbol"] for r in out["signals"]] == latest["symbol"].to_list()
    assert [r["signal"] for r in out["signals"]] == latest["signal"].to_list()
    assert [r["rsi"] for r in out["signals"]] == pytest.approx(latest["rsi"].to_list(), abs=1e-9)
    assert [r["open_time"] for r in out["signals"]] == [str(t) for t in latest["open_time"]]


@pytest.mark.parametrize("kind", ["missing", "not a market database"])
def test_notebook_stops_with_a_clear_message_without_data(kind, tmp_path, kernel_env, monkeypatch):
    db = tmp_path / "market.duckdb"
    if kind != "missing":
        duckdb.connect(str(db)).close()  # a DuckDB file with no tables
    monkeypatch.setenv("MARKET_DB", str(db))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
        execute(nb)
    assert "StopHere" in str(err.value)
    code = [c for c in nb.cells if c.cell_type == "code"]
    said = text(code[1])
    assert f"No 1m candles in {db} yet" in said and "make demo" in said and "store.ingest" in said
    stop = [o for o in code[1].outputs if o.output_type == "error"]
    assert [(o.ename, o.traceback) for o in stop] == [("StopHere", [])]  # the message, no traceback
    assert all(c.execution_count is None for c in code[2:])  # stopped there


def test_notebook_computes_indicators_the_file_lacks(tmp_path, kernel_env, monkeypatch):
    """A file with candles but no stored indicators (an older writer): same numbers."""
    data = make_db(tmp_path / "market.duckdb", with_indicators=False)
    monkeypatch.setenv("MARKET_DB", str(data["db"]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    execute(nb)
    out = json.loads(text([c for c in nb.cells if c.cell_type == "code"][-1]))

    assert out["counts"]["indicators"] == 0 and out["source"] == "computed"
    # WARMUP candles before the window: the window equals the full-history values
    full = data["indicators"].filter(pl.col("symbol") == out["symbol"]).tail(150)
    shown = out["frame"][-150:]
    assert [r["rsi"] for r in shown] == pytest.approx(full["rsi"].to_list(), abs=1e-9)
    # Signals too, except where K and D are equal up to rounding (StochRSI pinned for a
    # few rows makes them equal): there a cross is decided by 1e-14 noise either way.
    tie = ((pl.col("stoch_k") - pl.col("stoch_d")).abs() < 1e-9).fill_null(False)
    clear = ~full.select(tie.rolling_max(2, min_samples=1))["stoch_k"]  # this row or the previous
    assert clear.sum() > 140
    assert [r["signal"] for r, ok in zip(shown, clear) if ok] == full["signal"].filter(clear).to_list()
    latest = data["indicators"].group_by("symbol").last().sort("symbol")
    assert [r["signal"] for r in out["signals"]] == latest["signal"].to_list()
    assert [r["rsi"] for r in out["signals"]] == pytest.approx(latest["rsi"].to_list(), abs=1e-9)
