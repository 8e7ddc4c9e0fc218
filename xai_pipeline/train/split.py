"""The training data of the ``train`` command: labelled figures read from ``--data`` and split by
group (and by source for the hold-out), shared by the local fit and the Ray Train workers."""

from __future__ import annotations

import numpy as np

from xai_pipeline.config import TrainConfig
from xai_pipeline.store.source import S3Settings
from xai_pipeline.train.dataset import Example, load_images, read_examples, split_by_group
from xai_pipeline.train.fit import TrainData


def examples_and_split(cfg: TrainConfig) -> tuple[list[Example], tuple[str, ...], tuple[list[int], list[int], list[int]]]:
    """The labelled figures of ``--data``, the class names (sorted labels) and the indices of the
    training, validation and source hold-out figures."""
    examples = read_examples(cfg.data, S3Settings(cfg.endpoint_url, cfg.region))
    class_names = tuple(sorted({e.label for e in examples}))
    return examples, class_names, split_by_group(examples, cfg.val_fraction, cfg.seed, cfg.holdout)


def training_data(examples: list[Example], indices: list[int], class_names: tuple[str, ...], cfg: TrainConfig) -> TrainData:
    """The images and class indices of ``examples[indices]``."""
    chosen = [examples[i] for i in indices]
    images = load_images(chosen, S3Settings(cfg.endpoint_url, cfg.region))
    labels = np.array([class_names.index(e.label) for e in chosen], dtype=np.int64)
    return TrainData(images, labels, class_names)


def load_split(cfg: TrainConfig) -> tuple[TrainData, list[int]]:
    """The training figures only (for Ray Train workers): data and their indices."""
    examples, class_names, (train_idx, _, _) = examples_and_split(cfg)
    data = training_data(examples, train_idx, class_names, cfg)
    return data, list(range(len(train_idx)))
