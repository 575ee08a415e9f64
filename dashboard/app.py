"""Entry point: ``panel serve dashboard/app.py [--args --demo ...]``.

Kept thin on purpose: settings come from ``--args`` (dashboard/config.py), the one
shared pipeline from dashboard/live.py, and the page from dashboard/view.py.
"""

import sys

import panel as pn

from dashboard.config import AppConfig
from dashboard.live import shared_feed
from dashboard.view import Dashboard

pn.extension("tabulator", notifications=True, design="bootstrap")

config = pn.state.cache.get("crypto-explorer:config") or AppConfig.from_args(sys.argv[1:])
pn.state.cache["crypto-explorer:config"] = config
Dashboard(shared_feed(config)).servable(title="Crypto market explorer")
