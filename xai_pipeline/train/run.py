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

from xai_pipeline.config import ConfigError, TrainConfig
from xai_pipeline.model.net import OTHER_LABEL
from xai_pipeline.store.source import SourceError
from xai_pipeline.train.dataset import Example
from xai_pipeline.train.split import data_parts, examples_and_split, split_counts, training_data
from xai_pipeline.train.evaluate import Metrics, compute_metrics, other_rejection, predict_images, write_reports
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
    metrics = compute_metrics(data.labels, probabilities, list(data.class_names), model.spec.decision_thresholds)
    paths = write_reports(out, metrics, maps, data.labels, probabilities, prefix=prefix)
    return metrics, paths


def synthetic_other_rejection(model: ModalityNet, seed: int) -> dict[str, float]:
    """Share of synthetic non-modality figures (seed unseen in training) reported as "other"."""
    from xai_pipeline.model.labels import confident_rows

    thresholds = model.spec.decision_thresholds
    rng = np.random.default_rng(seed)
    result = {}
    for kind in GENERATORS:
        images = [other_figure(rng, 256, (kind,)) for _ in range(SYNTHETIC_OTHER_PER_KIND)]
        probabilities, _ = predict_images(model, images)
        result[kind] = float((~confident_rows(probabilities, thresholds)).mean())  # 0 without a threshold
    result["all"] = float(np.mean(list(result.values())))
    return result


def source_table(cfg: TrainConfig) -> str:
    """The model card's per-source table with licenses, when every part of ``--data`` is a
    manifest naming each figure's source (:mod:`xai_pipeline.train.sources`); else empty."""
    from xai_pipeline.train.sources import read_all_sources, source_table_markdown, sources_by_class

    try:
        return source_table_markdown(sources_by_class(read_all_sources(data_parts(cfg.data))))
    except SourceError as exc:
        log.info("no source table for the model card: %s", exc)
        return ""


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate and write everything under ``cfg.out``; returns the training report."""
    started = time.perf_counter()
    torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    examples, class_names, (train_idx, val_idx, hold_idx) = examples_and_split(cfg)
    log.info("%d figures: %d train, %d validation, %d source hold-out", len(examples), len(train_idx), len(val_idx), len(hold_idx))
    if cfg.threshold_on == "holdout" and all(examples[i].label == OTHER_LABEL for i in hold_idx):
        raise ConfigError(f"--threshold-on holdout: --holdout-sources {cfg.holdout_sources!r} hold no in-class figure of --data")
    if cfg.ray:
        from xai_pipeline.train.on_ray import fit_on_ray

        state, losses = fit_on_ray(cfg, str((out / "ray").resolve()))
        model = build_model(cfg, class_names)
        model.load_state_dict(state)
        model.eval()
    else:
        train_data = training_data(examples, train_idx, class_names, cfg)
        model = build_model(cfg, class_names)
        losses = fit(model, train_data, list(range(len(train_data.labels))), cfg, device=torch.device("cpu"))
    fit_seconds = time.perf_counter() - started

    report: dict[str, Any] = {"config": asdict(cfg), "class_names": list(class_names), "fit_seconds": round(fit_seconds, 1),
                              "steps": len(losses), "losses": [round(v, 5) for v in losses],
                              "machine": f"{platform.machine()} {platform.processor()} {torch.get_num_threads()} torch threads"}
    return evaluate_and_save(cfg, model, examples, (train_idx, val_idx, hold_idx), report, started)


def evaluate_and_save(cfg: TrainConfig, model: ModalityNet, examples: list[Example], parts: tuple[list[int], list[int], list[int]],
                      report: dict[str, Any], started: float) -> dict[str, Any]:
    """Set the "other" threshold of a fitted ``model`` (``cfg.threshold_on``), evaluate it on the
    validation groups and held-out sources of the split ``parts`` of ``examples``, and write the
    model file, ``training_metrics.json`` (``report`` completed) and ``MODEL_CARD.md`` to ``cfg.out``."""
    out, class_names = Path(cfg.out), tuple(report["class_names"])
    out.mkdir(parents=True, exist_ok=True)
    train_idx, val_idx, hold_idx = parts
    report["split"] = split_counts(examples, parts)
    # Predictions do not depend on the threshold: predict once, set it, then score.
    val_data = training_data(examples, val_idx, class_names, cfg) if val_idx else None
    hold_data = training_data(examples, hold_idx, class_names, cfg) if hold_idx else None
    val_predicted = predict_images(model, val_data.images) if val_data and len(val_data.labels) else None
    hold_predicted = predict_images(model, hold_data.images) if hold_data and len(hold_data.labels) else None
    threshold_from = hold_predicted if cfg.threshold_on == "holdout" else val_predicted
    if threshold_from is not None:
        with_threshold(model, choose_threshold(threshold_from[0].max(axis=1), cfg.min_accept))
        report["threshold_set_on"] = cfg.threshold_on
    if val_predicted is not None:
        report["validation"] = asdict(_evaluate(model, val_data, out, "validation_", val_predicted)[0])
    if hold_predicted is not None:
        report["source_holdout"] = asdict(_evaluate(model, hold_data, out, "source_holdout_", hold_predicted)[0])
    if hold_idx:
        report["source_holdout_sources"] = sorted({examples[i].source for i in hold_idx})
    for name, indices, data in (("validation", val_idx, val_data), ("source_holdout", hold_idx, hold_data)):
        if data is not None and data.outliers:
            sources = [examples[i].source for i in indices if examples[i].label == OTHER_LABEL]
            report[f"{name}_other_rejected"] = other_rejection(model, data.outliers, sources)
    trained: dict[str, Counter[str]] = {}
    for i in train_idx:
        if examples[i].label != OTHER_LABEL and examples[i].source:
            trained.setdefault(examples[i].label, Counter())[examples[i].source] += 1
    report["sources_per_class"] = {c: sorted(v) for c, v in sorted(trained.items())}
    report["figures_per_source"] = {c: dict(sorted(v.items())) for c, v in sorted(trained.items())}
    table = source_table(cfg)
    if table:
        report["sources"] = table
    report["synthetic_other_rejected"] = synthetic_other_rejection(model, cfg.seed + 7919)
    spec = save_model(model, out / MODEL_FILE)
    report["model_spec"] = json.loads(spec.to_json())
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "training_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(render_model_card(report))
    log.info("wrote %s (%.0f s)", out / MODEL_FILE, report["seconds"])
    return report
