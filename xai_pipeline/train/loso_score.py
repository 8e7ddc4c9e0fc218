"""Scoring a fine-tuned leave-source-out study (:mod:`xai_pipeline.train.loso_fit`): every figure
of every fold's held sources labelled by that fold's model, pooled into one confusion.

Four decisions are scored side by side: the fold's own thresholds (set in-source), thresholds set
across folds (on other folds' held sources) as caps or as floors on the fold's own (raised), and
argmax. With ``--type-heads`` each fold also gets the figure-type head ``make model`` fits
(:func:`fit_fold_type_heads`: the same recipe, none of the fold's held sources among its figures),
and the study is scored again as the job labels figures: a figure whose type is not
``medical_image`` is ``other`` whatever its modality score (``with_types``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xai_pipeline.config import ConfigError, TrainConfig
from xai_pipeline.store.source import S3Settings
from xai_pipeline.train.loso_folds import fold_dir, fold_report, fold_sources
from xai_pipeline.train.split import data_parts

log = logging.getLogger(__name__)

TYPED_FILE = "model-types.safetensors"
"""A fold's model with its figure-type head (``make model``'s name for the same file)."""
TYPE_HEAD_RECORD = "type_head.json"
"""What a fold's figure-type head was fitted on (a head fitted on the same is reused)."""


def fit_fold_type_heads(base: TrainConfig, folds: list[str], out: Path, other: str, per_scan_class: int | None = None,
                        refit: bool = False) -> None:
    """Give each fold's model the figure-type head of :func:`xai_pipeline.train.figure_type.type_model`,
    fitted on the scans of ``base.data``'s manifests and the non-scan figures of ``other`` (the
    ``other-v1`` manifest), none from the fold's held sources; written to ``TYPED_FILE`` in the
    fold's folder. ``per_scan_class``: ``figure_type``'s cap (None: its default, 0: every scan). A
    head fitted before on the same fold model, manifests (by content) and head recipe is kept unless
    ``refit`` (a change of the figure-type code itself is not seen). Every manifest must be local."""
    import hashlib

    from xai_pipeline.model.net import load_model, save_model
    from xai_pipeline.train.figure_type import PER_SCAN_CLASS, SYNTHETIC_PER_KIND, type_model
    from xai_pipeline.train.run import MODEL_FILE

    other_path = Path(other)
    if not other_path.is_file():
        raise ConfigError(f"--type-heads {other}: no such manifest (other-v1's manifest.jsonl)")
    remote = [m for m in data_parts(base.data) if "://" in m]
    if remote:
        raise ConfigError(f"--type-heads: the figure-type head reads local manifests only; --data has {', '.join(remote)}")
    scans = [Path(m) for m in data_parts(base.data) if Path(m).resolve() != other_path.resolve()]
    cap = PER_SCAN_CLASS if per_scan_class is None else per_scan_class
    contents = {str(p.resolve()): hashlib.sha256(p.read_bytes()).hexdigest() for p in [*scans, other_path]}
    for fold in folds:
        folder = fold_dir(out, fold)
        model = load_model(folder / MODEL_FILE)
        record = {"model_sha256": model.spec.weights_sha256, "scans": [str(p.resolve()) for p in scans],
                  "other": str(other_path.resolve()), "manifest_sha256": contents, "exclude": sorted(fold_sources(fold)),
                  "per_scan_class": cap, "synthetic_per_kind": SYNTHETIC_PER_KIND, "seed": 0}
        path, meta = folder / TYPED_FILE, folder / TYPE_HEAD_RECORD
        if not refit and path.is_file() and meta.is_file() and json.loads(meta.read_text()) == record:
            log.info("fold %s: figure-type head fitted before (reused)", fold)
            continue
        log.info("fold %s: fitting its figure-type head", fold)
        save_model(type_model(model, scans, other_path, frozenset(fold_sources(fold)), per_scan_class=cap), path)
        meta.write_text(json.dumps(record, indent=2) + "\n")


FRONTIER = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
"""Thresholds at which the pooled study is also scored with one threshold for all folds and classes."""


def kept_scores(plain: np.ndarray, confident: np.ndarray, other: int) -> np.ndarray:
    """``plain`` (label space, column ``other`` empty) with each row that is not ``confident``
    replaced by 1 in column ``other`` and 0 elsewhere: argmax then decides with the thresholds."""
    kept = plain * confident[:, None]
    kept[:, other] = np.where(confident, 0.0, 1.0)
    return kept


def label_scores(p: np.ndarray, columns: list[int], thresholds: float | Sequence[float] | None, n_labels: int,
                 other: int) -> tuple[np.ndarray, np.ndarray]:
    r"""A fold model's probabilities ``p`` (n×C) in the label space of ``n_labels`` columns (its
    class ``j`` in column ``columns[j]``): as they are (argmax decides), and *kept* — a row whose
    top class :math:`\hat c` has :math:`p_{\hat c} < t_{\hat c}` becomes 1 in column ``other`` and 0
    elsewhere, so argmax decides with the thresholds too."""
    from xai_pipeline.model.labels import confident_rows

    plain = np.zeros((len(p), n_labels))
    plain[:, columns] = p
    return plain, kept_scores(plain, confident_rows(p, thresholds), other)


@torch.inference_mode()
def score_folds(base: TrainConfig, folds: list[str], out: Path, min_accept: float = 0.97, min_figures: int = 10,
                typed: bool = False) -> dict[str, Any]:
    r"""Every figure of every fold's held sources scored by that fold's model, pooled.

    A figure keeps its top class :math:`\hat c` when :math:`p_{\hat c} \ge t_{\hat c}`, else it is
    ``other``; the pooled confusion over all folds gives per-class precision, recall and F1 and the
    macro-F1 over the six modalities four ways: with the folds' own thresholds (set in-source),
    with thresholds set across folds (``cross_fold``: each fold's per-class thresholds set on the
    other folds' held sources, :func:`xai_pipeline.train.thresholds.cross_fold_thresholds` with
    ``min_accept`` and ``min_figures``), with those thresholds raised instead (``cross_fold_raised``:
    ``raised=True`` there, the fold's own threshold a floor, never a cap, so a class whose new
    hospitals stay sure of it refuses the figures that are less sure), and by argmax. ``study_floors``:
    each class's floor over all folds' held figures (:func:`xai_pipeline.train.thresholds.study_floors`),
    which ``thresholds --floors`` raises a model trained on every source to. A class a
    fold did not train on is flagged (``testable_classes``). ``frontier``: macro-F1 and the shares
    called ``other`` with one threshold for every fold and class, each of :data:`FRONTIER`: chosen
    on the scored figures themselves, it bounds what any single threshold could do for this recipe
    (per-class thresholds are not bound by it).

    ``typed``: the folds' :data:`TYPED_FILE` models score instead (their modality head is the
    fold's, so every result above is unchanged), and ``with_types`` repeats the four decisions and
    the frontier with the figure-type head's gate as the job applies it
    (:func:`xai_pipeline.model.labels.image_labels`): a figure whose type is not ``medical_image`` is
    ``other``; ``argmax`` there is the head's gate alone.
    """
    from xai_pipeline.model.labels import confident_rows, image_labels
    from xai_pipeline.model.net import OTHER_LABEL, load_model
    from xai_pipeline.train.dataset import load_images
    from xai_pipeline.train.evaluate import head_probabilities
    from xai_pipeline.train.loso import OTHER_INDEX, per_source, summarize
    from xai_pipeline.train.run import MODEL_FILE
    from xai_pipeline.train.sources import LABELS, read_all_sources
    from xai_pipeline.train.thresholds import cross_fold_thresholds, study_floors

    settings = S3Settings(base.endpoint_url, base.region)
    examples = read_all_sources(data_parts(base.data), settings)
    held_by = {source: fold for fold in folds for source in fold_sources(fold)}
    scored = [e for e in examples if e.source in held_by]
    y = np.array([LABELS.index(e.label) for e in scored], dtype=np.int64)
    p_argmax, seen = np.zeros((len(scored), len(LABELS))), np.ones(len(scored), dtype=bool)
    confident, medical = np.ones(len(scored), dtype=bool), np.ones(len(scored), dtype=bool)
    fold_of, caps = np.zeros(len(scored), dtype=np.int64), np.ones((len(folds), OTHER_INDEX))
    for k, fold in enumerate(folds):
        rows = [i for i, e in enumerate(scored) if held_by[e.source] == fold]
        report = fold_report(out, fold)
        model, trained = load_model(fold_dir(out, fold) / (TYPED_FILE if typed else MODEL_FILE)), report["split"]["train"]
        spec = model.spec
        if typed and not spec.figure_types:
            raise ValueError(f"{fold_dir(out, fold) / TYPED_FILE} has no figure-type head")
        columns = [LABELS.index(name) for name in spec.class_names]
        own = np.broadcast_to(np.asarray(spec.decision_thresholds or 0.0, dtype=float), (len(columns),))
        caps[k], caps[k, columns] = own.max(), own  # a class the fold lacks never tops its scores
        for start in range(0, len(rows), 32):
            chunk = rows[start:start + 32]
            p, types = head_probabilities(model, load_images([scored[i].example for i in chunk], settings))
            p_argmax[chunk], _ = label_scores(p, columns, None, len(LABELS), OTHER_INDEX)
            confident[chunk] = confident_rows(p, spec.decision_thresholds)
            if typed:  # the job's gate: no threshold, so only the figure type makes a figure 'other'
                medical[chunk] = [m != OTHER_LABEL for m in image_labels(p, types, spec.class_names, spec.figure_types, None)[0]]
        fold_of[rows] = k
        seen[rows] = [scored[i].label == LABELS[OTHER_INDEX] or trained.get(scored[i].label, 0) > 0 for i in rows]
    modal = p_argmax[:, :OTHER_INDEX]
    crossed = cross_fold_thresholds(modal, y, fold_of, caps, min_accept, min_figures)
    cross_ok = modal.max(axis=1) >= crossed[fold_of, modal.argmax(axis=1)]
    raised = cross_fold_thresholds(modal, y, fold_of, caps, min_accept, min_figures, raised=True)
    raised_ok = modal.max(axis=1) >= raised[fold_of, modal.argmax(axis=1)]
    settings_used = {"min_accept": min_accept, "min_figures": min_figures}

    def decided(gate: np.ndarray) -> dict[str, Any]:
        """The four decisions and the frontier, each figure failing ``gate`` made ``other``."""
        def at(keep: np.ndarray) -> dict[str, Any]:
            return summarize(kept_scores(p_argmax, keep & gate, OTHER_INDEX), y, scored, 0.0, seen)

        frontier = [{"threshold": t} | {key: s[key] for key in ("macro_f1", "other_medical_called_other", "other_figure_called_other")}
                    for t in FRONTIER for s in [at(modal.max(axis=1) >= t)]]  # one threshold for every fold, chosen on these figures: a bound
        return {"with_threshold": at(confident), "cross_fold": at(cross_ok) | settings_used,
                "cross_fold_raised": at(raised_ok) | settings_used, "argmax": at(np.ones(len(scored), dtype=bool)), "frontier": frontier}

    plain = decided(np.ones(len(scored), dtype=bool))
    p_kept, p_cross = kept_scores(p_argmax, confident, OTHER_INDEX), kept_scores(p_argmax, cross_ok, OTHER_INDEX)
    sources = per_source(p_kept, y, scored, 0.0)
    for name, closed in per_source(p_argmax, y, scored, 0.0).items():
        sources[name]["closed_set_accuracy"] = closed["closed_set_accuracy"]
    for name, cross in per_source(p_cross, y, scored, 0.0).items():
        sources[name]["cross_fold_accuracy"] = cross["accuracy"]
    for name, lifted in per_source(kept_scores(p_argmax, raised_ok, OTHER_INDEX), y, scored, 0.0).items():
        sources[name]["raised_accuracy"] = lifted["accuracy"]
    result = {"figures": len(scored), **plain,
              "cross_fold_thresholds": {fold: dict(zip(LABELS, map(float, crossed[k]))) for k, fold in enumerate(folds)},
              "cross_fold_raised_thresholds": {fold: dict(zip(LABELS, map(float, raised[k]))) for k, fold in enumerate(folds)},
              "study_floors": {"floors": {c: {"threshold": v.threshold, "figures": v.figures}
                                          for c, v in study_floors(modal, y, LABELS[:OTHER_INDEX], min_accept, min_figures).items()},
                               **settings_used},
              "per_source": sources, "unscored_sources": sorted({e.source for e in examples} - set(held_by))}
    if typed:
        result["with_types"] = decided(medical)
        for name, typed_source in per_source(kept_scores(p_argmax, confident & medical, OTHER_INDEX), y, scored, 0.0).items():
            sources[name]["typed_accuracy"] = typed_source["accuracy"]
    return result
