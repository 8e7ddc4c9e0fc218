"""Training a modality classifier: class-balanced sampling, literature-style augmentation and
outlier exposure with synthetic and real non-modality figures, stain jitter for histology.

Loss per step, with in-distribution figures (x, y) and outliers x_o (procedural figures, and
real figures labelled ``other`` in ``--data`` when it has any):

    L = CE_ε(f(x), y) + λ · mean_o [ −(1/C) Σ_c log softmax(f(x_o))_c ]

(CE_ε: cross-entropy with label smoothing ε; the second term is outlier exposure, Hendrycks et
al. 2019, pulling outliers towards the uniform distribution so a threshold on the top
probability can say "other".) The learning rate warms up for 5% of steps, then follows a cosine.

:func:`fit` is the loop for one process; :mod:`xai_pipeline.train.on_ray` runs it in Ray Train
workers. :func:`finalize` evaluates, sets the "other" threshold and writes the model file.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from xai_pipeline.train.augment import AugmentConfig, augment
from xai_pipeline.model.backbones import LITE_VARIANTS, lite_blocks, load_lite_imagenet
from xai_pipeline.config import TrainConfig
from xai_pipeline.job.decode import to_pixels
from xai_pipeline.model.net import ModalityNet, ModelSpec
from xai_pipeline.train.simulated_endoscopy import EndoscopyParams, simulate_endoscopy
from xai_pipeline.train.simulated_mr import MrParams, simulate_mr
from xai_pipeline.train.simulated_ultrasound import UltrasoundParams, simulate_ultrasound
from xai_pipeline.train.synthetic import other_figure

log = logging.getLogger(__name__)

OUTLIER_WEIGHT = 0.5
REAL_OUTLIER_SHARE = 0.5
"""Share of the outlier slots of a batch filled with real ``other`` figures when there are any."""
STAINED_CLASSES: tuple[str, ...] = ("histology",)
"""Classes whose training figures get stain (HED) jitter and zoom-out (:mod:`xai_pipeline.train.augment`)."""
SECTOR_CLASSES: tuple[str, ...] = ("ultrasound",)
"""Classes whose training figures may be scan-converted into a fan (``--sector-probability``)."""
CONTRAST_CLASSES: tuple[str, ...] = ("mri",)
"""Classes whose training figures may have their tissue contrast remapped (``--mr-contrast-probability``)."""
TOMOGRAPHIC_CLASSES: tuple[str, ...] = ("ct", "mri")
"""Classes whose training figures may become simulated ultrasound, labelled ``ultrasound``
(``--simulated-ultrasound-probability``, :mod:`xai_pipeline.train.simulated_ultrasound`)."""
CT_CLASSES: tuple[str, ...] = ("ct",)
"""Classes whose training figures may become simulated MR, labelled ``mri`` (``--simulated-mr-probability``,
:mod:`xai_pipeline.train.simulated_mr`)."""


def _simulated(img: Image.Image, name: str, class_names: tuple[str, ...], cfg: TrainConfig,
               rng: np.random.Generator) -> tuple[Image.Image, str]:
    """``img`` of class ``name``, or, with the configured probability, a figure of another
    modality simulated from it and that modality's name (ultrasound from CT or MRI is tried first,
    then MR from CT). A simulation that is off, or whose class the model lacks, draws nothing."""
    us = cfg.simulated_ultrasound_probability if "ultrasound" in class_names else 0.0
    if name in TOMOGRAPHIC_CLASSES and us > 0 and rng.random() < us:
        return simulate_ultrasound(img, UltrasoundParams.draw(rng), rng), "ultrasound"
    mr = cfg.simulated_mr_probability if "mri" in class_names else 0.0
    if name in CT_CLASSES and mr > 0 and rng.random() < mr:
        return simulate_mr(img, MrParams.draw(rng), rng), "mri"
    return img, name


@dataclass
class TrainData:
    images: list[Image.Image]
    labels: np.ndarray  # class index per image
    class_names: tuple[str, ...]
    outliers: list[Image.Image] = field(default_factory=list)  # real non-modality figures
    sources: list[str] = field(default_factory=list)  # source of each image ("" when unknown)
    outlier_sources: list[str] = field(default_factory=list)  # source of each outlier


def sampling_weights(groups: np.ndarray, sources: list[str], alpha: float) -> np.ndarray:
    r"""Draw probabilities: each group (class) equally likely, its sources tempered by ``alpha``.

    With :math:`n_{c,s}` figures of source :math:`s` in class :math:`c`,

    .. math:: P(i) = \frac{1}{C}\,\frac{n_{c,s}^{1-\alpha}}{\sum_{s'} n_{c,s'}^{1-\alpha}}\,\frac{1}{n_{c,s}}

    ``alpha`` = 0 is class-balanced sampling (sources in proportion to their size), 1 gives every
    source of a class the same share: a source of 4 figures is drawn as often as one of 300, so
    the features cannot settle on the look of the largest one (``--source-balance``).
    """
    keys = list(zip(groups.tolist(), sources if len(sources) == len(groups) else [""] * len(groups)))
    n_cs = Counter(keys)
    mass: Counter[int] = Counter()
    for (c, _), n in n_cs.items():
        mass[c] += n ** (1 - alpha)
    weights = np.array([(n_cs[k] ** (1 - alpha) / mass[k[0]]) / n_cs[k] for k in keys], dtype=np.float64)
    return weights / weights.sum()


def build_model(cfg: TrainConfig, class_names: tuple[str, ...]) -> ModalityNet:
    torch.manual_seed(cfg.seed)
    spec = ModelSpec(name=cfg.name, architecture=cfg.architecture, class_names=class_names, version=cfg.version, input_size=cfg.input_size)
    model = ModalityNet(spec)
    if cfg.architecture in LITE_VARIANTS and cfg.pretrained:
        load_lite_imagenet(model.features, cfg.architecture)
    return model


def frozen_modules(model: ModalityNet, cfg: TrainConfig) -> list[nn.Module]:
    """Modules whose weights stay fixed (and whose BatchNorm statistics stay frozen)."""
    if model.spec.architecture not in LITE_VARIANTS or cfg.freeze_blocks <= 0:
        return []
    stem_and_blocks = lite_blocks(model.features)
    modules: list[nn.Module] = stem_and_blocks[: 2 + cfg.freeze_blocks]
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)
    return modules


def _outlier_loss(logits: torch.Tensor) -> torch.Tensor:
    return -logits.log_softmax(dim=-1).mean(dim=-1).mean()


def _outlier(data: TrainData, rng: np.random.Generator, weights: np.ndarray | None) -> Image.Image:
    """A real non-modality figure (half the time, when the data has any; drawn with ``weights``)
    or a procedural one."""
    if data.outliers and rng.random() < REAL_OUTLIER_SHARE:
        return data.outliers[int(rng.choice(len(data.outliers), p=weights))]
    return other_figure(rng, 256)


def _simulated_outlier(img: Image.Image, cfg: TrainConfig, rng: np.random.Generator) -> Image.Image:
    """The outlier ``img``, or, with probability ``--simulated-endoscopy-probability``, a simulated
    endoscopy frame made from it (:mod:`xai_pipeline.train.simulated_endoscopy`); off draws nothing."""
    p = cfg.simulated_endoscopy_probability
    if p > 0 and rng.random() < p:
        return simulate_endoscopy(img, EndoscopyParams.draw(rng), rng)
    return img


def _batch(
    data: TrainData, indices: np.ndarray, n_outliers: int, rng: np.random.Generator, cfg: TrainConfig,
    outlier_weights: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    size = cfg.input_size
    labels = data.labels[indices].copy()
    if cfg.augment:
        aug = AugmentConfig(sector_probability=cfg.sector_probability, mr_contrast_probability=cfg.mr_contrast_probability)
        arrays = []
        for k, i in enumerate(indices):
            img, name = _simulated(data.images[i], data.class_names[int(labels[k])], data.class_names, cfg, rng)
            labels[k] = data.class_names.index(name)
            arrays.append(augment(img, rng, size, aug, stain=name in STAINED_CLASSES, sector=name in SECTOR_CLASSES,
                                  contrast=name in CONTRAST_CLASSES))
        arrays += [augment(_simulated_outlier(_outlier(data, rng, outlier_weights), cfg, rng), rng, size) for _ in range(n_outliers)]
    else:
        arrays = [to_pixels(data.images[i], size) for i in indices]
        arrays += [to_pixels(_outlier(data, rng, outlier_weights), size) for _ in range(n_outliers)]
    return torch.from_numpy(np.stack(arrays)), torch.from_numpy(labels).long()


def fit(
    model: nn.Module,
    data: TrainData,
    train_idx: list[int],
    cfg: TrainConfig,
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``train_idx``; returns the loss of every step.

    ``model`` may be wrapped by DDP; each of ``world_size`` workers draws its own batches.
    """
    net: ModalityNet = model.module if hasattr(model, "module") else model  # type: ignore[assignment]
    frozen = frozen_modules(net, cfg)
    rng = np.random.default_rng(cfg.seed + 1009 * rank)
    train_idx_arr = np.asarray(train_idx)
    sources = [data.sources[i] for i in train_idx_arr] if data.sources else []
    weights = sampling_weights(data.labels[train_idx_arr], sources, cfg.source_balance)
    outlier_weights = (sampling_weights(np.zeros(len(data.outliers), dtype=np.int64), data.outlier_sources, cfg.source_balance)
                       if data.outliers else None)
    n_outliers = int(round(cfg.batch_size * cfg.outlier_fraction))
    n_in = cfg.batch_size - n_outliers
    steps_per_epoch = max(1, math.ceil(len(train_idx_arr) / (n_in * world_size)))
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    head_params = list(net.head.parameters())
    head_ids = {id(p) for p in head_params}
    backbone_params = [p for p in net.parameters() if p.requires_grad and id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [{"params": head_params, "lr": cfg.lr}, {"params": backbone_params, "lr": cfg.lr * 0.3}],
        weight_decay=cfg.weight_decay,
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    warmup = max(1, int(0.05 * total))
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    for module in frozen:
        module.eval()
    for step in range(total):
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * scale
        indices = rng.choice(train_idx_arr, size=n_in, p=weights)
        pixels, targets = _batch(data, indices, n_outliers, rng, cfg, outlier_weights)
        pixels, targets = pixels.to(device), targets.to(device)
        logits = model(net.normalize(pixels))
        loss = F.cross_entropy(logits[:n_in], targets, label_smoothing=cfg.label_smoothing)
        if n_outliers:
            loss = loss + OUTLIER_WEIGHT * _outlier_loss(logits[n_in:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % steps_per_epoch == 0 or step + 1 == total:
            epoch = (step + 1 + steps_per_epoch - 1) // steps_per_epoch
            recent = float(np.mean(losses[-steps_per_epoch:]))
            log.info("epoch %d step %d/%d loss %.4f (%.0fs)", epoch, step + 1, total, recent, time.perf_counter() - started)
            if on_epoch is not None:
                on_epoch(epoch, recent)
    model.eval()
    return losses


def choose_threshold(in_confidence: np.ndarray, min_accept: float) -> float:
    """The largest top-probability threshold that keeps ``min_accept`` of in-distribution
    validation figures (a higher one only rejects more of both figures and outliers)."""
    if len(in_confidence) == 0:
        return 0.0
    return float(np.quantile(in_confidence, 1.0 - min_accept, method="lower"))


def with_threshold(model: ModalityNet, threshold: float) -> ModalityNet:
    model.spec = replace(model.spec, other_threshold=round(threshold, 4))
    return model
