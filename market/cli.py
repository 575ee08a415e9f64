"""Command-line arguments that fail in one plain line: what is wrong, what is allowed.

Every entry point (``python -m store.ingest``, ``python -m store.sql``, the
dashboard's ``--args``) parses with ``ArgumentParser``, which raises
``UsageError`` instead of printing the usage block and exiting; the entry point
prints ``usage_line(prog, exc)`` and exits 2 (the dashboard shows it on the page).
The ``type=`` converters below say what is allowed when they refuse a value.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from market.schema import INTERVAL_MS


class UsageError(ValueError):
    """A bad command-line argument; ``str()`` is one line."""


def _one_line(text: str) -> str:
    # argparse echoes raw arguments ("unrecognized arguments: ..."): a newline in one
    # would split the message, so control characters become spaces.
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors raise ``UsageError`` (``--help`` still prints)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(_one_line(f"{message}; see {self.prog} --help"))


def usage_line(prog: str, exc: BaseException) -> str:
    """The one line a command prints for a bad argument."""
    return _one_line(f"{prog}: error: {exc}")


def seconds(*, allow_zero: bool = False) -> Callable[[str], float]:
    """``type=`` for a finite number of seconds, > 0 (or >= 0 with ``allow_zero``)."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            least = "0 or more" if allow_zero else "more than 0"
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds; give a finite number {least}, e.g. 30")
        return value
    return convert


def integer(low: int, high: int) -> Callable[[str], int]:
    """``type=`` for an integer in [low, high]."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give a whole number from {low} to {high}")
        return value
    return convert


def number(low: float, high: float) -> Callable[[str], float]:
    """``type=`` for a finite number in [low, high]."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # false for NaN too
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give a number from {low:g} to {high:g}")
        return value
    return convert


def interval(text: str) -> str:
    """``type=`` for a Binance kline interval."""
    if text not in INTERVAL_MS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a kline interval; use one of {', '.join(INTERVAL_MS)}")
    return text


def symbols(text: str) -> tuple[str, ...]:
    """``type=`` for comma-separated symbols: upper-cased, de-duplicated, letters and digits only."""
    out: list[str] = []
    for raw in text.split(","):
        sym = raw.strip().upper()
        if not sym:
            continue
        if not (sym.isascii() and sym.isalnum()):
            raise argparse.ArgumentTypeError(
                f"symbol {raw.strip()!r} is not letters and digits; give symbols like BTCUSDT,ETHUSDT")
        if sym not in out:
            out.append(sym)
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r} names no symbol; give comma-separated symbols like BTCUSDT,ETHUSDT")
    return tuple(out)
