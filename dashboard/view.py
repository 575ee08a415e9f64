"""One browser session's page: a ``pn.viewable.Viewer`` that pulls from the shared feed.

Every session owns its streams and one periodic callback; per tick it sends one
coalesced update to each stream (new closed candles to the Buffer, the forming
candle to the Pipe), patches the heatmap in place and, every ``TABLE_EVERY`` s,
refreshes the signal table. Closing the tab stops the callback with the session,
and nothing outside holds the session.
"""

from __future__ import annotations

import functools
import logging
import time

import panel as pn
import param
import polars as pl

from dashboard.chart_panel import ChartPanel
from dashboard.heatmap import Heatmap
from dashboard.links import parse_chart_link
from dashboard.live import SharedFeed
from dashboard.refresh import refresh_callback
from dashboard.table import MIN_WIDTH as TABLE_MIN_WIDTH
from dashboard.table import price_formatter, signal_table, signal_table_frame, table_decimals
from dashboard.theme import session_theme

log = logging.getLogger("dashboard.view")

COLOR_BY = {"24h change %": "change", "RSI": "rsi"}
#: Seconds between signal-table updates. Every update rebuilds the table's rows in the
#: browser (Panel re-sends sorted tables whole), and a click whose press and release
#: straddle a rebuild is lost: at the 0.5 s tick, 3-4 of 10 clicks held 150 ms were.
TABLE_EVERY = 2.0
#: Height of the main chart's four panes (px).
CHART_HEIGHT = 720


class Dashboard(pn.viewable.Viewer):
    """The page: status, chart of the selected symbol and timeframe, heatmap, signal table."""

    symbol = param.Selector(doc="Symbol shown in the main chart.")
    color_by = param.Selector(default="24h change %", objects=list(COLOR_BY), doc="What the heatmap colours show.")
    size_by_volume = param.Boolean(False, label="Tile size by 24h volume",
                                   doc="Heatmap tiles sized by 24h quote volume (a treemap) instead of a grid.")

    def __init__(self, feed: SharedFeed, **params) -> None:
        symbols = list(feed.config.symbols)
        self.param.symbol.objects = symbols
        # a link from the Data page: ?symbol=...&timeframe=...&from=...&to=...
        link_symbol, link_timeframe, link_start, link_end = parse_chart_link(pn.state.session_args or {})
        params.setdefault("symbol", link_symbol if link_symbol in symbols else symbols[0])
        super().__init__(**params)
        self.feed = feed
        self.session_id = id(self)
        self.ticks = 0
        self._status = pn.pane.HTML("starting…", sizing_mode="stretch_width", css_classes=["feed-status"],
                                    styles={"color": "white", "font-size": "14px"})
        self._progress = pn.pane.Alert("", alert_type="info", sizing_mode="stretch_width", visible=False)
        self._started = pn.pane.HTML(feed.started_words(), sizing_mode="stretch_width",
                                     css_classes=["recording-since"], styles={"font-size": "12px"})
        self._chart = ChartPanel(feed, self.symbol, height=CHART_HEIGHT)
        if link_start is not None and link_end is not None:
            self._chart.go_to_range(link_start, link_end, link_timeframe)
        self._heatmap = Heatmap(symbols)
        self._heatmap.on_select(self._select)
        self._theme = session_theme()
        self._known = feed.price_decimals()  # decimals seen in prices (others: by magnitude, for now)
        self._decimals = self._known
        snap = self.feed.snapshot()
        self._table = signal_table(signal_table_frame(_table_input(snap), order=symbols),
                                   decimals=self._decimals, theme=self._theme)
        self._table.on_click(self._table_click)
        self._snapshot_seen: object = None
        self._table_at = time.monotonic()  # of the last table update: the one just built
        if snap.height and "rsi" in snap.columns:
            # the tiles go out with the page, not a tick later in a patch of their own
            self._heatmap.update(snap, COLOR_BY[self.color_by])
            self._snapshot_seen = snap
        self.param.watch(self._build, ["symbol"])
        self.param.watch(lambda *_: self._refresh_heatmap(force=True), ["color_by"])
        self.param.watch(lambda e: self._heatmap.set_layout("volume" if e.new else "grid"), ["size_by_volume"])
        self._callback = refresh_callback(self._tick, feed.config.refresh_ms)
        feed.session_opened(str(self.session_id))
        if pn.state.curdoc is not None:
            pn.state.on_session_destroyed(self._destroyed)

    # -- events -------------------------------------------------------------------
    def _select(self, symbol: str) -> None:
        if symbol in self.param.symbol.objects:
            self.symbol = symbol

    def _table_click(self, event) -> None:
        try:
            symbol = self._table.value.loc[event.row, "symbol"]
        except (KeyError, TypeError):
            return
        # Tabulator's click reaches us in a coroutine Panel runs without the document lock;
        # the chart then changes Bokeh models directly, which needs it (Bokeh raised "we should
        # have the lock when the document changes" and the click was lost): next tick, locked
        pn.state.execute(functools.partial(self._select, symbol), schedule=True)

    def _destroyed(self, session_context) -> None:
        self._callback.stop()
        self.feed.session_closed(str(self.session_id))

    # -- drawing ------------------------------------------------------------------
    def _build(self, *_) -> None:
        """Chart the selected symbol (same figures: replacing them while the browser still
        applies updates to the old ones makes Bokeh fail with "reference ... isn't known")."""
        started = time.perf_counter()
        self._chart.show(self.symbol)
        log.debug("built %s in %.0f ms", self.symbol, (time.perf_counter() - started) * 1000)

    def _tick(self) -> None:
        self.ticks += 1
        self._status.object = self._status_html()
        if self._started.object != (words := self.feed.started_words()):
            self._started.object = words
        self._chart.tick()
        self._refresh_heatmap()
        self._show_progress()

    def _show_progress(self) -> None:
        """While the chart has no candles yet, say what is being fetched instead of a blank chart."""
        empty = len(self._chart.chart.closed.data["time"]) == 0
        if not empty:
            if self._progress.visible:
                self._progress.visible = False
            return
        st = self.feed.status().feed
        doing = st.backfill or ("waiting for the first candles" if st.state == "live" else st.describe())
        self._progress.object = f"<b>Loading {self.symbol} {self._chart.timeframe}:</b> {doing}"
        self._progress.visible = True

    def _refresh_heatmap(self, force: bool = False) -> None:
        snap = self.feed.snapshot()
        if snap is self._snapshot_seen and not force:
            return
        self._snapshot_seen = snap
        if snap.height == 0 or "rsi" not in snap.columns:
            return
        self._heatmap.update(snap, COLOR_BY[self.color_by])
        now = time.monotonic()
        if force or now - self._table_at >= TABLE_EVERY:
            self._table_at = now
            self._update_table(snap)

    def _update_table(self, snap: pl.DataFrame) -> None:
        # Replace the value rather than Tabulator.patch: patch applies a frame cell by cell
        # through pandas .loc (~400 cells: 30-90 ms per tick per session, measured), while a
        # new value costs ~5 ms and sends ~4 KB. The user's sorters and header filters stay;
        # with a sorter active (the default) the browser rebuilds the rows either way.
        frame = signal_table_frame(snap, order=self.param.symbol.objects)
        if len(self._known) < len(self.param.symbol.objects):  # symbols whose prices were not seen yet
            self._known = self.feed.price_decimals()
            decimals = table_decimals(frame, self._known)
            if decimals != self._decimals:
                self._decimals = decimals
                self._table.formatters = {**self._table.formatters, "price": price_formatter(decimals)}
        self._table.value = frame

    def _status_html(self) -> str:
        st = self.feed.status()
        colour = {"live": "#26a69a", "connecting": "#ffb300", "reconnecting": "#ffb300"}.get(st.feed.state, "#ef5350")
        words = st.describe()
        if st.feed.last_event_ms:
            last = time.strftime("%H:%M:%S", time.gmtime(st.feed.last_event_ms / 1000))
            words += f" · last update {last} UTC"

        words += f" · {self.feed.sessions} session{'s' if self.feed.sessions != 1 else ''}"
        return f'<span style="color:{colour}">●</span> {words}'

    def servable(self, title: str | None = None, location: bool = True, area: str = "main",
                 target: str | None = None):
        """Add the page to this session's document with Bokeh's reference bookkeeping held.

        The template adds its ~11 roots one by one, and each ``add_root`` walks every
        model of the document again (~40% of the page's server-side build, profiled);
        frozen, the walk happens once when the page is in.
        """
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:
            return super().servable(title, location, area, target)
        with doc.models.freeze():
            return super().servable(title, location, area, target)

    def __panel__(self) -> pn.template.BootstrapTemplate:
        # widgets default to 300 px wide: stretch them to the sidebar instead of clipping
        fit = {"sizing_mode": "stretch_width"}
        widgets = pn.Param(
            self.param, parameters=["symbol", "color_by"], show_name=False, **fit,
            widgets={
                "symbol": {"type": pn.widgets.AutocompleteInput, "case_sensitive": False,
                           "search_strategy": "includes", "min_characters": 1, "restrict": True, **fit},
                "color_by": {"type": pn.widgets.RadioButtonGroup, **fit},
            },
        )
        # Bootstrap, not Fast: Fast pulls a web font from a CDN, an error when offline
        template = pn.template.BootstrapTemplate(
            title="Crypto market explorer",
            sidebar=[widgets, pn.pane.Markdown(_HELP, sizing_mode="stretch_width"), self._started],
            header=[pn.Row(self._status, pn.pane.HTML(_NAV, css_classes=["page-nav"], margin=(5, 10)),
                           sizing_mode="stretch_width")],
            main=[
                pn.Column(self._progress, self._chart, sizing_mode="stretch_width"),
                # side by side when the table gets its natural width (1920 px screens), stacked at 1366 px
                pn.FlexBox(
                    pn.Column(pn.Row("### Heatmap", pn.widgets.Checkbox.from_param(
                                  self.param.size_by_volume, margin=(22, 10, 0, 20)), sizing_mode="stretch_width"),
                              pn.pane.Bokeh(self._heatmap.figure, sizing_mode="stretch_width"),
                              sizing_mode="stretch_width", styles={"flex": "1 1 560px", "min-width": "0"}),
                    pn.Column("### Signals", self._table, sizing_mode="stretch_width",
                              styles={"flex": f"1 1 {TABLE_MIN_WIDTH}px", "min-width": "0"}),
                    flex_wrap="wrap", sizing_mode="stretch_width",
                ),
            ],
            sidebar_width=310,  # room for the six timeframe buttons on one line
            header_background="#1e2433",
        )
        return template


def _table_input(snap: pl.DataFrame) -> pl.DataFrame:
    """The snapshot with every column the table reads (before the first data it has only ``symbol``)."""
    floats = ("last_price", "price_change_pct", "quote_volume", "rsi", "stoch_k", "stoch_d")
    return snap.with_columns(
        *(pl.lit(None, pl.Float64).alias(c) for c in floats if c not in snap.columns),
        *([pl.lit(None, pl.String).alias("signal")] if "signal" not in snap.columns else []),
    )


#: Page tabs: the data explorer (dashboard/explorer.py, ``?page=data``; the dashboard
#: until it exists) and this page.
_NAV = ('<nav style="white-space:nowrap;font-size:14px">'
        '<a href="?page=live" style="color:white;font-weight:bold;margin-right:14px">Live</a>'
        '<a href="?page=data" style="color:#c8cdd6">Data</a></nav>')

_HELP = """
Click a heatmap tile or a table row to chart that symbol. Timeframes above 1m
are built from the stored 1m candles. **Signals**: `cross_up`/`cross_down` when
StochRSI K crosses D below/above 50, `oversold`/`overbought` when RSI < 30 / > 70.
"""

