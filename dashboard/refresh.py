"""A session's periodic refresh that does not flag the server as busy.

Panel runs every periodic callback inside a busy event: ``pn.state.busy`` turns True
and back to False around each call, and every change of it sets the busy indicator
of *every* open session's template (``pn.state._indicators``), one model change and
one websocket message each. With N sessions refreshing twice a second that is
4 N² messages a second: with 10 sessions it was a fifth of the server's CPU in a
py-spy profile, and tick-to-screen latency grew with the square of the sessions.
A background refresh is not something the user waits for, so it runs as Panel's
own background callbacks do (its busy-counter cleanup): without a busy event.
"""

from __future__ import annotations

from collections.abc import Callable

import panel as pn
from panel.io.callbacks import PeriodicCallback


def refresh_callback(callback: Callable[[], None], period_ms: int) -> PeriodicCallback:
    """``pn.state.add_periodic_callback`` (scoped to the current session, stopped when it
    ends) that leaves ``pn.state.busy`` alone."""
    cb = pn.state.add_periodic_callback(callback, period=period_ms, start=False)
    if not hasattr(cb, "_background"):  # Panel renamed it: fail here rather than flood every session
        raise RuntimeError("panel.io.callbacks.PeriodicCallback has no _background flag any more")
    cb._background = True  # the flag Panel's own background callbacks are built with
    cb.start()
    return cb
