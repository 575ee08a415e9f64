"""Helpers for driving the dashboard in a real Chromium (tests and benchmarks).

Playwright drives the system Chromium (Debian's ``chromium`` package): its own
browser download is not reachable here. Page state is read from the Bokeh models
in the page (``window.Bokeh.documents[0]``), which is what the user sees drawn,
rather than from the DOM (Panel renders into shadow roots and canvases).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 1100}


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(playwright, **kwargs):
    """A headless system Chromium."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, **kwargs)


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> float:
    """Poll ``url`` until it answers 200; returns the time.monotonic() it did."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return time.monotonic()
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s: {last}")


@dataclass
class ServeProcess:
    """``panel serve dashboard/app.py`` as a subprocess, the way users start it."""

    port: int
    proc: subprocess.Popen
    log: Path
    spawned_at: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/app"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT (what Ctrl-C sends: the app flushes and exits), then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def serve_app(app_args: list[str], log: Path, *, port: int | None = None, env: dict | None = None,
              serve_args: list[str] = ()) -> ServeProcess:
    """Start ``panel serve dashboard/app.py --port P [serve_args] --args [app_args]``."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "panel", "serve", "dashboard/app.py", "--port", str(port),
           "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}", *serve_args]
    if app_args:
        cmd += ["--args", *app_args]
    out = log.open("wb")
    spawned = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    out.close()
    return ServeProcess(port, proc, log, spawned)


@dataclass
class Console:
    """JavaScript errors a page raised: uncaught exceptions and console.error lines."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page, label: str = "") -> None:
        tag = f"[{label}] " if label else ""
        page.on("pageerror", lambda exc: self.errors.append(f"{tag}pageerror: {exc}\n{exc.stack or ''}"))
        page.on("console", lambda msg: self.errors.append(
            f"{tag}console.error: {msg.text} ({msg.location.get('url', '')}:{msg.location.get('lineNumber', '')})")
            if msg.type == "error" else None)
        # anything fetched from outside the server fails offline (and is a bug here)
        page.on("requestfailed", lambda req: self.errors.append(
            f"{tag}request failed: {req.url} ({req.failure})") if not req.url.startswith("http://127.0.0.1") else None)


# Everything a test asserts about the page, read in one call from the Bokeh models
# that have a view, i.e. what is drawn now (a replaced chart's models may linger in
# the document). Chart sources are the ones with the chart_frame columns: the largest
# is the closed candles, the newest row over all of them the forming candle.
PAGE_STATE_JS = r"""
() => {
  if (!(window.Bokeh && Bokeh.index && Bokeh.documents && Bokeh.documents.length)) return null;
  function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
  const models = new Set();
  for (const root of Bokeh.index.roots) for (const v of walk(root)) models.add(v.model);
  const CHART = ["time", "open", "high", "low", "close", "left", "right", "body_bottom", "body_top", "zero"];
  const isChart = (s) => s && s.type === "ColumnDataSource" && CHART.every((c) => c in s.data);
  const finite = (a) => { let n = 0; for (const v of (a || [])) if (v != null && Number.isFinite(v)) n++; return n };
  const out = {closed_rows: 0, last_time: null, last_close: null, spacing_ms: null, first_time: null,
               panels: {}, heatmap: null, table: null, status: null, symbol: null, timeframe: null,
               color_by: null};
  const charts = new Set();
  for (const m of models) {
    if (m.type === "Figure") {
      const labels = [...m.left, ...m.right].map((a) => a.axis_label).filter((l) => l);
      const col = {Price: "close", Volume: "volume", RSI: "rsi", StochRSI: "stoch_k"}[labels[0]];
      let rows = 0, values = 0;
      for (const r of m.renderers) {
        const s = r.data_source;
        if (isChart(s)) {
          charts.add(s);
          rows = Math.max(rows, s.data.time.length);
          values = Math.max(values, finite(s.data[col]));
        } else if (s && "label" in s.data && "name_y" in s.data) {
          const labels = Array.from(s.data.label);
          out.heatmap = {tiles: labels.length, with_values: labels.filter((l) => l !== "\u2014").length,
                         labels, symbols: Array.from(s.data.symbol), colors: Array.from(s.data.color),
                         selected: Array.from(s.selected.indices)};
        }
      }
      if (col) out.panels[labels[0]] = {rows, values};
    } else if (m.type && m.type.endsWith("DataTabulator")) {
      const d = m.source.data;
      out.table = {rows: d.symbol.length, priced: finite(d.price), with_rsi: finite(d.rsi),
                   symbols: Array.from(d.symbol), prices: Array.from(d.price)};
    } else if (m.type === "panel.models.markup.HTML" && (m.css_classes || []).includes("feed-status")) {
      out.status = m.text;
    } else if (m.type === "AutocompleteInput") {
      out.symbol = m.value;
    } else if (m.type && m.type.endsWith("RadioButtonGroup")) {
      if (m.labels.includes("5m")) out.timeframe = m.labels[m.active];
      else out.color_by = m.labels[m.active];
    }
  }
  let closed = null;
  for (const s of charts) {
    const t = s.data.time, n = t.length;
    if (!closed || n > closed.data.time.length) closed = s;
    for (let i = 0; i < n; i++) {
      if (out.last_time === null || t[i] >= out.last_time) { out.last_time = t[i]; out.last_close = s.data.close[i] }
    }
  }
  if (closed) {
    const t = closed.data.time, n = t.length;
    out.closed_rows = n;
    out.first_time = n ? t[0] : null;
    const diffs = [];
    for (let i = Math.max(1, n - 60); i < n; i++) diffs.push(t[i] - t[i - 1]);
    diffs.sort((a, b) => a - b);
    out.spacing_ms = diffs.length ? diffs[diffs.length >> 1] : null;
  }
  return out;
}
"""

# The page position of the centre of a heatmap tile (after scrolling it into view).
TILE_XY_JS = r"""
(symbol) => {
  const doc = Bokeh.documents[0];
  let fig = null, src = null;
  for (const m of doc.all_models) {
    if (m.type !== "Figure") continue;
    for (const r of m.renderers) {
      if (r.data_source && "label" in r.data_source.data && "name_y" in r.data_source.data) { fig = m; src = r.data_source }
    }
  }
  if (!fig) return null;
  function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
  let view = null;
  for (const root of Bokeh.index.roots) for (const v of walk(root)) if (v.model === fig) view = v;
  if (!view) return null;
  const i = Array.from(src.data.symbol).indexOf(symbol);
  if (i < 0) return null;
  view.el.scrollIntoView({block: "center"});
  const box = view.el.getBoundingClientRect();
  return [box.left + view.frame.x_scale.compute(src.data.x[i]),
          box.top + view.frame.y_scale.compute(src.data.y[i])];
}
"""


def page_state(page) -> dict[str, Any] | None:
    return page.evaluate(PAGE_STATE_JS)


def wait_state(page, check: Callable[[dict], bool], timeout: float = 30.0, every: float = 0.1,
               what: str = "page state") -> dict:
    """Poll the page's state until ``check(state)`` is true; fail with the last state seen."""
    deadline = time.monotonic() + timeout
    state: dict | None = None
    while True:
        state = page_state(page)
        with contextlib.suppress(KeyError, TypeError, AttributeError):
            if state is not None and check(state):
                return state
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last state: "
                                 f"{ {k: v for k, v in (state or {}).items() if k not in ('heatmap', 'table')} }")
        page.wait_for_timeout(every * 1000)


def complete(state: dict | None) -> bool:
    """Every part of the page has data: the four chart panels, heatmap values, table prices."""
    if not state or state["closed_rows"] < 20 or state["last_close"] is None:
        return False
    panels = state["panels"]
    return (all(panels.get(p, {}).get("values", 0) > 0 for p in ("Price", "Volume", "RSI", "StochRSI"))
            and state["heatmap"] is not None and state["heatmap"]["with_values"] == state["heatmap"]["tiles"]
            and state["table"] is not None and state["table"]["priced"] == state["table"]["rows"] > 0)


def table_price(state: dict, symbol: str) -> float:
    """The last price the signal table shows for ``symbol``."""
    return state["table"]["prices"][state["table"]["symbols"].index(symbol)]


def sessions_shown(state: dict) -> int | None:
    """The session count in the status header ("3 sessions")."""
    import re

    m = re.search(r"(\d+) sessions?\b", state.get("status") or "")
    return int(m.group(1)) if m else None


def click_tile(page, symbol: str) -> None:
    xy = page.evaluate(TILE_XY_JS, symbol)
    assert xy is not None, f"no heatmap tile for {symbol}"
    page.mouse.click(*xy)


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium for the duration of the block."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()
