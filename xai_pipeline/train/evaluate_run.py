"""The ``evaluate`` command: a model file against labelled figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from xai_pipeline.config import ConfigError, EvaluateConfig, TrainConfig
from xai_pipeline.model.net import OTHER_LABEL
from xai_pipeline.train.dataset import Example, load_images, split_by_group
from xai_pipeline.train.evaluate import Metrics, evaluate_examples, other_rejection, write_reports
from xai_pipeline.train.split import read_training_examples
from xai_pipeline.train.evaluate_panels import figure_type_checks, panel_detection
from xai_pipeline.model.net import load_model
from xai_pipeline.store.source import S3Settings


def _faithfulness(model: Any, images: list, labels: np.ndarray, class_names: list[str], cfg: EvaluateConfig) -> dict[str, str]:
    """Faithfulness of the maps on a class-stratified sample of the figures, batched on the
    model's device; merged into ``metrics.json`` (key ``faithfulness``) and drawn in
    ``faithfulness.png``."""
    import torch

    if importlib.util.find_spec("pytorch_grad_cam") is None:  # ROAD's imputer
        raise ConfigError("--faithfulness needs pytorch-grad-cam: pip install 'xai-pipeline[faithfulness]'")
    from xai_pipeline.job.decode import to_pixels
    from xai_pipeline.train import faithfulness as fa

    rng = np.random.default_rng(0)
    per_class = max(1, cfg.faithfulness_figures // max(1, len(set(labels.tolist()))))
    chosen = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in sorted(set(labels.tolist()))])
    size = model.spec.input_size
    parts = []
    for start in range(0, len(chosen), 16):
        pixels = torch.from_numpy(np.stack([to_pixels(images[i], size) for i in chosen[start:start + 16]]))
        parts.append(fa.batch_curves(model, pixels.to(next(model.parameters()).device), cfg.faithfulness_steps, seed=start))
    result = fa.summarise(parts, labels[chosen], class_names, cfg.faithfulness_steps)
    out = Path(cfg.out)
    metrics_path = out / "metrics.json"
    merged = json.loads(metrics_path.read_text())
    merged["faithfulness"] = result
    metrics_path.write_text(json.dumps(merged, indent=2) + "\n")
    fa.curves_png(result, str(out / "faithfulness.png"))
    return {"faithfulness.png": str(out / "faithfulness.png")}


def held_out_examples(examples: list[Example], holdout_sources: str, split_seed: int | None = None) -> list[Example]:
    """The figures ``train`` keeps out of training when given the same data: its validation groups
    (split with train's default ``--val-fraction`` and seed ``split_seed``, default train's
    default ``--seed``) and the ``--holdout-sources``."""
    defaults = TrainConfig(data="-", out="-", holdout_sources=holdout_sources, split_seed=split_seed)
    _, validation, holdout = split_by_group(examples, defaults.val_fraction, defaults.group_split_seed, defaults.holdout)
    if not validation and not holdout:
        raise ConfigError(f"--held-out: train's split of --data keeps no figure out of training ({len(examples)} figures)")
    return [examples[i] for i in sorted(validation + holdout)]


def run_evaluation(cfg: EvaluateConfig) -> tuple[Metrics, dict[str, str]]:
    """Evaluate ``cfg.model`` (default: the bundled model) on ``cfg.data``; writes reports to
    ``cfg.out``: the modality metrics, and ``figures.json`` with panel detection on synthetic
    compound figures, the figure-type checks (:mod:`xai_pipeline.train.evaluate_panels`) and, when
    ``--data`` has figures labelled ``other``, the share of them given no modality."""
    settings = S3Settings(cfg.endpoint_url, cfg.region)
    model = load_model(Path(cfg.model) if cfg.model else None)
    examples = read_training_examples(cfg.data, settings)
    if cfg.held_out:
        examples = held_out_examples(examples, cfg.holdout_sources, cfg.split_seed)
    others = [e for e in examples if e.label == OTHER_LABEL]
    examples = [e for e in examples if e.label != OTHER_LABEL]
    if not examples:
        raise ConfigError(f"--data {cfg.data}: no figure of the model's classes to evaluate (only {OTHER_LABEL!r})")
    images = load_images(examples, settings)
    metrics, y_true, probabilities, maps = evaluate_examples(model, images, [e.label for e in examples])
    paths = write_reports(cfg.out, metrics, maps, np.asarray(y_true), probabilities)
    if cfg.faithfulness:
        paths.update(_faithfulness(model, images, np.asarray(y_true), metrics.class_names, cfg))
    checks = {"panels": panel_detection(images, cfg.compound_figures), "figure_types": figure_type_checks(model, images)}
    if others:  # real non-modality figures of --data: how many get no modality
        checks["other_rejected"] = other_rejection(model, load_images(others, settings), [e.source for e in others])
    paths["figures.json"] = str(Path(cfg.out) / "figures.json")
    Path(paths["figures.json"]).write_text(json.dumps(checks, indent=2) + "\n")
    return metrics, paths
