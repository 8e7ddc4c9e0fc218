"""CT and MRI volumes cut into the figures a paper would show (``packaged-v2`` … ``-v4``).

Volumes come from :mod:`xai_pipeline.train.packaged_volumes`, turned to run x, y, z to the
patient's left, posterior and superior.

Axial slices (:func:`axial_slices`): every ``step``-th slice, skipping ``margin`` of the slices at
each end (neck and abdomen ends, where little of the organ is left); the transposed slice
``v[:, :, k].T`` shows anterior up and the patient's left on the right, as radiology figures do.
Coronal and sagittal slices (:func:`section_slices`, ``packaged-v4``) show superior up. Grey values:

* CT, in Hounsfield units, windowed in turn to the windows figures use — lung (L = −600,
  W = 1500), mediastinum (40, 400) and bone (400, 1800): :math:`g = 255 \\cdot
  \\mathrm{clip}\\big((HU - L + W/2) / W,\\ 0,\\ 1\\big)`;
* MRI: the slice's 0.5–99.5 percentiles stretched to 0–255.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from xai_pipeline.train.packaged_volumes import PackagedVolume


def window(pixels: np.ndarray, level: float, width: float) -> np.ndarray:
    """8-bit grey of ``pixels`` under the window (``level``, ``width``)."""
    return (np.clip((pixels.astype(np.float64) - level + width / 2) / width, 0.0, 1.0) * 255).astype(np.uint8)


def percentile_window(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as float64 on 0–255, their 0.5–99.5 percentiles stretched to the ends (clipped)."""
    low, high = np.percentile(pixels, [0.5, 99.5])
    return np.clip((pixels.astype(np.float64) - low) / max(high - low, 1e-9), 0.0, 1.0) * 255


def stretch(pixels: np.ndarray) -> np.ndarray:
    """8-bit grey of ``pixels`` with their 0.5–99.5 percentiles stretched to 0–255."""
    return percentile_window(pixels).astype(np.uint8)


def axial_slices(volume: np.ndarray, spec: PackagedVolume) -> list[tuple[str, Image.Image]]:
    """``(note, slice)`` of every ``spec.step``-th axial slice, ``spec.margin`` skipped at each end."""
    depth = volume.shape[2]
    skip = int(round(depth * spec.margin))
    out = []
    for j, k in enumerate(range(skip, depth - skip, spec.step)):
        image, note = _grey(volume[:, :, k].T, spec, j, f"axial slice {k} of {depth}")
        out.append((note, image))
    return out


SECTION_AXES = {"coronal": 1, "sagittal": 0}
"""The volume axis a section plane cuts along (y for coronal, x for sagittal)."""
SECTION_SHARE = 3
"""A coronal or sagittal plane gives a third as many slices as the volume's axial plane (at least 3)."""
SECTION_MARGIN = 0.2
"""Share of a section plane's slices skipped at each end: the outer sections cut little of the body."""
MIN_SECTION_SLICES = 40
"""A volume of fewer axial slices gives no sections: they would be a thin slab's edge stretched
(dipy's 10-slice b0, TotalSegmentator's small MR crop)."""


def _grey(pixels: np.ndarray, spec: PackagedVolume, j: int, where: str) -> tuple[Image.Image, str]:
    """The 8-bit figure of slice ``j`` (CT: in window ``j mod len(spec.windows)``) and its note."""
    if spec.label == "ct":
        level, width = spec.windows[j % len(spec.windows)]
        return Image.fromarray(window(pixels, level, width)), f"{where}, window L={level:g} W={width:g}"
    return Image.fromarray(stretch(pixels)), f"{where}, 0.5-99.5 percentile window"


def section_slices(volume: np.ndarray, spacing: tuple[float, float, float], spec: PackagedVolume,
                   plane: str, axial_count: int) -> list[tuple[str, Image.Image]]:
    """``max(3, axial_count // SECTION_SHARE)`` coronal (``plane="coronal"``, cut along y) or
    sagittal (along x) slices, evenly spaced with :data:`SECTION_MARGIN` skipped at each end, shown
    as radiology figures show them: superior up, and the patient's left on the right (coronal) or
    anterior on the left (sagittal). Rows are resampled so that a pixel is as tall as it is wide
    (the slice thickness is usually larger than the in-plane size); none from a volume of fewer
    than :data:`MIN_SECTION_SLICES` axial slices."""
    if plane not in SECTION_AXES:
        raise ValueError(f"no such section plane {plane!r}: expected one of {sorted(SECTION_AXES)}")
    axis = SECTION_AXES[plane]
    depth, column = volume.shape[axis], spacing[1 - axis]
    if volume.shape[2] < MIN_SECTION_SLICES:
        return []
    rows = int(round(volume.shape[2] * spacing[2] / column))
    skip = int(round(depth * SECTION_MARGIN))
    count = max(3, axial_count // SECTION_SHARE)
    out = []
    for j, k in enumerate(dict.fromkeys(int(round(k)) for k in np.linspace(skip, depth - 1 - skip, count))):
        pixels = np.take(volume, k, axis=axis).T[::-1, :]  # rows: superior first
        image, note = _grey(pixels, spec, j, f"{plane} slice {k} of {depth}")
        out.append((f"{note}, rows resampled to square pixels", image.resize((image.width, rows), Image.Resampling.BILINEAR)))
    return out


def volume_planes(volume: np.ndarray, spacing: tuple[float, float, float], spec: PackagedVolume) -> list[tuple[str, Image.Image]]:
    """The slices of every plane in ``spec.planes``: :func:`axial_slices`, then :func:`section_slices`
    (the axial slices are cut either way: their number sets the sections')."""
    axial = axial_slices(volume, spec)
    out = axial if "axial" in spec.planes else []
    for plane in spec.planes:
        if plane != "axial":
            out = out + section_slices(volume, spacing, spec, plane, len(axial))
    return out
