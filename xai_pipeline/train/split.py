"""The training data of the ``train`` command: labelled figures read from ``--data`` and split by
group (and by source for the hold-out), shared by the local fit and the Ray Train workers.

``--data`` may name several manifests or folders, comma-separated; they are merged. Figures
labelled ``other`` (:data:`~xai_pipeline.model.net.OTHER_LABEL`) are not a class: they are real
non-modality figures (charts, OCT, endoscopy…) that join the synthetic ones in outlier exposure,
and in validation and the source hold-out they measure how often such figures are rejected.
"""

from __future__ import annotations

import numpy as np

from xai_pipeline.config import TrainConfig
from xai_pipeline.model.net import OTHER_LABEL
from xai_pipeline.store.source import S3Settings, SourceError
from xai_pipeline.train.dataset import Example, load_images, read_examples, repeated_uris, split_by_group
from xai_pipeline.train.fit import TrainData


def data_parts(data: str) -> list[str]:
    """The manifests or folders of a comma-separated ``--data``."""
    return [part.strip() for part in data.split(",") if part.strip()]


def read_training_examples(data: str, settings: S3Settings = S3Settings(), flag: str = "--data") -> list[Example]:
    """Every labelled figure of ``--data`` (each part read by :func:`read_examples`); a figure
    listed twice is a configuration error naming it."""
    examples = [e for part in data_parts(data) for e in read_examples(part, settings, flag)]
    if not examples:
        raise SourceError(f"{flag} {data!r}: no labelled figures")
    repeated = repeated_uris([e.uri for e in examples])
    if repeated:
        raise SourceError(f"{flag}: {len(repeated)} figures are listed more than once, e.g. {repeated[0]}")
    return examples


def class_names_of(examples: list[Example]) -> tuple[str, ...]:
    """The model's classes: the sorted labels, ``other`` excluded."""
    names = tuple(sorted({e.label for e in examples} - {OTHER_LABEL}))
    if not names:
        raise SourceError(f"--data: every figure is labelled {OTHER_LABEL!r}; a model needs modality classes")
    return names


def examples_and_split(cfg: TrainConfig) -> tuple[list[Example], tuple[str, ...], tuple[list[int], list[int], list[int]]]:
    """The labelled figures of ``--data``, the class names and the indices of the training,
    validation and source hold-out figures (``other`` figures included in each)."""
    examples = read_training_examples(cfg.data, S3Settings(cfg.endpoint_url, cfg.region))
    return examples, class_names_of(examples), split_by_group(examples, cfg.val_fraction, cfg.group_split_seed, cfg.holdout)


def split_counts(examples: list[Example], parts: tuple[list[int], list[int], list[int]]) -> dict[str, dict[str, int]]:
    """Figures per label in the training, validation and source hold-out parts of a split (as the
    training report records them under ``split``)."""
    from collections import Counter

    return {name: dict(Counter(examples[i].label for i in idx)) for name, idx in zip(("train", "validation", "source_holdout"), parts)}


def training_data(examples: list[Example], indices: list[int], class_names: tuple[str, ...], cfg: TrainConfig) -> TrainData:
    """The images and class indices of the in-class figures of ``examples[indices]``; its
    ``other`` figures become ``outliers``."""
    settings = S3Settings(cfg.endpoint_url, cfg.region)
    chosen = [examples[i] for i in indices if examples[i].label != OTHER_LABEL]
    outliers = [examples[i] for i in indices if examples[i].label == OTHER_LABEL]
    labels = np.array([class_names.index(e.label) for e in chosen], dtype=np.int64)
    return TrainData(load_images(chosen, settings), labels, class_names, load_images(outliers, settings),
                     [e.source for e in chosen], [e.source for e in outliers])


def load_split(cfg: TrainConfig) -> tuple[TrainData, list[int]]:
    """The training figures only (for Ray Train workers): data and the indices of its in-class figures."""
    examples, class_names, (train_idx, _, _) = examples_and_split(cfg)
    data = training_data(examples, train_idx, class_names, cfg)
    return data, list(range(len(data.labels)))
