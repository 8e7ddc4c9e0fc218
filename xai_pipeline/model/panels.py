"""Panels of a compound figure by layout analysis: recursive XY cuts on gutters and separator lines.

A figure is reduced to a grey ``G`` (longest side at most ``ANALYSIS_SIDE`` px) and a background
value ``b``: the median of its one-pixel border when ``BORDER_UNIFORM`` of the border is that grey
(white or black gutters alike), else white (panels that run to the figure's edge). A pixel is ink when
``|G − b| > INK_LEVEL``. A *gutter* along an axis is a run of at least ``MIN_GAP`` of the side in
lines (rows or columns) of the region whose ink share is at most ``GUTTER_INK``. Cutting a region
at its interior gutters, then cutting the pieces again, rows before columns, recursively (Nagy &
Seth's XY tree), yields leaf regions; each is trimmed to its ink (a panel's border line stays
with its panel).

Pieces are panels only when they look like panels: leaves narrower or shorter than
``MIN_PANEL_SIDE`` of the figure's side, or with less than ``MIN_PANEL_AREA`` of its area, are
merged into their nearest neighbour (panel letters, axis labels and titles cut off a chart come
back to it). A figure whose cuts give one panel is single-panel and stays whole. On a dark page
(``b < DARK_BACKGROUND``) gaps also separate parts of one scan, so a dark figure is split only
when at least half of the pieces are outlined like printed rectangles (ink on ``RECT_EDGE`` of
their box's outline).

Boxes are ``(x0, y0, x1, y1)`` in the figure's pixels, ``x1``/``y1`` exclusive, in reading order
(the XY tree's order: rows top to bottom, panels in a row left to right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

ANALYSIS_SIDE = 512
INK_LEVEL = 24
GUTTER_INK = 0.002
BORDER_UNIFORM = 0.6
DARK_BACKGROUND = 96
RECT_EDGE = 0.6
MIN_GAP = 0.005  # of the figure's side along the cut: real gutters are thin (3–5 px at 1,000 px)
MIN_PANEL_SIDE = 0.12
MIN_PANEL_AREA = 0.03
MAX_DEPTH = 6
MAX_PANELS = 16


@dataclass(frozen=True)
class Panel:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


def _grey(image: Image.Image) -> tuple[np.ndarray, float]:
    """The analysis image (uint8 grey) and its scale back to figure pixels."""
    scale = max(image.size) / ANALYSIS_SIDE if max(image.size) > ANALYSIS_SIDE else 1.0
    if scale > 1.0:
        image = image.resize((max(1, round(image.width / scale)), max(1, round(image.height / scale))), Image.Resampling.BOX)
    return np.asarray(image.convert("L"), dtype=np.int16), scale


def _background(grey: np.ndarray) -> float:
    """The page's grey: the median of the one-pixel border when most of the border is that grey;
    white when panels run to the figure's edge (papers are printed on white)."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    median = float(np.median(border))
    if np.mean(np.abs(border - median) <= INK_LEVEL) >= BORDER_UNIFORM:
        return median
    return 255.0


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of True."""
    padded = np.concatenate([[False], flags, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _cuts(ink: np.ndarray, axis: int, min_gap: int) -> list[tuple[int, int]]:
    """Interior gutters across ``axis`` of a region: ``[start, stop)`` runs of near-empty lines."""
    length = ink.shape[axis]
    share = ink.sum(axis=1 - axis) / max(1, ink.shape[1 - axis])
    return [(a, b) for a, b in _runs(share <= GUTTER_INK) if b - a >= min_gap and a > 0 and b < length]


def _edge_ink(ink: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Share of ink on the outline of ``box``: near 1 for a printed rectangle (a photograph, a
    scan with its frame), low for a blob on the page (a body section, one leg of two)."""
    x0, y0, x1, y1 = box
    region = ink[y0:y1, x0:x1]
    if region.shape[0] < 3 or region.shape[1] < 3:
        return 0.0
    outline = np.concatenate([region[0], region[-1], region[1:-1, 0], region[1:-1, -1]])
    return float(outline.mean())


def _trim(ink: np.ndarray, y0: int, x0: int) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return None
    return (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)


def _split(ink: np.ndarray, box: tuple[int, int, int, int], gaps: tuple[int, int], depth: int) -> list[tuple[int, int, int, int]]:
    x0, y0, x1, y1 = box
    trimmed = _trim(ink[y0:y1, x0:x1], y0, x0)
    if trimmed is None:
        return []
    if depth >= MAX_DEPTH:
        return [trimmed]
    x0, y0, x1, y1 = trimmed
    region = ink[y0:y1, x0:x1]
    for axis in (0, 1):  # rows first: most compound figures are rows of panels
        cuts = _cuts(region, axis, gaps[axis])
        if not cuts:
            continue
        edges = [0] + [p for cut in cuts for p in cut] + [region.shape[axis]]
        pieces = []
        for start, stop in zip(edges[::2], edges[1::2]):
            sub = (x0, y0 + start, x1, y0 + stop) if axis == 0 else (x0 + start, y0, x0 + stop, y1)
            pieces += _split(ink, sub, gaps, depth + 1)
        return pieces
    return [trimmed]


def _merge_small(boxes: list[tuple[int, int, int, int]], width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Merge pieces too small to be panels into their nearest neighbour, smallest first."""
    boxes = list(boxes)

    def small(b: tuple[int, int, int, int]) -> bool:
        w, h = b[2] - b[0], b[3] - b[1]
        return w < MIN_PANEL_SIDE * width or h < MIN_PANEL_SIDE * height or w * h < MIN_PANEL_AREA * width * height

    def gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
        dx = max(0, max(a[0], b[0]) - min(a[2], b[2]))
        dy = max(0, max(a[1], b[1]) - min(a[3], b[3]))
        return float(np.hypot(dx, dy))

    while len(boxes) > 1:
        candidates = [i for i, b in enumerate(boxes) if small(b)]
        if not candidates:
            break
        i = min(candidates, key=lambda k: (boxes[k][2] - boxes[k][0]) * (boxes[k][3] - boxes[k][1]))
        j = min((k for k in range(len(boxes)) if k != i), key=lambda k: gap(boxes[i], boxes[k]))
        a, b = boxes[i], boxes[j]
        boxes[j] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
        del boxes[i]
    return boxes


def split_panels(image: Image.Image) -> list[Panel]:
    """The panels of ``image`` in reading order; one panel covering the figure's ink when it is
    not compound (and the whole figure when it has no ink)."""
    grey, scale = _grey(image)
    h, w = grey.shape
    background = _background(grey)
    ink = np.abs(grey - background) > INK_LEVEL
    gaps = (max(2, round(MIN_GAP * h)), max(2, round(MIN_GAP * w)))
    boxes = _merge_small(_split(ink, (0, 0, w, h), gaps, 0), w, h)
    if len(boxes) <= 1 or len(boxes) > MAX_PANELS:
        return [Panel(0, 0, image.width, image.height)]
    if background < DARK_BACKGROUND and sum(_edge_ink(ink, b) >= RECT_EDGE for b in boxes) * 2 < len(boxes):
        # On a dark page, gaps also separate parts of one scan (two legs, two lungs, slices of a
        # montage): split only when most pieces are outlined like printed rectangles.
        return [Panel(0, 0, image.width, image.height)]
    out = []
    for x0, y0, x1, y1 in boxes:
        out.append(Panel(max(0, int(x0 * scale)), max(0, int(y0 * scale)),
                         min(image.width, int(np.ceil(x1 * scale))), min(image.height, int(np.ceil(y1 * scale)))))
    return out
