"""Spare Bokeh models for the next page: built while the server is idle, taken by a new session.

Building a session's Bokeh figures (the four-pane chart, the heatmap) is the largest
part of the Python work behind a first page (~40% of the session build, profiled).
They hold nothing per session until a session fills them, so one set is built
ahead: under ``panel serve --warm`` at server start, then again a moment after
each page took the spare, on the server's loop between requests. A page that finds
no spare (several opened at once, tests without a server) builds its own, as before.

Bokeh models live in one document: a spare is handed out once and never shared.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("dashboard.spares")

#: Seconds after a page took a spare before the next one is built: after that page's
#: browser has loaded its scripts and pulled its document, not in the middle of it.
REFILL_AFTER = 3.0

_spares: dict[Hashable, Any] = {}
_pending: set[Hashable] = set()


def take(key: Hashable, build: Callable[[], Any]) -> Any:
    """The spare built for ``key`` if there is one (another is built later), else ``build()``."""
    spare = _spares.pop(key, None)
    if spare is None:
        spare = build()
    _schedule(key, build)
    return spare


def prepare(key: Hashable, build: Callable[[], Any]) -> None:
    """Build the spare for ``key`` now if there is none (server start)."""
    if key not in _spares:
        _spares[key] = build()


def _schedule(key: Hashable, build: Callable[[], Any]) -> None:
    """Build the next spare on the running loop (a server session); outside one, none is kept."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if key in _pending:
        return
    _pending.add(key)

    def refill() -> None:
        _pending.discard(key)
        try:
            prepare(key, build)
        except Exception:  # noqa: BLE001 - a failed spare only means the next page builds its own
            log.exception("building a spare for %r failed", key)

    # an empty context: not the session's (its Bokeh document stays out of the spare)
    loop.call_later(REFILL_AFTER, refill, context=contextvars.Context())
