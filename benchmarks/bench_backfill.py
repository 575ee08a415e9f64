"""REST backfill throughput against the weight budget's own limit.

    python benchmarks/bench_backfill.py                    # 4 symbols x 31 days, 120 weight per 10 s
    python benchmarks/bench_backfill.py --symbols 10 --days 60 --budget 2400 --window 1m

Starts the local exchange (``python -m market.exchange``) with its weight budget
enforced, runs ``python -m store.backfill`` into a fresh DuckDB file, and compares
the candles stored per second (wall time of the whole command, start-up included)
with the most the budget allows: budget per second / weight per call x candles per
call, for the page size the backfill uses (499 rows for weight 2 on futures) and for
1500-row pages (weight 10), the usual choice. Any 429 or 418 from the exchange is
reported: there should be none. The budget must sit below what the local exchange
can serve at all (it builds every candle on request; ~5k candles/s here), or the
ratio measures the exchange: the script measures that capacity too, after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from market.exchange.limits import parse_window  # noqa: E402
from market.ratelimit import best_page, klines_weight  # noqa: E402


async def _capacity(rest: str, symbol: str, start: int, workers: int, requests: int = 40) -> float:
    """Candles/s the exchange serves in 499-row pages with nothing pacing the client."""
    import httpx
    todo = list(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        while todo:
            i = todo.pop()
            r = await client.get(f"{rest}/fapi/v1/klines", params={
                "symbol": symbol, "interval": "1m", "startTime": start + i * 499 * 60_000, "limit": 499})
            r.raise_for_status()

    async with httpx.AsyncClient(timeout=60) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(workers)))
        return requests * 499 / (time.perf_counter() - began)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=4)
    ap.add_argument("--days", type=float, default=31)
    ap.add_argument("--budget", type=int, default=120, help="futures weight per window")
    ap.add_argument("--window", default="10s")
    ap.add_argument("--concurrency", type=int, default=4)
    a = ap.parse_args()
    _, _, window_s = parse_window(a.window)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ex = subprocess.Popen(
        [sys.executable, "-m", "market.exchange", "--port", "0", "--symbols", str(a.symbols),
         "--history-days", str(a.days + 1), "--enforce-weights", "--futures-weight-limit", str(a.budget),
         "--weight-window", a.window], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(ex.stdout.readline())
        rest = info["rest"]
        with urllib.request.urlopen(f"{rest}/fapi/v1/exchangeInfo") as r:
            body = json.load(r)
        symbols = [s["symbol"] for s in body["symbols"]][: a.symbols]
        since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(body["serverTime"] / 1000 - a.days * 86400))
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.duckdb"
            cmd = [sys.executable, "-m", "store.backfill", "--db", str(db), "--symbols", ",".join(symbols),
                   "--since", since, "--rest-url", rest, "--concurrency", str(a.concurrency), "--no-progress"]
            began = time.perf_counter()
            run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            took = time.perf_counter() - began
            if run.returncode:
                sys.exit(f"backfill failed ({run.returncode}): {run.stderr[-2000:]}")
            import store
            candles = store.query("SELECT count(*) AS n FROM klines", db=db)["n"][0]
        with urllib.request.urlopen(f"{rest}/_control/stats") as r:
            stats = json.load(r)
        urllib.request.urlopen(f"{rest}/_control/rate_limits?on=false").close()
        capacity = asyncio.run(_capacity(rest, symbols[0], body["serverTime"] - int(a.days * 86_400_000),
                                         a.concurrency))
    finally:
        ex.terminate()
        ex.wait(10)
    page = best_page(1500, spot=False)
    per_s = a.budget / window_s
    limit = per_s / klines_weight(page, False) * page
    limit_1500 = per_s / klines_weight(1500, False) * 1500
    rate = candles / took
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"budget: {a.budget} weight per {a.window}; {a.symbols} symbols x {a.days:g} days; "
          f"concurrency {a.concurrency}")
    print(f"stored {candles:,} candles in {took:.1f} s: {rate:,.0f} candles/s")
    print(f"limit with {page}-row pages (weight {klines_weight(page, False)}): {limit:,.0f} candles/s "
          f"-> ratio {rate / limit:.2f}")
    print(f"limit with 1500-row pages (weight 10): {limit_1500:,.0f} candles/s -> ratio {rate / limit_1500:.2f}")
    print(f"the exchange's own capacity, no budget, {a.concurrency} in flight: {capacity:,.0f} candles/s")
    print(f"exchange answered 429: {stats.get('http_429')}, 418: {stats.get('http_418')}, "
          f"5xx: {stats.get('http_5xx')}, requests: {stats.get('rest_requests')}")


if __name__ == "__main__":
    main()
