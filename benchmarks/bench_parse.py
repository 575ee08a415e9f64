"""Throughput of ``market.binance.Parser.parse`` against bare ``orjson.loads``.

Uses the 67 real futures kline frames from the fixtures, repeated to ~500k frames,
and prints frames/s for: orjson.loads alone (the floor any parser pays), parse()
with and without a symbol filter, and kline_frame() on the parsed records.

    .venv/bin/python benchmarks/bench_parse.py [--frames 500000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson

from market.binance import Kline, Parser, kline_frame, read_recording

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared/fixtures/binance_futures_2021-07-22.ws"


def best_rate(fn, frames: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(frames)
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fixture", type=Path, default=FIXTURE)
    args = ap.parse_args()

    klines = [raw for _, raw in read_recording(args.fixture) if b"@kline_" in raw]
    frames = (klines * (args.frames // len(klines) + 1))[: args.frames]
    loads = orjson.loads

    def raw_loads(fs):
        for f in fs:
            loads(f)

    def run_parser(parser):
        parse = parser.parse

        def go(fs):
            for f in fs:
                parse(f)
        return go

    symbols = {orjson.loads(f)["data"]["s"] for f in klines}
    records = [r for r in map(Parser().parse, frames[:50_000]) if isinstance(r, Kline)]
    assert len(records) == 50_000

    base = best_rate(raw_loads, frames, args.repeat)
    rows = [("orjson.loads only", base)]
    rows.append(("parse(), symbols=None", best_rate(run_parser(Parser()), frames, args.repeat)))
    rows.append(("parse(), 4-symbol filter",
                 best_rate(run_parser(Parser(symbols)), frames, args.repeat)))
    start = time.perf_counter()
    for _ in range(args.repeat):
        kline_frame(records)
    frame_rate = len(records) * args.repeat / (time.perf_counter() - start)

    print(f"{len(frames):,} real futures kline frames ({len(klines)} distinct), "
          f"best of {args.repeat}")
    for name, rate in rows:
        print(f"  {name:26s} {rate:12,.0f} frames/s   {rate / base:6.2f} x orjson.loads")
    print(f"  {'kline_frame (50k records)':26s} {frame_rate:12,.0f} rows/s")


if __name__ == "__main__":
    main()
