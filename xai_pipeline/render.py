"""PNG renderings with PIL only: heatmaps, CRM maps above a display threshold, confusion matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from xai_pipeline.codec import upsample

# Anchor colours of a perceptually ordered map (dark blue → cyan → yellow → red).
_ANCHORS = np.array(
    [[0, 0, 80], [0, 60, 200], [0, 200, 220], [120, 230, 80], [255, 220, 0], [255, 90, 0], [180, 0, 0]], dtype=np.float64
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → ``H×W×3`` uint8 colours."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_ANCHORS) - 1)
    t = (v - lo)[..., None]
    return (_ANCHORS[lo] * (1 - t) + _ANCHORS[hi] * t).astype(np.uint8)


def crm_heatmap(relevance: np.ndarray, size: tuple[int, int], threshold: float = 0.2) -> Image.Image:
    """A map normalised by its maximum, upsampled to ``size`` (w, h); values below ``threshold``
    of the maximum are shown black, as the paper displays CRM above 20% of its maximum."""
    up = upsample(relevance, *size)
    peak = float(up.max())
    norm = up / peak if peak > 0 else up
    rgb = colormap(norm)
    rgb[norm < threshold] = 0
    return Image.fromarray(rgb)


def overlay(figure: Image.Image, relevance: np.ndarray, threshold: float = 0.2, alpha: float = 0.5) -> Image.Image:
    """The figure with its thresholded heatmap blended on top."""
    figure = figure.convert("RGB")
    heat = crm_heatmap(relevance, figure.size, threshold)
    mask = Image.fromarray(((np.asarray(heat).max(axis=2) > 0) * int(255 * alpha)).astype(np.uint8))
    out = figure.copy()
    out.paste(heat, (0, 0), mask)
    return out


def tile_grid(tiles: list[tuple[str, Image.Image]], tile: int = 224, columns: int = 3) -> Image.Image:
    """Labelled tiles in a grid on white; each image fitted into its tile, aspect kept."""
    columns = max(1, min(columns, len(tiles)))
    rows = max(1, (len(tiles) + columns - 1) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * (tile + 18)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(tiles):
        x, y = (i % columns) * tile, (i // columns) * (tile + 18)
        draw.text((x + 4, y + 3), label, fill=(0, 0, 0))
        fitted = image.convert("RGB")
        scale = min(tile / fitted.width, tile / fitted.height)
        fitted = fitted.resize((max(1, int(fitted.width * scale)), max(1, int(fitted.height * scale))))
        sheet.paste(fitted, (x + (tile - fitted.width) // 2, y + 18 + (tile - fitted.height) // 2))
    return sheet


def bar_chart(labels: list[str], values: list[float], width: int = 720, height: int = 260) -> Image.Image:
    """A labelled vertical bar chart."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    if not values:
        return img
    top = max(values) or 1
    left, bottom = 40, height - 40
    slot = (width - left - 10) / len(values)
    draw.line([(left, 10), (left, bottom), (width - 5, bottom)], fill=(0, 0, 0))
    draw.text((4, 10), str(int(top)) if float(top).is_integer() else f"{top:.2f}", fill=(0, 0, 0))
    for i, (label, value) in enumerate(zip(labels, values)):
        x0 = left + i * slot + slot * 0.15
        x1 = left + (i + 1) * slot - slot * 0.15
        y0 = bottom - (bottom - 20) * value / top
        draw.rectangle([x0, y0, x1, bottom], fill=(70, 110, 190))
        draw.text((x0, max(12, y0 - 12)), str(int(value)) if float(value).is_integer() else f"{value:.2f}", fill=(0, 0, 0))
        draw.text((x0, bottom + 4 + (i % 2) * 12), str(label)[:12], fill=(0, 0, 0))
    return img


def confusion_png(confusion: np.ndarray, row_names: list[str], col_names: list[str], path: str | Path) -> None:
    """Confusion matrix (rows: true class, columns: prediction), cells shaded by row share."""
    cell, margin = 64, 96
    rows, cols = confusion.shape
    img = Image.new("RGB", (margin + cols * cell + 8, margin + rows * cell + 8), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    totals = confusion.sum(axis=1, keepdims=True).clip(min=1)
    shade = confusion / totals
    for j, name in enumerate(col_names):
        draw.text((margin + j * cell + 4, margin - 30 + (j % 2) * 12), name[:10], fill=(0, 0, 0))
    draw.text((margin, 6), "predicted (columns)", fill=(0, 0, 0))
    draw.text((4, 20), "true (rows)", fill=(0, 0, 0))
    for i, name in enumerate(row_names):
        draw.text((4, margin + i * cell + cell // 2 - 6), name[:14], fill=(0, 0, 0))
        for j in range(cols):
            x, y = margin + j * cell, margin + i * cell
            level = int(255 - 150 * shade[i, j])
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=(level, level, 255))
            draw.text((x + cell // 3, y + cell // 3), str(int(confusion[i, j])), fill=(0, 0, 0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
