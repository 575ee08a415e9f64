"""View control of :func:`dashboard.charts.price_layout`'s live layout (HoloViews + Buffer/Pipe).

HoloViews draws the frame of the chart (axes, bands, tools); :class:`_View` adds the
candles as plain Bokeh glyphs on sources fed by the streams, sets the opening
window, fits the y axes and scrolls with the live end. Split out of charts.py,
which keeps the element builders notebooks use. The app's own chart is
:mod:`dashboard.history_chart` (no HoloViews).
"""

from __future__ import annotations

import weakref

import holoviews as hv
import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource, CustomJS, GlyphRenderer, HoverTool

from dashboard.history_chart import AUTORANGE_JS as _AUTORANGE_JS
from dashboard.history_chart import D_COLOR, K_COLOR, RSI_COLOR


def _tail(closed: pd.DataFrame, forming: pd.DataFrame) -> pd.DataFrame:
    """Last closed row + forming row: the dotted indicator stub to the live value."""
    if forming.empty or closed.empty:
        return forming.iloc[-1:]
    return pd.concat([closed.iloc[-1:], forming.iloc[-1:]], ignore_index=True)



def _ms(value) -> float:
    """A Bokeh datetime range value (ms float, datetime64 or datetime) as ms."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return (pd.Timestamp(value) - pd.Timestamp(0)) / pd.Timedelta(milliseconds=1)


def _col_ms(frame: pd.DataFrame, col: str) -> np.ndarray:
    return frame[col].to_numpy().astype("datetime64[us]").astype("int64") / 1000.0


def _bars(closed: pd.DataFrame, forming: pd.DataFrame) -> pd.DataFrame:
    if forming.empty or closed.empty:
        return forming if closed.empty else closed
    return pd.concat([closed, forming], ignore_index=True)


def _x_window(bars: pd.DataFrame, window: int | None) -> tuple[float, float] | None:
    """The live view: the last ``window`` bars plus a 3-bar margin on the right."""
    if bars.empty:
        return None
    left, right = _col_ms(bars, "left"), _col_ms(bars, "right")
    step = (right[-1] - left[-1]) / 0.8
    count = len(bars) if window is None else window
    start = max(right[-1] - count * step, left[0] - step)
    return start, right[-1] + 3 * step


def _y_fit(bars: pd.DataFrame, x0: float, x1: float, lo: str, hi: str,
           pad: tuple[float, float]) -> tuple[float, float] | None:
    """y range of the bars overlapping [x0, x1], padded by fractions of the span."""
    seen = (_col_ms(bars, "right") >= x0) & (_col_ms(bars, "left") <= x1)
    if not seen.any():
        return None
    y0, y1 = np.nanmin(bars[lo].to_numpy()[seen]), np.nanmax(bars[hi].to_numpy()[seen])
    if not (np.isfinite(y0) and np.isfinite(y1)):
        return None
    span = (y1 - y0) or abs(y1) or 1.0
    return y0 - pad[0] * span, y1 + pad[1] * span


_Y_FIT = {"price": ("low", "high", (0.05, 0.05)), "volume": ("zero", "volume", (0, 0.1))}


# The y range follows the bars in view in the browser: the same script as the history chart.


def _autorange_y(fig, lo: str, hi: str, pad: tuple[float, float]) -> None:
    """Client-side y fit of ``fig`` over every source holding the bar columns."""
    need = {"left", "right", lo, hi}
    sources = list({r.data_source.id: r.data_source for r in fig.select({"type": GlyphRenderer})
                    if need <= set(r.data_source.data)}.values())
    cb = CustomJS(args=dict(sources=sources, xr=fig.x_range, yr=fig.y_range, lo_col=lo,
                            hi_col=hi, pad=list(pad)), code=_AUTORANGE_JS)
    fig.x_range.js_on_change("start", cb)
    fig.x_range.js_on_change("end", cb)


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: frame[c].to_numpy() for c in frame.columns}  # a chart_frame: CHART_COLUMNS


class _View:
    """Per-layout glue between the streams and the Bokeh figures of each render.

    Adds plain glyphs on three sources per rendered layout (closed candles with
    streams only, the forming candle, the indicator stubs), shared by the four
    figures; sets the opening window; scrolls with the live end. Holds only weak
    references to Bokeh models, so a closed session's figures are not kept alive.
    """

    def __init__(self, window: int | None, *, buffer: hv.streams.Buffer | None = None,
                 pipe: hv.streams.Pipe | None = None,
                 frames: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> None:
        self.window, self.buffer, self.pipe, self.frames = window, buffer, pipe, frames
        self._renders: list[dict] = []  # per render: figs, sources (all weak)
        self._edge: float | None = None  # right edge of the newest bar, ms
        self._last: pd.Timestamp | None = None  # newest closed candle already streamed
        if buffer is not None:
            # Below HoloViews' own precedence: runs before any plot refresh.
            pipe.add_subscriber(self._on_forming, precedence=0.9)
            buffer.add_subscriber(self._on_closed, precedence=0.9)
            self._last = buffer.data["time"].iloc[-1] if len(buffer.data) else None

    def data(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        if self.buffer is not None:
            return self.buffer.data, self.pipe.data
        return self.frames

    def hook(self, kind: str):
        def hook(plot, element) -> None:
            if plot.handles.get("_view"):  # hooks also run on every update
                return
            plot.handles["_view"] = True
            self._decorate(kind, plot.state)
        return hook

    def _render_of(self, fig) -> dict:
        """The sources of the layout ``fig`` belongs to (its figures share x_range)."""
        for render in self._renders:
            if render["x_range"]() is fig.x_range:
                return render
        closed, forming = self.data()
        frames = {"forming": forming, "tail": _tail(closed, forming)}
        if self.buffer is not None:
            frames["closed"] = closed
        render = {"x_range": weakref.ref(fig.x_range), "figs": [], "closed": lambda: None}
        for name, frame in frames.items():
            src = ColumnDataSource(_columns(frame))
            render[name] = weakref.ref(src)
            render.setdefault("strong", []).append(src)  # until the figures hold them
        self._renders.append(render)
        return render

    def _decorate(self, kind: str, fig) -> None:
        render = self._render_of(fig)
        render["figs"].append((kind, weakref.ref(fig)))
        closed, candle, tail = render["closed"](), render["forming"](), render["tail"]()
        bars = [s for s in (closed, candle) if s is not None]
        lines = [(s, d) for s, d in ((closed, "solid"), (tail, "dotted")) if s is not None]
        hover_to = []
        if kind == "price":
            for src in bars:
                fig.segment("time", "low", "time", "high", color="color", source=src)
                hover_to.append(fig.quad(left="left", right="right", bottom="body_bottom",
                                         top="body_top", color="color", source=src))
        elif kind == "volume":
            for src in bars:
                hover_to.append(fig.quad(left="left", right="right", bottom="zero",
                                         top="volume", color="color", alpha=0.55,
                                         line_alpha=0, source=src))
        else:
            specs = ([("rsi", RSI_COLOR)] if kind == "rsi"
                     else [("stoch_k", K_COLOR), ("stoch_d", D_COLOR)])
            for src, dash in lines:
                for n, (col, color) in enumerate(specs):
                    line = fig.line("time", col, color=color, line_width=1.5, line_dash=dash,
                                    source=src)
                    if n == 0:
                        hover_to.append(line)
        # Reuse HoloViews' hover (same tooltips, one toolbar icon) for the new glyphs.
        for tool in fig.select({"type": HoverTool}):
            if isinstance(tool.renderers, list) and tool.renderers:
                tool.renderers = [*tool.renderers, *hover_to]
                break
        if len(render["figs"]) == 4:
            render.pop("strong", None)
        if kind in _Y_FIT:
            _autorange_y(fig, *_Y_FIT[kind])
        self._set_view(kind, fig)

    def _set_view(self, kind: str, fig) -> None:
        if self.window is None and self.buffer is None:
            return  # notebooks: HoloViews' full-range view
        bars = _bars(*self.data())
        x = _x_window(bars, self.window)
        if x is None:
            return
        self._edge = _col_ms(bars, "right")[-1]
        fig.x_range.update(start=x[0], end=x[1], reset_start=x[0], reset_end=x[1])
        if kind in _Y_FIT and (y := _y_fit(bars, *x, *_Y_FIT[kind])) is not None:
            fig.y_range.update(start=y[0], end=y[1], reset_start=y[0], reset_end=y[1])

    def _live(self) -> list[dict]:
        """Renders whose figures still exist (drops the rest)."""
        self._renders = [r for r in self._renders if r["x_range"]() is not None]
        return self._renders

    def _on_closed(self, data: pd.DataFrame, **_) -> None:
        if len(data) == 0 or self._last is None:
            new, self._last = data, None
            restart = True
        else:
            new = data[data["time"] > self._last]
            restart = False
        if len(new):
            self._last = new["time"].iloc[-1]
        for render in self._live():
            src = render["closed"]()
            if src is None:
                continue
            if restart:
                src.data = _columns(data)
            elif len(new):
                src.stream(_columns(new), rollover=self.buffer.length or None)
        self._on_forming(restart=restart)

    def _on_forming(self, restart: bool = False, **_) -> None:
        closed, forming = self.data()
        tail = _tail(closed, forming)
        for render in self._live():
            for name, frame in (("forming", forming), ("tail", tail)):
                if (src := render[name]()) is not None:
                    src.data = _columns(frame)
            for kind, ref in render["figs"]:
                if restart and (fig := ref()) is not None:
                    self._set_view(kind, fig)
        if not restart:
            self._follow(_bars(closed, forming))

    def _follow(self, bars: pd.DataFrame) -> None:
        """Scroll with new bars while the live end is on screen; keep reset current."""
        live = _x_window(bars, self.window)
        if live is None:
            return
        edge = _col_ms(bars, "right")[-1]
        old, self._edge = self._edge, edge
        step = edge - old if old is not None and edge > old else 0.0
        for render in self._live():
            figs = [(k, f) for k, r in render["figs"] if (f := r()) is not None]
            if not figs:
                continue
            xr = figs[0][1].x_range
            scroll = bool(step) and _ms(xr.end) >= old - 0.5 * step
            if scroll:
                xr.update(start=_ms(xr.start) + step, end=_ms(xr.end) + step)
            xr.update(reset_start=live[0], reset_end=live[1])
            for kind, fig in figs:
                if kind in _Y_FIT:
                    self._fit_y(fig.y_range, bars, live, (_ms(xr.start), _ms(xr.end)),
                                _Y_FIT[kind], scroll)

    @staticmethod
    def _fit_y(yr, bars, live, seen_x, spec, scroll: bool) -> None:
        if (y := _y_fit(bars, *live, *spec)) is not None:
            yr.update(reset_start=y[0], reset_end=y[1])
        seen = _y_fit(bars, *seen_x, *spec)
        if seen is None:
            return
        if scroll or yr.start is None or yr.end is None:
            yr.update(start=seen[0], end=seen[1])
        elif seen[0] < yr.start or seen[1] > yr.end:  # the live candle broke out
            yr.update(start=min(seen[0], yr.start), end=max(seen[1], yr.end))
