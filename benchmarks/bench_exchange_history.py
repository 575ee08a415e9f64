"""Random access into the local exchange's deep history, over real HTTP.

Two exchanges (a 400-day history each, 5 symbols) answer the same number of REST
``/fapi/v1/klines?limit=1500`` requests: "recent" asks for the newest 1500 minutes
again and again (one warm day block), "deep" for a random 1500-minute stretch anywhere
in the 400 days each time (cold day blocks: the worst case). The ratio deep/recent
says what random access costs; with per-day blocks it stays a small constant, where
the old origin-anchored path paid for every minute from the origin on. It also
times building one monthly 1m dump zip (43,200 rows) and a ticker/24hr for all symbols.

    .venv/bin/python benchmarks/bench_exchange_history.py [--requests 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from market.exchange import LocalExchange  # noqa: E402
from market.exchange.dumps import dump_zip  # noqa: E402
from market.synthetic import SyntheticMarket, spec_for  # noqa: E402

SYMS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "1000PEPEUSDT", "DOGEUSDT")
MIN = 60_000


async def timed_requests(ex: LocalExchange, starts: list[int | None]) -> float:
    async with httpx.AsyncClient(base_url=ex.rest_base, timeout=60) as http:
        t0 = time.perf_counter()
        for i, start in enumerate(starts):
            params = {"symbol": SYMS[i % len(SYMS)], "interval": "1m", "limit": 1500}
            if start is not None:
                params["startTime"] = start
            r = await http.get("/fapi/v1/klines", params=params)
            assert r.status_code == 200 and len(r.json()) == 1500
        return time.perf_counter() - t0


async def main(requests: int) -> None:
    rng = random.Random(1)
    kw = dict(symbols=SYMS, speed=0, history_days=400)
    async with LocalExchange(**kw) as recent, LocalExchange(**kw) as deep:
        now = deep.now_ms()
        first = now - 400 * 1440 * MIN
        starts = [first + rng.randrange(0, 398 * 1440) * MIN for _ in range(requests)]
        await timed_requests(recent, [None] * len(SYMS))  # warm: the newest blocks
        t_recent = await timed_requests(recent, [None] * requests)
        t_deep = await timed_requests(deep, starts)
        async with httpx.AsyncClient(base_url=deep.rest_base) as http:
            t0 = time.perf_counter()
            assert (await http.get("/fapi/v1/ticker/24hr")).status_code == 200
            t_ticker = time.perf_counter() - t0
    m = SyntheticMarket(tuple(spec_for(s) for s in SYMS), 0)
    t0 = time.perf_counter()
    _, data = dump_zip(m, "BTCUSDT", "1m", "2025-03")
    t_zip = time.perf_counter() - t0
    print(f"REST 1500 x 1m, {requests} requests: recent {t_recent / requests * 1000:.1f} ms/request, "
          f"deep random {t_deep / requests * 1000:.1f} ms/request, deep/recent {t_deep / t_recent:.2f}")
    print(f"ticker/24hr, {len(SYMS)} symbols, cold: {t_ticker * 1000:.0f} ms")
    print(f"monthly 1m dump zip (43,200 rows, {len(data) / 1e6:.1f} MB): {t_zip:.2f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=60)
    asyncio.run(main(ap.parse_args().requests))
