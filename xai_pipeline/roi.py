"""Regions of interest from a relevance map: boxes a search engine can highlight without maps.

The map is normalised by its maximum and upsampled bilinearly (``UPSAMPLE`` cells per feature
cell, keeping the figure's aspect ratio); cells at or above ``threshold`` (the paper displays CRM
above 20% of its maximum) are grouped into 8-connected regions. Each region becomes a box in the
figure's pixel coordinates, ``[x0, y0, x1, y1)``, with ``score`` = the highest normalised
relevance of the feature cells under the region (1.0 for the region holding the maximum).
Boxes are sorted by score; at most ``MAX_BOXES`` are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xai_pipeline.codec import upsample

DEFAULT_THRESHOLD = 0.2
UPSAMPLE = 8
MAX_BOXES = 8


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    def as_dict(self) -> dict[str, float]:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1, "score": self.score}


def _runs(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """Horizontal runs of ``True`` as ``(row, start, stop)``, stop exclusive."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows_s, starts = np.nonzero(edges == 1)
    _, stops = np.nonzero(edges == -1)  # row-major order: pairs up with the starts
    return list(zip(rows_s.tolist(), starts.tolist(), stops.tolist()))


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean grid, as arrays of (row, col) indices.

    Run-based labelling: runs in adjacent rows belong together when their column ranges
    ``[s, e)`` and ``[s', e')`` touch, diagonals included (``s ≤ e'`` and ``s' ≤ e``); a
    union-find joins them. Work grows with the number of runs, not of cells.
    """
    runs = _runs(mask)
    parent = list(range(len(runs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[int] = []  # run indices of the row above
    current: list[int] = []
    row_of_current = -1
    for index, (row, start, stop) in enumerate(runs):
        if row != row_of_current:
            previous = current if row == row_of_current + 1 else []
            current, row_of_current = [], row
        for above in previous:
            _, a_start, a_stop = runs[above]
            if start <= a_stop and a_start <= stop:
                parent[root(index)] = root(above)
        current.append(index)
    groups: dict[int, list[int]] = {}
    for index in range(len(runs)):
        groups.setdefault(root(index), []).append(index)
    found = []
    for members in sorted(groups.values(), key=lambda m: m[0]):  # runs are row-major: by first cell
        cells = [np.stack([np.full(runs[i][2] - runs[i][1], runs[i][0]), np.arange(runs[i][1], runs[i][2])], axis=1) for i in members]
        found.append(np.concatenate(cells))
    return found


def roi_boxes(relevance: np.ndarray, width: int, height: int, threshold: float = DEFAULT_THRESHOLD, max_boxes: int = MAX_BOXES) -> list[Box]:
    """Boxes around the regions of ``relevance`` (H×W, any scale) at or above ``threshold`` of its
    maximum, in the pixel coordinates of a ``width × height`` figure."""
    relevance = np.asarray(relevance, dtype=np.float32)
    peak = float(relevance.max()) if relevance.size else 0.0
    if peak <= 0 or width <= 0 or height <= 0:
        return []
    h, w = relevance.shape
    # Grid with the figure's aspect ratio, UPSAMPLE cells per feature cell along the longer side.
    longer = max(h, w) * UPSAMPLE
    gw = max(w, int(round(longer * min(1.0, width / height))))
    gh = max(h, int(round(longer * min(1.0, height / width))))
    norm = relevance / peak
    grid = upsample(norm, gw, gh)
    boxes = []
    for cells in _components(grid >= threshold):
        r, c = cells[:, 0], cells[:, 1]
        # The score is read from the feature cells under the region, not the interpolated grid.
        cell_values = norm[np.minimum(r * h // gh, h - 1), np.minimum(c * w // gw, w - 1)]
        boxes.append(Box(
            x0=int(np.floor(c.min() * width / gw)), y0=int(np.floor(r.min() * height / gh)),
            x1=int(np.ceil((c.max() + 1) * width / gw)), y1=int(np.ceil((r.max() + 1) * height / gh)),
            score=round(float(cell_values.max()), 4),
        ))
    boxes.sort(key=lambda b: -b.score)
    return boxes[:max_boxes]
