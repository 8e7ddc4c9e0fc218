"""The figure-type head: what kind of figure it is (``schema.FIGURE_TYPES``), beside the modality.

A linear layer on the backbone's pooled features (the modality head's input), fitted with the
backbone frozen, as multinomial logistic regression (scikit-learn, class-balanced weights) and
copied into ``ModalityNet.type_head``: ``P(type | x) = softmax(W_t · p(x) + b_t)`` with ``p`` the
global average of the last feature map. CRM stays the modality head's.

Training figures, each with its figure type:
- ``medical_image``: the in-class scans of the ``--scans`` manifests (``modality-v1``,
  ``modality-extra-v1``, ``packaged-v4``: any of the six classes), up to ``--per-scan-class``
  (80; 0: every scan) per class drawn round-robin over its sources, none of the ``--exclude-sources`` (train's held-out
  sources stay unseen by both heads);
- real non-scan figures of ``other-v1`` (none of the ``--exclude-sources`` either: a
  leave-source-out fold's head never sees its held charts), by their manifest's ``kind``: charts, microscopy,
  diagrams and flowcharts, photographs, screenshots, molecular structures (``chemical_structure``),
  a table; text and drawings are ``other``;
- the procedural figures of :mod:`xai_pipeline.train.synthetic` (charts, diagrams, tables,
  western blots as ``gel_blot``, photo-like scenes, text pages as ``other``).

    python -m xai_pipeline.train.figure_type --model IN.safetensors --scans DIR/manifest.jsonl [--scans ...] \\
        --other DIR/manifest.jsonl --out OUT.safetensors [--exclude-sources A,B]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import replace
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from xai_pipeline import schema
from xai_pipeline.model.net import ModalityNet, load_model, save_model
from xai_pipeline.train.evaluate_panels import panel_detection
from xai_pipeline.train.evaluate import pooled_features
from xai_pipeline.train.synthetic import FIGURE_TYPES_OF, GENERATORS

log = logging.getLogger(__name__)

def type_of_kind(kind: str) -> str:
    """``other-v1``'s manifest ``kind`` → a figure type."""
    kind = kind.lower()
    for prefix, figure_type in (("chart", "chart"), ("microscopy", "microscopy"), ("diagram", "diagram"), ("flowchart", "diagram"),
                                ("infographic", "diagram"), ("table", "table"), ("photograph", "photograph"),
                                ("screenshot", "screenshot"), ("molecular", "chemical_structure")):
        if kind.startswith(prefix):
            return figure_type
    return "other"


def scan_rows(manifests: list[Path], per_class: int, exclude: Collection[str], rng: np.random.Generator) -> list[tuple[Path, dict[str, str]]]:
    """``(manifest folder, row)`` of up to ``per_class`` in-class scans per class (0: all of
    them), drawn round-robin over the class's sources (each source's rows shuffled), skipping
    ``exclude``."""
    by_source: dict[str, dict[str, list[tuple[Path, dict[str, str]]]]] = {}
    for manifest in manifests:
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            source = row.get("source_repo", "")
            if row["label"] == "other" or source in exclude:
                continue
            by_source.setdefault(row["label"], {}).setdefault(source, []).append((manifest.parent, row))
    chosen = []
    for label in sorted(by_source):
        queues = [[rows[i] for i in rng.permutation(len(rows))] for _, rows in sorted(by_source[label].items())]
        interleaved = [row for turn in zip_longest(*queues) for row in turn if row is not None]
        chosen += interleaved[:per_class or None]
    return chosen


def labelled_figures(scans: list[Path], other: Path, per_scan_class: int, synthetic_per_kind: int, seed: int,
                     exclude: frozenset[str] = frozenset()) -> tuple[list[Image.Image], list[str], list[str]]:
    """Images, their figure types and their sources (for a split by source); no figure, scan or
    not, of a source in ``exclude``."""
    rng = np.random.default_rng(seed)
    images, types, sources = [], [], []
    for folder, row in scan_rows(scans, per_scan_class, exclude, rng):
        images.append(Image.open(folder / row["file"]).convert("RGB"))
        types.append("medical_image")
        sources.append(row.get("source_repo", ""))
    for line in other.read_text().splitlines():
        row = json.loads(line)
        if row.get("source_repo", "") in exclude or row.get("label", "other") != "other":
            continue  # a held source; a scan listed beside the figures (only --scans bring scans)
        images.append(Image.open(other.parent / row["file"]).convert("RGB"))
        types.append(type_of_kind(row.get("kind", "")))
        sources.append(row.get("source_repo", ""))
    for name, generator in GENERATORS.items():
        for _ in range(synthetic_per_kind):
            images.append(generator(rng, 256))
            types.append(FIGURE_TYPES_OF[name])
            sources.append(f"synthetic:{name}")
    return images, types, sources


def fit_type_head(features: np.ndarray, types: list[str], c: float = 1.0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Multinomial logistic regression on standardised features, folded back into one linear
    layer on the raw features: returns ``W`` (T×K), ``b`` (T) and the type names (row order)."""
    from sklearn.linear_model import LogisticRegression

    names = tuple(t for t in schema.FIGURE_TYPES if t in set(types))
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    classifier = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    classifier.fit((features - mean) / std, [names.index(t) for t in types])
    weight = classifier.coef_ / std  # W (x − μ)/σ + b = (W/σ) x + (b − W μ/σ)
    bias = classifier.intercept_ - (classifier.coef_ * mean / std).sum(axis=1)
    return weight.astype(np.float32), bias.astype(np.float32), names


PER_SCAN_CLASS = 80
"""``--per-scan-class``'s default. Every scan (0) was measured against it on packaged-v3's
leave-source-out folds (``loso_fit --type-heads … --type-head-per-scan-class 0``): the volumes'
slices then outnumber the other classes' scans, and held-out ultrasound lost 7 points of recall
to non-medical types."""
SYNTHETIC_PER_KIND = 40
"""``--synthetic-per-kind``'s default."""


def type_model(model: ModalityNet, scans: list[Path], other: Path, exclude: frozenset[str], per_scan_class: int = PER_SCAN_CLASS,
               synthetic_per_kind: int = SYNTHETIC_PER_KIND, seed: int = 0) -> ModalityNet:
    """``model`` with a figure-type head fitted as :func:`main` fits it (same figures, defaults and
    seed), none of ``exclude``'s figures among them: the head of a leave-source-out fold."""
    images, types, _ = labelled_figures(scans, other, per_scan_class, synthetic_per_kind, seed, exclude)
    return with_type_head(model, *fit_type_head(pooled_features(model, images), types))


def held_out_accuracy(features: np.ndarray, types: list[str], seed: int, folds: int = 5) -> dict[str, float]:
    """Accuracy per figure type, and balanced, under stratified k-fold cross-validation (sources
    overlap between folds: most kinds come from one source each, see the model card)."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    labels = np.array(types)
    predicted = np.empty(len(types), dtype=object)
    counts = Counter(types)
    usable = np.array([counts[t] >= folds for t in types])
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features[usable], labels[usable]):
        idx_train, idx_test = np.flatnonzero(usable)[train], np.flatnonzero(usable)[test]
        weight, bias, names = fit_type_head(features[idx_train], list(labels[idx_train]))
        predicted[idx_test] = [names[i] for i in (features[idx_test] @ weight.T + bias).argmax(axis=1)]
    result = {t: float((predicted[usable & (labels == t)] == t).mean()) for t in sorted(set(labels[usable]))}
    result["balanced"] = float(balanced_accuracy_score(labels[usable], list(predicted[usable])))
    return result


def with_type_head(model: ModalityNet, weight: np.ndarray, bias: np.ndarray, names: tuple[str, ...], version: str | None = None) -> ModalityNet:
    """A copy of ``model`` with this figure-type head."""
    spec = replace(model.spec, figure_types=names, version=version or model.spec.version)
    out = ModalityNet(spec)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("type_head.")}
    state["type_head.weight"], state["type_head.bias"] = torch.from_numpy(weight), torch.from_numpy(bias)
    out.load_state_dict(state)
    return out.eval()


def card_with_type_head(card: str, before: Any, after: Any) -> str:
    """A training card (of model spec ``before``) retitled for ``after``, the same model with the
    figure-type head: new version in the title, a line on the head, the new weights hash."""
    from xai_pipeline.model.labels import MEDICAL_MIN

    head = (f"- Figure-type head ({after.version}): one linear layer on the same pooled features, {len(after.figure_types)} outputs "
            f"({', '.join(after.figure_types)}); a figure (or panel) whose `medical_image` probability is below {MEDICAL_MIN} gets "
            "modality `other`. See *Figure types* below.\n")
    card = card.replace(f"# Model card: {before.name} {before.version}\n", f"# Model card: {after.name} {after.version}\n", 1)
    return card.replace(f"- Weights: safetensors, SHA-256 `{before.weights_sha256}`",
                        head + f"- Weights: safetensors, SHA-256 `{after.weights_sha256}` (with the figure-type head)", 1)


def _scans_per_class(cap: int | None) -> str:  # 0 (or a report before the flag had it): every scan
    return f"up to {cap} scans per modality class" if cap else "every scan of the six modality classes"


def card_section(report: dict) -> str:
    """The model card's *Figure types* section for a :func:`main` report."""
    acc, counts = report["cross_validated_accuracy"], report["training_figures"]
    rows = "\n".join(f"| {k} | {counts.get(k, 0)} | {acc[k]:.3f} |" for k in report["figure_types"] if k in acc)
    return f"""
## Figure types (version {report['model_version']})

The figure-type head was fitted with the backbone frozen (multinomial logistic regression,
class-balanced, scikit-learn; `python -m xai_pipeline.train.figure_type`, run by `make model`) on
{sum(counts.values())} figures: {_scans_per_class(report.get('per_scan_class'))} (`medical_image`) from {', '.join(report.get('scan_manifests', ['modality-v1']))}, round-robin over each class's sources and none from train's held-out sources, the real
non-scan figures of `other-v1` by their manifest's `kind` (its sources and licenses are listed in
that data set's README: plotnine, scanpy-tutorials, lifelines, mingrammer/diagrams, consort,
forestplot, DECIMER, scikit-image and COBA-NIH's microscopy guide under MIT or BSD-3-Clause; the
DSB2018 nuclei images under BBBC038's CC0, not checked) and {report['synthetic_per_kind']} procedural figures per generator
of `xai_pipeline/train/synthetic.py`. A figure whose type is not `medical_image` gets modality
`other`.

Accuracy per type under stratified 5-fold cross-validation (folds share sources: most kinds come
from one source each, so these are in-source numbers, optimistic for new sources):

| figure type | training figures | accuracy |
|---|---|---|
{rows}
| balanced accuracy | | {acc['balanced']:.3f} |

Types with fewer than 5 figures (`chemical_structure`: {counts.get('chemical_structure', 0)}) are fitted but not
cross-validated.
""" + _panel_section(report.get("panels"))


def _panel_section(panels: dict | None) -> str:
    if not panels:
        return ""
    layouts = ", ".join(f"{k} {v:.2f}" for k, v in panels["exact_count_by_layout"].items())
    return f"""
## Panels

Compound figures are split by layout analysis (`xai_pipeline/model/panels.py`, no learned weights).
On {panels['compound_figures']} synthetic compound figures (`xai_pipeline/train/compound.py`: grids, irregular rows,
a tall panel beside a column, insets; white or black gutters, letters, borders) made of modality-v1
scans and procedural figures, with a seed no training step uses: precision {panels['precision_iou50']:.3f}, recall
{panels['recall_iou50']:.3f} at IoU ≥ 0.5, exact panel count {panels['exact_count']:.3f} (by layout: {layouts}); of
{panels['single_figures']} single scans, {panels['single_figures_kept_whole']:.3f} stayed whole. {panels['ms_per_figure']:.0f} ms a figure on one CPU core.
Real compound figures from papers were not available here; synthetic layouts are easier than
printed ones (no captions inside panels, no panels that touch).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--scans", required=True, type=Path, action="append", help="a manifest of scans, e.g. modality-v1's (repeat)")
    parser.add_argument("--exclude-sources", default="", help="comma-separated source_repo values not to fit on, scans or other figures (train's --holdout-sources)")
    parser.add_argument("--other", required=True, type=Path, help="other-v1 manifest.jsonl")
    parser.add_argument("--out", required=True, type=Path, help="model file to write")
    parser.add_argument("--version", default=None, help="version of the written model (default: the input's)")
    parser.add_argument("--per-scan-class", type=int, default=PER_SCAN_CLASS, help="at most this many scans per modality class, round-robin over its "
                        f"sources (default {PER_SCAN_CLASS}; 0: every scan)")
    parser.add_argument("--synthetic-per-kind", type=int, default=SYNTHETIC_PER_KIND)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--card", type=Path, default=None, help="MODEL_CARD.md to append the figure-type section to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    model = load_model(args.model)
    exclude = frozenset(s.strip() for s in args.exclude_sources.split(",") if s.strip())
    images, types, _ = labelled_figures(args.scans, args.other, args.per_scan_class, args.synthetic_per_kind, args.seed, exclude)
    features = pooled_features(model, images)
    accuracy = held_out_accuracy(features, types, args.seed)
    weight, bias, names = fit_type_head(features, types)
    spec = save_model(with_type_head(model, weight, bias, names, args.version), args.out)
    scans = [image for image, kind in zip(images, types) if kind == schema.MEDICAL_IMAGE]
    report = {"panels": panel_detection(scans, 200), "figure_types": list(names), "training_figures": dict(Counter(types)), "cross_validated_accuracy": accuracy,
              "model_version": spec.version, "per_scan_class": args.per_scan_class,
              "scan_manifests": [p.parent.name for p in args.scans], "excluded_sources": sorted(exclude), "synthetic_per_kind": args.synthetic_per_kind,
              "weights_sha256": spec.weights_sha256}
    (args.out.parent / "figure_type_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.card is not None:
        args.card.write_text(card_with_type_head(args.card.read_text(), model.spec, spec).rstrip() + "\n" + card_section(report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
