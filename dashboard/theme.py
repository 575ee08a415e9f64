"""Colours shared by the heatmap and the table, and the light/dark styling Panel leaves out.

The Bootstrap template switches to dark with ``?theme=dark`` (its header toggle
reloads the page with it), so a session knows its theme when it is built:
:func:`session_theme` reads the same query argument.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Saturated ends and a mid grey: white text reads on all of them, and the grey
#: stands out from both a white and a near-black page.
GREEN = "#089981"
RED = "#f23645"
NEUTRAL = "#5d6673"
MISSING = "#9aa0a6"
TEXT = "#ffffff"
SELECTED = "#ffb300"


@dataclass(frozen=True)
class Theme:
    """Light (default) or dark; what the template itself does not restyle."""

    dark: bool = False

    @property
    def surface(self) -> str:
        return "#212529" if self.dark else "#ffffff"

    @property
    def on_surface(self) -> str:
        return "#dee2e6" if self.dark else "#212529"

    @property
    def border(self) -> str:
        return "#495057" if self.dark else "#ced4da"

    def table_css(self) -> str:
        """Tabulator header filters follow the theme (tabulator_bootstrap5.css, loaded after
        this, paints them white in dark mode too, hence !important); titles never clip."""
        return f"""
        .tabulator .tabulator-header .tabulator-col .tabulator-header-filter input,
        .tabulator .tabulator-header .tabulator-col .tabulator-header-filter select {{
            background-color: {self.surface} !important; color: {self.on_surface} !important;
            border: 1px solid {self.border} !important; border-radius: 3px; padding: 2px 4px;
        }}
        .tabulator .tabulator-header-filter input::placeholder {{ color: {MISSING}; }}
        .tabulator .tabulator-col-title {{ white-space: nowrap; text-overflow: clip; }}
        .tabulator-cell {{ white-space: nowrap; }}
        """ + (self._dark_table_css() if self.dark else "")

    def _dark_table_css(self) -> str:
        """The Bootstrap 5 Tabulator theme draws its grid in light grey (#dee2e6): on a dark
        page every row and the frozen Symbol column got a bright white rule."""
        return f"""
        .tabulator, .tabulator .tabulator-header, .tabulator .tabulator-header .tabulator-col,
        .tabulator-row, .tabulator-row .tabulator-cell, .tabulator .tabulator-tableholder .tabulator-table,
        .tabulator .tabulator-header .tabulator-frozen.tabulator-frozen-left,
        .tabulator-row .tabulator-cell.tabulator-frozen.tabulator-frozen-left {{
            border-color: {self.border} !important;
        }}
        """


def session_theme() -> Theme:
    """The theme of the session being built (``?theme=dark``), light outside a server."""
    import panel as pn

    args = pn.state.session_args or {}
    value = (args.get("theme") or [b""])[0]
    value = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return Theme(dark=value == "dark")
