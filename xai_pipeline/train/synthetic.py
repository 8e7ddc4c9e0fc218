"""Procedurally drawn non-modality figures: charts, diagrams, tables, text and blots.

Literature figures are often not images of a modality at all. These stand-ins are used for
outlier exposure in training (the model learns to be unsure on them, so the "other" threshold
works) and to measure how often such figures are called "other". They are drawn by this code,
so they carry no third-party terms. Each generator takes a seeded ``numpy`` generator.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

Generator = Callable[[np.random.Generator, int], Image.Image]

_WORDS = "cell tumor control patient dose time ratio group mean n.s. p<0.05 fig expression level week".split()


def _color(rng: np.random.Generator, dark: bool = False) -> tuple[int, int, int]:
    top = 140 if dark else 255
    return tuple(int(v) for v in rng.integers(0, top, 3))  # type: ignore[return-value]


def _label(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 4))))


def _canvas(rng: np.random.Generator, size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    shade = int(rng.integers(225, 256))
    img = Image.new("RGB", (size, size), (shade, shade, shade))
    return img, ImageDraw.Draw(img)


def bar_chart(rng: np.random.Generator, size: int) -> Image.Image:
    img, draw = _canvas(rng, size)
    m = size // 8
    draw.line([(m, m), (m, size - m), (size - m, size - m)], fill=(0, 0, 0), width=2)
    bars = int(rng.integers(2, 9))
    width = (size - 2 * m) // (bars * 2)
    for i in range(bars):
        h = int(rng.uniform(0.1, 0.9) * (size - 2 * m))
        x = m + width // 2 + i * 2 * width
        draw.rectangle([x, size - m - h, x + width, size - m], fill=_color(rng), outline=(0, 0, 0))
        draw.line([(x + width // 2, size - m - h - 8), (x + width // 2, size - m - h)], fill=(0, 0, 0))
    draw.text((m, m // 3), _label(rng), fill=(0, 0, 0))
    return img


def line_plot(rng: np.random.Generator, size: int) -> Image.Image:
    img, draw = _canvas(rng, size)
    m = size // 8
    draw.rectangle([m, m, size - m, size - m], outline=(0, 0, 0), width=2)
    for _ in range(int(rng.integers(1, 5))):
        xs = np.linspace(m, size - m, int(rng.integers(5, 40)))
        ys = np.clip(np.cumsum(rng.normal(0, size / 30, len(xs))) + size / 2, m, size - m)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=_color(rng, dark=True), width=int(rng.integers(1, 4)))
        if rng.random() < 0.5:
            for x, y in zip(xs, ys):
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=(0, 0, 0))
    draw.text((m, size - m + 4), _label(rng), fill=(0, 0, 0))
    return img


def scatter_plot(rng: np.random.Generator, size: int) -> Image.Image:
    img, draw = _canvas(rng, size)
    m = size // 8
    draw.line([(m, m), (m, size - m), (size - m, size - m)], fill=(0, 0, 0), width=2)
    for _ in range(int(rng.integers(20, 300))):
        x, y = rng.uniform(m, size - m, 2)
        r = int(rng.integers(2, 5))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_color(rng, dark=True))
    return img


def flow_diagram(rng: np.random.Generator, size: int) -> Image.Image:
    img, draw = _canvas(rng, size)
    boxes = []
    for _ in range(int(rng.integers(3, 8))):
        w, h = int(rng.integers(size // 6, size // 3)), int(rng.integers(size // 12, size // 6))
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        boxes.append((x, y, w, h))
        draw.rounded_rectangle([x, y, x + w, y + h], radius=6, outline=(0, 0, 0), fill=_color(rng), width=2)
        draw.text((x + 4, y + h // 3), _label(rng), fill=(0, 0, 0))
    for (x1, y1, w1, h1), (x2, y2, w2, _) in zip(boxes, boxes[1:]):
        draw.line([(x1 + w1 // 2, y1 + h1), (x2 + w2 // 2, y2)], fill=(0, 0, 0), width=2)
    return img


def table(rng: np.random.Generator, size: int) -> Image.Image:
    img, draw = _canvas(rng, size)
    rows, cols = int(rng.integers(3, 12)), int(rng.integers(2, 6))
    for r in range(rows + 1):
        y = size * r // (rows + 1) + 4
        draw.line([(4, y), (size - 4, y)], fill=(0, 0, 0))
        for c in range(cols):
            draw.text((8 + c * size // cols, y + 4), f"{rng.uniform(0, 100):.1f}" if r else _label(rng), fill=(0, 0, 0))
    return img


def text_page(rng: np.random.Generator, size: int) -> Image.Image:
    img, draw = _canvas(rng, size)
    y = 6
    while y < size - 12:
        draw.text((6, y), " ".join(rng.choice(_WORDS, size=12)), fill=(0, 0, 0))
        y += int(rng.integers(10, 16))
    return img


def western_blot(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.normal(200, 8, (size, size)).clip(0, 255)
    lanes, rows = int(rng.integers(3, 10)), int(rng.integers(1, 6))
    for r in range(rows):
        y = int((r + 0.5) * size / rows)
        for lane in range(lanes):
            x = int((lane + 0.5) * size / lanes)
            strength = rng.uniform(20, 180)
            yy, xx = np.ogrid[:size, :size]
            band = np.exp(-(((xx - x) / (size / lanes / 2.5)) ** 4) - ((yy - y) / 4.0) ** 2)
            base -= strength * band
    return Image.fromarray(base.clip(0, 255).astype(np.uint8), mode="L").convert("RGB")


def shapes_photo(rng: np.random.Generator, size: int) -> Image.Image:
    """A colourful photo-like scene: gradient sky, blobs and noise."""
    top, bottom = np.array(_color(rng)), np.array(_color(rng))
    t = np.linspace(0, 1, size)[:, None, None]
    arr = (top * (1 - t) + bottom * t) * np.ones((1, size, 1))
    img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 15))):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 20, size // 4))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_color(rng))
    noise = rng.normal(0, 10, (size, size, 3))
    return Image.fromarray((np.asarray(img, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8))


GENERATORS: dict[str, Generator] = {
    "bar_chart": bar_chart,
    "line_plot": line_plot,
    "scatter_plot": scatter_plot,
    "flow_diagram": flow_diagram,
    "table": table,
    "text_page": text_page,
    "western_blot": western_blot,
    "shapes_photo": shapes_photo,
}


FIGURE_TYPES_OF: dict[str, str] = {"bar_chart": "chart", "line_plot": "chart", "scatter_plot": "chart", "flow_diagram": "diagram",
                                   "table": "table", "text_page": "other", "western_blot": "gel_blot", "shapes_photo": "photograph"}
"""The figure type (``schema.FIGURE_TYPES``) of each generator's figures."""


def other_figure(rng: np.random.Generator, size: int = 256, kinds: tuple[str, ...] | None = None) -> Image.Image:
    """One random figure of a random kind (from ``kinds``, default all)."""
    names = kinds or tuple(GENERATORS)
    return GENERATORS[str(rng.choice(names))](rng, size)
