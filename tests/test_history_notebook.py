"""notebooks/history.ipynb: executed top to bottom in a real kernel on a store filled by
``python -m store.import_dumps`` from dump files the local exchange wrote.

The values the notebook shows are read back from the kernel and compared with an
independent computation in this test: candles resampled by polars (not DuckDB),
RSI from TA-Lib, forward returns and correlations with numpy.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import polars as pl
import pytest

import store
import store.db
from market.candles import resample
from market.exchange.dumps import write_tree
from store.ranges import record_empty
from tests.conftest import ROOT, talib_indicators
from tests.test_notebook import kernel_env, text  # noqa: F401  (a fixture and a helper)

NOTEBOOK = ROOT / "notebooks" / "history.ipynb"
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
HOLE = dt.datetime(2026, 2, 10)  # a whole day of 1m candles no file holds
CONFIRMED = "ETHUSDT"  # ... which the exchange confirmed empty for this symbol only

PROBE = """
import json
print(json.dumps({
    "db": str(DB), "why": WHY, "coverage": cov.to_dicts(), "holes": holes.to_dicts(),
    "symbol": SYMBOL, "views": {tf: f.height for tf, f in views.items()},
    "horizon": HORIZON, "fwd": fwd.to_dicts(), "pooled": pooled.to_dicts(),
    "corr_symbols": symbols, "corr": corr.rows(), "pairs": pairs.height,
}, default=str))
"""


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hist")
    root = tmp / "dumps"
    write_tree(root, SYMBOLS, "1m", dt.date(2026, 1, 1), dt.date(2026, 2, 1))  # one monthly file each
    write_tree(root, SYMBOLS, "1m", dt.date(2026, 2, 1), HOLE.date(), monthly=False)  # then daily files,
    write_tree(root, SYMBOLS, "1m", HOLE.date() + dt.timedelta(days=1), dt.date(2026, 3, 1), monthly=False)
    db = tmp / "market.duckdb"
    run = subprocess.run([sys.executable, "-m", "store.import_dumps", "--db", str(db), "--no-progress", str(root)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    ms = int(HOLE.replace(tzinfo=dt.UTC).timestamp() * 1000)
    record_empty([(CONFIRMED, "1m", ms, ms + 86_400_000)], db=db)
    return db


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, startup_timeout=60,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return nb


def expected_forward(klines: pl.DataFrame, interval: str, horizon: int) -> dict[tuple, dict]:
    """(symbol, interval, condition) -> events, mean_pct, up_share, from polars candles, TA-Lib and numpy."""
    out = {}
    for (sym,), g in resample(klines, interval).group_by("symbol"):
        close = g.sort("open_time")["close"].to_numpy()
        rsi = talib_indicators(close)["rsi"]
        fwd = np.full(close.size, np.nan)
        fwd[:-horizon] = close[horizon:] / close[:-horizon] - 1
        known = ~np.isnan(fwd)
        for label, mask in (("RSI < 30", rsi < 30), ("RSI > 70", rsi > 70), ("any candle", np.ones_like(known))):
            sel = fwd[known & mask]
            if sel.size:
                out[(sym, interval, label)] = {"events": sel.size, "mean_pct": 100 * sel.mean(),
                                               "up_share": float((sel > 0).mean())}
    return out


def test_committed_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert nb.cells[0].cell_type == "markdown" and "store.import_dumps --download" in nb.cells[0].source


def test_notebook_runs_on_imported_dumps(filled, kernel_env, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MARKET_DB", str(filled))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    execute(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    out = json.loads(text(code[-1]))
    assert out["db"] == str(filled) and out["why"] == "from MARKET_DB"
    assert f"database: {filled} (from MARKET_DB)" in text(code[0])

    # what is stored: two months minus the missing day, per symbol
    klines = store.query("SELECT * FROM klines ORDER BY symbol, open_time", db=filled)
    per_day = 1440
    assert {r["symbol"]: (r["candles"], r["missing"]) for r in out["coverage"]} == {
        s: (59 * per_day - per_day, per_day) for s in SYMBOLS}
    assert f"3 symbols, {3 * 58 * per_day:,} 1m candles" in text(code[1])
    assert [(h["symbol"], h["gap_start"], h["missing"], h["at_exchange"]) for h in out["holes"]] == [
        (s, str(HOLE), per_day, s == CONFIRMED) for s in SYMBOLS]
    assert "confirmed empty at the exchange: 1; to repair: 2" in text(code[3])

    # one symbol at three timeframes, each drawn by the dashboard's chart builder
    assert out["symbol"] == "BTCUSDT"  # all equal: the first by name
    assert out["views"] == {"1d": 58, "4h": 58 * 6, "1h": 58 * 24}
    charts = [c for c in code if any("application/vnd.holoviews_exec.v0+json" in o.get("data", {}) for o in c.outputs)]
    assert len(charts) >= 5  # three price layouts, the bars, the heatmap

    # forward returns after RSI extremes, per symbol and timeframe
    horizon = out["horizon"]
    want = {}
    for tf in ("1h", "4h", "1d"):
        want |= expected_forward(klines, tf, horizon)
    got = {(r["symbol"], r["interval"], r["condition"]): r for r in out["fwd"]}
    assert set(got) == set(want)
    assert any(k[2] == "RSI < 30" for k in got) and any(k[2] == "RSI > 70" for k in got)
    for key, w in want.items():
        assert got[key]["events"] == w["events"], key
        assert got[key]["mean_pct"] == pytest.approx(w["mean_pct"], rel=1e-9, abs=1e-12), key
        assert got[key]["up_share"] == pytest.approx(w["up_share"]), key
    pooled = {(r["interval"], r["condition"]): r for r in out["pooled"]}
    for (tf, cond), row in pooled.items():
        mine = [w for k, w in want.items() if k[1] == tf and k[2] == cond]
        assert row["events"] == sum(w["events"] for w in mine)
        assert row["mean_pct"] == pytest.approx(sum(w["events"] * w["mean_pct"] for w in mine) / row["events"])

    # correlation of daily returns
    daily = resample(klines, "1d").pivot(on="symbol", index="open_time", values="close").sort("open_time")
    closes = daily.select(out["corr_symbols"]).to_numpy()
    rets = closes[1:] / closes[:-1] - 1
    np.testing.assert_allclose(np.array(out["corr"]), np.corrcoef(rets.T), rtol=1e-9, atol=1e-12)
    assert out["pairs"] == 3


def test_notebook_says_what_to_run_on_an_empty_store(tmp_path, kernel_env, monkeypatch):  # noqa: F811
    db = tmp_path / "market.duckdb"
    monkeypatch.setenv("MARKET_DB", str(db))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
        execute(nb)
    assert "StopHere" in str(err.value)
    code = [c for c in nb.cells if c.cell_type == "code"]
    said = text(code[1])
    assert f"No 1m candles in {db} yet" in said
    assert "python -m store.import_dumps" in said and "--download" in said and "python -m store.backfill" in said
    assert all(c.execution_count is None for c in code[2:])


def test_notebook_db_falls_back_to_the_demo_file(tmp_path, monkeypatch):
    main, demo = tmp_path / "market.duckdb", tmp_path / "demo.duckdb"
    monkeypatch.setattr(store.db, "DEFAULT_DB", main)
    monkeypatch.setattr(store.db, "DEMO_DB", demo)
    monkeypatch.delenv("MARKET_DB", raising=False)
    assert store.db.notebook_db() == (main, "default, not created yet")
    store.prepare(demo)
    path, why = store.db.notebook_db()
    assert path == demo and "demo" in why and "market.duckdb" in why
    store.prepare(main)
    assert store.db.notebook_db() == (main, "default")
    monkeypatch.setenv("MARKET_DB", str(tmp_path / "elsewhere.duckdb"))  # a user's choice wins, even missing
    assert store.db.notebook_db() == (tmp_path / "elsewhere.duckdb", "from MARKET_DB")
