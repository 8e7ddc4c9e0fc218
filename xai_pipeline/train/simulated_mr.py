"""MR simulated from a CT figure, for training (``train --simulated-mr-probability``).

The leave-source-out study calls MedPix's clinical MR of knees, spines, pelvises and abdomens CT
when MedPix is held out: the other MRI in training is heads (257 of 274 slices), while the CT
covers the whole body, so the fold learns that a body is CT. A CT figure turned into an MR-like
one and labelled MRI shows body anatomy as MRI, so anatomy cannot decide and tissue contrast must.

What tells the two apart on the same anatomy is how tissues map to grey. On CT, grey rises with
density: air, lung, fat, water, soft tissue, bone. On MR (T1- or T2-weighted spin echo), fat is
bright, fluid dark or bright, muscle mid-grey, and cortical bone and air give no signal. With
``I`` the CT figure's grey level in [0, 1] (whatever its window, the order of densities holds):

* ``g`` is the piecewise-linear curve through ``(0, y₀)``, ``(a, y_fat)``, ``(b, y_soft)``,
  ``(c, y_dense)``, ``(1, y_bone)``, with ``a ≤ b ≤ c`` three sorted draws of U(0.1, 0.9),
  ``y_fat ~ U(0.6, 1)``, ``y_soft ~ U(0.2, 0.6)``, ``y_dense ~ U(0.15, 0.6)``, ``y₀, y_bone ~ U(0, 0.15)``:
  fat bright, soft tissue and dense tissue in between, the densest pixels (bone) dark;
* the body ``m`` (:func:`xai_pipeline.train.augment.body_mask`) is remapped and the air is set to
  black, ``J = m · g(I)``;
* a smooth receive-coil bias ``J · exp(γ · B)`` (``B`` a bilinear upsampling of 4×4 standard normal
  noise, ``γ ~ U(0, 0.4)``) and Rician noise ``|J + σ(n₁ + i·n₂)|``, ``σ ~ U(0, 0.03)`` (the
  magnitude of complex Gaussian noise, as in magnitude MR images, which lifts the air a little
  above black; Gudbjartsson & Patz, Magn. Reson. Med. 34:910, 1995).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from xai_pipeline.train.augment import body_mask


@dataclass(frozen=True)
class MrParams:
    """One draw of the simulation's parameters (see the module docstring for the symbols)."""

    knots_x: tuple[float, float, float]  # a < b < c
    knots_y: tuple[float, float, float, float, float]  # y₀, y_fat, y_soft, y_dense, y_bone
    bias: float  # γ
    noise: float  # σ, in grey levels of [0, 1]

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "MrParams":
        a, b, c = np.sort(rng.uniform(0.1, 0.9, 3))
        ys = (rng.uniform(0.0, 0.15), rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.6), rng.uniform(0.0, 0.15))
        return cls(knots_x=(float(a), float(b), float(c)), knots_y=tuple(float(y) for y in ys),  # type: ignore[arg-type]
                   bias=float(rng.uniform(0.0, 0.4)), noise=float(rng.uniform(0.0, 0.03)))


def simulate_mr(img: Image.Image, params: MrParams, rng: np.random.Generator) -> Image.Image:
    """``img`` (a CT figure) as a simulated magnitude MR image, grey RGB of the same size; ``rng``
    draws the bias field and the noise."""
    pixels = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    level = pixels.mean(axis=-1)
    curve = np.interp(level, (0.0, *params.knots_x, 1.0), params.knots_y)
    mr = np.where(body_mask(pixels), curve, 0.0)
    coarse = Image.fromarray(rng.standard_normal((4, 4)).astype(np.float32))  # mode F
    field = np.asarray(coarse.resize((level.shape[1], level.shape[0]), Image.Resampling.BILINEAR), dtype=np.float64)
    mr = mr * np.exp(params.bias * field)
    mr = np.abs(mr + params.noise * (rng.standard_normal(mr.shape) + 1j * rng.standard_normal(mr.shape)))
    grey = np.clip(np.rint(mr * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
