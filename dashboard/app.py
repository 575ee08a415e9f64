"""Entry point: ``panel serve --warm dashboard/app.py [--args --demo ...]``.

Kept thin on purpose: settings come from ``--args`` (dashboard/config.py), the one
shared pipeline from dashboard/live.py, the choice of page from dashboard/pages.py.
``--warm`` runs this file once as the server starts, which starts recording then;
without it recording starts with the first page.
"""

import sys

import panel as pn

from dashboard.pages import TITLE, app_page

pn.extension("tabulator", notifications=True, design="bootstrap")

page = app_page(sys.argv[1:])
if page is not None:  # None: the --warm run at server start, which only starts the feed
    page.servable(title=TITLE)
