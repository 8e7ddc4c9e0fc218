r"""Which per-class "other" threshold rule holds on new hospitals? Several rules side by side on a
finished fine-tuned leave-source-out study (:mod:`xai_pipeline.train.loso_fit`), and the raised
rule on a shipped model's own held-out figures.

    python -m bench.threshold_rules --study build/loso-fit-v4 [--min-accept 0.97] [--smoke]
    python -m bench.threshold_rules --model xai_pipeline/weights/modality-default.safetensors \
        --data A,B,C --holdout-sources S1,S2 [--split-seed 0]

Study: every figure of the fold's held sources and the in-class figures of its validation groups
scored by the fold's model (modality head only, no figure-type head). With :math:`a` = ``--min-accept``, :math:`Q` the
lower :math:`(1-a)`-quantile of the top probability over the *right* figures of class :math:`c`
(class :math:`c`, top class :math:`c`), :math:`u_k` fold :math:`k`'s own threshold (set on its
validation groups) and :math:`H_{\neg k}` the figures the other folds held:

* ``fold_own``: :math:`u_k` (the study's ``with_threshold``);
* ``validation_per_class``: :math:`Q` over fold :math:`k`'s own validation figures, no cap;
* ``cross_fold``: :math:`\min(u_k, Q(H_{\neg k}))` (the study's ``cross_fold``);
* ``cross_fold_raised``: :math:`\max(u_k, Q(H_{\neg k}))` (the study's ``cross_fold_raised``);
* ``cross_fold_bare``: :math:`Q(H_{\neg k})`, neither cap nor floor;
* ``shipped_rule_on_other_folds``: emulates ``train --threshold-on holdout`` then ``thresholds``
  with the other folds as the held-out sources: :math:`t_k` the same quantile over every in-class
  figure of :math:`H_{\neg k}` (right or not), then :math:`\min(t_k, Q(H_{\neg k}))` per class.
  The figures are scored by their own folds' models (fold :math:`k`'s trained on them), and a
  class short of right figures falls back to :math:`t_k` (``thresholds`` adds validation figures).

With ``--thresholds-of FILE`` (repeatable) each model file's own per-class thresholds, as they
are, for every fold (``model_<version>``): what a shipped model's thresholds would do with the
folds' models' scores, an indication for new hospitals and for kinds outside the taxonomy that
the model's own held-out sources do not hold (the folds' models are not the shipped one).

A class with fewer than ``--min-figures`` right figures keeps the rule's pooled threshold
(:math:`u_k`, or :math:`t_k`). Pooled and summarised as the study is
(:func:`xai_pipeline.train.loso.summarize`); the first, third and fourth reproduce the study's own
numbers, which checks the script (``--min-accept`` and ``--min-figures`` default to the study's
own). Writes ``bench/results/loso/threshold-rules-<study folder>.json``.

Model: the raised rule on one model's held-out figures (train's validation groups and
``--holdout-sources``): :math:`t_c = \max(v, Q_c)`, :math:`v` the pooled quantile over the
validation groups' in-class figures, :math:`Q_c` over the held-out sources' right figures of
:math:`c` (with the validation groups' added where they hold fewer than ``--min-figures``, as
``thresholds`` does), against the model's own thresholds, figure-type head included: the share of
in-class figures given their class and of ``other`` figures given a modality (lower is better),
held-out sources and validation groups apart. Writes ``threshold-rules-model-<version>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import write_results
from xai_pipeline.config import TrainConfig
from xai_pipeline.model.net import OTHER_LABEL, ModalityNet, ModelSpec, load_model, read_spec
from xai_pipeline.store.source import S3Settings
from xai_pipeline.train.dataset import Example, load_images
from xai_pipeline.train.evaluate import head_probabilities
from xai_pipeline.train.loso import OTHER_INDEX, summarize
from xai_pipeline.train.loso_folds import fold_dir, fold_report, fold_sources
from xai_pipeline.train.loso_score import kept_scores, label_scores
from xai_pipeline.train.run import MODEL_FILE
from xai_pipeline.train.sources import LABELS, read_all_sources
from xai_pipeline.train.split import data_parts, examples_and_split
from xai_pipeline.train.thresholds import cross_fold_thresholds, floor_quantile, right_quantiles

KEYS = ("macro_f1", "in_class_kept", "other_medical_called_other", "other_figure_called_other")


def fixed_thresholds(spec: ModelSpec, folds: int) -> np.ndarray:
    """``spec``'s own threshold per modality (``decision_thresholds``, in the study's label order)
    for each of ``folds`` folds; a model whose classes are not the six modalities is refused."""
    own = np.broadcast_to(np.asarray(spec.decision_thresholds or 0.0, dtype=float), (spec.num_classes,))
    by_label = dict(zip(spec.class_names, map(float, own)))
    if set(by_label) != set(LABELS[:OTHER_INDEX]):
        raise ValueError(f"--thresholds-of: model {spec.name} {spec.version}'s classes {sorted(by_label)} are not the study's modalities")
    return np.tile([by_label[name] for name in LABELS[:OTHER_INDEX]], (folds, 1))


def probabilities(model: ModalityNet, examples: list[Example], chunk: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Both heads' probabilities of ``examples`` (:func:`head_probabilities`), ``chunk`` images loaded at a time."""
    parts = [head_probabilities(model, load_images(examples[i:i + chunk], S3Settings())) for i in range(0, len(examples), chunk)]
    if not parts:
        return np.zeros((0, model.spec.num_classes)), None
    types = None if parts[0][1] is None else np.concatenate([t for _, t in parts])
    return np.concatenate([p for p, _ in parts]), types


def scored(model: ModalityNet, examples: list[Example]) -> np.ndarray:
    """Modality probabilities of ``examples`` in the label space (``other`` column empty)."""
    columns = [LABELS.index(name) for name in model.spec.class_names]
    return label_scores(probabilities(model, examples)[0], columns, None, len(LABELS), OTHER_INDEX)[0]


@torch.inference_mode()
def study_rules(study: Path, min_accept: float | None, min_figures: int | None, limit: int | None,
                thresholds_of: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The rules of the module docstring on ``study``; ``min_accept`` and ``min_figures`` None: the study's own;
    ``thresholds_of``: model files whose own thresholds are scored too."""
    report = json.loads((study / "loso-fit.json").read_text())
    crossed = report.get("pooled", {}).get("cross_fold", {})
    min_accept = crossed.get("min_accept", 0.97) if min_accept is None else min_accept
    min_figures = crossed.get("min_figures", 10) if min_figures is None else min_figures
    folds = [fold["source"] for fold in report["folds"]]
    fixed: dict[str, np.ndarray] = {}
    for path in thresholds_of:  # read and checked before any scoring
        spec = read_spec(path)
        if f"model_{spec.version}" in fixed:
            raise ValueError(f"--thresholds-of {path}: a second model versioned {spec.version}")
        fixed[f"model_{spec.version}"] = fixed_thresholds(spec, len(folds))
    sourced = read_all_sources(data_parts(report["config"]["data"]), S3Settings())
    held_by = {source: fold for fold in folds for source in fold_sources(fold)}
    held = [e for e in sourced if e.source in held_by]
    fold_of = np.array([folds.index(held_by[e.source]) for e in held])
    keep_rows = np.concatenate([np.flatnonzero(fold_of == k)[:limit] for k in range(len(folds))])
    held, fold_of = [held[i] for i in keep_rows], fold_of[keep_rows]
    y = np.array([LABELS.index(e.label) for e in held])
    p, own = np.zeros((len(held), len(LABELS))), np.zeros(len(folds))
    validation: list[tuple[np.ndarray, np.ndarray]] = []
    for k, fold in enumerate(folds):
        folder, trained = fold_dir(study, fold), fold_report(study, fold)
        own[k] = float(trained["model_spec"]["other_threshold"])
        examples, _, (_, val_idx, _) = examples_and_split(TrainConfig.from_report(trained["config"]))
        chosen = [examples[i] for i in val_idx if examples[i].label != OTHER_LABEL][:limit]
        model = load_model(folder / MODEL_FILE)
        validation.append((scored(model, chosen)[:, :OTHER_INDEX], np.array([LABELS.index(e.label) for e in chosen])))
        rows = np.flatnonzero(fold_of == k)
        p[rows] = scored(model, [held[i].example for i in rows])
        print(f"{fold[:60]}: {len(rows)} held, {len(chosen)} validation figures", file=sys.stderr)
    modal = p[:, :OTHER_INDEX]
    caps = np.repeat(own[:, None], OTHER_INDEX, axis=1)
    in_class = y < OTHER_INDEX
    shipped = np.zeros_like(caps)
    for k in range(len(folds)):
        others = fold_of != k
        t_k = floor_quantile(modal[others & in_class].max(axis=1), min_accept)
        shipped[k] = np.minimum(t_k, right_quantiles(modal, y, others, t_k, min_accept, min_figures))
    rules = {
        "fold_own": caps,
        "validation_per_class": np.stack([right_quantiles(vp, vy, np.ones(len(vy), dtype=bool), own[k], min_accept, min_figures)
                                          for k, (vp, vy) in enumerate(validation)]),
        "cross_fold": cross_fold_thresholds(modal, y, fold_of, caps, min_accept, min_figures),
        "cross_fold_raised": cross_fold_thresholds(modal, y, fold_of, caps, min_accept, min_figures, raised=True),
        "cross_fold_bare": np.stack([right_quantiles(modal, y, fold_of != k, own[k], min_accept, min_figures) for k in range(len(folds))]),
        "shipped_rule_on_other_folds": shipped,
    }
    rules.update(fixed)
    seen = np.ones(len(held), dtype=bool)
    result: dict[str, Any] = {"study": str(study), "figures": len(held), "min_accept": min_accept, "min_figures": min_figures}
    for name, t in rules.items():
        keep = modal.max(axis=1) >= t[fold_of, modal.argmax(axis=1)]
        at = summarize(kept_scores(p, keep, OTHER_INDEX), y, held, 0.0, seen)
        per_fold = {fold: dict(zip(LABELS, map(float, t[k]))) for k, fold in enumerate(folds)}
        result[name] = {key: at[key] for key in KEYS} | {"thresholds": per_fold}
        print(f"{name:<30}" + "".join(f"{key} {at[key]:.3f}  " for key in KEYS))
    return result


@torch.inference_mode()
def model_rule(model_path: Path, data: str, holdout: str, split_seed: int | None, min_accept: float, min_figures: int) -> dict[str, Any]:
    from xai_pipeline.model.labels import image_labels
    from xai_pipeline.train.evaluate_run import held_out_examples
    from xai_pipeline.train.split import read_training_examples

    model = load_model(model_path)
    names, held = model.spec.class_names, frozenset(s.strip() for s in holdout.split(",") if s.strip())
    examples = held_out_examples(read_training_examples(data, S3Settings()), ",".join(sorted(held)), split_seed)
    y = np.array([names.index(e.label) if e.label in names else -1 for e in examples])
    from_held = np.array([e.source in held for e in examples])
    p, types = probabilities(model, examples)
    in_class = y >= 0
    floor = floor_quantile(p[in_class & ~from_held].max(axis=1), min_accept)
    by_held = right_quantiles(p, y, from_held, np.nan, min_accept, min_figures)
    by_all = right_quantiles(p, y, in_class, floor, min_accept, 1)
    raised = np.maximum(floor, np.where(np.isnan(by_held), by_all, by_held))
    own = np.broadcast_to(np.asarray(model.spec.decision_thresholds or 0.0, dtype=float), (len(names),))
    result: dict[str, Any] = {"model": str(model_path), "version": model.spec.version, "data": data, "holdout_sources": sorted(held),
                              "split_seed": split_seed, "min_accept": min_accept, "min_figures": min_figures, "validation_floor": floor,
                              "thresholds": {"model": dict(zip(names, map(float, own))), "raised": dict(zip(names, map(float, raised)))}}
    for rule, t in (("model", model.spec.decision_thresholds), ("raised", tuple(raised))):
        modality = np.array(image_labels(p, types, names, model.spec.figure_types, t)[0])
        right = modality == np.array([names[c] if c >= 0 else OTHER_LABEL for c in y])
        cells = [(f"{part}_{what}", mask, ok) for part, where in (("held_out_sources", from_held), ("validation", ~from_held))
                 for what, mask, ok in (("in_class_right", where & in_class, right),
                                        ("other_given_a_modality", where & ~in_class, ~right))]
        result[rule] = {key: {"figures": int(mask.sum()), "share": float(ok[mask].mean()) if mask.any() else None}
                        for key, mask, ok in cells}
        print(f"{rule:<8}" + "  ".join(f"{k} {v['share']:.4f} of {v['figures']}"
                                       for k, v in result[rule].items() if v["share"] is not None))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, help="a finished loso_fit --out folder")
    parser.add_argument("--model", type=Path, help="a model file (with --data and --holdout-sources: train's)")
    parser.add_argument("--data")
    parser.add_argument("--holdout-sources")
    parser.add_argument("--split-seed", type=int, default=None)
    parser.add_argument("--min-accept", type=float, default=None, help="default: the study's own, else 0.97")
    parser.add_argument("--min-figures", type=int, default=None, help="default: the study's own, else 10")
    parser.add_argument("--thresholds-of", type=Path, action="append", default=[],
                        help="with --study: also score this model file's own per-class thresholds on every fold (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="20 held and 20 validation figures per fold (checks the plumbing)")
    args = parser.parse_args(argv)
    if (args.study is None) == (args.model is None) or (args.model is not None and not (args.data and args.holdout_sources)):
        parser.error("give --study, or --model with --data and --holdout-sources")
    if (args.smoke or args.thresholds_of) and args.model is not None:
        parser.error("--smoke and --thresholds-of are for --study")
    started = time.perf_counter()
    if args.study is not None:
        result = study_rules(args.study, args.min_accept, args.min_figures, 20 if args.smoke else None, tuple(args.thresholds_of))
        name = f"loso/threshold-rules-{args.study.name}"
    else:
        result = model_rule(args.model, args.data, args.holdout_sources, args.split_seed,
                            0.97 if args.min_accept is None else args.min_accept, 10 if args.min_figures is None else args.min_figures)
        name = f"loso/threshold-rules-model-{result['version']}"
    print(write_results(name, args.smoke, result | {"wall_s": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
