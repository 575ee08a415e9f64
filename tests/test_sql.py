"""store/sql.py: the shell entry point for ad hoc SQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import store
from tests.conftest import ROOT, random_klines


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "store.sql", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=180)


def make_db(path):
    w = store.Writer(path)
    w.add_klines(random_klines(["BTCUSDT", "ETHUSDT"], 5))
    w.flush()
    return path


def test_table_csv_json(tmp_path):
    db = make_db(tmp_path / "m.duckdb")
    sql = "SELECT symbol, count(*) AS n FROM klines GROUP BY symbol ORDER BY symbol"
    table = run("--db", str(db), sql)
    assert table.returncode == 0
    assert "BTCUSDT" in table.stdout and "ETHUSDT" in table.stdout and "shape: (2, 2)" in table.stdout
    csv = run("--db", str(db), "--format", "csv", sql)
    assert csv.stdout.splitlines() == ["symbol,n", "BTCUSDT,5", "ETHUSDT,5"]
    rows = json.loads(run("--db", str(db), "--format", "json", sql).stdout)
    assert rows == [{"symbol": "BTCUSDT", "n": 5}, {"symbol": "ETHUSDT", "n": 5}]


def test_sql_error_exits_nonzero_with_plain_message(tmp_path):
    db = make_db(tmp_path / "m.duckdb")
    bad = run("--db", str(db), "SELEC oops")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ParserException") and "Traceback" not in bad.stderr
    missing = run("--db", str(tmp_path / "none.duckdb"), "SELECT 1")
    assert missing.returncode == 1 and "no database at" in missing.stderr


def test_market_db_env_and_waiting_for_a_writer(tmp_path, hold_file):
    db = make_db(tmp_path / "m.duckdb")
    holder = hold_file(db)
    threading.Timer(1.5, holder.release).start()
    res = run("--format", "csv", "SELECT count(*) AS n FROM klines", env={"MARKET_DB": str(db)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["n", "10"]
