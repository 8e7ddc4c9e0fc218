"""The ``evaluate`` command: a model file against labelled figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xai_pipeline.config import EvaluateConfig
from xai_pipeline.train.dataset import load_images, read_examples
from xai_pipeline.train.evaluate import Metrics, evaluate_examples, write_reports
from xai_pipeline.train.evaluate_panels import figure_type_checks, panel_detection
from xai_pipeline.model.net import load_model
from xai_pipeline.store.source import S3Settings


def run_evaluation(cfg: EvaluateConfig) -> tuple[Metrics, dict[str, str]]:
    """Evaluate ``cfg.model`` (default: the bundled model) on ``cfg.data``; writes reports to
    ``cfg.out``: the modality metrics, and ``figures.json`` with panel detection on synthetic
    compound figures and the figure-type checks (:mod:`xai_pipeline.train.evaluate_panels`)."""
    settings = S3Settings(cfg.endpoint_url, cfg.region)
    model = load_model(Path(cfg.model) if cfg.model else None)
    examples = read_examples(cfg.data, settings)
    images = load_images(examples, settings)
    metrics, y_true, probabilities, maps = evaluate_examples(model, images, [e.label for e in examples])
    paths = write_reports(cfg.out, metrics, maps, np.asarray(y_true), probabilities)
    checks = {"panels": panel_detection(images, cfg.compound_figures), "figure_types": figure_type_checks(model, images)}
    paths["figures.json"] = str(Path(cfg.out) / "figures.json")
    Path(paths["figures.json"]).write_text(json.dumps(checks, indent=2) + "\n")
    return metrics, paths
