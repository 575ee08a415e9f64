"""What ``dashboard/app.py`` serves: the settings, the shared feed, and which page.

``panel serve --warm dashboard/app.py`` runs app.py once while the server starts,
in a session no browser ever sees. :func:`app_page` recognises that run, starts the
shared pipeline there (so recording begins with the server) and builds no page.
Every later run is a browser session and gets a page: the data explorer for
``?page=data`` when ``dashboard.explorer`` exists, the dashboard otherwise.
"""

from __future__ import annotations

import html
import logging
import sys

import panel as pn

from dashboard.config import AppConfig, ConfigError
from dashboard.live import SharedFeed, shared_feed
from store.db import StoreError

log = logging.getLogger("dashboard.pages")
if logging.getLogger("dashboard").level == logging.NOTSET:
    # panel serve leaves the root logger at WARNING: say when and where recording starts
    logging.getLogger("dashboard").setLevel(logging.INFO)
CONFIG_KEY = "crypto-explorer:config"
TITLE = "Crypto market explorer"
#: The query parameter that picks a page, and the value that asks for the data explorer.
PAGE_PARAM, DATA_PAGE = "page", "data"


def warming() -> bool:
    """True while ``panel serve --warm`` runs the app at server start.

    Panel builds that document with a session context but no server context
    (panel.io.session.generate_session); a browser's session always has one.
    """
    doc = pn.state.curdoc
    ctx = getattr(doc, "session_context", None) if doc is not None else None
    return ctx is not None and ctx.server_context is None


def app_config(argv: list[str]) -> AppConfig:
    """The server's settings, parsed from ``--args`` once per process."""
    config = pn.state.cache.get(CONFIG_KEY)
    if config is None:
        config = pn.state.cache[CONFIG_KEY] = AppConfig.from_args(argv)
    return config


def requested_page() -> str:
    """The ``page`` query parameter of this session's request ('' when absent)."""
    args = pn.state.session_args or {}
    values = args.get(PAGE_PARAM) or [b""]
    value = values[0]
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def page_for(feed: SharedFeed, page: str):
    """The data explorer for ``page == "data"`` (once dashboard/explorer.py exists), else the dashboard."""
    if page == DATA_PAGE:
        try:
            from dashboard.explorer import Explorer  # built separately; optional until then
        except ModuleNotFoundError as exc:
            if exc.name != "dashboard.explorer":
                raise
            log.info("?page=data asked for, but dashboard.explorer does not exist yet: serving the dashboard")
        else:
            return Explorer(feed)
    from dashboard.view import Dashboard

    return Dashboard(feed)


def app_page(argv: list[str]):
    """Start the shared feed if needed and return this session's page (None under --warm).

    A database that cannot be used ends a ``--warm`` start with one plain line and
    exit code 2; without ``--warm`` the page shows the same words.
    """
    warm = warming()
    try:
        config = app_config(argv)
    except ConfigError as exc:  # a bad --args value: its one line, never a traceback or a broken page
        if warm:
            print(exc, file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        log.error("%s", exc)
        return pn.pane.Alert(f"<b>Cannot start:</b> {html.escape(str(exc))}", alert_type="danger",
                             sizing_mode="stretch_width")
    try:
        feed = shared_feed(config, at="server start" if warm else "first page")
    except StoreError as exc:
        if warm:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        log.error("cannot start the pipeline: %s", exc)
        return pn.pane.Alert(f"<b>Cannot use the database:</b> {exc}", alert_type="danger",
                             sizing_mode="stretch_width")
    if warm:
        return None
    return page_for(feed, requested_page())
