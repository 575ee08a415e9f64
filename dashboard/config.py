"""The dashboard's settings, declared once and parsed from ``panel serve ... --args``.

A bad ``--args`` value is a ``ConfigError`` whose one line says what is wrong and
what is allowed (``panel serve`` parses the arguments inside a session, where an
exit or a traceback helps nobody: the caller shows the line, see dashboard/pages.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import param

from market import cli
from market.presets import COMMON_FLAGS, DEFAULT_PRESET, DEFAULT_SYMBOLS, PRESETS
from market.schema import INTERVAL_MS
from store.db import DEFAULT_DB, default_db_path
from store.ingest import IngestConfig

TIMEFRAMES = ("1m", "5m", "15m", "1h", "4h", "1d")
DEMO_DB = DEFAULT_DB.with_name("demo.duckdb")
PROG = "panel serve dashboard/app.py --args"
#: what a region-block message may suggest: the dashboard also has --demo
FLAGS = (*COMMON_FLAGS, "--demo")


class ConfigError(cli.UsageError):
    """A bad ``--args`` value; ``str()`` is the one line to log and show."""


class AppConfig(param.Parameterized):
    """Server-wide settings; one instance per server process, shared read-only by sessions."""

    demo = param.Boolean(False, doc="Run against the in-process local exchange (no network).")
    db = param.Path(None, check_exists=False, allow_None=True,
                    doc="Database file; default $MARKET_DB, else store/market.duckdb (store/demo.duckdb with --demo).")
    exchange = param.Selector(default=DEFAULT_PRESET, objects=list(PRESETS), doc="Exchange preset.")
    ws_url = param.String(None, allow_None=True, doc="Stream base without /stream (overrides the preset).")
    rest_url = param.String(None, allow_None=True, doc="REST base (goes with --ws-url).")
    symbols = param.List(list(DEFAULT_SYMBOLS), item_type=str, doc="Symbols to follow.")
    interval = param.Selector(default="1m", objects=list(INTERVAL_MS), doc="Streamed candle interval.")
    refresh_ms = param.Integer(500, bounds=(100, 10_000), doc="How often each session pulls new data.")
    speed = param.Number(1.0, bounds=(0, None), doc="Demo exchange clock speed (1 = real time).")

    @classmethod
    def from_args(cls, argv: list[str]) -> AppConfig:
        """Settings from ``--args``; a bad value raises ``ConfigError`` (one line, exit code 2 material).

        ``--help`` prints the options and raises SystemExit(0), as any command does.
        """
        p = cli.ArgumentParser(prog=PROG)
        p.add_argument("--demo", action="store_true", help=cls.param.demo.doc)
        p.add_argument("--db", help=cls.param.db.doc)
        p.add_argument("--exchange", default=DEFAULT_PRESET, help=cls.param.exchange.doc)
        p.add_argument("--ws-url", help=cls.param.ws_url.doc)
        p.add_argument("--rest-url", help=cls.param.rest_url.doc)
        p.add_argument("--symbols", type=cli.symbols, default=DEFAULT_SYMBOLS,
                       help="Comma-separated symbols (default: 50 liquid USD-M perps).")
        p.add_argument("--interval", type=cli.interval, default="1m", help=cls.param.interval.doc)
        p.add_argument("--refresh-ms", type=cli.integer(100, 10_000), default=500, help=cls.param.refresh_ms.doc)
        p.add_argument("--speed", type=cli.number(0, 100_000), default=1.0, help=cls.param.speed.doc)
        try:
            a = p.parse_args(argv)
            config = cls(demo=a.demo, db=a.db, exchange=a.exchange.strip().lower(), ws_url=a.ws_url,
                         rest_url=a.rest_url, symbols=list(a.symbols), interval=a.interval,
                         refresh_ms=a.refresh_ms, speed=a.speed)
            config.ingest_config().feed_config()  # presets and URLs, before anything starts
        except cli.UsageError as exc:
            raise ConfigError(cli.usage_line(PROG, exc)) from None
        except ValueError as exc:  # param's or the presets' own checks
            message = str(exc)
            if "Selector parameter 'AppConfig.exchange'" in message:
                message = f"unknown exchange preset {a.exchange!r}; use one of {', '.join(PRESETS)}"
            raise ConfigError(cli.usage_line(PROG, f"{message}; see {PROG} --help")) from None
        return config

    def db_path(self) -> Path:
        if self.db:
            return Path(self.db).expanduser()
        if self.demo and "MARKET_DB" not in os.environ:
            return DEMO_DB  # demo prices are synthetic: never mix them into the real history
        return default_db_path()

    def ingest_config(self, ws_url: str | None = None, rest_url: str | None = None) -> IngestConfig:
        return IngestConfig(
            db=self.db_path(), symbols=tuple(self.symbols), interval=self.interval,
            exchange=self.exchange, ws_url=ws_url or self.ws_url, rest_url=rest_url or self.rest_url,
            flags=FLAGS,
        )
