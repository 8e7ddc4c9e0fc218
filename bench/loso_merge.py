r"""One leave-source-out study from several partial ones: folds trained in separate runs of
``loso_fit`` (other machines, other sessions, or a study that had to be stopped) pooled into the
study they make together.

    python -m bench.loso_merge --studies A.json,B.json[,...] --label NAME [--against STUDY.json]

Each study is a ``loso-fit.json``. They must share the recipe (the whole ``config``: data,
epochs, architecture, source balance, seeds and any non-default setting ``loso_fit`` records) and
hold disjoint sources, and together they should hold every source the recipe reads (those none of
them holds are listed, ``unscored_sources``). The manifests must still hold what each study
scored: its held figures by role are counted in them and checked against its confusion.
What pools exactly without the folds' models: the confusion matrices, summed, of every decision
that a study records one for (the folds' own thresholds ``with_threshold``, ``argmax``, and the
same with the figure-type heads), and so per-class precision, recall and F1 and the macro-F1 over
the six modalities,

.. math::

    P_c = \frac{C_{cc}}{\sum_k C_{kc}}, \quad R_c = \frac{C_{cc}}{\sum_k C_{ck}}, \quad
    F_c = \frac{2 P_c R_c}{P_c + R_c}, \quad \text{macro-F1} = \frac{1}{|M|}\sum_{c \in M} F_c

(``M``: the modalities with a held figure; scikit-learn computes them, ``zero_division=0``); the
shares of out-of-taxonomy medical images and of other figures called ``other``, each study's share
weighted by its count of such figures (counted in the recipe's manifests); and each source's
accuracy (its fold's threshold, argmax, with the type head). What does not pool: decisions set
across folds (``cross_fold``, ``cross_fold_raised``, ``study_floors``) and the single threshold
chosen on all figures (``frontier``), which need every fold's scores; run ``loso_fit`` over all
folds with their models for those. Writes
``bench/results/loso-merge-<label>.json``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import bench_parser, print_table, write_results
from xai_pipeline.train.loso_folds import fold_sources

if TYPE_CHECKING:
    from xai_pipeline.train.sources import SourcedExample

log = logging.getLogger(__name__)

PER_SOURCE_KEYS = ("n", "labels", "accuracy", "closed_set_accuracy", "typed_accuracy")  # not the cross-fold ones: set on part of the folds
DECISIONS = (("with_threshold",), ("argmax",), ("with_types", "with_threshold"), ("with_types", "argmax"))
ROLES = ("in_class", "other_medical", "other_figure")


def _decision(pooled: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    for key in path:
        pooled = pooled.get(key) if isinstance(pooled, dict) else None
    return pooled


def check_studies(studies: dict[str, dict[str, Any]]) -> list[str]:
    """The held sources of all studies, in fold order; ``ValueError`` naming the file where two
    studies differ in recipe (any ``config`` key) or both hold a source."""
    (first_path, first), *rest = studies.items()
    for path, study in rest:
        for key in sorted(set(study["config"]) | set(first["config"])):
            if study["config"].get(key) != first["config"].get(key):
                raise ValueError(f"{path}: config {key}={study['config'].get(key)!r} differs from {first_path}'s {first['config'].get(key)!r}")
    held: dict[str, str] = {}
    for path, study in studies.items():
        for fold in study["folds"]:
            for source in fold_sources(fold["source"]):
                if source in held:
                    raise ValueError(f"{path}: source {source} is held by {held[source]} too")
                held[source] = path
    return list(held)


def confusion_metrics(confusion: np.ndarray, labels: list[str], modalities: int, testable: Collection[str] | None = None) -> dict[str, Any]:
    """Per-class precision, recall and F1, the macro-F1 over the first ``modalities`` labels that
    have a held figure (and over those of them in ``testable``: every fold that held one trained on
    its class), from a confusion matrix (rows true, columns predicted): scikit-learn's on the
    matrix's cells as weighted (true, predicted) pairs, as ``loso.summarize`` computes them."""
    from sklearn.metrics import precision_recall_fscore_support

    true, predicted = np.indices(confusion.shape).reshape(2, -1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        true, predicted, labels=list(range(len(labels))), sample_weight=confusion.ravel(), zero_division=0.0)
    support = confusion.sum(axis=1)  # scikit-learn's support is the weighted count, as float
    present = [k for k in range(modalities) if support[k]]
    kept = [k for k in present if testable is None or labels[k] in testable]
    in_class, other = confusion[:modalities], labels.index("other")
    n = in_class.sum()
    return {"per_class": {label: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]), "support": int(support[k])}
                          for k, label in enumerate(labels)},
            "macro_f1": float(f1[present].mean()),
            "macro_f1_testable": float(f1[kept].mean()) if kept else float("nan"),
            "testable_classes": [labels[k] for k in kept],
            "in_class_accuracy": float(np.trace(in_class[:, :modalities]) / n) if n else float("nan"),
            "in_class_kept": float(1 - in_class[:, other].sum() / n) if n else float("nan"),
            "confusion": confusion.tolist()}


def weighted_share(shares: list[float], counts: list[int]) -> float:
    """Σ share·n / Σ n over the studies that have such figures (NaN where none has)."""
    pairs = [(s, n) for s, n in zip(shares, counts) if n and not math.isnan(s)]
    return sum(s * n for s, n in pairs) / sum(n for _, n in pairs) if pairs else float("nan")


def check_counts(path: str, study: dict[str, Any], counts: dict[str, int], labels: list[str], modalities: int) -> None:
    """``ValueError`` naming ``path`` unless its held figures by role (``counts``, from today's
    manifests) are the ones its confusion matrices hold: the weights of its shares."""
    for keys in DECISIONS:
        decision = _decision(study["pooled"], keys)
        if decision is None:
            continue
        confusion = np.array(decision["confusion"])
        got = (int(confusion[:modalities].sum()), int(confusion[labels.index("other")].sum()))
        if got != (counts["in_class"], counts["other_medical"] + counts["other_figure"]):
            raise ValueError(f"{path}: {'.'.join(keys)} scored {got[0]} in-class and {got[1]} other figures, the manifests hold "
                             f"{counts['in_class']} and {counts['other_medical'] + counts['other_figure']} of its sources: "
                             "they differ from what it was scored on")


def merge(studies: dict[str, dict[str, Any]], role_counts: dict[str, dict[str, int]], labels: list[str], modalities: int,
          sources: Collection[str] = ()) -> dict[str, Any]:
    """The pooled decisions of ``studies`` (path → loso-fit.json); ``role_counts``: per study, its
    held figures by role (:data:`ROLES`) and by out-of-taxonomy kind (``kind:<kind>``, :func:`count_roles`);
    ``sources``: every source the recipe reads (those no study holds are ``unscored_sources``)."""
    held = check_studies(studies)
    for path, study in studies.items():
        check_counts(path, study, role_counts[path], labels, modalities)
    pooled: dict[str, Any] = {}
    for path_keys in DECISIONS:
        found = [_decision(s["pooled"], path_keys) for s in studies.values()]
        if any(d is None for d in found):
            log.info("%s not pooled: not every study was scored so", ".".join(path_keys))
            continue
        confusions = [np.array(d["confusion"], dtype=np.int64) for d in found]
        testable = {labels[k] for k in range(modalities)
                    if all(labels[k] in d["testable_classes"] for d, c in zip(found, confusions) if c[k].sum())}
        result = confusion_metrics(sum(confusions), labels, modalities, testable)
        for role in ("other_medical", "other_figure"):
            result[f"{role}_called_other"] = weighted_share([d[f"{role}_called_other"] for d in found], [role_counts[p][role] for p in studies])
        kinds = sorted({k for d in found for k in d.get("other_medical_by_kind", {})})
        result["other_medical_by_kind"] = {k: weighted_share([d.get("other_medical_by_kind", {}).get(k, float("nan")) for d in found],
                                                             [role_counts[p].get(f"kind:{k}", 0) for p in studies]) for k in kinds}
        target = pooled
        for key in path_keys[:-1]:
            target = target.setdefault(key, {})
        target[path_keys[-1]] = result
    pooled["figures"] = sum(s["pooled"]["figures"] for s in studies.values())
    pooled["held_sources"] = len(held)
    pooled["unscored_sources"] = sorted(set(sources) - set(held))
    keep = [k for k in PER_SOURCE_KEYS if k != "typed_accuracy" or "with_types" in pooled]
    pooled["per_source"] = {name: {key: value for key, value in row.items() if key in keep}  # a source is one fold's
                            for s in studies.values() for name, row in s["pooled"].get("per_source", {}).items()}
    folds = [fold | {"study": path} for path, s in studies.items() for fold in s["folds"]]
    return {"config": next(iter(studies.values()))["config"], "studies": list(studies), "folds": folds, "pooled": pooled}


def count_roles(study: dict[str, Any], examples: list[SourcedExample]) -> dict[str, int]:
    """The study's held figures among ``examples`` by role (:data:`ROLES`) and by out-of-taxonomy
    kind (``kind:<kind>``: as ``summarize``'s ``other_medical_by_kind``, over every role's figures of it)."""
    from xai_pipeline.train.sources import Role

    held = {source for fold in study["folds"] for source in fold_sources(fold["source"])}
    kinds = {e.kind for e in examples if e.role is Role.OTHER_MEDICAL}
    counts: dict[str, int] = dict.fromkeys(ROLES, 0)
    for example in (e for e in examples if e.source in held):
        counts[example.role.value] += 1
        if example.kind in kinds:
            counts[f"kind:{example.kind}"] = counts.get(f"kind:{example.kind}", 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--studies", required=True, help="comma-separated loso-fit.json files with disjoint folds")
    parser.add_argument("--label", required=True, help="names the result file: loso-merge-<label>.json")
    parser.add_argument("--against", help="a whole study (loso-fit.json) to print beside the merged one")
    args = parser.parse_args(argv)
    from xai_pipeline.train.sources import LABELS, MODALITIES, read_all_sources
    from xai_pipeline.train.split import data_parts

    paths = [p.strip() for p in args.studies.split(",") if p.strip()]
    if len(paths) < 2 or len(set(paths)) < len(paths):
        parser.error("--studies needs two or more different files")
    try:
        studies = {p: json.loads(Path(p).read_text()) for p in paths}
        check_studies(studies)  # one recipe, so one set of manifests: read once (those it was scored on)
        config = next(iter(studies.values()))["config"]
        examples = read_all_sources(data_parts(config.get("score_data") or config["data"]))
        result = merge(studies, {p: count_roles(s, examples) for p, s in studies.items()}, list(LABELS), len(MODALITIES),
                       {e.source for e in examples})
        against = json.loads(Path(args.against).read_text())["pooled"] if args.against else None
    except (OSError, ValueError, KeyError) as exc:
        parser.error(str(exc))
    if against is not None:
        result["against"] = args.against
    rows = []
    for key in ("with_threshold", "argmax"):
        mine = result["pooled"][key]
        for label in LABELS[:len(MODALITIES)]:
            rows.append([key, label, mine["per_class"][label]["f1"]] + ([against[key]["per_class"][label]["f1"]] if against else []))
        for metric in ("macro_f1", "other_medical_called_other", "other_figure_called_other", "in_class_kept"):
            rows.append([key, metric, mine[metric]] + ([against[key][metric]] if against else []))
    print_table(["decision", "metric", args.label] + ([Path(args.against).stem] if against else []), rows)
    write_results(f"loso-merge-{args.label}", args.smoke, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
