"""Fine-tuned leave-source-out: the shipped recipe trained once per fold of held-out sources.

    python -m xai_pipeline.train.loso_fit --data A,B,C --hold SOURCE[,SOURCE...] [--hold ...] --out DIR \
        [--source-balance F] [--sector-probability P] [--mr-contrast-probability P] \
        [--simulated-ultrasound-probability P] [--simulated-mr-probability P] [--epochs N] \
        [--architecture NAME] [--ray --use-gpu --num-workers N]

Where :mod:`xai_pipeline.train.loso` probes frozen ImageNet features, this fits the whole
``train`` recipe (fine-tuned backbone, outlier exposure, augmentation) on every figure whose
``source_repo`` is not held by the fold, sets the "other" threshold on that run's validation
groups (the training sources: what a deployed model knows), and scores the held sources'
figures, which the fold never saw. A ``--hold`` value is one fold: one source, or several
(comma-separated) held out together, which costs one training run instead of several and is
stricter than leaving one out (the fold trains on less). One fold is one ``train`` run in
``DIR/<first source>[_and_<k>_more]/`` (its model, metrics and card stay there); a fold whose
folder already holds a finished run with the same configuration and split is not trained again,
so an interrupted study resumes (``--retrain`` after changing the training code). ``--ray`` runs
each fold on Ray Train (8–11 minutes a fold on 2 CPU cores here).

``DIR/loso-fit.json`` collects per fold the held sources' classes, recall with the threshold and
by argmax, the share of its ``other`` figures rejected and the threshold, and ``pooled``: every
held figure scored by its fold's model (:func:`xai_pipeline.train.loso_score.score_folds`), summed
over folds into the leave-source-out confusion, per-class F1 and macro-F1
(:func:`xai_pipeline.train.loso.summarize`), with the fold's threshold, with cross-fold thresholds
as caps and as floors on it, and by argmax. A fold's
``train`` run has no figure-type head (``figure_type`` is a later step of ``make model``), so
there charts and diagrams are rejected by the modality threshold alone; ``--type-heads`` fits each
fold that head too and adds ``pooled.with_types``, the study scored as the job labels figures.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from xai_pipeline.config import ConfigError, TrainConfig
from xai_pipeline.flags import flag_name
from xai_pipeline.store.source import S3Settings
from xai_pipeline.train import loso_score
from xai_pipeline.train.loso_card import AUGMENT_FLAGS, pooled_table, table
from xai_pipeline.train.loso_folds import fold_dir, fold_sources

log = logging.getLogger(__name__)


def fold_summary(fold: str, report: dict[str, Any]) -> dict[str, Any]:
    """What a fold's training report says about its held-out sources (``source``: the fold as given)."""
    held = report.get("source_holdout")
    summary: dict[str, Any] = {"source": fold, "threshold": report["model_spec"].get("other_threshold"),
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


_WHERE_AND_HOW_FAST = ("out", "torch_threads", "endpoint_url", "region", "ray_address")
"""Training settings that do not make a fold another fold."""


def recipe(cfg: TrainConfig, may_differ: tuple[str, ...] = _WHERE_AND_HOW_FAST) -> dict[str, Any]:
    """What makes a run the run it is: ``cfg``'s fields but ``may_differ``, with ``split_seed`` the
    seed the split used (so ``--split-seed`` equal to ``--seed`` and no ``--split-seed`` agree)."""
    kept = replace(cfg, split_seed=cfg.group_split_seed)
    return {f.name: getattr(kept, f.name) for f in fields(TrainConfig) if f.name not in may_differ}


def _finished(cfg: TrainConfig, split: dict[str, dict[str, int]]) -> dict[str, Any] | None:
    """The training report in ``cfg.out`` if that run finished with this configuration, up to
    :data:`_WHERE_AND_HOW_FAST` (its folder may have moved since), and split the data as ``split``
    (per part, the figures of each label: a manifest that changed since shows there). A change of
    the training code itself is not seen: ``--retrain``."""
    from xai_pipeline.train.run import MODEL_FILE

    path = Path(cfg.out) / "training_metrics.json"
    if not (path.is_file() and (Path(cfg.out) / MODEL_FILE).is_file()):
        return None
    report = json.loads(path.read_text())
    try:
        before = TrainConfig.from_report(report.get("config", {}))
    except ConfigError:  # a recipe today's rules refuse is not this one
        return None
    same = recipe(before) == recipe(cfg) and report.get("split") == split
    return report if same else None


def _split_counts(cfg: TrainConfig) -> dict[str, dict[str, int]]:
    """Figures per label in the training, validation and source hold-out parts of ``cfg``'s split
    (as the training report records them)."""
    from xai_pipeline.train.split import examples_and_split, split_counts

    examples, _, parts = examples_and_split(cfg)
    return split_counts(examples, parts)


def run_folds(base: TrainConfig, folds: list[str], out: Path, retrain: bool = False, train: bool = True) -> list[dict[str, Any]]:
    """One ``train`` run per fold in ``folds`` (each a comma-separated list of sources), each
    holding those sources out; a fold already finished with the same configuration and split is
    reused unless ``retrain``. With ``train`` False, a fold not finished so is a ``ValueError``."""
    from xai_pipeline.train.run import run_training

    summaries, trained = [], False
    for fold in folds:
        cfg = replace(base, out=str(fold_dir(out, fold)), holdout_sources=",".join(fold_sources(fold)), threshold_on="validation")
        report = None if retrain else _finished(cfg, _split_counts(cfg))
        if report is None and not train:
            raise ValueError(f"fold {fold!r} is not finished with this recipe and data in {cfg.out}")
        log.info("fold %s -> %s%s", fold, cfg.out, " (finished before: reused)" if report else "")
        summaries.append(fold_summary(fold, report or run_training(cfg)))
        trained = trained or report is None
        if trained:  # progress, for a study stopped midway (a study whose folds were all reused keeps its file whole)
            (out / "loso-fit.json").write_text(json.dumps({"config": _study_config(base), "folds": summaries}, indent=2) + "\n")
    return summaries


def _study_config(base: TrainConfig) -> dict[str, Any]:
    recorded = {"data": base.data, "epochs": base.epochs, "source_balance": base.source_balance, "architecture": base.architecture,
                "seed": base.seed, "split_seed": base.group_split_seed}
    return recorded | {name: getattr(base, name) for name in AUGMENT_FLAGS if getattr(base, name)}


def fold_problem(folds: list[str], base: TrainConfig) -> str | None:
    """Why ``folds`` cannot be a study of ``base.data``: an empty fold, a source held more than once
    (each source is scored by one fold's model), a source ``--data`` does not have, or two folds
    that would share a folder; None when they can."""
    from xai_pipeline.train.split import read_training_examples

    if any(not fold_sources(fold) for fold in folds):
        return "a fold names no source"
    held = [source for fold in folds for source in fold_sources(fold)]
    twice = sorted({source for source in held if held.count(source) > 1})
    if twice:
        return f"{', '.join(twice)} held more than once (each source is scored by one fold's model)"
    known = {e.source for e in read_training_examples(base.data, S3Settings(base.endpoint_url, base.region))}
    unknown = sorted(set(held) - known)
    if unknown:
        return f"{', '.join(unknown)}: no figure of --data has that source_repo"
    dirs = [fold_dir(Path("."), fold) for fold in folds]
    shared = sorted({str(d) for d in dirs if dirs.count(d) > 1})
    return f"folds would share the folder {', '.join(shared)}" if shared else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="manifests, comma-separated (as train --data)")
    parser.add_argument("--hold", action="append", required=True, help="a fold: a source_repo, or several comma-separated, held out together (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the folds and loso-fit.json")
    parser.add_argument("--source-balance", type=float, default=0.0)
    train_fields = {f.name: f for f in fields(TrainConfig)}
    for name in AUGMENT_FLAGS:  # train's own flags, with its defaults and help
        parser.add_argument(flag_name(name), type=float, default=train_fields[name].default, metavar="P",
                            help=f"train's flag: {train_fields[name].metadata['help']}")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--architecture", default=TrainConfig.architecture,
                        help="train's backbone (efficientnet_lite1/2 need the lite12 extra)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=None, help="seed of each fold's split into training and validation groups (train's flag; default: --seed)")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--min-accept", type=float, default=0.97, help="share of each class's right figures a cross-fold threshold keeps (thresholds' flag)")
    parser.add_argument("--min-figures", type=int, default=10, help="right figures of other folds a cross-fold threshold needs (else the fold's own stays)")
    parser.add_argument("--score-data", default=None, help="score the folds on these manifests' figures of the held sources instead of --data's "
                        "(e.g. an earlier data set's, to compare two studies on the same figures): every fold must be finished; written to "
                        "loso-fit-scored.json (replaced), whose folds still describe --data")
    parser.add_argument("--type-heads", default=None, metavar="MANIFEST", help="also fit each fold the figure-type head make model fits "
                        "(scans of --data, the non-scan figures of this manifest: other-v1's; none of the fold's held sources) and score "
                        "the study as the job labels figures too (pooled.with_types)")
    parser.add_argument("--type-head-per-scan-class", type=int, default=None, metavar="N",
                        help="with --type-heads: figure_type's --per-scan-class for the folds' heads (default: figure_type's; 0: every scan)")
    parser.add_argument("--retrain", action="store_true", help="train every fold again, even one already finished with the same recipe (and refit its figure-type head)")
    parser.add_argument("--ray", action="store_true")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--num-workers", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        base = TrainConfig(data=args.data, out=str(args.out), source_balance=args.source_balance,
                           **{name: getattr(args, name) for name in AUGMENT_FLAGS},
                           epochs=args.epochs, architecture=args.architecture, seed=args.seed, split_seed=args.split_seed,
                           torch_threads=args.torch_threads, ray=args.ray, use_gpu=args.use_gpu, num_workers=args.num_workers)
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    if not 0.0 < args.min_accept <= 1.0:
        print(f"error: --min-accept must lie in (0, 1], got {args.min_accept}")
        return 2
    problem = fold_problem(args.hold, base)
    if problem:
        print(f"error: --hold: {problem}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        folds = run_folds(base, args.hold, args.out, args.retrain, train=args.score_data is None)
    except ValueError as exc:  # --score-data scores finished folds; it never trains
        print(f"error: --score-data: {exc}")
        return 2
    print(table(folds))
    try:
        if args.type_heads:
            loso_score.fit_fold_type_heads(base, args.hold, args.out, args.type_heads, args.type_head_per_scan_class, refit=args.retrain)
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    pooled = loso_score.score_folds(replace(base, data=args.score_data or base.data), args.hold, args.out, args.min_accept,
                                    args.min_figures, typed=bool(args.type_heads))
    scored_on = {"score_data": args.score_data} if args.score_data else {}
    heads = {"type_head_per_scan_class": args.type_head_per_scan_class} if args.type_heads and args.type_head_per_scan_class is not None else {}
    (args.out / ("loso-fit-scored.json" if scored_on else "loso-fit.json")).write_text(
        json.dumps({"config": _study_config(base) | heads | scored_on, "folds": folds, "pooled": pooled}, indent=2) + "\n")
    print(pooled_table(pooled))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
