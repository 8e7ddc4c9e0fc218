"""Ultrasound simulated from a tomographic slice, for training (``train --simulated-ultrasound-probability``).

The leave-source-out study calls HC18's fetal heads MRI: with HC18 held out, the training
ultrasound is breast frames (a rectangle of speckle), so the model learns that a skull's ellipse
means MRI. A CT or MR slice turned into a B-mode image and labelled ultrasound shows the same
anatomy as both, so the shape cannot decide and the texture must: the model sees speckle over
anatomy it otherwise sees only as CT or MRI.

With ``I`` the slice's grey level in [0, 1] (rows read as depth ``y``, the probe at the top),
the simulation follows the usual convolution model of B-mode speckle (Bamber & Dickinson,
"Ultrasonic B-scanning: a computer simulation", Phys. Med. Biol. 25:463, 1980), simplified:

* echogenicity ``e = b₀ + β·I + D/D_max`` with ``D = |∂(G_1 ∗ I)/∂y|`` (the axial difference of
  the slice smoothed by a Gaussian of σ = 1 pixel) and ``D_max = max(max D, 0.05)``: a floor of
  scatter (the tissue round the organ, where the slice shows air), diffuse scatter, and the
  specular echo of an interface facing the beam (skull, organ walls); the 0.05 keeps the faint
  edges of a nearly uniform slice from echoing as a skull would;
* speckle ``s = |h ∗ (n₁ + i·n₂)|``, ``n₁, n₂`` white Gaussian noise and ``h`` a Gaussian point
  spread longer laterally (``σ_x``) than axially (``σ_y``), so ``s`` is Rayleigh distributed
  with grains elongated across the beam;
* attenuation and shadowing ``T(y) = exp(−μ·y/H − κ·Σ_{y'≤y} D(y')/(D_max · H/10))``: the beam
  loses energy with depth and behind strong reflectors;
* log compression ``B = log(1 + g·e·s·T) / log(1 + g)``, clipped to [0, 1].

Half the time the frame is cut to the fan a curved probe sees (black outside the angle ``±α``
from an apex ``a·H`` above the top centre); the anatomy is not warped, as a scanner's scan
conversion shows it undistorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from xai_pipeline.train.augment import AugmentConfig

_FAN = AugmentConfig()  # the fan's half-angle and apex ranges, as train --sector-probability draws them
WORK_HEIGHT = 256
"""Rows of the simulated frame (the slice is resized to it, keeping its aspect ratio)."""
MAX_ASPECT = 4
"""A slice wider than this many times its height keeps its middle ``MAX_ASPECT · H`` columns."""
EDGE_FLOOR = 0.05
"""The least ``D_max``: an axial step of 5% of the grey range, smoothed, is a full echo."""


@dataclass(frozen=True)
class UltrasoundParams:
    """One draw of the simulation's parameters (see the module docstring for the symbols)."""

    floor: float  # b₀, scatter everywhere
    beta: float  # diffuse scatter against interface echoes
    sigma_axial: float  # point-spread σ_y, pixels
    sigma_lateral: float  # point-spread σ_x, pixels
    mu: float  # depth attenuation over the frame's height
    kappa: float  # shadowing behind reflectors
    gain: float  # g of the log compression
    sector: bool  # cut to a curved probe's fan
    half_angle: float  # of the fan, degrees
    apex: float  # of the fan, share of the height above the top

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "UltrasoundParams":
        return cls(floor=float(rng.uniform(0.0, 0.3)), beta=float(rng.uniform(0.1, 0.8)), sigma_axial=float(rng.uniform(0.5, 1.2)),
                   sigma_lateral=float(rng.uniform(1.2, 3.0)), mu=float(rng.uniform(0.3, 1.5)),
                   kappa=float(rng.uniform(0.0, 3.0)), gain=float(rng.uniform(10.0, 60.0)),
                   sector=bool(rng.random() < 0.5), half_angle=float(rng.uniform(*_FAN.sector_half_angle)),
                   apex=float(rng.uniform(*_FAN.sector_apex)))


def speckle(shape: tuple[int, ...], sigma_axial: float, sigma_lateral: float, rng: np.random.Generator) -> np.ndarray:
    """Fully developed speckle ``s = |h ∗ (n₁ + i·n₂)|`` of unit mean square: Rayleigh distributed
    (mean/std = √(π/(4 − π)) ≈ 1.91), its grains ``sigma_axial`` × ``sigma_lateral`` pixels (rows × columns)."""
    from scipy.ndimage import gaussian_filter

    sigma = (sigma_axial, sigma_lateral)
    envelope = np.abs(gaussian_filter(rng.standard_normal(shape), sigma) + 1j * gaussian_filter(rng.standard_normal(shape), sigma))
    return envelope / max(float(np.sqrt(np.mean(envelope ** 2))), 1e-12)


def simulate_ultrasound(img: Image.Image, params: UltrasoundParams, rng: np.random.Generator) -> Image.Image:
    """``img`` (a CT or MR slice) as a simulated B-mode frame, grey RGB; ``rng`` draws the speckle."""
    from scipy.ndimage import gaussian_filter

    grey = img.convert("L")
    if grey.width > MAX_ASPECT * grey.height:
        left = (grey.width - MAX_ASPECT * grey.height) // 2
        grey = grey.crop((left, 0, left + MAX_ASPECT * grey.height, grey.height))
    width = max(8, round(grey.width * WORK_HEIGHT / max(1, grey.height)))
    level = np.asarray(grey.resize((width, WORK_HEIGHT), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    smooth = gaussian_filter(level, 1.0)
    axial = np.abs(np.diff(smooth, axis=0, prepend=smooth[:1]))
    interface = axial / max(float(axial.max()), EDGE_FLOOR)  # D / D_max
    echo = params.floor + params.beta * level + interface
    depth = np.arange(WORK_HEIGHT, dtype=np.float64)[:, None] / WORK_HEIGHT
    shadow = np.cumsum(interface, axis=0) / (WORK_HEIGHT / 10.0)
    transmitted = np.exp(-params.mu * depth - params.kappa * shadow)
    scattered = echo * speckle(level.shape, params.sigma_axial, params.sigma_lateral, rng) * transmitted
    b_mode = np.log1p(params.gain * scattered) / np.log1p(params.gain)
    frame = Image.fromarray(np.clip(np.rint(b_mode * 255.0), 0, 255).astype(np.uint8)).convert("RGB")
    return fan(frame, params.half_angle, params.apex) if params.sector else frame


def fan(img: Image.Image, half_angle: float, apex: float) -> Image.Image:
    """``img`` black outside the fan of half-angle ``half_angle`` (degrees) whose apex lies
    ``apex`` of the height above the top centre: pixel ``(x, y)`` is kept where
    ``|atan2(x − W/2, y + a·H)| ≤ α``."""
    pixels = np.asarray(img.convert("RGB"))
    h, w = pixels.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    inside = np.abs(np.arctan2(x - w / 2, y + apex * h)) <= np.radians(half_angle)
    return Image.fromarray(pixels * inside[..., None].astype(np.uint8))
