"""dashboard/heatmap.py, dashboard/treemap.py and dashboard/table.py's number formats, without a browser.

(The page itself, at two screen sizes and both themes, is tests/test_layout.py.)
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import pytest
from bokeh.document import Document
from bokeh.document.events import ColumnsPatchedEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard.heatmap import Heatmap, short_name
from dashboard.table import fallback_decimals, format_price, format_volume, price_decimals
from dashboard.treemap import MIN_SHARE, grid, label_sizes, squarify
from market.presets import DEFAULT_SYMBOLS

BOX = (-0.5, -0.5, 9.5, 4.5)


def area(r) -> float:
    return (r[2] - r[0]) * (r[3] - r[1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1e12), st.just(float("nan")), st.floats(-10, 0)), min_size=1, max_size=80))
def test_squarify_fills_the_box_without_overlap(values):
    rects = squarify(values, BOX)
    assert len(rects) == len(values)
    assert math.isclose(sum(map(area, rects)), area(BOX), rel_tol=1e-9)
    for l, b, r, t in rects:
        assert BOX[0] - 1e-9 <= l <= r <= BOX[2] + 1e-9 and BOX[1] - 1e-9 <= b <= t <= BOX[3] + 1e-9
    for p, q in itertools.combinations(rects, 2):
        assert min(p[2], q[2]) - max(p[0], q[0]) <= 1e-9 or min(p[3], q[3]) - max(p[1], q[1]) <= 1e-9
    # areas follow the values (those above the floor); every tile keeps at least the floor
    clean = [v if v == v and v > 0 else 0.0 for v in values]
    total = sum(clean)
    weights = [max(v / total, MIN_SHARE) for v in clean] if total > 0 and math.isfinite(total) else [1.0] * len(values)
    for w, r in zip(weights, rects):
        assert math.isclose(area(r), area(BOX) * w / sum(weights), rel_tol=1e-6, abs_tol=1e-12)


def test_squarify_keeps_tiles_near_square():
    rng = np.random.default_rng(1)
    rects = squarify(list(rng.lognormal(20, 1.5, 50)), (0, 0, 800, 300))
    worst = max(max((r - l) / (t - b), (t - b) / (r - l)) for l, b, r, t in rects)
    assert worst < 4
    assert squarify([], BOX) == []
    assert squarify([5.0, 5.0], BOX) == squarify([5.0, 5.0], BOX)  # deterministic


def test_grid_cells_row_by_row():
    cells = grid(12, 5)
    assert cells[0] == (-0.5, 1.5, 0.5, 2.5) and cells[5] == (-0.5, 0.5, 0.5, 1.5) and cells[11][1] == -0.5
    assert all(math.isclose(area(c), 1.0) for c in cells)


def test_label_sizes_fit_or_drop():
    rects = [(0, 0, 1, 1), (0, 0, 0.6, 1), (0, 0, 0.05, 0.05)]
    sizes = label_sizes(rects, ["BTC", "1kFLOKI", "X"], 64, 60, 13)
    assert sizes[0] == 13  # room to spare: the largest size
    assert 7 <= sizes[1] < 13 and 0.62 * 7 * sizes[1] <= 0.6 * 64 * 0.9 + 1e-9
    assert sizes[2] == 0  # too small for 7 px text: not drawn


def test_short_names():
    assert short_name("BTCUSDT") == "BTC"
    assert short_name("1000SHIBUSDT") == "1kSHIB" and short_name("1000BONKUSDT") == "1kBONK"
    assert short_name("1000000MOGUSDT") == "1MMOG" and short_name("RENDERUSDT") == "RENDER"
    assert short_name("USDT") == "USDT"


def test_number_formats():
    assert price_decimals([97123.4, 97120.0, 97125.7]) == 1
    assert price_decimals([0.0000123, 0.0000125]) == 7 and price_decimals([float("nan")]) == 0
    assert format_price(97123.4, 1) == "97,123.4" and format_price(0.0000123, 7) == "0.0000123"
    assert format_price(None, 2) == "" and format_price(float("inf"), 2) == ""
    assert fallback_decimals(97000) == 2 and fallback_decimals(0.5) == 4 and fallback_decimals(0.0001) == 7
    assert format_volume(1.234e9) == "1.2B" and format_volume(3.4e8) == "340M"
    assert format_volume(45_300) == "45.3K" and format_volume(999) == "999" and format_volume(2.5e12) == "2.5T"
    assert format_volume(float("nan")) == ""


def frame(symbols, seed=0):
    rng = np.random.default_rng(seed)
    n = len(symbols)
    return pl.DataFrame({"symbol": symbols, "price_change_pct": rng.normal(0, 3, n), "rsi": rng.uniform(0, 100, n),
                         "last_price": rng.uniform(1, 100, n), "quote_volume": rng.lognormal(19, 1.5, n)})


def test_treemap_layout_sizes_tiles_by_volume_and_patches_in_place():
    symbols = list(DEFAULT_SYMBOLS)
    hm = Heatmap(symbols)
    doc = Document()
    doc.add_root(hm.figure)
    src = hm.source
    data = frame(symbols)
    hm.update(data)
    grid_areas = [(r - l) * (t - b) for l, r, b, t in zip(src.data["left"], src.data["right"],
                                                            src.data["bottom"], src.data["top"])]
    assert max(grid_areas) == pytest.approx(min(grid_areas))

    events: list = []
    doc.on_change(events.append)
    hm.set_layout("volume")
    assert hm.source is src and events and all(isinstance(e, ColumnsPatchedEvent) for e in events)
    gx, gy = 2 / hm._px[0], 2 / hm._px[1]  # the gap drawn inside each tile
    areas = np.array([(r - l + 2 * gx) * (t - b + 2 * gy) for l, r, b, t in
                      zip(src.data["left"], src.data["right"], src.data["bottom"], src.data["top"])])
    volume = data["quote_volume"].to_numpy()
    big = volume >= MIN_SHARE * volume.sum() * 1.01  # (smaller ones get the floor)
    ratio = areas[big] / volume[big]
    assert ratio.max() / ratio.min() == pytest.approx(1.0, rel=0.05)  # gaps aside, area ~ volume
    assert int(np.argmax(areas)) == int(np.argmax(volume))
    # names and values were resized to fit; a tick with the same volumes moves nothing
    assert any(s != "13px" for s in src.data["name_size"])
    events.clear()
    hm.update(data.with_columns(pl.col("rsi") + 1))
    patched = {c for e in events for c in e.patches}
    assert "left" not in patched and "label" in patched
    hm.set_layout("grid")
    assert [round(r - l, 6) for l, r in zip(src.data["left"], src.data["right"])] == [round(src.data["right"][0] - src.data["left"][0], 6)] * 50
    with pytest.raises(ValueError):
        hm.set_layout("pie")
    with pytest.raises(ValueError):
        Heatmap(symbols, layout="pie")
