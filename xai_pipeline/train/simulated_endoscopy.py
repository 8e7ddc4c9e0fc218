"""Endoscopy frames simulated as outliers, for training (``train --simulated-endoscopy-probability``).

The leave-source-out study calls colonoscopy fundus when the one endoscopy source is held out:
with no endoscopy in training, a warm-coloured photograph of tissue framed in black is, to the
model, a retina. A fundus photograph is told by its vessel tree and optic disc, not by its frame
or colour. Training outliers drawn as endoscopy-like frames (warm tissue, shading, a dark lumen,
specular highlights, a round or octagonal field of view on black) and pushed towards uniform
class scores like every outlier show the frame and the colour without the retina, so the frame
and the colour cannot decide. The simulation makes no endoscopy of any device or organ; it is a
near miss of fundus, as outlier exposure wants (Hendrycks et al., ICLR 2019).

With ``I`` the outlier figure it starts from (grey, in [0, 1], resized to ``N × N``):

* mucosa ``M = (1 − w)·F + w·(G_σ ∗ I)``: ``F`` a smooth random field (bicubic upsampling of
  ``k × k`` uniform noise, folds of the wall) and the figure's own smoothed structure, each
  stretched to [0, 1]; ``w ~ U(0.2, 0.7)``, ``k`` from 3 to 8, ``σ ~ U(1, 4)`` pixels;
* the lumen, where the scope's light does not reach: ``L = M · (1 − d·exp(−‖p − p_l‖²/(2r²)))``,
  ``p_l`` uniform in the middle 60%, ``r ~ U(0.1, 0.3)·N``, ``d ~ U(0.5, 0.95)``;
* a warm palette: ``L`` through the piecewise-linear colour ramp dark red → pink → pale
  (``(0.25, 0.04, 0.03)``, ``(0.8, 0.35, 0.28)``, ``(1, 0.78, 0.65)``, green and blue scaled by
  ``U(0.8, 1.2)`` each, red kept first);
* specular highlights: ``n`` (3 to 15) Gaussian spots of σ ~ U(1, 3) pixels, blended to white;
* the field of view: black outside a centred circle of radius ``ρ·N`` or the octagon
  ``|x|, |y| ≤ ρ·N, |x| + |y| ≤ c·ρ·N`` (``ρ ~ U(0.42, 0.5)``, ``c ~ U(1.2, 1.6)``), half the time each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 256
"""Side of the simulated frame."""
RAMP = np.array([[0.25, 0.04, 0.03], [0.8, 0.35, 0.28], [1.0, 0.78, 0.65]])
"""The palette's dark, middle and light colours (RGB in [0, 1]) at ``L`` = 0, 0.5 and 1."""


@dataclass(frozen=True)
class EndoscopyParams:
    """One draw of the simulation's parameters (see the module docstring for the symbols)."""

    weight: float  # w, the figure's share of the mucosa
    folds: int  # k, the random field's grid
    sigma: float  # σ, smoothing of the figure, pixels
    lumen: tuple[float, float]  # p_l, (x, y) as shares of the side
    lumen_radius: float  # r, share of the side
    lumen_depth: float  # d
    tint: tuple[float, float]  # green and blue scales of the palette
    highlights: int  # n
    highlight_sigma: float  # pixels
    octagon: bool
    radius: float  # ρ
    corner: float  # c, the octagon's |x| + |y| bound over ρ

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "EndoscopyParams":
        return cls(weight=float(rng.uniform(0.2, 0.7)), folds=int(rng.integers(3, 9)), sigma=float(rng.uniform(1.0, 4.0)),
                   lumen=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))), lumen_radius=float(rng.uniform(0.1, 0.3)),
                   lumen_depth=float(rng.uniform(0.5, 0.95)), tint=(float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.8, 1.2))),
                   highlights=int(rng.integers(3, 16)), highlight_sigma=float(rng.uniform(1.0, 3.0)),
                   octagon=bool(rng.random() < 0.5), radius=float(rng.uniform(0.42, 0.5)), corner=float(rng.uniform(1.2, 1.6)))


def _stretch(a: np.ndarray) -> np.ndarray:
    """``a`` scaled to [0, 1] (a constant array to zeros)."""
    span = float(a.max() - a.min())
    return (a - a.min()) / span if span > 1e-12 else np.zeros_like(a)


def field_of_view(octagon: bool, radius: float, corner: float, size: int = SIZE) -> np.ndarray:
    """Boolean ``size × size`` mask of the circle of radius ``radius·size`` about the centre, or of
    the octagon ``|x|, |y| ≤ radius·size, |x| + |y| ≤ corner·radius·size``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    r = radius * size
    if octagon:
        return (np.abs(x) <= r) & (np.abs(y) <= r) & (np.abs(x) + np.abs(y) <= corner * r)
    return x ** 2 + y ** 2 <= r ** 2


def simulate_endoscopy(img: Image.Image, params: EndoscopyParams, rng: np.random.Generator) -> Image.Image:
    """``img`` (an outlier figure) as a simulated endoscopy frame, RGB ``SIZE × SIZE``; ``rng`` draws
    the folds' field and the highlights' places."""
    from scipy.ndimage import gaussian_filter

    level = np.asarray(img.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    coarse = Image.fromarray(rng.uniform(0.0, 1.0, (params.folds, params.folds)).astype(np.float32))  # mode F
    folds = np.asarray(coarse.resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float64)
    mucosa = (1 - params.weight) * _stretch(folds) + params.weight * _stretch(gaussian_filter(level, params.sigma))
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    lx, ly = params.lumen[0] * SIZE, params.lumen[1] * SIZE
    dark = params.lumen_depth * np.exp(-((x - lx) ** 2 + (y - ly) ** 2) / (2 * (params.lumen_radius * SIZE) ** 2))
    lit = mucosa * (1 - dark)
    ramp = RAMP * np.array([1.0, params.tint[0], params.tint[1]])
    rgb = np.stack([np.interp(lit, (0.0, 0.5, 1.0), ramp[:, ch]) for ch in range(3)], axis=-1)
    spots = np.zeros((SIZE, SIZE))
    spots[rng.integers(0, SIZE, params.highlights), rng.integers(0, SIZE, params.highlights)] = 1.0
    glare = np.clip(gaussian_filter(spots, params.highlight_sigma) * 2 * np.pi * params.highlight_sigma ** 2, 0.0, 1.0)
    rgb = rgb + (1.0 - rgb) * glare[..., None]
    rgb = rgb * field_of_view(params.octagon, params.radius, params.corner)[..., None]
    return Image.fromarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8))
