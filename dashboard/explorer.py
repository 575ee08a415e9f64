"""The Data page (``/app?page=data``): browse tables, find candles, coverage, SQL.

Filtering, sorting, counting and paging happen in DuckDB (store/browse.py, through
the sandbox); only one page of rows reaches the browser, so a 26M-row table opens
as fast as a small one. Every query runs in a worker thread, so the live feed and
the other sessions never wait for this page, and every query opens the file
read-only and closes it, so the writer flushes between them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pandas as pd
import panel as pn
import param
import polars as pl

from dashboard.console import Console
from dashboard.links import chart_link
from dashboard.live import SharedFeed
from dashboard.refresh import refresh_callback
from market.schema import INTERVAL_MS
from store import StoreError, browse

PAGE_SIZES = (50, 100, 500)
CSV_MAX_ROWS = 100_000
STATUS_EVERY_MS = 1_000


def _pandas(frame: pl.DataFrame) -> pd.DataFrame:
    return frame.to_pandas() if frame.width else pd.DataFrame()


class Explorer(pn.viewable.Viewer):
    """One session's Data page."""

    table = param.Selector(default="klines", objects=["klines"], doc="Table or view to browse.")
    column = param.Selector(default=None, objects=[], allow_None=True, doc="Column to filter on.")
    op = param.Selector(default="=", objects=list(browse.OPERATORS), doc="Filter operator.")
    value = param.String("", doc="Filter value (ignored by 'is null' / 'is not null').")
    order_by = param.Selector(default=None, objects=[], allow_None=True, doc="Sort column (on the server).")
    descending = param.Boolean(False, doc="Sort newest/largest first.")
    page_size = param.Selector(default=100, objects=list(PAGE_SIZES), doc="Rows per page.")

    symbol = param.String("BTCUSDT", doc="Symbol whose candles to find.")
    interval = param.Selector(default="1m", objects=list(INTERVAL_MS), doc="Candle interval.")
    start = param.Date(None, allow_None=True, doc="From (UTC).")
    end = param.Date(None, allow_None=True, doc="To (UTC, exclusive).")

    def __init__(self, feed: SharedFeed, **params) -> None:
        super().__init__(**params)
        self.feed = feed
        self.db = getattr(feed, "db", None) or feed.config.db_path()
        self.filters: list[browse.Filter] = []
        self.offset = 0
        self.total = 0
        self._status = pn.pane.HTML("", styles={"color": "white", "font-size": "14px"})
        self._error = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self._filters_md = pn.pane.Markdown("No filter.", sizing_mode="stretch_width")
        self._page_info = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["browse-info"])
        # sorting happens on the server over all rows, so the header sorters (one page only) are off
        self._rows = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, height=460,
                                          pagination=None, sizing_mode="stretch_width", css_classes=["browse-rows"],
                                          configuration={"columnDefaults": {"headerSort": False}})
        self._candles = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, height=420,
                                             pagination="local", page_size=200, sizing_mode="stretch_width",
                                             css_classes=["candle-rows"])
        self._candle_info = pn.pane.HTML("", sizing_mode="stretch_width")
        self._coverage = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, height=320,
                                              pagination=None, sizing_mode="stretch_width",
                                              css_classes=["coverage-rows"])
        self._coverage.on_click(self._on_coverage_click)
        self._gaps = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, height=260,
                                          pagination=None, sizing_mode="stretch_width", css_classes=["gap-rows"])
        self._coverage_info = pn.pane.HTML("Click a row to list its gaps and open it on the chart.",
                                           sizing_mode="stretch_width")
        self._coverage_frame = pl.DataFrame()
        self._download = pn.widgets.FileDownload(callback=self._csv, filename="klines.csv",
                                                 label=f"Download CSV (up to {CSV_MAX_ROWS:,} rows)",
                                                 button_type="light", width=260)
        self.console = Console(self.db)
        self._callback = refresh_callback(self._tick, STATUS_EVERY_MS)
        if pn.state.curdoc is not None:
            pn.state.on_session_destroyed(lambda ctx: self._callback.stop())
        self._tick()
        pn.state.onload(self._load)

    # -- browse -------------------------------------------------------------------
    async def _load(self) -> None:
        try:
            tables = await asyncio.to_thread(browse.tables, db=self.db)
        except StoreError as exc:
            return self._fail(exc)
        names = tables["name"].to_list() or ["klines"]
        self.param.table.objects = names
        if self.table not in names:
            self.table = names[0]
        await self._on_table()
        await self.refresh_coverage()

    @param.depends("table", watch=True)
    async def _on_table(self) -> None:
        try:
            cols = await asyncio.to_thread(browse.columns, self.table, db=self.db)
        except (StoreError, ValueError) as exc:
            return self._fail(exc)
        names = list(cols)
        self.param.column.objects = names
        self.param.order_by.objects = [None, *names]
        self.column = "symbol" if "symbol" in names else names[0]
        # storage order first: a sort over 26M rows is a full scan, so it waits for the user's choice
        self.order_by = None
        self.filters = []
        self.offset = 0
        self._download.filename = f"{self.table}.csv"
        await self.refresh()

    async def refresh(self) -> None:
        """Fetch the current page of the current table under the current filters and order."""
        started = time.perf_counter()
        try:
            page = await asyncio.to_thread(
                browse.page, self.table, filters=list(self.filters), order_by=self.order_by,
                descending=self.descending, offset=self.offset, limit=self.page_size, db=self.db)
        except (StoreError, ValueError) as exc:
            return self._fail(exc)
        self._error.visible = False
        self.total = page.total
        self._rows.value = _pandas(page.frame)
        last = min(page.offset + page.frame.height, page.total)
        took = (time.perf_counter() - started) * 1000
        self._page_info.object = (
            f"rows <b>{page.offset + 1 if page.total else 0:,}–{last:,}</b> of <b>{page.total:,}</b> · "
            f"{took:,.0f} ms")
        self._filters_md.object = ("Filters: " + " AND ".join(
            f"`{f.column} {f.op}{'' if f.op in browse.NO_VALUE else ' ' + repr(f.value)}`" for f in self.filters)
            if self.filters else "No filter.")

    @param.depends("order_by", "descending", "page_size", watch=True)
    async def _on_order(self) -> None:
        self.offset = 0
        await self.refresh()

    async def _add_filter(self, *_) -> None:
        if self.column is None:
            return
        self.filters.append(browse.Filter(self.column, self.op, None if self.op in browse.NO_VALUE else self.value))
        self.offset = 0
        await self.refresh()

    async def _clear_filters(self, *_) -> None:
        self.filters, self.offset = [], 0
        await self.refresh()

    async def _page(self, step: int) -> None:
        self.offset = max(0, min(self.offset + step * self.page_size, max(0, self.total - 1)))
        await self.refresh()

    async def _prev(self, *_) -> None:
        await self._page(-1)

    async def _next(self, *_) -> None:
        await self._page(+1)

    def _csv(self):
        import io

        frame, more = browse.export(self.table, filters=list(self.filters), order_by=self.order_by,
                                    descending=self.descending, max_rows=CSV_MAX_ROWS, db=self.db)
        data = frame.write_csv().encode()
        cut = f", cut at {CSV_MAX_ROWS:,}" if more else ""
        self._download.label = f"Last CSV: {frame.height:,} rows, {len(data) / 1e6:,.1f} MB{cut}"
        return io.BytesIO(data)

    # -- candles ------------------------------------------------------------------
    async def find_candles(self, *_) -> None:
        def as_dt(d):
            return None if d is None else dt.datetime.combine(d, dt.time()) if isinstance(d, dt.date) and not isinstance(d, dt.datetime) else d

        try:
            page = await asyncio.to_thread(browse.candles, self.symbol.strip().upper(), self.interval,
                                           as_dt(self.start), as_dt(self.end), db=self.db)
        except (StoreError, ValueError) as exc:
            return self._fail(exc)
        self._error.visible = False
        self._candles.value = _pandas(page.frame)
        shown = f" (first {page.frame.height:,})" if page.total > page.frame.height else ""
        link = chart_link(self.symbol.strip().upper(), self.interval, as_dt(self.start), as_dt(self.end))
        self._candle_info.object = (f"<b>{page.total:,}</b> candles{shown} · {page.elapsed_ms:,.0f} ms · "
                                    f'<a href="{link}" target="_self">open on the chart</a>')

    # -- coverage -----------------------------------------------------------------
    async def refresh_coverage(self, *_) -> None:
        try:
            frame = await asyncio.to_thread(browse.coverage, db=self.db)
        except StoreError as exc:
            return self._fail(exc)
        self._coverage_frame = frame
        self._coverage.value = _pandas(frame)

    async def _on_coverage_click(self, event) -> None:
        try:
            row = self._coverage_frame.row(event.row, named=True)
        except (IndexError, TypeError):
            return
        try:
            gaps = await asyncio.to_thread(browse.gaps, row["symbol"], row["interval"], db=self.db)
        except (StoreError, ValueError) as exc:
            return self._fail(exc)
        self._gaps.value = _pandas(gaps)
        link = chart_link(row["symbol"], row["interval"], row["first"], row["last"])
        at = int(gaps["at_exchange"].sum()) if gaps.height else 0
        self._coverage_info.object = (
            f"<b>{row['symbol']} {row['interval']}</b>: {row['candles']:,} candles from {row['first']:%Y-%m-%d %H:%M} "
            f"to {row['last']:%Y-%m-%d %H:%M}, {gaps.height:,} gaps ({at:,} missing at the exchange) · "
            f'<a href="{link}" target="_self">open this range on the chart</a>')

    # -- status -------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            self._status.object = self.feed.status().describe()
        except Exception as exc:  # the page must keep working whatever the feed does
            self._status.object = f"feed status unavailable: {exc}"

    def _fail(self, exc: Exception) -> None:
        self._error.object = str(exc)
        self._error.visible = True

    # -- layout -------------------------------------------------------------------
    def _browse_tab(self) -> pn.Column:
        fit = {"sizing_mode": "stretch_width"}
        add = pn.widgets.Button(name="Add filter", button_type="primary", width=110)
        add.on_click(self._add_filter)
        clear = pn.widgets.Button(name="Clear", width=80)
        clear.on_click(self._clear_filters)
        prev_b = pn.widgets.Button(name="◀ Prev", width=90)
        next_b = pn.widgets.Button(name="Next ▶", width=90)
        prev_b.on_click(self._prev)
        next_b.on_click(self._next)
        w = pn.widgets
        return pn.Column(
            pn.Row(w.Select.from_param(self.param.table, width=180),
                   w.Select.from_param(self.param.order_by, name="Sort by", width=160),
                   w.Checkbox.from_param(self.param.descending, name="descending", margin=(30, 10, 0, 10)),
                   w.Select.from_param(self.param.page_size, name="Rows", width=90), **fit),
            pn.Row(w.Select.from_param(self.param.column, name="Filter column", width=180),
                   w.Select.from_param(self.param.op, name="Operator", width=130),
                   w.TextInput.from_param(self.param.value, name="Value", width=200),
                   pn.Column(pn.Spacer(height=22), pn.Row(add, clear)), **fit),
            self._filters_md,
            pn.Row(prev_b, next_b, self._page_info, self._download, **fit),
            self._rows, **fit,
        )

    def _candles_tab(self) -> pn.Column:
        go = pn.widgets.Button(name="Find candles", button_type="primary", width=140)
        go.on_click(self.find_candles)
        w = pn.widgets
        return pn.Column(
            pn.Row(w.TextInput.from_param(self.param.symbol, width=150),
                   w.Select.from_param(self.param.interval, width=90),
                   w.DatePicker.from_param(self.param.start, width=160),
                   w.DatePicker.from_param(self.param.end, width=160),
                   pn.Column(pn.Spacer(height=22), go), sizing_mode="stretch_width"),
            self._candle_info, self._candles, sizing_mode="stretch_width",
        )

    def _coverage_tab(self) -> pn.Column:
        again = pn.widgets.Button(name="Refresh", width=100)
        again.on_click(self.refresh_coverage)
        return pn.Column(pn.Row(again, self._coverage_info, sizing_mode="stretch_width"), self._coverage,
                         "#### Gaps", self._gaps, sizing_mode="stretch_width")

    def __panel__(self) -> pn.template.BootstrapTemplate:
        tabs = pn.Tabs(("Browse", self._browse_tab()), ("Find candles", self._candles_tab()),
                       ("Coverage", self._coverage_tab()), ("SQL", self.console), dynamic=False,
                       sizing_mode="stretch_width")
        back = pn.pane.HTML('<a href="?" target="_self" style="color:white;font-weight:600">← Charts</a>',
                            width=90, margin=(12, 10))
        return pn.template.BootstrapTemplate(
            title="Crypto market explorer · Data",
            header=[pn.Row(back, self._status)],
            main=[self._error, tabs],
            sidebar=[pn.pane.Markdown(_HELP, sizing_mode="stretch_width")],
            sidebar_width=260,
            header_background="#1e2433",
        )


_HELP = f"""
**Data** shows what the app stored, read-only.

- **Browse**: filter, sort and page any table on the server; the count and time
  are shown; download the current view as CSV (at most {CSV_MAX_ROWS:,} rows).
- **Find candles**: one symbol, interval and date range, with indicators.
- **Coverage**: first and last candle and gaps per symbol and interval; click a
  row for its gaps and a link to that range on the chart.
- **SQL**: read-only DuckDB SQL with examples; queries are cancelled after 10 s
  so the live feed never waits long for the file.
"""
