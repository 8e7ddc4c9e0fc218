"""Regions of interest from a relevance map: boxes a search engine can highlight without maps.

The map is normalised by its maximum and upsampled bilinearly (``UPSAMPLE`` cells per feature
cell, keeping the figure's aspect ratio); cells at or above ``threshold`` (the paper displays CRM
above 20% of its maximum) are grouped into 8-connected regions (``scipy.ndimage.label``). Each region becomes a box in the
figure's pixel coordinates, ``[x0, y0, x1, y1)``, with ``score`` = the highest normalised
relevance of the feature cells under the region (1.0 for the region holding the maximum).
Boxes are sorted by score; at most ``MAX_BOXES`` are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from PIL import Image
from scipy import ndimage

DEFAULT_THRESHOLD = 0.2
UPSAMPLE = 8
MAX_BOXES = 8
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    def as_dict(self) -> dict[str, float]:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1, "score": self.score}


def upsample(relevance: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear upsampling of a map to a figure's ``width × height`` pixels (float32).

    The model sees the whole figure resized to a square, so feature cell (l, m) covers the figure
    region [m·width/W, (m+1)·width/W) × [l·height/H, (l+1)·height/H).
    """
    image = Image.fromarray(np.asarray(relevance, dtype=np.float32), mode="F")
    return np.asarray(image.resize((int(width), int(height)), Image.Resampling.BILINEAR), dtype=np.float32)


def analysis_grid(relevance: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The map normalised by its maximum, and that map upsampled to a grid with the figure's
    aspect ratio, ``UPSAMPLE`` cells per feature cell along the longer side; ``None`` for an
    all-zero map or an empty figure."""
    relevance = np.asarray(relevance, dtype=np.float32)
    peak = float(relevance.max()) if relevance.size else 0.0
    if peak <= 0 or width <= 0 or height <= 0:
        return None
    h, w = relevance.shape
    longer = max(h, w) * UPSAMPLE
    gw = max(w, int(round(longer * min(1.0, width / height))))
    gh = max(h, int(round(longer * min(1.0, height / width))))
    norm = relevance / peak
    return norm, upsample(norm, gw, gh)


def roi_boxes(relevance: np.ndarray, width: int, height: int, threshold: float = DEFAULT_THRESHOLD, max_boxes: int = MAX_BOXES) -> list[Box]:
    """Boxes around the regions of ``relevance`` (H×W, any scale) at or above ``threshold`` of its
    maximum, in the pixel coordinates of a ``width × height`` figure."""
    found = analysis_grid(relevance, width, height)
    if found is None:
        return []
    norm, grid = found
    (h, w), (gh, gw) = norm.shape, grid.shape
    labels, count = ndimage.label(grid >= threshold, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    # The score is read from the feature cells under a region, not from the interpolated grid.
    cells = norm[np.minimum(np.arange(gh) * h // gh, h - 1)[:, None], np.minimum(np.arange(gw) * w // gw, w - 1)[None, :]]
    scores = ndimage.maximum(cells, labels, np.arange(1, count + 1))
    boxes = []
    for (rows, cols), score in zip(ndimage.find_objects(labels), scores):  # labels in raster order
        boxes.append(Box(
            x0=int(np.floor(cols.start * width / gw)), y0=int(np.floor(rows.start * height / gh)),
            x1=int(np.ceil(cols.stop * width / gw)), y1=int(np.ceil(rows.stop * height / gh)),
            score=round(float(score), 4),
        ))
    boxes.sort(key=lambda b: -b.score)  # stable: equal scores keep raster order
    return boxes[:max_boxes]
