"""Synthetic compound figures with known panel boxes, assembled from single figures.

Layouts as papers print them: regular grids (1×2 … 3×4), irregular rows (each row its own number
of panels and height), a tall panel beside a column of small ones, and insets (a small panel
pasted inside a large one, which the layout analysis cannot and should not split: its box is not
a panel of the layout). Gutters are white or black, 1–4% of the side; some panels get a thin
border; most get a letter label (A, B, …) in a corner, inside the panel or in the gutter.

``compound_figure(panels, rng)`` returns the figure and the boxes of its panels, in figure pixels.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

LAYOUTS = ("grid", "rows", "tall_left", "inset")


@dataclass(frozen=True)
class Compound:
    image: Image.Image
    boxes: list[tuple[int, int, int, int]]
    layout: str


def _fit(image: Image.Image, w: int, h: int) -> Image.Image:
    """``image`` scaled to fit ``w × h`` (aspect kept)."""
    scale = min(w / image.width, h / image.height)
    return image.convert("RGB").resize((max(8, int(image.width * scale)), max(8, int(image.height * scale))), Image.Resampling.BILINEAR)


def _cells(layout: str, n: int, rng: np.random.Generator, width: int, height: int, gutter: int) -> list[tuple[int, int, int, int]]:
    """Cells ``(x0, y0, x1, y1)`` of a layout that holds up to ``n`` panels."""
    if layout == "grid" or layout == "inset":
        cols = int(rng.integers(1, 4)) if n >= 2 else 1
        rows = max(1, min(4, -(-n // cols)))
        if rows * cols < 2:
            cols = 2
        heights = [height // rows] * rows
        widths = [width // cols] * cols
        return [(c * widths[0] + gutter // 2, r * heights[0] + gutter // 2, (c + 1) * widths[0] - gutter // 2, (r + 1) * heights[0] - gutter // 2)
                for r in range(rows) for c in range(cols)][:max(2, n)]
    if layout == "rows":
        rows = int(rng.integers(2, 4))
        shares = rng.uniform(0.6, 1.4, rows)
        edges = np.concatenate([[0], np.cumsum(shares / shares.sum() * height)]).astype(int)
        cells = []
        for r in range(rows):
            cols = int(rng.integers(1, 4))
            col_shares = rng.uniform(0.6, 1.4, cols)
            col_edges = np.concatenate([[0], np.cumsum(col_shares / col_shares.sum() * width)]).astype(int)
            for c in range(cols):
                cells.append((col_edges[c] + gutter // 2, edges[r] + gutter // 2, col_edges[c + 1] - gutter // 2, edges[r + 1] - gutter // 2))
        return cells
    # tall_left: one tall panel, a column of 2-3 beside it
    split = int(width * rng.uniform(0.45, 0.65))
    k = int(rng.integers(2, 4))
    cells = [(gutter // 2, gutter // 2, split - gutter // 2, height - gutter // 2)]
    for i in range(k):
        cells.append((split + gutter // 2, i * height // k + gutter // 2, width - gutter // 2, (i + 1) * height // k - gutter // 2))
    return cells


def _content_box(panel: Image.Image, background: tuple[int, int, int], px: int, py: int) -> tuple[int, int, int, int]:
    """The panel's box on the page: its rectangle less margins of the page's colour (a chart's
    white margin on a white page is not visibly part of the panel)."""
    grey = np.asarray(panel.convert("L"), dtype=np.int16)
    ink = np.abs(grey - background[0]) > 24
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return (px, py, px + panel.width, py + panel.height)
    return (px + int(cols[0]), py + int(rows[0]), px + int(cols[-1]) + 1, py + int(rows[-1]) + 1)


def compound_figure(pool: list[Image.Image], rng: np.random.Generator, layout: str | None = None) -> Compound:
    """A compound figure of panels drawn from ``pool`` and the boxes of its panels."""
    layout = layout or str(rng.choice(LAYOUTS))
    width = int(rng.integers(600, 1400))
    height = int(width * rng.uniform(0.5, 1.1))
    dark = rng.random() < 0.2
    background = (0, 0, 0) if dark else (255, 255, 255)
    gutter = max(6, int(min(width, height) * rng.uniform(0.015, 0.04)))
    cells = _cells(layout, int(rng.integers(2, 7)), rng, width, height, gutter)
    figure = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(figure)
    border = rng.random() < 0.25
    labels = rng.random() < 0.8
    boxes = []
    for index, (x0, y0, x1, y1) in enumerate(cells):
        panel = _fit(pool[int(rng.integers(len(pool)))], x1 - x0, y1 - y0)
        px = x0 + (x1 - x0 - panel.width) // 2
        py = y0 + (y1 - y0 - panel.height) // 2
        figure.paste(panel, (px, py))
        box = _content_box(panel, background, px, py)
        if border:
            draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(90, 90, 90) if not dark else (200, 200, 200), width=1)
        if labels:
            letter = string.ascii_uppercase[index % 26]
            colour = (255, 255, 255) if dark else (0, 0, 0)
            draw.text((box[0] + 3, box[1] + 2), letter, fill=colour if rng.random() < 0.5 else (255, 255, 0))
        boxes.append(tuple(int(v) for v in box))
    if layout == "inset" and boxes:
        host = max(range(len(boxes)), key=lambda i: (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]))
        x0, y0, x1, y1 = boxes[host]
        inset = _fit(pool[int(rng.integers(len(pool)))], (x1 - x0) // 3, (y1 - y0) // 3)
        figure.paste(inset, (x1 - inset.width - 4, y0 + 4))  # inside the host panel: part of it
    return Compound(figure, boxes, layout)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(found: list[tuple[int, int, int, int]], truth: list[tuple[int, int, int, int]], threshold: float = 0.5) -> int:
    """True positives: greedy one-to-one matching by IoU at or above ``threshold``."""
    pairs = sorted(((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    used_f, used_t, hits = set(), set(), 0
    for score, i, j in pairs:
        if score < threshold:
            break
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            hits += 1
    return hits
