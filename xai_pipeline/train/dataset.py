"""Labelled figures for training and evaluation: an image folder or a manifest, local or S3.

* Folder: one subfolder per class (``DATA/ct/x.jpg`` is labelled ``ct``).
* Manifest: ``.jsonl`` or ``.csv`` or ``.parquet`` with ``file`` (relative to the manifest's folder,
  or a full URI) and ``label``; optional ``source_repo``, ``source_path`` and ``kind`` (a sub-type).

Splits are by group, never by image: MedPix figures of one case, crops of one histology tile and
the same source image share a group, so no group straddles training and validation.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xai_pipeline.job.decode import DecodeLimits, open_rgb
from xai_pipeline.job.listing import list_objects
from xai_pipeline.job.fetch import read_object
from xai_pipeline.store.source import Location, S3Settings, SourceError, parse_location

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")
_MEDPIX_CASE = re.compile(r"(MPX\d+)_")


@dataclass(frozen=True)
class Example:
    uri: str
    label: str
    source: str = ""
    group: str = ""
    kind: str = ""


def group_of(source_path: str, uri: str) -> str:
    """Group key: the MedPix case id where there is one, else the original source path."""
    match = _MEDPIX_CASE.search(source_path)
    if match:
        return match.group(1)
    return source_path or uri


def manifest_rows(location: Location, settings: S3Settings, flag: str) -> list[dict[str, str]]:
    fetched = read_object(location, location.path, settings)
    if fetched.status:
        raise SourceError(f"{flag} {location.uri}: {fetched.error}")
    suffix = Path(location.path).suffix
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(fetched.data)).to_pylist()
    text = fetched.data.decode("utf-8")
    if suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(text)))


def example_from_row(row: dict[str, str], location: Location, base: str) -> Example:
    """The :class:`Example` of one manifest row (``file`` relative to ``base``, the manifest's folder)."""
    file = str(row["file"])
    uri = file if "://" in file else location.to_uri(posixpath.join(base, file))
    source_path = str(row.get("source_path") or "")
    return Example(uri, str(row["label"]), str(row.get("source_repo") or ""), group_of(source_path, uri), str(row.get("kind") or ""))


def read_examples(data: str, settings: S3Settings = S3Settings(), flag: str = "--data") -> list[Example]:
    """List labelled examples from a folder or a manifest."""
    location = parse_location(data, flag)
    if location.path.endswith(MANIFEST_SUFFIXES):
        base = posixpath.dirname(location.path)
        examples = []
        for row in manifest_rows(location, settings, flag):
            if "file" not in row or "label" not in row:
                raise SourceError(f"{flag} {data}: manifest rows need 'file' and 'label'")
            examples.append(example_from_row(row, location, base))
        return examples
    examples = []
    for path in list_objects(location, settings, flag).column("path").to_pylist():
        relative = path[len(location.path) :].lstrip("/")
        if "/" not in relative:
            continue  # files beside the class folders are not examples
        label = relative.split("/", 1)[0]
        uri = location.to_uri(path)
        examples.append(Example(uri, label, "", uri))
    if not examples:
        raise SourceError(f"{flag} {data}: no class subfolders with figures")
    return examples


def repeated_uris(uris: list[str]) -> list[str]:
    """The URIs listed more than once (a figure in two manifests, or twice in one)."""
    return [uri for uri, n in Counter(uris).items() if n > 1]


def load_images(
    examples: list[Example], settings: S3Settings = S3Settings(), max_side: int = 320
) -> list[Image.Image]:
    """Decode every example to RGB, downscaled so its longer side is at most ``max_side``.

    Raises ``ValueError`` naming the file when a training figure cannot be decoded.
    """
    images = []
    for example in examples:
        location = parse_location(example.uri, "--data")
        fetched = read_object(location, location.path, settings)
        if fetched.status:
            raise ValueError(f"cannot read training figure {example.uri}: {fetched.error}")
        opened = open_rgb(fetched.data, DecodeLimits(), draft=max_side)
        if opened.image is None:
            raise ValueError(f"cannot decode training figure {example.uri}: {opened.error}")
        image = opened.image
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        images.append(image)
    return images


def split_by_group(
    examples: list[Example], val_fraction: float, seed: int, holdout_sources: tuple[str, ...] = ()
) -> tuple[list[int], list[int], list[int]]:
    """Indices ``(train, validation, source_holdout)``.

    Examples from ``holdout_sources`` go to the source hold-out only. Of the rest, about
    ``val_fraction`` of each class's groups (at least one when a class has two or more) go to
    validation.
    """
    rng = np.random.default_rng(seed)
    holdout = [i for i, e in enumerate(examples) if e.source in holdout_sources]
    members: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        if e.source not in holdout_sources:
            members[e.group or e.uri].append(i)
    # A group (a MedPix case may hold CT and MRI) goes wholly one way; stratify by its main label.
    by_label: dict[str, list[str]] = defaultdict(list)
    for key, idx in members.items():
        main_label = Counter(examples[i].label for i in idx).most_common(1)[0][0]
        by_label[main_label].append(key)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_label):
        keys = sorted(by_label[label])
        rng.shuffle(keys)
        n_val = int(round(len(keys) * val_fraction)) if val_fraction > 0 else 0
        if val_fraction > 0 and len(keys) > 1:
            n_val = min(max(n_val, 1), len(keys) - 1)
        for j, key in enumerate(keys):
            (val if j < n_val else train).extend(members[key])
    return sorted(train), sorted(val), sorted(holdout)
