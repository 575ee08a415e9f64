"""Ad hoc SQL from the shell, safe to run while the app is ingesting.

    python -m store.sql "SELECT symbol, count(*) FROM klines GROUP BY ALL ORDER BY 2 DESC"
    python -m store.sql --format csv "SELECT * FROM tickers" > tickers.csv

Opens the file read-only for the one statement and closes it, retrying while the
writer holds it (a flush takes well under a second).
"""

from __future__ import annotations

import argparse
import sys

import polars as pl

from market import cli
from store.db import StoreError, default_db_path, query

PROG = "python -m store.sql"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a bad argument is a ``market.cli.UsageError`` (one line)."""
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("sql", help="one SQL statement (quote it)")
    parser.add_argument("--db", help=f"database file (default: $MARKET_DB or {default_db_path()})")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    parser.add_argument("--max-rows", type=cli.integer(-1, 10**9), default=100,
                        help="rows shown in table format (-1: all)")
    parser.add_argument("--timeout", type=cli.seconds(allow_zero=True), default=30.0,
                        help="seconds to wait while the file is busy")
    args = parser.parse_args(argv)
    if not args.sql.strip():
        raise cli.UsageError(f"the SQL statement is empty; give one, e.g. {PROG} \"SELECT count(*) FROM klines\"")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 the query or the database failed; 2 a bad argument."""
    try:
        args = parse_args(argv)
    except cli.UsageError as exc:
        print(cli.usage_line(PROG, exc), file=sys.stderr)
        return 2
    try:
        frame = query(args.sql, db=args.db, timeout=args.timeout)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.format == "csv":
        frame.write_csv(sys.stdout)
    elif args.format == "json":
        sys.stdout.write(frame.write_json() + "\n")
    else:
        with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, tbl_width_chars=200,
                       tbl_hide_dataframe_shape=False, fmt_str_lengths=40):
            print(frame)
    return 0


if __name__ == "__main__":
    sys.exit(main())
