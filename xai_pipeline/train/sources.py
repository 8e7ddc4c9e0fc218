"""The training sources of issue 17 in one label space, with where each figure came from.

The shared manifests (``read_examples``'s format, local or ``s3://``) are merged, and any
other manifest of the same format (``make model`` adds ``packaged-v4``: histology, DICOM scans,
CT and MRI volume slices and out-of-taxonomy medical images shipped in PyPI packages,
:mod:`xai_pipeline.train.packaged`):

* ``modality-v1``: the six modality classes, one or two public repositories per class;
* ``modality-extra-v1``: new repositories for fundus, chest X-ray, ultrasound (and four
  histology tiles) plus ``other_medical/<kind>/``: medical images outside the six classes (OCT,
  endoscopy, dental X-rays), labelled ``other``;
* ``other-v1``: non-modality figures (charts, diagrams, fluorescence microscopy, photographs),
  labelled ``other``.

Labels: the six :data:`MODALITIES` and :data:`OTHER`. Each :class:`SourcedExample` keeps the
project's :class:`~xai_pipeline.train.dataset.Example` (``source`` = the manifest's
``source_repo``, ``kind``, ``group``), the dataset it came from, its :class:`Role` (a modality
figure, an out-of-taxonomy medical image, or another figure) and its ``license`` as the manifest
states it (``modality-v1`` states none: :data:`NO_LICENSE_FIELD`, its README has the terms).

Pure: no torch, Ray or boto3 (the manifest is read through :mod:`xai_pipeline.job.fetch`).
"""

from __future__ import annotations

import argparse
import os
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from xai_pipeline.store.source import S3Settings, SourceError, parse_location
from xai_pipeline.train.dataset import Example, example_from_row, manifest_rows, repeated_uris

MODALITIES: tuple[str, ...] = ("chest_xray", "ct", "fundus", "histology", "mri", "ultrasound")
"""The modality classes, in the shipped model's order."""
OTHER = "other"
LABELS: tuple[str, ...] = (*MODALITIES, OTHER)
OTHER_MEDICAL_PREFIX = "other_medical/"
NO_LICENSE_FIELD = "not in the manifest (see the dataset's README)"
DATASETS_DIR = Path(os.environ.get("XAI_DATASETS_DIR") or Path(__file__).resolve().parents[3] / "shared" / "datasets")
"""Folder holding the shared data sets (``XAI_DATASETS_DIR``, else ``../shared/datasets`` beside the repository)."""
MANIFESTS: tuple[str, ...] = tuple(str(DATASETS_DIR / d / "manifest.jsonl") for d in ("modality-v1", "modality-extra-v1", "other-v1"))


class Role(str, Enum):
    """What a figure is for the evaluation: a modality figure (``in_class``), a medical image of a
    kind outside the six classes (``other_medical``) or any other figure (``other_figure``)."""

    IN_CLASS = "in_class"
    OTHER_MEDICAL = "other_medical"
    OTHER_FIGURE = "other_figure"


@dataclass(frozen=True)
class SourcedExample:
    """One labelled figure with its provenance."""

    example: Example
    dataset: str  # the manifest's folder name, e.g. "modality-extra-v1"
    role: Role
    license: str

    @property
    def label(self) -> str:
        return self.example.label

    @property
    def source(self) -> str:
        return self.example.source

    @property
    def kind(self) -> str:
        return self.example.kind


@dataclass(frozen=True)
class SourceRow:
    """One line of the model card's source table: a source's figures of one label."""

    label: str
    role: Role
    source: str
    datasets: tuple[str, ...]
    count: int
    kinds: tuple[str, ...]
    licenses: tuple[str, ...]


def _role(label: str, file: str) -> Role:
    if label != OTHER:
        return Role.IN_CLASS
    return Role.OTHER_MEDICAL if file.startswith(OTHER_MEDICAL_PREFIX) else Role.OTHER_FIGURE


def read_sources(manifest: str, settings: S3Settings = S3Settings(), flag: str = "--data") -> list[SourcedExample]:
    """Read one manifest into :class:`SourcedExample` records in the combined label space.

    Raises :class:`SourceError` naming the manifest and the row when a row lacks ``file``,
    ``label`` or ``source_repo``, or has a label outside :data:`LABELS`, and when a file under
    ``other_medical/`` is not labelled ``other``.
    """
    location = parse_location(manifest, flag)
    if not location.path.endswith((".jsonl", ".csv", ".parquet")):
        raise SourceError(f"{flag} {manifest}: expected a manifest (.jsonl, .csv or .parquet)")
    base = posixpath.dirname(location.path)
    dataset = posixpath.basename(base) or base
    out = []
    for n, row in enumerate(manifest_rows(location, settings, flag), start=1):
        missing = [k for k in ("file", "label", "source_repo") if not row.get(k)]
        if missing:
            raise SourceError(f"{flag} {manifest}: row {n} lacks {', '.join(missing)}")
        label, file = str(row["label"]), str(row["file"])
        if label not in LABELS:
            raise SourceError(f"{flag} {manifest}: row {n} ({file}) has label {label!r}; expected one of {list(LABELS)}")
        if file.startswith(OTHER_MEDICAL_PREFIX) and label != OTHER:
            raise SourceError(f"{flag} {manifest}: row {n} ({file}) is under {OTHER_MEDICAL_PREFIX} but labelled {label!r}, not {OTHER!r}")
        example = example_from_row(row, location, base)
        if not example.kind:
            example = Example(example.uri, example.label, example.source, example.group, label)
        out.append(SourcedExample(example, dataset, _role(label, file), str(row.get("license") or NO_LICENSE_FIELD)))
    return out


def read_all_sources(manifests: list[str], settings: S3Settings = S3Settings()) -> list[SourcedExample]:
    """:func:`read_sources` of each manifest, concatenated. A figure (URI) listed twice is an error."""
    examples = [e for manifest in manifests for e in read_sources(manifest, settings)]
    repeated = repeated_uris([e.example.uri for e in examples])
    if repeated:
        raise SourceError(f"{len(repeated)} figures are listed more than once, e.g. {repeated[0]}")
    return examples


def sources_by_class(examples: list[SourcedExample]) -> list[SourceRow]:
    """Per label (modalities first, then ``other``: out-of-taxonomy medical images before other
    figures) and source: the count, datasets, kinds and distinct licenses, sources by count."""
    cells: dict[tuple[str, Role, str], list[SourcedExample]] = defaultdict(list)
    for e in examples:
        cells[(e.label, e.role, e.source)].append(e)
    role_order = {Role.IN_CLASS: 0, Role.OTHER_MEDICAL: 1, Role.OTHER_FIGURE: 2}
    keys = sorted(cells, key=lambda k: (LABELS.index(k[0]), role_order[k[1]], -len(cells[k]), k[2]))
    return [
        SourceRow(
            label, role, source,
            tuple(sorted({e.dataset for e in cells[(label, role, source)]})),
            len(cells[(label, role, source)]),
            tuple(sorted({e.kind for e in cells[(label, role, source)]})),
            tuple(sorted({e.license for e in cells[(label, role, source)]})),
        )
        for label, role, source in keys
    ]


def sources_per_label(examples: list[SourcedExample], role: Role | None = Role.IN_CLASS) -> dict[str, list[str]]:
    """Label -> its distinct sources (sorted), counting only figures of ``role`` (all when None)."""
    found: dict[str, set[str]] = defaultdict(set)
    for e in examples:
        if role is None or e.role is role:
            found[e.label].add(e.source)
    return {label: sorted(found[label]) for label in LABELS if label in found}


def source_table_markdown(rows: list[SourceRow], max_license_chars: int = 160) -> str:
    """The model card's table: label, role, source, dataset, figures, license(s) as stated."""
    def cell(text: str) -> str:
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_license_chars else text[: max_license_chars - 1] + "…"

    lines = ["| label | role | source | dataset | figures | license (as stated in the manifest) |", "|---|---|---|---|---:|---|"]
    for r in rows:
        licenses = r.licenses[0] if len(r.licenses) == 1 else f"{len(r.licenses)} terms, e.g. " + r.licenses[0]
        lines.append(f"| {r.label} | {r.role.value} | {r.source} | {', '.join(r.datasets)} | {r.count} | {cell(licenses)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m xai_pipeline.train.sources [MANIFEST ...]``: print the model card's source table."""
    parser = argparse.ArgumentParser(description="The training sources per class with their licenses (markdown).")
    parser.add_argument("manifests", nargs="*", help=f"manifests (default: {', '.join(MANIFESTS)})")
    args = parser.parse_args(argv)
    examples = read_all_sources(args.manifests or list(MANIFESTS))
    print(source_table_markdown(sources_by_class(examples)))
    print(f"\n{len(examples)} figures; sources per class: " + "; ".join(f"{k} {len(v)}" for k, v in sources_per_label(examples).items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
