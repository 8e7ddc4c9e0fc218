"""ROI boxes from maps, and the SQL that query filters become."""

from __future__ import annotations

import numpy as np
import pytest

from xai_pipeline.read.query import Filters
from xai_pipeline.model.roi import roi_boxes


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


def test_scipy_labelled_boxes_match_the_cell_by_cell_search() -> None:
    """scipy.ndimage.label (8-connected) gives the boxes, scores and order of a breadth-first search."""
    from oracles import roi_boxes_bfs

    from xai_pipeline.model.roi import roi_boxes

    rng = np.random.default_rng(0)
    maps = [rng.random(shape).astype(np.float32) ** power for shape, power in [((7, 7), 3), ((7, 7), 1), ((14, 14), 4), ((1, 9), 2), ((9, 1), 2)] * 8]
    maps += [np.eye(7, dtype=np.float32), np.eye(7, dtype=np.float32)[::-1], np.zeros((5, 5), dtype=np.float32), np.ones((5, 9), dtype=np.float32)]
    for i, relevance in enumerate(maps):
        width, height = [(384, 300), (300, 384), (50, 2000), (1000, 1000)][i % 4]
        for threshold in (0.2, 0.5, 0.9):
            found = [b.as_dict() for b in roi_boxes(relevance, width, height, threshold)]
            assert found == roi_boxes_bfs(relevance, width, height, threshold), (i, threshold)
