"""Fine-tuned leave-one-source-out: the shipped recipe trained once per held-out source.

    python -m xai_pipeline.train.loso_fit --data A,B,C --hold SOURCE [--hold SOURCE ...] --out DIR \
        [--source-balance F] [--epochs N] [--ray --use-gpu --num-workers N]

Where :mod:`xai_pipeline.train.loso` probes frozen ImageNet features, this fits the whole
``train`` recipe (fine-tuned backbone, outlier exposure, augmentation) on every figure whose
``source_repo`` is not the held source, sets the "other" threshold on that run's validation
groups (the training sources: what a deployed model knows), and scores the held source's
figures, which the fold never saw. One fold is one ``train`` run in ``DIR/<source>/`` (its model,
metrics and card stay there); ``--ray`` runs each fold on Ray Train, which is how every source of
the collection is meant to be folded (a fold costs one training run: about 10 minutes on 2 CPU
cores). ``DIR/loso-fit.json`` collects per fold: the held source's classes, recall of each class
with the threshold and by argmax, the share of its ``other`` figures rejected, and the threshold.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from xai_pipeline.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)


def fold_dir(out: Path, source: str) -> Path:
    """``out/<source>`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return out / re.sub(r"[^A-Za-z0-9._-]", "_", source)


def fold_summary(source: str, report: dict[str, Any]) -> dict[str, Any]:
    """What a fold's training report says about its held-out source."""
    held = report.get("source_holdout")
    summary: dict[str, Any] = {"source": source, "threshold": report["model_spec"].get("other_threshold"),
                               "fit_seconds": report["fit_seconds"], "held_out": report["split"]["source_holdout"]}
    if held:
        present = {name: m for name, m in held["per_class"].items() if m["support"]}
        summary["recall"] = {name: round(m["recall"], 4) for name, m in present.items()}
        summary["closed_set_accuracy"] = round(held["closed_set_accuracy"], 4)
        summary["accuracy"] = round(held["accuracy"], 4)
        summary["confusion"] = {name: row for name, row in zip(held["class_names"], held["confusion"]) if sum(row)}
        summary["predicted_names"] = held["predicted_names"]
    rejected = report.get("source_holdout_other_rejected")
    if rejected:
        summary["other_rejected"] = round(rejected["rejected"], 4)
    return summary


def run_folds(base: TrainConfig, sources: list[str], out: Path) -> list[dict[str, Any]]:
    """One ``train`` run per source in ``sources``, each holding that source out."""
    from xai_pipeline.train.run import run_training

    folds = []
    for source in sources:
        cfg = replace(base, out=str(fold_dir(out, source)), holdout_sources=source, threshold_on="validation")
        log.info("fold %s -> %s", source, cfg.out)
        folds.append(fold_summary(source, run_training(cfg)))
        (out / "loso-fit.json").write_text(json.dumps({"config": {"data": base.data, "epochs": base.epochs,
                                                                  "source_balance": base.source_balance,
                                                                  "architecture": base.architecture}, "folds": folds}, indent=2) + "\n")
    return folds


def table(folds: list[dict[str, Any]]) -> str:
    """One line per fold and class: recall with the threshold and by argmax (closed set)."""
    lines = [f"{'held-out source':<48}{'class':<12}{'n':>5}{'recall':>8}{'argmax acc':>11}{'t':>7}"]
    for fold in folds:
        for name, recall in fold.get("recall", {}).items():
            n = fold["held_out"].get(name, 0)
            lines.append(f"{fold['source'][:47]:<48}{name:<12}{n:>5}{recall:>8.3f}{fold['closed_set_accuracy']:>11.3f}{fold['threshold']:>7.3f}")
        if "other_rejected" in fold:
            lines.append(f"{fold['source'][:47]:<48}{'other':<12}{fold['held_out'].get('other', 0):>5}{fold['other_rejected']:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="manifests, comma-separated (as train --data)")
    parser.add_argument("--hold", action="append", required=True, help="a source_repo to hold out in its own fold (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the folds and loso-fit.json")
    parser.add_argument("--source-balance", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--ray", action="store_true")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--num-workers", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        base = TrainConfig(data=args.data, out=str(args.out), source_balance=args.source_balance, epochs=args.epochs, seed=args.seed,
                           torch_threads=args.torch_threads, ray=args.ray, use_gpu=args.use_gpu, num_workers=args.num_workers)
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    folds = run_folds(base, args.hold, args.out)
    print(table(folds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
