"""Training augmentations that mimic how figures vary in the literature.

Published figures are cropped, padded into panels, converted to grayscale or tinted, re-saved
as JPEG at any quality, resized, and annotated with letters, arrows and watermarks. Each of these
is applied at random; the last step resizes the whole figure to the model's square input, as
:func:`xai_pipeline.job.decode.to_pixels` does at inference.

Text and watermark-like marks are drawn on figures of every class, so that a mark seen on one
source (MedPix's corner watermark on CT and MRI) cannot tell classes apart.

Histology (``stain=True``) also gets the stain and scale variation between laboratories and
scanners, since the training data has one stain protocol and one organ for most tiles:

* **HED jitter** (Tellez et al., "Quantifying the effects of data augmentation and stain color
  normalization in convolutional neural networks for computational pathology", Med. Image Anal.
  58:101544, 2019). Colour deconvolution (Ruifrok & Johnston, Anal. Quant. Cytol. Histol.
  23:291, 2001) turns the optical density ``OD = −ln(max(I, 1/255))`` of each pixel into stain
  amounts ``s = OD · M⁻¹`` for the haematoxylin, eosin and DAB vectors (rows of ``M``, the
  matrix scikit-image's ``rgb2hed`` uses); each stain is rescaled and shifted,
  ``s'_k = α_k s_k + β_k`` with ``α_k ~ U(1−a, 1+a)``, ``β_k ~ U(−b, b)``, and the pixel is
  recomposed as ``I' = exp(−s' M)``. Three lines of numpy, so scikit-image is not a dependency.
* **IHC look** (H-DAB): immunohistochemistry slides show a haematoxylin counterstain and brown
  DAB where the antibody bound, and little eosin. On the stain amounts above,
  ``s'_H = η s_H``, ``s'_E = ε s_E``, ``s'_D = s_D + γ · m · s_E`` with ``η ~ U(0.5, 1)``,
  ``ε ~ U(0, 0.3)``, ``γ ~ U(0.6, 1.6)`` and ``m`` a smooth random mask (bilinear upsampling of
  4×4 uniform noise, ramped from 0 to 1 above a random quantile), so some of the tissue that took eosin
  takes DAB instead: an H&E tile becomes an IHC-like one. The training data's only IHC is four
  demo tiles (held out), and the literature's histology figures are often IHC.
* **Magnification** (zoom out): the tile shrunk to 35–70% of its side and mirror-tiled back to
  its size, so the tissue appears at a lower magnification with its detail kept. (Small crops
  blown up to the input size were tried first: they taught the model that any blurry, upscaled
  image is histology, and a 64-pixel MR slice came out histology.)

Ultrasound (``sector=True``, off unless ``sector_probability`` > 0: ``train --sector-probability``)
can be **scan-converted into a sector** (:func:`sector_scan`): the training ultrasound is mostly
breast frames from a linear probe (a full rectangle of speckle), while obstetric, abdominal and
cardiac figures show the fan of a curved or phased-array probe on black, which the
leave-source-out study calls MRI (HC18's fetal heads).

MRI (``contrast=True``, off unless ``mr_contrast_probability`` > 0: ``train --mr-contrast-probability``)
can have its **tissue contrast remapped** (:func:`mr_contrast`), as another pulse sequence would
show the same anatomy: the packaged MR volumes are mostly T1-weighted brains, while the
literature's MR figures are T2, FLAIR, diffusion and contrast-enhanced as often, and the
leave-source-out study calls MedPix's clinical MRI CT. A random curve ``g`` through ``n`` knots
``(k/(n−1), y_k)``, ``y_k ~ U(0, 1)`` (piecewise linear and not monotone: a rougher variant of
the smooth Bézier intensity curves of Zhou et al., "Models Genesis", Med. Image Anal. 67:101840,
2021), is applied to the body only, ``I' = m·g(I) + (1 − m)·I`` per channel, with ``m`` the body
mask (channel mean above a floor, small enclosed holes filled): air gives no MR signal under any
sequence, so the background stays black.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from xai_pipeline.job.decode import to_pixels

_MARKS = ("MedPix®", "A", "B", "C", "D", "L", "R", "AP", "PA", "T2", "FLAIR", "10 mm", "×40", "*", "→", "LT", "RT")


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.55, 1.0)
    pad_probability: float = 0.3
    grayscale_probability: float = 0.25
    color_probability: float = 0.6
    text_probability: float = 0.6
    arrow_probability: float = 0.3
    jpeg_probability: float = 0.5
    rescale_probability: float = 0.3
    flip_probability: float = 0.5
    stain_probability: float = 0.8  # histology only: HED jitter
    stain_scale: float = 0.3  # a: α_k ~ U(1 − a, 1 + a)
    stain_shift: float = 0.05  # b: β_k ~ U(−b, b), in optical-density units
    ihc_probability: float = 0.25  # histology only: H&E → H-DAB restaining
    zoom_out_probability: float = 0.3  # histology only: lower magnification
    zoom_out_scale: tuple[float, float] = (0.35, 0.7)  # the tile's side shrinks to this share
    sector_probability: float = 0.0  # ultrasound only: scan conversion into a fan (0: off, no random draw)
    sector_half_angle: tuple[float, float] = (25.0, 45.0)  # degrees either side of the fan's axis
    sector_apex: tuple[float, float] = (0.05, 0.5)  # the apex lies this share of the height above the top
    mr_contrast_probability: float = 0.0  # MRI only: tissue contrast remapped (0: off, no random draw)
    mr_contrast_knots: int = 5  # knots of the random curve g


# Ruifrok & Johnston's stain OD vectors (haematoxylin, eosin, DAB), as in skimage.color.rgb_from_hed.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def _stain_amounts(pixels: np.ndarray) -> np.ndarray:
    """``s = OD · M⁻¹`` per pixel (n×3: haematoxylin, eosin, DAB) of an ``H×W×3`` uint8 RGB image."""
    od = -np.log(np.maximum(pixels.astype(np.float64), 1.0) / 255.0)
    return od.reshape(-1, 3) @ HED_FROM_RGB


def _recompose(stains: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``I = exp(−s M)`` back to uint8 RGB pixels of ``shape``."""
    rgb = np.exp(-(stains @ RGB_FROM_HED)) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(shape)


def hed_jitter(pixels: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``s'_k = α_k s_k + β_k`` on the HED stain amounts of an ``H×W×3`` uint8 RGB image."""
    return _recompose(_stain_amounts(pixels) * alpha + beta, pixels.shape)


def ihc_restain(pixels: np.ndarray, mask: np.ndarray, eta: float, epsilon: float, gamma: float) -> np.ndarray:
    """H&E → H-DAB: ``s'_H = η s_H``, ``s'_E = ε s_E``, ``s'_D = s_D + γ·mask·s_E`` on the HED
    stain amounts of an ``H×W×3`` uint8 RGB image (``mask``: ``H×W`` in [0, 1])."""
    stains = _stain_amounts(pixels)
    eosin = np.maximum(stains[:, 1], 0.0)
    out = np.stack([eta * stains[:, 0], epsilon * stains[:, 1], stains[:, 2] + gamma * mask.reshape(-1) * eosin], axis=1)
    return _recompose(out, pixels.shape)


def _ihc(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img.convert("RGB"))
    noise = Image.fromarray((rng.random((4, 4)) * 255).astype(np.uint8)).resize((pixels.shape[1], pixels.shape[0]), Image.Resampling.BILINEAR)
    field = np.asarray(noise, dtype=np.float64) / 255.0
    mask = np.clip((field - np.quantile(field, rng.uniform(0.2, 0.7))) / 0.15, 0.0, 1.0)
    return Image.fromarray(ihc_restain(pixels, mask, rng.uniform(0.5, 1.0), rng.uniform(0.0, 0.3), rng.uniform(0.6, 1.6)))


def zoom_out(img: Image.Image, factor: float) -> Image.Image:
    """``img`` shrunk by ``factor`` and mirror-tiled back to its own size (a wider field of the
    same tissue at a lower magnification)."""
    w, h = img.size
    small = np.asarray(img.resize((max(4, round(w * factor)), max(4, round(h * factor))), Image.Resampling.LANCZOS))
    reps = (int(np.ceil(h / small.shape[0])) + 1, int(np.ceil(w / small.shape[1])) + 1)
    row = [small if j % 2 == 0 else small[:, ::-1] for j in range(reps[1])]
    strip = np.concatenate(row, axis=1)
    tiled = np.concatenate([strip if i % 2 == 0 else strip[::-1] for i in range(reps[0])], axis=0)
    return Image.fromarray(np.ascontiguousarray(tiled[:h, :w]))


def sector_scan(img: Image.Image, half_angle: float, apex: float) -> Image.Image:
    """``img`` read as a linear-probe frame (rows: depth, columns: lateral position) and
    scan-converted into the fan of a curved probe, as tall as ``img`` and as wide as the fan.

    With ``H`` the height, ``α`` = ``half_angle`` (degrees) and the apex at ``(W/2, −a·H)``
    (``a`` = ``apex``), output pixel ``(x, y)`` lies at depth ``r = √((x − W/2)² + (y + aH)²) − aH``
    and angle ``θ = atan2(x − W/2, y + aH)``; it takes the source pixel at row ``r`` and column
    ``(θ + α)/(2α) · (W_s − 1)`` (bilinear), and is black where ``|θ| > α`` or ``r ∉ [0, H − 1]``.
    """
    from scipy.ndimage import map_coordinates

    src = np.asarray(img.convert("RGB"), dtype=np.float32)
    h, w_src = src.shape[:2]
    alpha, top = np.radians(half_angle), apex * h
    width = int(np.ceil(2 * (top + h) * np.sin(alpha))) + 1
    y, x = np.mgrid[0:h, 0:width].astype(np.float64)
    dx, dy = x - width / 2, y + top
    depth, theta = np.hypot(dx, dy) - top, np.arctan2(dx, dy)
    column = (theta + alpha) / (2 * alpha) * (w_src - 1)
    inside = (np.abs(theta) <= alpha) & (depth >= 0) & (depth <= h - 1)
    out = np.stack([map_coordinates(src[..., c], [depth, column], order=1, mode="nearest") for c in range(3)], axis=-1)
    return Image.fromarray((out * inside[..., None]).clip(0, 255).astype(np.uint8))


def mr_contrast(img: Image.Image, knots: np.ndarray, floor: float = 0.06, max_hole: float = 0.25) -> Image.Image:
    """``I' = m·g(I) + (1 − m)·I`` on each channel of ``img`` scaled to [0, 1]: ``g`` is the
    piecewise-linear curve through ``(k/(n−1), knots_k)`` (``knots`` in [0, 1], ``n`` of them,
    ``n ≥ 2``) and ``m`` the body mask: pixels whose channel mean is above ``floor``, and the
    holes they enclose that are at most ``max_hole`` of the figure (dark fluid or bone inside the
    body is remapped; the air around it is not, nor the air inside a frame drawn round the
    figure, a larger hole). Colour overlays are remapped channel by channel, so their hue moves."""
    if knots.ndim != 1 or len(knots) < 2:
        raise ValueError(f"mr_contrast needs at least two knots, got shape {knots.shape}")
    pixels = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    body = body_mask(pixels, floor, max_hole)
    curved = np.interp(pixels, np.linspace(0.0, 1.0, len(knots)), np.clip(knots, 0.0, 1.0))
    out = np.where(body[..., None], curved, pixels)
    return Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8))


def body_mask(pixels: np.ndarray, floor: float = 0.06, max_hole: float = 0.25) -> np.ndarray:
    """The body of a scan (``pixels``: H×W×3 in [0, 1]): pixels whose channel mean is above
    ``floor``, and the holes they enclose that are at most ``max_hole`` of the figure."""
    from scipy.ndimage import binary_fill_holes, label

    lit = pixels.mean(axis=-1) > floor
    holes, _ = label(binary_fill_holes(lit) & ~lit)
    small = np.bincount(holes.ravel()) <= max_hole * lit.size
    small[0] = False  # label 0: not a hole
    return lit | small[holes]


def _framed(img: Image.Image, grey: float = 8.0) -> bool:
    """Both top corners (a tenth of each side) are black: the frame is already a fan or masked."""
    pixels = np.asarray(img.convert("L"), dtype=np.float32)
    h, w = max(1, pixels.shape[0] // 10), max(1, pixels.shape[1] // 10)
    return bool(pixels[:h, :w].mean() < grey and pixels[:h, -w:].mean() < grey)


def _stain(img: Image.Image, rng: np.random.Generator, cfg: "AugmentConfig") -> Image.Image:
    alpha = rng.uniform(1 - cfg.stain_scale, 1 + cfg.stain_scale, 3)
    beta = rng.uniform(-cfg.stain_shift, cfg.stain_shift, 3)
    return Image.fromarray(hed_jitter(np.asarray(img.convert("RGB")), alpha, beta))


def _random_crop(img: Image.Image, rng: np.random.Generator, scale: tuple[float, float]) -> Image.Image:
    w, h = img.size
    area = w * h * rng.uniform(*scale)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, max(8, round(np.sqrt(area * ratio)))))
    ch = int(min(h, max(8, round(np.sqrt(area / ratio)))))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def _pad(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    fill = (255, 255, 255) if rng.random() < 0.6 else (0, 0, 0)
    border = [int(rng.uniform(0, 0.15) * s) for s in (w, h, w, h)]
    return ImageOps.expand(img, border=tuple(border), fill=fill)


def _colour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.5))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.3:  # gamma
        gamma = rng.uniform(0.7, 1.4)
        lut = [int(255 * (i / 255) ** gamma) for i in range(256)] * 3
        img = img.point(lut)
    return img


def _marks(img: Image.Image, rng: np.random.Generator, arrows: bool) -> Image.Image:
    img = img.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(int(rng.integers(1, 4))):
        colour = tuple(int(v) for v in rng.choice([0, 255], 3)) if rng.random() < 0.8 else (255, 255, 0)
        corner = rng.random() < 0.5
        x = int(rng.uniform(0.7, 0.95) * w) if corner else int(rng.integers(0, max(1, w - 20)))
        y = int(rng.uniform(0, 0.1) * h) if corner else int(rng.integers(0, max(1, h - 12)))
        draw.text((x, y), str(rng.choice(_MARKS)), fill=colour)
    if arrows:
        for _ in range(int(rng.integers(1, 3))):
            x0, y0 = rng.integers(0, w), rng.integers(0, h)
            dx, dy = rng.normal(0, w / 8, 2)
            x1, y1 = x0 + dx, y0 + dy
            draw.line([(x0, y0), (x1, y1)], fill=(255, 255, 0) if rng.random() < 0.5 else (255, 255, 255), width=2)
            draw.ellipse([x1 - 3, y1 - 3, x1 + 3, y1 + 3], fill=(255, 255, 255))
    return img


def _jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(25, 96)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def augment(
    img: Image.Image, rng: np.random.Generator, size: int, cfg: AugmentConfig = AugmentConfig(), *, stain: bool = False,
    sector: bool = False, contrast: bool = False,
) -> np.ndarray:
    """One random variant of an RGB figure → ``3×size×size`` uint8; ``stain``: a histology
    figure (IHC restaining, HED jitter and zoom-out); ``sector``: an ultrasound figure (scan
    conversion into a fan with ``cfg.sector_probability``, unless its top corners are black);
    ``contrast``: an MR figure (its tissue contrast remapped with ``cfg.mr_contrast_probability``)."""
    if sector and cfg.sector_probability > 0 and rng.random() < cfg.sector_probability and not _framed(img):
        img = sector_scan(img, rng.uniform(*cfg.sector_half_angle), rng.uniform(*cfg.sector_apex))
    if contrast and cfg.mr_contrast_probability > 0 and rng.random() < cfg.mr_contrast_probability:
        img = mr_contrast(img, rng.uniform(0.0, 1.0, cfg.mr_contrast_knots))
    img = _random_crop(img, rng, cfg.crop_scale)
    if stain and rng.random() < cfg.ihc_probability:
        img = _ihc(img, rng)
    if stain and rng.random() < cfg.stain_probability:
        img = _stain(img, rng, cfg)
    if stain and rng.random() < cfg.zoom_out_probability:
        img = zoom_out(img, rng.uniform(*cfg.zoom_out_scale))
    if rng.random() < cfg.pad_probability:
        img = _pad(img, rng)
    if rng.random() < cfg.flip_probability:
        img = ImageOps.mirror(img)
    if rng.random() < cfg.rescale_probability:
        factor = rng.uniform(0.3, 0.8)
        small = (max(8, int(img.width * factor)), max(8, int(img.height * factor)))
        img = img.resize(small, Image.Resampling.BILINEAR)
    if rng.random() < cfg.color_probability:
        img = _colour(img, rng)
    if rng.random() < cfg.grayscale_probability:
        img = ImageOps.grayscale(img).convert("RGB")
    if rng.random() < cfg.text_probability:
        img = _marks(img, rng, arrows=rng.random() < cfg.arrow_probability)
    if rng.random() < cfg.jpeg_probability:
        img = _jpeg(img, rng)
    return to_pixels(img, size)
