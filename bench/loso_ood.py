r"""Is the top softmax probability the right "other" detector for new hospitals? Against the
distance to the nearest training figures in the fold models' own feature space, on a finished
fine-tuned leave-source-out study (:mod:`xai_pipeline.train.loso_fit`).

    python -m bench.loso_ood --study build/loso-fit [--k 10] [--smoke]

For each fold of the study, with that fold's model: the pooled features :math:`z` (global average
pooling, the input of the modality head), L2-normalised, of the fold's training figures of the six
classes, of its validation figures of the six classes and of every figure of its held sources.
Two scores decide whether a figure keeps its top class :math:`\hat c = \arg\max_c P_c`:

* softmax: :math:`\max_c P_c(x)` (the shipped rule);
* k-NN (Sun et al., "Out-of-distribution detection with deep nearest neighbors", ICML 2022):
  :math:`d_k(x) = 1 - \langle z(x), z_{(k)} \rangle`, the cosine distance to the ``k``-th nearest
  training figure (smaller is more familiar).

Each is thresholded in-source, as the folds' own threshold is: at the level that keeps a share
``q`` of the fold's validation figures (softmax: the lower :math:`(1-q)`-quantile of their top
probabilities; k-NN: the upper :math:`q`-quantile of their distances), for each ``q`` of
:data:`KEEP`; "both" keeps a figure only when both scores do. Every held figure is scored by its
fold, pooled, and summarised as the study is (:func:`xai_pipeline.train.loso.summarize`): macro-F1
over the six modalities and the shares of out-of-taxonomy medical images and of other figures
called ``other``. Writes ``bench/results/loso/ood-<study folder>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import write_results
from xai_pipeline.config import TrainConfig
from xai_pipeline.model.net import OTHER_LABEL, ModalityNet, load_model
from xai_pipeline.store.source import S3Settings
from xai_pipeline.train.dataset import Example, load_images
from xai_pipeline.train.evaluate import pooled_features
from xai_pipeline.train.loso import OTHER_INDEX, summarize
from xai_pipeline.train.loso_folds import fold_dir, fold_report, fold_sources
from xai_pipeline.train.loso_score import kept_scores, label_scores
from xai_pipeline.train.run import MODEL_FILE
from xai_pipeline.train.sources import LABELS, read_all_sources
from xai_pipeline.train.split import data_parts, examples_and_split

KEEP = (0.8, 0.9, 0.95, 0.97, 0.99)
"""Shares of a fold's validation figures each score's threshold keeps."""


def features(model: ModalityNet, examples: list[Example], chunk: int = 64) -> np.ndarray:
    """Pooled features of ``examples`` (loaded ``chunk`` at a time), as the modality head sees them."""
    parts = [pooled_features(model, load_images(examples[i:i + chunk], S3Settings())) for i in range(0, len(examples), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)


def unit(z: np.ndarray) -> np.ndarray:
    """Rows of ``z`` scaled to length 1."""
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def knn_distance(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance of each unit-length query to its ``k``-th nearest row of ``bank`` (unit rows)."""
    if len(bank) == 0:
        raise ValueError("an empty bank: the fold has no training figure of the six classes")
    similarity = queries @ bank.T
    return 1.0 - np.sort(similarity, axis=1)[:, -min(k, bank.shape[0])]


@torch.inference_mode()
def score_fold(study: Path, fold: str, held: list[Example], k: int, limit: int | None) -> dict[str, np.ndarray]:
    """Per held figure of ``fold``: its probabilities in the label space, its top probability and
    k-NN distance, and the fold's validation top probabilities and distances (for the thresholds)."""
    folder = fold_dir(study, fold)
    config = fold_report(study, fold)["config"]
    cfg = TrainConfig.from_report(config)
    examples, _, (train_idx, val_idx, _) = examples_and_split(cfg)
    train = [examples[i] for i in train_idx if examples[i].label != OTHER_LABEL][:limit]
    validation = [examples[i] for i in val_idx if examples[i].label != OTHER_LABEL][:limit]
    if not validation:
        raise ValueError(f"{folder}: no validation figure of the six classes to set the thresholds on")
    model = load_model(folder / MODEL_FILE)
    columns = [LABELS.index(name) for name in model.spec.class_names]
    bank = unit(features(model, train))
    out: dict[str, np.ndarray] = {}
    for name, chosen in (("validation", validation), ("held", held)):
        z = features(model, chosen)
        plain, _ = label_scores(model.head(torch.from_numpy(z)).softmax(-1).numpy(), columns, None, len(LABELS), OTHER_INDEX)
        out[f"{name}_p"], out[f"{name}_knn"] = plain, knn_distance(unit(z), bank, k)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, required=True, help="a finished loso_fit --out folder")
    parser.add_argument("--k", type=int, default=10, help="neighbour whose distance scores a figure")
    parser.add_argument("--smoke", action="store_true", help="20 training and validation figures per fold (checks the plumbing)")
    args = parser.parse_args(argv)
    report = json.loads((args.study / "loso-fit.json").read_text())
    folds = [fold["source"] for fold in report["folds"]]
    sourced = read_all_sources(data_parts(report["config"]["data"]), S3Settings())
    held_by = {source: fold for fold in folds for source in fold_sources(fold)}
    scored = [e for e in sourced if e.source in held_by]
    y = np.array([LABELS.index(e.label) for e in scored])
    p, knn = np.zeros((len(scored), len(LABELS))), np.zeros(len(scored))
    cuts: dict[str, dict[float, tuple[float, float]]] = {}  # fold -> keep share -> (softmax, k-NN) threshold
    fold_of = np.zeros(len(scored), dtype=np.int64)
    for index, fold in enumerate(folds):
        rows = [i for i, e in enumerate(scored) if held_by[e.source] == fold]
        got = score_fold(args.study, fold, [scored[i].example for i in rows], args.k, 20 if args.smoke else None)
        p[rows], knn[rows], fold_of[rows] = got["held_p"], got["held_knn"], index
        top = got["validation_p"].max(axis=1)
        cuts[fold] = {q: (float(np.quantile(top, 1 - q, method="lower")), float(np.quantile(got["validation_knn"], q, method="higher"))) for q in KEEP}
        print(f"{fold[:60]}: {len(rows)} held figures scored", file=sys.stderr)
    top, seen = p[:, :OTHER_INDEX].max(axis=1), np.ones(len(scored), dtype=bool)
    rows_out: list[dict[str, Any]] = []
    for q in KEEP:
        soft_cut, near_cut = np.array([cuts[fold][q] for fold in folds]).T  # per fold, indexed by fold_of
        soft, near = top >= soft_cut[fold_of], knn <= near_cut[fold_of]
        row: dict[str, Any] = {"keep": q}
        for name, keep in (("softmax", soft), ("knn", near), ("both", soft & near)):
            at = summarize(kept_scores(p, keep, OTHER_INDEX), y, scored, 0.0, seen)
            row[name] = {key: at[key] for key in ("macro_f1", "other_medical_called_other", "other_figure_called_other", "in_class_kept")}
        rows_out.append(row)
        print(f"keep {q:.2f} " + "  ".join(f"{n}: F1 {row[n]['macro_f1']:.3f} oot {row[n]['other_medical_called_other']:.3f} "
                                           f"fig {row[n]['other_figure_called_other']:.3f}" for n in ("softmax", "knn", "both")))
    result = {"study": str(args.study), "k": args.k, "figures": len(scored), "rows": rows_out,
              "thresholds": {fold: {str(q): {"softmax": c[0], "knn": c[1]} for q, c in t.items()} for fold, t in cuts.items()}}
    print(write_results(f"loso/ood-{args.study.name}", args.smoke, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
