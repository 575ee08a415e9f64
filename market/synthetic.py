"""A deterministic synthetic market: what the local exchange trades.

The local exchange (market/exchange/) streams and serves what this module computes.
Every 1m candle of a symbol is a pure function of (seed, symbol, UTC day, minute):
each day opens at a deterministic anchor price and its minutes are a random walk
bridged to the next day's anchor, so any minute of any year costs one day's block,
and an exchange restarted later serves the same prices for the same minutes. Every
250 ms update inside a minute is a prefix of a deterministic sub-path whose
aggregate is exactly that candle. So the final (x=true) kline of a minute and the
REST row for it are the same numbers, and two markets with the same seed agree on
everything.

All quantities are integers in the symbol's display units (price ticks, quantity
lots, quote units of 10^-(price_decimals + qty_decimals)), so sums are exact and
formatting never rounds differently in two places. Longer intervals and the 24h
ticker are exact aggregates of the 1m candles. market/exchange/wire.py formats them
as Binance does; the symbols' specs are in market/synthetic_specs.py.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from market.synthetic_specs import DEFAULT_SPECS, DEFAULT_SYMBOLS, SymbolSpec, spec_for

__all__ = ["DEFAULT_SPECS", "DEFAULT_SYMBOLS", "DAY_MS", "MINUTE_MS", "STEP_MS", "Candle", "SymbolSpec",
           "SyntheticMarket", "spec_for"]

MINUTE_MS = 60_000
STEP_MS = 250  # Binance futures pushes kline updates every 250 ms
STEPS = MINUTE_MS // STEP_MS
BLOCK = 1440  # minutes a day: generated per numpy call
DAY_MS = 86_400_000


class Candle(NamedTuple):
    """A candle (or a window) in integer display units, as of some moment."""

    open_time: int
    close_time: int
    o: int
    h: int
    l: int  # noqa: E741
    c: int
    v: int  # base volume, lots
    n: int  # trades
    bv: int  # taker buy base volume, lots
    q: int  # quote volume, quote units
    bq: int  # taker buy quote volume, quote units
    first_id: int
    last_id: int
    closed: bool
    last_qty: int  # lots in the latest step (the ticker's "Q")


class _Day:
    """One symbol's 1440 minute candles of one UTC day, with prefix sums for aggregates."""

    __slots__ = ("o", "h", "l", "c", "v", "n", "bv", "q", "bq", "fid", "cum", "h_pre", "h_suf", "l_pre", "l_suf")
    FIELDS = ("o", "h", "l", "c", "v", "n", "bv", "q", "bq", "fid")
    SUMS = ("v", "n", "bv", "q", "bq")

    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        for f in self.FIELDS:
            setattr(self, f, cols[f])
        self.cum = {f: np.concatenate(([0], np.cumsum(cols[f]))) for f in self.SUMS}
        # running extremes from either end: a span crossing midnight (the 24 h ticker)
        # is a suffix of one day plus a prefix of the next, so it needs no reduction
        self.h_pre, self.l_pre = np.maximum.accumulate(self.h), np.minimum.accumulate(self.l)
        self.h_suf = np.maximum.accumulate(self.h[::-1])[::-1]
        self.l_suf = np.minimum.accumulate(self.l[::-1])[::-1]

    def extremes(self, lo: int, hi: int) -> tuple[int, int]:
        """(highest high, lowest low) of minutes [lo, hi) of the day."""
        if hi == lo + 1:
            return int(self.h[lo]), int(self.l[lo])
        if lo == 0:
            return int(self.h_pre[hi - 1]), int(self.l_pre[hi - 1])
        if hi == BLOCK:
            return int(self.h_suf[lo]), int(self.l_suf[lo])
        return int(self.h[lo:hi].max()), int(self.l[lo:hi].min())


class _LRU(OrderedDict):
    """A small least-recently-used cache: what random access keeps warm."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key: object, make: Callable[[], object]) -> object:
        hit = self.get(key)
        if hit is None:
            hit = self[key] = make()
            if len(self) > self.size:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return hit


# Slow swings of the daily anchor (log price): (amplitude, period in days). Their sum
# stays within +-0.36, so a symbol trades within ~0.7x-1.45x of its table price.
_SWINGS = ((0.14, 397.0), (0.1, 151.0), (0.06, 53.0), (0.04, 17.0))
_DAY_SHOCK = 0.02  # std of the daily anchor's own noise (log units)


class SyntheticMarket:
    """Deterministic minute candles and 250 ms sub-paths for a set of symbols.

    Any minute is computable from (seed, symbol, UTC day) alone: each day opens at
    a deterministic anchor price (slow sinusoid swings plus a daily shock, O(1) per
    day) and its 1440 minutes are a random walk bridged to the next day's anchor, so
    the last close of a day is the next day's open. Days are generated on demand and
    kept in a small LRU: a candle a year back costs one day's block, not the year.
    ``first_ms``: the first candle served by ``candles`` (the history start).
    """

    def __init__(self, specs: tuple[SymbolSpec, ...], seed: int, first_ms: int = 0, cache_days: int = 192) -> None:
        self.seed = int(seed)
        self.first_ms = first_ms - first_ms % MINUTE_MS
        self.specs = {s.symbol: s for s in specs}
        self._keys = {s.symbol: zlib.crc32(s.symbol.encode()) for s in specs}
        self._days = _LRU(cache_days)
        self._market_days = _LRU(64)
        self._anchors = _LRU(4096)
        self._subs: dict[tuple[str, int], tuple[int, int, tuple[list[int], ...]]] = {}

    # -- day level ---------------------------------------------------------

    def _shock(self, d: int, key: int) -> float:
        return float(np.random.default_rng([self.seed, key, d, 3]).standard_normal())

    def anchor(self, symbol: str, d: int) -> int:
        """The opening price of UTC day ``d`` (days since 1970) in price ticks."""
        def make() -> int:
            spec, key = self.specs[symbol], self._keys[symbol]
            phases = np.random.default_rng([self.seed, key, 4]).uniform(0, 2 * math.pi, len(_SWINGS))
            swing = sum(a * math.sin(2 * math.pi * d / p + ph) for (a, p), ph in zip(_SWINGS, phases))
            shock = spec.rho * self._shock(d, 0) + math.sqrt(1 - spec.rho**2) * self._shock(d, key + 1)
            return max(1, round(spec.price * 10**spec.price_decimals * math.exp(swing + _DAY_SHOCK * shock)))
        return self._anchors.get_or((symbol, d), make)  # type: ignore[return-value]

    def trade_id(self, symbol: str, d: int) -> int:
        """The first trade id of UTC day ``d``: floor(G(d)) for a smooth increasing G, so
        a day's trade count G(d+1) - G(d) needs no earlier day (O(1) for any day)."""
        spec, key = self.specs[symbol], self._keys[symbol]
        per_day = max(4 * BLOCK, spec.daily_quote / (300 + spec.daily_quote / 2e6))
        phases = np.random.default_rng([self.seed, key, 5]).uniform(0, 2 * math.pi, len(_SWINGS))
        wiggle = sum(0.5 * a * p / (2 * math.pi) * math.sin(2 * math.pi * d / p + ph)
                     for (a, p), ph in zip(_SWINGS, phases))  # 0.5 * sum(a) < 1: G stays increasing
        return 1_000_000 + key % 1_000_000 + math.floor(per_day * (d + wiggle))

    def _market_day(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Shared factor (z, vol multiplier) of day d."""
        def make() -> tuple[np.ndarray, np.ndarray]:
            rng = np.random.default_rng([self.seed, d])
            z = rng.standard_t(4, BLOCK) / math.sqrt(2.0)
            eps = rng.standard_normal(BLOCK) * 0.3 * math.sqrt(1 - 0.998**2)
            h0 = 0.3 * rng.standard_normal()  # the AR(1) regime's stationary spread
            decay = 0.998 ** np.arange(1, BLOCK + 1)
            regime = decay * (h0 + np.cumsum(eps / decay))  # h_i = 0.998 h_(i-1) + eps_i, half-life ~6 h
            minute = np.arange(BLOCK, dtype=float)
            season = 1 + 0.4 * np.exp(-(((minute - 870) / 120) ** 2)) + 0.15 * np.exp(-(((minute - 60) / 90) ** 2))
            return z, np.exp(regime) * season / 1.1
        return self._market_days.get_or(d, make)  # type: ignore[return-value]

    def day(self, symbol: str, d: int) -> _Day:
        """The 1440 minute candles of UTC day ``d`` (cached)."""
        return self._days.get_or((symbol, d), lambda: self._make_day(symbol, d))  # type: ignore[return-value]

    def _make_day(self, symbol: str, d: int) -> _Day:
        spec, key = self.specs[symbol], self._keys[symbol]
        pd, qd = spec.price_decimals, spec.qty_decimals
        zm, vm = self._market_day(d)
        rng = np.random.default_rng([self.seed, key, d])
        z = spec.rho * zm + math.sqrt(1 - spec.rho**2) * rng.standard_t(4, BLOCK) / math.sqrt(2.0)
        sig = spec.sigma * vm
        first, last = self.anchor(symbol, d), self.anchor(symbol, d + 1)
        walk = np.cumsum(sig * z)
        frac = np.arange(1, BLOCK + 1) / BLOCK
        logc = math.log(first) + walk + frac * (math.log(last / first) - walk[-1])  # bridged to the next open
        c = np.maximum(1, np.rint(np.exp(logc))).astype(np.int64)
        c[-1] = last
        o = np.concatenate(([first], c[:-1])).astype(np.int64)
        top, bot = np.maximum(o, c), np.minimum(o, c)
        h = top + np.rint(top * np.abs(rng.standard_normal(BLOCK)) * sig * 0.6).astype(np.int64)
        l_ = np.maximum(1, bot - np.rint(bot * np.abs(rng.standard_normal(BLOCK)) * sig * 0.6)).astype(np.int64)
        usd = spec.daily_quote / 1440 * vm**1.3 * np.exp(0.45 * rng.standard_normal(BLOCK) - 0.1) * (0.5 + 0.5 * np.abs(z))
        v = np.maximum(1, np.rint(usd / (c / 10**pd) * 10**qd)).astype(np.int64)
        # the day's trade count comes from trade_id (ids must run on without gaps from day
        # to day); the minutes share it by their turnover
        fid0, total = self.trade_id(symbol, d), self.trade_id(symbol, d + 1) - self.trade_id(symbol, d)
        weight = np.cumsum(usd * np.exp(0.25 * rng.standard_normal(BLOCK)))
        n = 1 + np.diff(np.floor((total - BLOCK) * weight / weight[-1]).astype(np.int64), prepend=0)
        n[-1] += total - int(n.sum())
        share = np.clip(0.5 + 0.2 * np.tanh(z) + 0.08 * rng.standard_normal(BLOCK), 0.03, 0.97)
        bv = np.rint(v * share).astype(np.int64)
        vwap = np.rint(0.3 * (o + c) + 0.2 * (h + l_)).astype(np.int64)
        fid = fid0 + np.concatenate(([0], np.cumsum(n)[:-1]))
        return _Day(dict(zip(_Day.FIELDS, (o, h, l_, c, v, n, bv, v * vwap, bv * vwap, fid))))

    # -- sub-minute level --------------------------------------------------

    def sub(self, symbol: str, i: int) -> tuple[list[int], ...]:
        """Cumulative state after each 250 ms step of minute i (minutes since 1970):
        (last, high, low, v, n, bv, q, bq); the last step equals the minute's candle."""
        return self._minute(symbol, i)[2]

    def _minute(self, symbol: str, i: int) -> tuple[int, int, tuple[list[int], ...]]:
        """(open, first trade id, sub-path) of minute i; cached, since a forming candle
        asks for it every 250 ms."""
        hit = self._subs.get((symbol, i))
        if hit is not None:
            return hit
        if len(self._subs) > 4 * len(self.specs) + 16:
            self._subs.clear()
        blk, m = self.day(symbol, i // BLOCK), i % BLOCK
        o, h, l_, c, v, n, bv, q, bq = (int(getattr(blk, f)[m]) for f in _Day.FIELDS[:-1])
        rng = np.random.default_rng([self.seed, self._keys[symbol], i, 1])
        frac = np.arange(1, STEPS + 1) / STEPS
        walk = np.cumsum(rng.standard_normal(STEPS))
        bridge = walk - frac * walk[-1]
        span = float(bridge.max() - bridge.min()) or 1.0
        price = o + (c - o) * frac + bridge * (0.6 * (h - l_) / span)
        ih, il = rng.integers(0, STEPS - 1, 2)
        if il == ih:
            il = (il + 1) % (STEPS - 1)
        if h > max(o, c):
            price[ih] = h
        if l_ < min(o, c):
            price[il] = l_
        last = np.clip(np.rint(price), l_, h).astype(np.int64)
        last[-1] = c
        high = np.maximum.accumulate(np.maximum(last, o))
        low = np.minimum.accumulate(np.minimum(last, o))
        weights = np.cumsum(rng.gamma(0.6, size=STEPS))
        share = weights / weights[-1]  # <= 1 everywhere, so prefixes never overshoot

        def split(total: int, f: np.ndarray) -> list[int]:
            out = np.maximum(min(1, total), np.floor(total * f)).astype(np.int64)
            out[-1] = total
            return out.tolist()

        cv = split(v, share)
        dq = np.diff(np.asarray(cv), prepend=0) * last
        cq = np.cumsum(dq)
        qshare = cq / cq[-1]
        res = (last.tolist(), high.tolist(), low.tolist(), cv, split(n, share),
               split(bv, share), split(q, qshare), split(bq, qshare))
        hit = self._subs[(symbol, i)] = (o, int(blk.fid[m]), res)
        return hit

    # -- aggregates --------------------------------------------------------

    def _aggregate(self, symbol: str, a: int, b: int, part: int, j: int,
                   open_time: int, close_time: int, closed: bool) -> Candle | None:
        """Closed minutes [a, b) plus the first j steps of minute ``part`` (minutes since 1970)."""
        if b > a:
            days = [(self.day(symbol, d), max(a, d * BLOCK) - d * BLOCK, min(b, (d + 1) * BLOCK) - d * BLOCK)
                    for d in range(a // BLOCK, (b - 1) // BLOCK + 1)]
            first, lo0, _ = days[0]
            last, _, hi1 = days[-1]
            o, c = int(first.o[lo0]), int(last.c[hi1 - 1])
            h, l_ = first.extremes(lo0, days[0][2])
            v, n, bv, q, bq = (int(first.cum[f][days[0][2]] - first.cum[f][lo0]) for f in _Day.SUMS)
            for blk, lo, hi in days[1:]:
                bh, bl = blk.extremes(lo, hi)
                h, l_ = max(h, bh), min(l_, bl)
                cum = blk.cum
                v, n, bv = v + int(cum["v"][hi] - cum["v"][lo]), n + int(cum["n"][hi] - cum["n"][lo]), \
                    bv + int(cum["bv"][hi] - cum["bv"][lo])
                q, bq = q + int(cum["q"][hi] - cum["q"][lo]), bq + int(cum["bq"][hi] - cum["bq"][lo])
            fid, lid = int(first.fid[lo0]), int(last.fid[hi1 - 1] + last.n[hi1 - 1] - 1)
            lq = max(1, int(last.v[hi1 - 1]) // STEPS)
        elif j > 0:
            o, fid, _ = self._minute(symbol, part)
            h = l_ = c = o
            v = n = bv = q = bq = 0
            lid = lq = 0
        else:
            return None
        if j > 0:
            _, part_fid, (last_, high, low, sv, sn, sbv, sq, sbq) = self._minute(symbol, part)
            s = j - 1
            h, l_, c = max(h, high[s]), min(l_, low[s]), last_[s]
            v, n, bv, q, bq = v + sv[s], n + sn[s], bv + sbv[s], q + sq[s], bq + sbq[s]
            lid = part_fid + sn[s] - 1
            lq = max(1, sv[s] - (sv[s - 1] if s else 0))
        return Candle(open_time, close_time, o, h, l_, c, v, n, bv, q, bq, fid, lid, closed, lq)

    @staticmethod
    def _split_time(t_ms: int) -> tuple[int, int]:
        """(minute index containing t, whole 250 ms steps of it elapsed at t)."""
        return t_ms // MINUTE_MS, (t_ms % MINUTE_MS) // STEP_MS

    def candle(self, symbol: str, interval_ms: int, open_ms: int, t_ms: int) -> Candle | None:
        """The candle opening at ``open_ms`` as seen at ``t_ms``: final (closed) once
        t_ms >= its end, else its values so far; None if nothing happened yet."""
        end = open_ms + interval_ms
        a = open_ms // MINUTE_MS
        if t_ms >= end:
            return self._aggregate(symbol, a, a + interval_ms // MINUTE_MS, 0, 0, open_ms, end - 1, True)
        part, j = self._split_time(t_ms)
        if part < a:
            return None
        return self._aggregate(symbol, a, part, part, j, open_ms, end - 1, False)

    def closed(self, symbol: str, interval_ms: int, first_open: int, last_open: int) -> dict[str, np.ndarray]:
        """Closed candles opening in [first_open, last_open] (interval-aligned) as arrays
        (open_time, o, h, l, c, v, n, bv, q, bq, first_id, last_id): the same numbers as
        ``candle`` gives one by one, built a day at a time (REST pages, dumps)."""
        k, cols = interval_ms // MINUTE_MS, []
        first_open += -first_open % interval_ms
        last_open -= last_open % interval_ms
        for d in range(first_open // DAY_MS, last_open // DAY_MS + 1):
            lo, hi = max(first_open, d * DAY_MS), min(last_open, (d + 1) * DAY_MS - interval_ms)
            if lo > hi:
                continue
            blk, i0 = self.day(symbol, d), (lo - d * DAY_MS) // MINUTE_MS
            i1 = (hi - d * DAY_MS) // MINUTE_MS + k
            part = lambda f: getattr(blk, f)[i0:i1].reshape(-1, k)  # noqa: E731
            cols.append({"open_time": np.arange(lo, hi + 1, interval_ms, dtype=np.int64),
                         "o": part("o")[:, 0], "h": part("h").max(axis=1), "l": part("l").min(axis=1),
                         "c": part("c")[:, -1], **{f: part(f).sum(axis=1) for f in _Day.SUMS},
                         "first_id": part("fid")[:, 0], "last_id": part("fid")[:, -1] + part("n")[:, -1] - 1})
        if not cols:
            return {f: np.zeros(0, np.int64) for f in ("open_time", "o", "h", "l", "c", *_Day.SUMS, "first_id", "last_id")}
        return {f: np.concatenate([c[f] for c in cols]) for f in cols[0]}

    def candles(self, symbol: str, interval_ms: int, first_open: int, last_open: int,
                t_ms: int) -> list[Candle]:
        """Every candle opening in [first_open, last_open] that exists at t_ms, in
        order; the last one may still be forming."""
        lo = max(first_open, self.first_ms - (self.first_ms % interval_ms))
        lo += -lo % interval_ms
        hi = min(last_open, t_ms)
        out = []
        for open_ms in range(lo, hi + 1, interval_ms):
            k = self.candle(symbol, interval_ms, open_ms, t_ms)
            if k is not None:
                out.append(k)
        return out

    def window(self, symbol: str, t_ms: int) -> Candle | None:
        """The rolling 24 h window ending at t_ms (what a 24hrTicker reports)."""
        part, j = self._split_time(t_ms)
        a = part + 1 - 1440 if j else part - 1440
        return self._aggregate(symbol, a, part, part, j, t_ms - DAY_MS, t_ms, False)
