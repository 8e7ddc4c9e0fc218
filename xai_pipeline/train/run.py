"""The ``train`` command end to end: read and split the data, fit (here or on Ray Train),
evaluate on held-out groups and held-out sources, set the "other" threshold, and write the
model file, metrics, plots and ``MODEL_CARD.md``."""

from __future__ import annotations

import json
import logging
import platform
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xai_pipeline.config import TrainConfig
from xai_pipeline.train.split import examples_and_split, training_data
from xai_pipeline.train.evaluate import Metrics, compute_metrics, predict_images, write_reports
from xai_pipeline.model.net import ModalityNet, save_model
from xai_pipeline.train.model_card import render_model_card
from xai_pipeline.train.synthetic import GENERATORS, other_figure
from xai_pipeline.train.fit import TrainData, build_model, choose_threshold, fit, with_threshold

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
SYNTHETIC_OTHER_PER_KIND = 30


def _evaluate(
    model: ModalityNet, data: TrainData, out: Path, prefix: str, predicted: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[Metrics, dict[str, str]]:
    """Metrics and plots of ``data``; ``predicted`` = (probabilities, maps) if already computed."""
    probabilities, maps = predicted if predicted is not None else predict_images(model, data.images)
    metrics = compute_metrics(data.labels, probabilities, list(data.class_names), model.spec.other_threshold)
    paths = write_reports(out, metrics, maps, data.labels, probabilities, prefix=prefix)
    return metrics, paths


def synthetic_other_rejection(model: ModalityNet, seed: int) -> dict[str, float]:
    """Share of synthetic non-modality figures (seed unseen in training) reported as "other"."""
    threshold = model.spec.other_threshold
    rng = np.random.default_rng(seed)
    result = {}
    for kind in GENERATORS:
        images = [other_figure(rng, 256, (kind,)) for _ in range(SYNTHETIC_OTHER_PER_KIND)]
        probabilities, _ = predict_images(model, images)
        confidence = probabilities.max(axis=1)
        result[kind] = float((confidence < threshold).mean()) if threshold is not None else 0.0
    result["all"] = float(np.mean(list(result.values())))
    return result


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate and write everything under ``cfg.out``; returns the training report."""
    started = time.perf_counter()
    torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    examples, class_names, (train_idx, val_idx, hold_idx) = examples_and_split(cfg)
    log.info("%d figures: %d train, %d validation, %d source hold-out", len(examples), len(train_idx), len(val_idx), len(hold_idx))
    if cfg.ray:
        from xai_pipeline.train.on_ray import fit_on_ray

        state, losses = fit_on_ray(cfg, str((out / "ray").resolve()))
        model = build_model(cfg, class_names)
        model.load_state_dict(state)
        model.eval()
    else:
        train_data = training_data(examples, train_idx, class_names, cfg)
        model = build_model(cfg, class_names)
        losses = fit(model, train_data, list(range(len(train_idx))), cfg, device=torch.device("cpu"))
    fit_seconds = time.perf_counter() - started

    report: dict[str, Any] = {"config": asdict(cfg), "class_names": list(class_names), "fit_seconds": round(fit_seconds, 1),
                              "steps": len(losses), "losses": [round(v, 5) for v in losses],
                              "machine": f"{platform.machine()} {platform.processor()} {torch.get_num_threads()} torch threads"}
    report["split"] = {"train": dict(Counter(examples[i].label for i in train_idx)),
                       "validation": dict(Counter(examples[i].label for i in val_idx)),
                       "source_holdout": dict(Counter(examples[i].label for i in hold_idx))}
    if val_idx:
        val_data = training_data(examples, val_idx, class_names, cfg)
        val_predicted = predict_images(model, val_data.images)  # the threshold does not change them
        with_threshold(model, choose_threshold(val_predicted[0].max(axis=1), cfg.min_accept))
        val_metrics, _ = _evaluate(model, val_data, out, "validation_", val_predicted)
        report["validation"] = asdict(val_metrics)
    if hold_idx:
        hold_metrics, _ = _evaluate(model, training_data(examples, hold_idx, class_names, cfg), out, "source_holdout_")
        report["source_holdout"] = asdict(hold_metrics)
        report["source_holdout_sources"] = sorted({examples[i].source for i in hold_idx})
    report["synthetic_other_rejected"] = synthetic_other_rejection(model, cfg.seed + 7919)
    spec = save_model(model, out / MODEL_FILE)
    report["model_spec"] = json.loads(spec.to_json())
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "training_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(render_model_card(report))
    log.info("wrote %s (%.0f s)", out / MODEL_FILE, report["seconds"])
    return report
