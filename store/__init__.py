"""The DuckDB store: the only package that runs SQL.

>>> import store
>>> store.query("SELECT symbol, count(*) FROM klines GROUP BY ALL")
>>> with store.reader() as con:   # read-only, closed on exit
...     con.sql("SELECT max(open_time) FROM klines").show()
"""

from store.db import (
    DEFAULT_DB,
    MarketMismatch,
    QueryError,
    StoreError,
    StoreLocked,
    default_db_path,
    prepare,
    query,
    reader,
)
from store.writer import Writer, WriterStatus

__all__ = [
    "DEFAULT_DB",
    "MarketMismatch",
    "QueryError",
    "StoreError",
    "StoreLocked",
    "Writer",
    "WriterStatus",
    "default_db_path",
    "prepare",
    "query",
    "reader",
]
