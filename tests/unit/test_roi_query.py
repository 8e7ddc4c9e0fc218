"""ROI boxes from maps, and the SQL that query filters become."""

from __future__ import annotations

import numpy as np
import pytest

from xai_pipeline.query import Filters
from xai_pipeline.roi import roi_boxes


def test_box_lies_over_the_peak_in_figure_pixels() -> None:
    relevance = np.zeros((7, 7))
    relevance[1, 5] = 1.0
    (box,) = roi_boxes(relevance, width=700, height=350)
    assert box.score == 1.0
    # Feature cell (1, 5) covers x 500–600, y 50–100 of a 700×350 figure.
    assert box.x0 <= 500 < 600 <= box.x1 and box.y0 <= 50 < 100 <= box.y1
    assert 0 <= box.x0 and box.x1 <= 700 and 0 <= box.y0 and box.y1 <= 350


def test_separate_regions_threshold_and_order() -> None:
    relevance = np.zeros((7, 7))
    relevance[0, 0], relevance[6, 6], relevance[3, 3] = 1.0, 0.5, 0.1
    boxes = roi_boxes(relevance, 224, 224, threshold=0.2)
    assert [b.score for b in boxes] == [1.0, 0.5]  # 0.1 is under 20% of the max
    assert boxes[0].x0 == 0 and boxes[0].y0 == 0 and boxes[1].x1 == 224 and boxes[1].y1 == 224
    assert len(roi_boxes(relevance, 224, 224, threshold=0.05)) == 3


def test_no_boxes_for_zero_maps_or_unknown_size() -> None:
    assert roi_boxes(np.zeros((7, 7)), 100, 100) == []
    assert roi_boxes(np.ones((7, 7)), 0, 100) == []
    (whole,) = roi_boxes(np.ones((7, 7)), 100, 50)
    assert (whole.x0, whole.y0, whole.x1, whole.y1) == (0, 0, 100, 50)


def test_filters_become_safe_sql() -> None:
    sql = Filters(modality=("ct", "x' OR '1'='1"), min_confidence=0.9, limit=5).to_sql()
    assert "modality IN ('ct', 'x'' OR ''1''=''1')" in sql
    assert "confidence >= 0.9" in sql and "deleted_at IS NULL" in sql and sql.endswith("LIMIT 5")
    assert "deleted_at" not in Filters(include_deleted=True).to_sql().split("FROM")[1]
    with pytest.raises(ValueError, match="unknown columns"):
        Filters(columns=("figure_id", "password")).to_sql()


def test_run_based_components_match_the_cell_by_cell_search() -> None:
    from oracles import components_bfs

    from xai_pipeline.roi import _components

    rng = np.random.default_rng(0)
    masks = [rng.random((rows, cols)) < density for rows, cols, density in [(56, 56, 0.3), (56, 40, 0.55), (7, 7, 0.5), (1, 30, 0.5), (30, 1, 0.5)] * 8]
    masks += [np.eye(20, dtype=bool), np.eye(20, dtype=bool)[::-1], np.zeros((5, 5), dtype=bool), np.ones((5, 9), dtype=bool)]
    for mask in masks:
        fast = {frozenset(map(tuple, cells.tolist())) for cells in _components(mask)}
        assert fast == {frozenset(c) for c in components_bfs(mask)}
        assert sum(len(c) for c in fast) == int(mask.sum())
