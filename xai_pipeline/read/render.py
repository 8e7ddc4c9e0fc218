"""Pictures: CRM heatmaps and overlays (PIL compositing, matplotlib's ``turbo`` colour map) and
charts (bar charts, confusion matrices) drawn by matplotlib. matplotlib is imported where a
picture is drawn (Agg backend, no display), so importing this module stays cheap."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from xai_pipeline.model.roi import upsample

COLORMAP = "turbo"  # perceptually ordered, dark blue → red; the paper's maps use jet


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → ``H×W×3`` uint8 colours of :data:`COLORMAP`."""
    from matplotlib import colormaps

    rgba = colormaps[COLORMAP](np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0), bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def _figure_png(fig: Any) -> Image.Image:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


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


def boxed(figure: Image.Image, panels: list[dict[str, Any]]) -> Image.Image:
    """The figure with each panel's box and its number, modality and confidence drawn on it."""
    out = figure.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    for k, panel in enumerate(panels):
        medical = panel.get("modality") not in (None, "other")
        colour = (230, 30, 30) if medical else (40, 90, 220)
        draw.rectangle([panel["x0"], panel["y0"], panel["x1"] - 1, panel["y1"] - 1], outline=colour, width=width)
        text = f"{k + 1} {panel.get('modality')} {panel.get('confidence', 0):.2f}"
        draw.rectangle([panel["x0"], panel["y0"], panel["x0"] + 7 * len(text), panel["y0"] + 12], fill=colour)
        draw.text((panel["x0"] + 2, panel["y0"] + 1), text, fill=(255, 255, 255))
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


def bar_chart(labels: list[str], values: list[float], width: int = 720, height: int = 260, ylabel: str = "figures") -> Image.Image:
    """A labelled vertical bar chart, each bar with its value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width / 100, height / 100))
    bars = ax.bar(range(len(values)), values, color="#466ebe")
    ax.bar_label(bars, labels=[str(int(v)) if float(v).is_integer() else f"{v:.2f}" for v in values], fontsize=7)
    ax.set_xticks(range(len(values)), [str(label)[:14] for label in labels], rotation=45 if len(values) > 8 else 0, ha="right" if len(values) > 8 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    return _figure_png(fig)


def confusion_png(confusion: np.ndarray, row_names: list[str], col_names: list[str], path: str | Path) -> None:
    """Confusion matrix (rows: true class, columns: prediction), cells shaded by row share."""
    plt = _pyplot()
    confusion = np.asarray(confusion)
    share = confusion / confusion.sum(axis=1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(col_names), 1.0 + 0.7 * len(row_names)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", color="white" if share[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(col_names)), col_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_names)), row_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _figure_png(fig).save(path)
