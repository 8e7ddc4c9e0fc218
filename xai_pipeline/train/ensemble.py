"""Assemble a seed ensemble from finished ``train`` runs, or from every fold of several
leave-source-out studies.

    python -m xai_pipeline.train.ensemble --members RUN,RUN[,...] --out DIR [--name N] [--version V]
    python -m xai_pipeline.train.ensemble --studies STUDY,STUDY[,...] --out DIR

A member is a ``train`` output folder (``model.safetensors`` and ``training_metrics.json``).
Members must come from one recipe: the same configuration but for ``--seed`` (and where the run
was written and how many threads it used), on the same split into training and validation groups
(``--split-seed``), so the validation groups and the held-out sources are unseen by every member.
The ensemble (:func:`xai_pipeline.model.ensemble.ensemble_of`: logits averaged, CRM exact) then
goes through the end of ``train`` (:func:`xai_pipeline.train.run.evaluate_and_save`): its "other"
threshold set as its members' were (their ``--threshold-on`` and ``--min-accept``), the
validation groups and held-out sources evaluated, and ``DIR`` written as a ``train`` run is
(model file, ``training_metrics.json`` with ``members`` and ``member_seeds``, plots,
``MODEL_CARD.md``), ready for ``figure_type`` and ``thresholds`` (which, like ``evaluate --held-out``,
take validation groups from train's default split, seed 0: ``make model MEMBERS=N`` trains its
members with ``--split-seed 0``).

With ``--studies`` (``--out`` folders of :mod:`xai_pipeline.train.loso_fit` with the same folds,
one per seed), each fold's runs are assembled into ``DIR/<fold>/`` and the ensembles are scored as
a study is (:func:`xai_pipeline.train.loso_score.score_folds`), in ``DIR/loso-fit.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from xai_pipeline.config import TrainConfig
from xai_pipeline.train.loso_fit import _WHERE_AND_HOW_FAST, recipe

log = logging.getLogger(__name__)

_MAY_DIFFER = ("seed", "name", "version") + _WHERE_AND_HOW_FAST
"""Training settings in which the members of one ensemble may differ."""


def member_problem(configs: list[dict[str, Any]]) -> str | None:
    """Why runs with these ``train`` configurations cannot be members of one ensemble, or None."""
    if len(configs) < 2:
        return f"an ensemble needs at least two members, got {len(configs)}"
    cfgs = [TrainConfig.from_report(config) for config in configs]
    first = recipe(cfgs[0], _MAY_DIFFER)
    for k, cfg in enumerate(cfgs[1:], start=1):
        changed = sorted(name for name, value in recipe(cfg, _MAY_DIFFER).items() if first[name] != value and name != "split_seed")
        if changed:
            return f"member {k} was trained with other {', '.join('--' + n.replace('_', '-') for n in changed)} than member 0"
        if cfg.group_split_seed != cfgs[0].group_split_seed:
            return (f"member {k} split the data with seed {cfg.group_split_seed}, member 0 with {cfgs[0].group_split_seed}: "
                    "train members with the same --split-seed, so no member trained on another's validation groups")
    seeds = [cfg.seed for cfg in cfgs]
    if len(set(seeds)) < len(seeds):
        return f"members share a --seed ({seeds}): they would be the same model"
    return None


def run_ensemble(members: list[Path], out: Path, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """Assemble the runs in ``members`` into one model, set its threshold, evaluate it and write
    ``out`` as a ``train`` run; returns its report."""
    from xai_pipeline.model.ensemble import ensemble_of
    from xai_pipeline.model.net import load_model
    from xai_pipeline.train.run import MODEL_FILE, evaluate_and_save
    from xai_pipeline.train.split import examples_and_split, split_counts

    started = time.perf_counter()
    reports = [json.loads((member / "training_metrics.json").read_text()) for member in members]
    problem = member_problem([report["config"] for report in reports])
    if problem:
        raise ValueError(f"--members {','.join(map(str, members))}: {problem}")
    cfg = TrainConfig.from_report(reports[0]["config"])
    cfg = replace(cfg, out=str(out), split_seed=cfg.group_split_seed)
    examples, class_names, parts = examples_and_split(cfg)
    if any(report["split"] != split_counts(examples, parts) for report in reports):
        raise ValueError(f"--members: --data {cfg.data} no longer splits as the members' runs recorded (a manifest changed)")
    model = ensemble_of([load_model(member / MODEL_FILE) for member in members], name, version)
    if class_names != model.spec.class_names:
        raise ValueError(f"--members: the classes of --data {class_names} are not the members' {model.spec.class_names}")
    report: dict[str, Any] = {"config": asdict(cfg), "class_names": list(class_names),
                              "fit_seconds": round(sum(r["fit_seconds"] for r in reports), 1), "steps": sum(r["steps"] for r in reports),
                              "losses": [], "member_runs": [str(m) for m in members], "member_seeds": [r["config"]["seed"] for r in reports],
                              "machine": f"{platform.machine()} {platform.processor()} {torch.get_num_threads()} torch threads"}
    log.info("ensemble of %s -> %s", ", ".join(map(str, members)), out)
    return evaluate_and_save(cfg, model, examples, parts, report, started)


def ensemble_studies(studies: list[Path], out: Path) -> dict[str, Any]:
    """Every fold of the leave-source-out ``studies`` (same folds) assembled across them into
    ``out/<fold>/`` and scored as one study; returns (and writes) ``out/loso-fit.json``."""
    from xai_pipeline.train.loso_card import pooled_table, table
    from xai_pipeline.train.loso_fit import fold_summary
    from xai_pipeline.train.loso_folds import fold_dir, fold_report
    from xai_pipeline.train.loso_score import score_folds

    reports = [json.loads((study / "loso-fit.json").read_text()) for study in studies]
    folds = [fold["source"] for fold in reports[0]["folds"]]
    for study, report in zip(studies[1:], reports[1:]):
        if [fold["source"] for fold in report["folds"]] != folds:
            raise ValueError(f"--studies: {study} holds other folds than {studies[0]}")
    for study in studies:  # every member folder holds its fold out, checked before any ensemble is built
        for fold in folds:
            fold_report(study, fold)
    crossed = reports[0].get("pooled", {}).get("cross_fold", {})  # the studies' own cross-fold settings
    out.mkdir(parents=True, exist_ok=True)
    summaries = [fold_summary(fold, run_ensemble([fold_dir(study, fold) for study in studies], fold_dir(out, fold))) for fold in folds]
    print(table(summaries))
    base = TrainConfig(data=reports[0]["config"]["data"], out=str(out))
    result = {"config": reports[0]["config"] | {"studies": [str(s) for s in studies], "seed": [r["config"].get("seed") for r in reports]},
              "folds": summaries,
              "pooled": score_folds(base, folds, out, crossed.get("min_accept", 0.97), crossed.get("min_figures", 10))}
    (out / "loso-fit.json").write_text(json.dumps(result, indent=2) + "\n")
    print(pooled_table(result["pooled"]))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--members", help="train output folders, comma-separated (one per seed)")
    which.add_argument("--studies", help="loso_fit --out folders with the same folds, comma-separated (one per seed)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the ensemble run (or study)")
    parser.add_argument("--name", help="model name (default: member 0's)")
    parser.add_argument("--version", help="model version (default: member 0's)")
    parser.add_argument("--torch-threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.torch_threads)
    paths = [Path(p.strip()) for p in (args.members or args.studies).split(",") if p.strip()]
    flag = "--members" if args.members else "--studies"
    missing = [str(p) for p in paths if not (p / ("training_metrics.json" if args.members else "loso-fit.json")).is_file()]
    if missing:
        print(f"error: {flag}: not a finished {'train run' if args.members else 'loso_fit study'}: {', '.join(missing)}")
        return 2
    try:
        if args.members:
            report = run_ensemble(paths, args.out, args.name, args.version)
            print(f"wrote {args.out}: threshold {report['model_spec']['other_threshold']}")
        else:
            ensemble_studies(paths, args.out)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
