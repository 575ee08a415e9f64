"""What a backfill run shows while it runs and says when it ends (``python -m store.backfill``).

Two tqdm bars on stderr: every candle the run asks for, and the series being
fetched now (the first one with requests left); a line per series when its last
request is done; the run's ``Result`` and its summary lines.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from types import TracebackType

from tqdm import tqdm

Key = tuple[str, str]  # symbol, interval


class Progress:
    """``with Progress(sizes, left, enabled=...) as p``: ``p.advance`` per request done.

    ``sizes``: candles asked for per series, in the order the series are fetched;
    ``left``: requests left per series (the caller's counter, read to pick the next
    series to show).
    """

    def __init__(self, sizes: dict[Key, int], left: collections.Counter, *, enabled: bool) -> None:
        self._sizes, self._left = sizes, left
        self._seen: collections.Counter = collections.Counter()  # candles asked for so far per series
        self._current: Key | None = None
        self._opts = dict(unit="candle", unit_scale=True, disable=not enabled, file=sys.stderr,
                          mininterval=0.5, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        self._bar = tqdm(total=sum(self._sizes.values()), desc="all", position=0, **self._opts)
        self._series_bar = tqdm(total=0, desc="", position=1, leave=False, **self._opts)
        self._next()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._series_bar.close()
        self._bar.close()

    def advance(self, key: Key, n: int, stored: int | None) -> None:
        """A request of ``n`` candles of ``key`` is done (after ``left`` was counted down).
        ``stored``: the series' candles stored, said when its last request is done; None
        for a series that failed (its failure was said already)."""
        self._bar.update(n)
        self._seen[key] += n
        if key == self._current:
            self._series_bar.update(n)
        if not self._left[key]:
            if stored is not None:
                say(f"{key[0]} {key[1]}: {stored:,} candles stored")
            if key == self._current:
                self._next()

    def _next(self) -> None:
        """Point the series bar at the first series with requests left."""
        self._current = next((k for k in self._sizes if self._left[k]), None)
        if self._current is not None:
            self._series_bar.set_description(" ".join(self._current), refresh=False)
            self._series_bar.reset(total=self._sizes[self._current])
            self._series_bar.update(self._seen[self._current])


def say(line: str) -> None:
    """One line on stderr that does not break the bars."""
    tqdm.write(line, file=sys.stderr)


@dataclasses.dataclass
class Result:
    """What one run did; ``exit_code`` 1 when a symbol failed or the run stopped."""

    candles: int = 0
    requests: int = 0
    weight: int = 0
    empty_recorded: int = 0
    indicator_series: int = 0  # series whose indicators were brought up to date
    indicator_rows: int = 0
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    fatal: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.fatal else 0

    def summary(self, budget: str) -> list[str]:
        """The lines ``main()`` prints when the run ends; ``budget``: the weight windows."""
        lines = [f"backfill: {self.candles:,} candles stored, {self.requests:,} requests "
                 f"(weight {self.weight:,}; budget {budget}), {self.empty_recorded} empty ranges recorded, "
                 f"indicators of {self.indicator_series} series refreshed ({self.indicator_rows:,} rows)"]
        lines += [f"failed: {message}" for message in self.failed.values()]
        if self.fatal:
            lines.append(f"error: {self.fatal}")
        return lines
