"""Throughput and memory of the live ingest path, against the local exchange at max speed.

Three ways to consume the same 50-symbol kline stream (``LocalExchange`` at
``speed=0``, which sends as fast as the client reads), each on its own fresh
connection:

- raw: the socket read plus ``orjson.loads`` and nothing else (the limit);
- pipeline: the whole path the app runs: ``Connection`` read + parse + coalesce ->
  queue -> ``Pipeline._apply`` (``LiveState``, indicators) -> ``Writer`` flushing
  every second into a real DuckDB file in a temp dir; timed until the final flush
  after the stop, and checked afterwards (no candle missing or repeated);
- seed: what the app we replace did: one ``INSERT ... ON CONFLICT DO UPDATE`` per
  kline message into a DuckDB table with a PRIMARY KEY (bounded: it is slow).

During the pipeline run the process RSS is sampled every 0.25 s to show that memory
stays bounded. By default the exchange runs in a subprocess
(``python -m market.exchange --speed 0``) so the client gets a core of its own;
``--exchange inprocess`` shares the event loop instead (then the exchange's own
rendering is the bottleneck). Only kline streams are subscribed: the local
exchange's 24h tickers are expensive to render and would cap every path at the
exchange's speed (~20k frames/s), which measures the exchange, not us.

    .venv/bin/python benchmarks/bench_ingest.py [--messages 1000000] [--raw 1000000]
        [--seed-messages 20000] [--exchange subprocess|inprocess]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import duckdb
import orjson
import psutil
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from market.presets import stream_names, stream_urls  # noqa: E402
from market.exchange import LocalExchange  # noqa: E402
from market.feed import Feed  # noqa: E402
from market.synthetic import DEFAULT_SYMBOLS  # noqa: E402
from store import history  # noqa: E402
from store.ingest import IngestConfig, Pipeline  # noqa: E402

BINANCE_RATE = 225.0  # kline frames/s Binance sends for 50 futures symbols (4/s each, plus tickers)


@dataclasses.dataclass
class Result:
    name: str
    messages: int
    seconds: float
    cpu_seconds: float  # this process's user + system CPU over the run

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def busy(self) -> float:
        """Share of one core this process used: ~100 % means the client is the bottleneck."""
        return self.cpu_seconds / self.seconds


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- the exchange


@contextlib.asynccontextmanager
async def exchange(mode: str, symbols: int) -> AsyncIterator[tuple[str, str]]:
    """(ws_base, rest_base) of a max-speed local exchange, in a subprocess or in this process."""
    if mode == "inprocess":
        async with LocalExchange(symbols=symbols, speed=0, history_minutes=60) as ex:
            yield ex.ws_base, ex.rest_base
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "market.exchange", "--port", "0", "--speed", "0",
         "--symbols", str(symbols), "--history-minutes", "60"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        yield info["ws"], info["rest"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def kline_url(ws_base: str, symbols: tuple[str, ...]) -> str:
    (url,) = stream_urls(ws_base, stream_names(symbols, "1m", tickers=False), 200)
    return url


# --------------------------------------------------------------------------- the three paths


async def raw_read(url: str, n: int) -> Result:
    loads = orjson.loads
    async with websockets.connect(url, max_size=2**22, compression=None) as ws:
        await ws.recv()  # connected and flowing: start the clock
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        i = 0
        async for raw in ws:
            loads(raw)
            i += 1
            if i >= n:
                break
        return Result("raw: socket read + orjson.loads", i, time.perf_counter() - t0, cpu_seconds() - cpu0)


async def pipeline(ws_base: str, rest_base: str, symbols: tuple[str, ...], n: int, db: Path,
                   rss: list[tuple[int, int]]) -> tuple[Result, dict]:
    cfg = IngestConfig(db=db, symbols=symbols, ws_url=ws_base, rest_url=rest_base, backfill=False,
                       flush_every=1.0)
    p = Pipeline(cfg)
    # klines only (see the module docstring); everything else as the app runs it
    p.feed = Feed(dataclasses.replace(cfg.feed_config(), tickers=False), p.queue, last_closed=p.state.last_closed)
    proc = psutil.Process()
    read = lambda: sum(c.status.messages for c in p.feed.connections)  # noqa: E731
    rss.append((0, proc.memory_info().rss))
    task = asyncio.create_task(p.run())
    while read() == 0:
        await asyncio.sleep(0.005)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    max_queue = max_batch = 0
    next_sample = 0.0
    while read() < n:
        await asyncio.sleep(0.01)
        max_queue = max(max_queue, p.queue.qsize())
        max_batch = max(max_batch, max(c._batch.messages for c in p.feed.connections))
        if time.perf_counter() >= next_sample:
            rss.append((read(), proc.memory_info().rss))
            next_sample = time.perf_counter() + 0.25
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # drains what was read and does the final flush
    seconds = time.perf_counter() - t0
    rss.append((read(), proc.memory_info().rss))
    st = p.status()
    assert st.store.pending_rows == 0, st
    info = {
        "finals_stored": history.coverage(db=db)["candles"].sum(),
        "gaps": history.gaps(db=db).height,
        "batches": p.batches,
        "max_queue": max_queue,
        "max_coalesced": max_batch,
        "flushes": st.store.flushes,
        "rejected": st.feed.rejected,
        "db_bytes": db.stat().st_size,
    }
    name = "pipeline: read+parse+coalesce -> LiveState -> Writer (DuckDB)"
    return Result(name, read(), seconds, cpu_seconds() - cpu0), info


SEED_TABLE = """CREATE TABLE klines (
    symbol VARCHAR, interval VARCHAR, open_time TIMESTAMP, close_time TIMESTAMP,
    open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE, quote_volume DOUBLE,
    trades BIGINT, taker_buy_volume DOUBLE, taker_buy_quote_volume DOUBLE, closed BOOLEAN,
    PRIMARY KEY (symbol, interval, open_time))"""
SEED_UPSERT = """INSERT INTO klines VALUES (?, ?, epoch_ms(?), epoch_ms(?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT DO UPDATE SET close_time = excluded.close_time, open = excluded.open,
    high = excluded.high, low = excluded.low, close = excluded.close, volume = excluded.volume,
    quote_volume = excluded.quote_volume, trades = excluded.trades,
    taker_buy_volume = excluded.taker_buy_volume, taker_buy_quote_volume = excluded.taker_buy_quote_volume,
    closed = excluded.closed"""


async def seed_upserts(url: str, n: int, db: Path) -> Result:
    con = duckdb.connect(str(db))
    con.execute(SEED_TABLE)
    loads = orjson.loads
    try:
        # no keepalive: at ~100 msg/s the exchange's pong sits behind megabytes of unread
        # frames in the socket buffers and the 20 s ping timeout would end the run
        async with websockets.connect(url, max_size=2**22, compression=None, ping_interval=None) as ws:
            await ws.recv()
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            i = 0
            async for raw in ws:
                d = loads(raw)["data"]
                k = d["k"]
                con.execute(SEED_UPSERT, [
                    d["s"], k["i"], k["t"], k["T"], float(k["o"]), float(k["h"]), float(k["l"]),
                    float(k["c"]), float(k["v"]), float(k["q"]), k["n"], float(k["V"]), float(k["Q"]), k["x"],
                ])
                i += 1
                if i >= n:
                    break
            seconds = time.perf_counter() - t0
            rows = con.execute("SELECT count(*) FROM klines").fetchone()[0]
            assert 0 < rows <= n
            return Result("seed: one INSERT ... ON CONFLICT per message (PRIMARY KEY)", i, seconds,
                          cpu_seconds() - cpu0)
    finally:
        con.close()


# --------------------------------------------------------------------------- report


def progress(r: Result) -> None:
    print(f"{r.name}: {r.messages:,} messages in {r.seconds:.1f} s = {r.rate:,.0f} msg/s", file=sys.stderr, flush=True)


def mb(b: int) -> str:
    return f"{b / 2**20:,.0f} MB"


async def run(args: argparse.Namespace) -> None:
    symbols = tuple(DEFAULT_SYMBOLS[: args.symbols])
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        tmp_path = Path(tmp)
        results: list[Result] = []
        rss: list[tuple[int, int]] = []
        # a fresh exchange per path, so each starts from the same sim clock and none pays for
        # the candles another one made the exchange generate
        async with exchange(args.exchange, args.symbols) as (ws, _):
            results.append(await raw_read(kline_url(ws, symbols), args.raw))
            progress(results[-1])
        async with exchange(args.exchange, args.symbols) as (ws, rest):
            res, info = await pipeline(ws, rest, symbols, args.messages, tmp_path / "pipeline.duckdb", rss)
            results.append(res)
            progress(results[-1])
        async with exchange(args.exchange, args.symbols) as (ws, _):
            results.append(await seed_upserts(kline_url(ws, symbols), args.seed_messages, tmp_path / "seed.duckdb"))
            progress(results[-1])

    raw = results[0].rate
    load = os.getloadavg()
    print(f"\n{len(symbols)} symbols, kline streams only, exchange: {args.exchange} "
          f"(speed 0), {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    print("| path | messages | seconds | msg/s | vs raw | x Binance's 225 msg/s | client CPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r.name} | {r.messages:,} | {r.seconds:.1f} | {r.rate:,.0f} | {r.rate / raw:.2f} | "
              f"{r.rate / BINANCE_RATE:,.0f}x | {100 * r.busy:.0f} % |")
    for r in results[:2]:
        if r.busy < 0.9:
            print(f"\nnote: {r.name.split(':')[0]} used {100 * r.busy:.0f} % of a core: it waited on the exchange "
                  f"(or on other load); CPU-bound it would manage ~{r.rate / r.busy:,.0f} msg/s")
    print(f"\npipeline run: {info['batches']:,} batches applied, largest coalesced batch "
          f"{info['max_coalesced']:,} messages, queue never above {info['max_queue']}, "
          f"{info['flushes']} flushes, {info['finals_stored']:,} closed candles stored, "
          f"{info['gaps']} gaps, rejected {info['rejected'] or 'none'}, file {mb(info['db_bytes'])}")
    base = rss[0][1]
    peak = max(r for _, r in rss)
    print(f"\nRSS over {rss[-1][0]:,} messages (sampled every 0.25 s, {len(rss)} samples): "
          f"before start {mb(base)}, peak {mb(peak)} (+{mb(peak - base)}), at the end {mb(rss[-1][1])}")
    print("\n| messages read | RSS |")
    print("| ---: | ---: |")
    step = max(1, args.messages // 10)
    shown = -1
    for count, r in rss:
        if count // step != shown:
            shown = count // step
            print(f"| {count:,} | {mb(r)} |")
    print(f"| {rss[-1][0]:,} (after stop) | {mb(rss[-1][1])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000, help="kline messages through the pipeline")
    ap.add_argument("--raw", type=int, default=1_000_000, help="kline messages for the raw read")
    ap.add_argument("--seed-messages", type=int, default=20_000, help="kline messages upserted one by one")
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--exchange", choices=["subprocess", "inprocess"], default="subprocess")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
