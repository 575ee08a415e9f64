"""The SQL box of the Data page: read-only DuckDB SQL against the market file.

Every query goes through ``store.sandbox`` (read-only attach, no files or URLs, no
setting changes, one SELECT, a time and a row limit) in a worker thread, so the
server's event loop, and with it the live feed and every other session, keeps
running while a query does. Errors are DuckDB's own words in an alert, never a
traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pandas as pd
import panel as pn
import param
import polars as pl
from bokeh.models import HoverTool
from bokeh.plotting import figure

from store import StoreError, sandbox

#: One click away: the queries users ask for first.
EXAMPLES: dict[str, str] = {
    "Top movers": (
        "SELECT symbol, last_price, round(price_change_pct, 2) AS change_pct, quote_volume\n"
        "FROM tickers\nORDER BY abs(price_change_pct) DESC\nLIMIT 20"
    ),
    "Last signals": (
        "SELECT i.symbol, i.open_time, i.signal, round(i.rsi, 1) AS rsi,\n"
        "       round(i.stoch_k, 1) AS stoch_k, k.close\n"
        "FROM indicators i JOIN klines k USING (symbol, interval, open_time)\n"
        "WHERE i.signal IS NOT NULL AND i.interval = '1m'\n"
        "  AND i.open_time > (SELECT max(open_time) FROM indicators) - INTERVAL 1 DAY\n"
        "ORDER BY i.open_time DESC\nLIMIT 50"
    ),
    "1h candles in SQL": (
        "SELECT time_bucket(INTERVAL 1 HOUR, open_time) AS hour,\n"
        "       arg_min(open, open_time) AS open, max(high) AS high, min(low) AS low,\n"
        "       arg_max(close, open_time) AS close, sum(volume) AS volume\n"
        "FROM klines\n"
        "WHERE symbol = 'BTCUSDT' AND interval = '1m'\n"
        "  AND open_time >= (SELECT max(open_time) FROM klines WHERE symbol = 'BTCUSDT') - INTERVAL 7 DAY\n"
        "GROUP BY hour\nORDER BY hour"
    ),
    "Candles per symbol": (
        "SELECT symbol, interval, count(*) AS candles, min(open_time) AS first, max(open_time) AS last\n"
        "FROM klines\nGROUP BY ALL\nORDER BY candles DESC"
    ),
}
HISTORY = 20


def line_columns(frame: pl.DataFrame) -> tuple[str | None, list[str]]:
    """The first time column and the numeric columns of a result (what a quick chart can draw)."""
    time_col = next((c for c, t in frame.schema.items() if t.is_temporal()), None)
    numeric = [c for c, t in frame.schema.items() if t.is_numeric()]
    return time_col, numeric


def line_chart(frame: pl.DataFrame, x: str, y: str):
    """A plain Bokeh line of ``y`` over time ``x``, sorted by time."""
    data = frame.select(x, y).drop_nulls().sort(x).to_pandas()
    fig = figure(x_axis_type="datetime", height=280, sizing_mode="stretch_width",
                 tools="pan,xwheel_zoom,box_zoom,reset,save", active_scroll="xwheel_zoom")
    fig.line(x=data[x], y=data[y], line_width=1.5, color="#2962ff")
    fig.add_tools(HoverTool(tooltips=[(x, "@x{%F %T}"), (y, "@y{0,0.[0000]}")], formatters={"@x": "datetime"},
                            mode="vline"))
    fig.yaxis.axis_label = y
    return fig


class Console(pn.viewable.Viewer):
    """SQL editor, examples, session history, result table and a quick line chart."""

    sql = param.String(EXAMPLES["Top movers"], doc="The query to run (read-only DuckDB SQL).")
    timeout = param.Number(sandbox.DEFAULT_TIMEOUT, bounds=(1, 60), doc="Seconds before the query is cancelled.")
    max_rows = param.Integer(1_000, bounds=(10, sandbox.DEFAULT_MAX_ROWS), doc="Rows shown at most.")

    def __init__(self, db, **params) -> None:
        super().__init__(**params)
        self.db = db
        self.history: list[str] = []
        self._editor = pn.widgets.TextAreaInput.from_param(
            self.param.sql, name="", height=170, sizing_mode="stretch_width",
            styles={"font-family": "monospace"}, css_classes=["sql-editor"])
        self._run = pn.widgets.Button(name="Run  (read-only)", button_type="primary", width=160)
        self._run.on_click(self._on_run)
        self._examples = pn.Row(*[self._example_button(n) for n in EXAMPLES], styles={"flex-wrap": "wrap"})
        self._past = pn.widgets.Select(name="This session's queries", options=[], sizing_mode="stretch_width")
        self._past.param.watch(self._on_past, "value")
        self._info = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["sql-info"])
        self._error = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width",
                                    css_classes=["sql-error"])
        self._table = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, height=380,
                                           pagination="local", page_size=100, sizing_mode="stretch_width",
                                           css_classes=["sql-result"])
        self._y = pn.widgets.Select(name="Chart column", options=[], visible=False, width=220)
        self._y.param.watch(lambda *_: self._draw(), "value")
        self._chart = pn.pane.Bokeh(None, visible=False, sizing_mode="stretch_width")
        self._frame = pl.DataFrame()

    def _example_button(self, name: str) -> pn.widgets.Button:
        b = pn.widgets.Button(name=name, button_type="light", css_classes=["sql-example"])
        b.on_click(lambda *_: setattr(self, "sql", EXAMPLES[name]))
        return b

    def _on_past(self, event) -> None:
        if event.new:
            self.sql = event.new

    async def _on_run(self, *_) -> None:
        await self.execute(self.sql)

    async def execute(self, sql: str) -> None:
        """Run ``sql`` in a worker thread and show the rows or DuckDB's message."""
        self._run.loading = True
        self._error.visible = False
        self._remember(sql)
        try:
            result = await asyncio.to_thread(
                sandbox.run, sql, db=self.db, timeout=self.timeout, max_rows=self.max_rows)
        except (StoreError, ValueError) as exc:
            self._error.object = str(exc)
            self._error.visible = True
            self._info.object = ""
            self._table.value = pd.DataFrame()  # never leave an older result under a new error
            self._y.visible = self._chart.visible = False
            return
        finally:
            self._run.loading = False
        self._frame = result.frame
        self._table.value = result.frame.to_pandas()
        more = f" (first {self.max_rows:,}; more exist: add a LIMIT or a WHERE)" if result.truncated else ""
        self._info.object = (f"<b>{result.frame.height:,}</b> rows{more} · {result.elapsed_ms:,.0f} ms · "
                             f"ran {dt.datetime.now(dt.UTC):%H:%M:%S} UTC")
        time_col, numeric = line_columns(result.frame)
        numeric = [c for c in numeric if c != time_col]
        self._y.options = numeric
        has_chart = time_col is not None and bool(numeric) and result.frame.height > 1
        self._y.visible = self._chart.visible = has_chart
        if has_chart:
            self._y.value = numeric[-1] if "close" not in numeric else "close"
            self._draw()

    def _remember(self, sql: str) -> None:
        text = sql.strip()
        self.history = [text] + [q for q in self.history if q != text][: HISTORY - 1]
        self._past.options = {(" ".join(q.split())[:90]): q for q in self.history}

    def _draw(self) -> None:
        time_col, _ = line_columns(self._frame)
        if time_col is None or not self._y.value or self._y.value not in self._frame.columns:
            return
        self._chart.object = line_chart(self._frame, time_col, self._y.value)

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown(
                "Read-only DuckDB SQL on the market file: `SELECT`, `WITH`, `FROM`, `SHOW`, `DESCRIBE`, "
                f"`SUMMARIZE`. Cancelled after {self.timeout:g} s; files, URLs and settings are off limits.",
                sizing_mode="stretch_width"),
            self._examples, self._editor, pn.Row(self._run, self._past, sizing_mode="stretch_width"),
            self._error, self._info, self._table, pn.Row(self._y), self._chart,
            sizing_mode="stretch_width",
        )
