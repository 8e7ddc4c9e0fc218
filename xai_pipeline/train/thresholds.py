"""Per-class "other" thresholds, set on figures the model never trained on.

``train`` sets one threshold ``t`` on the top softmax probability: the largest that keeps
``min_accept`` of the in-class figures of its held-out sources, pooled. Pooled, the large held-out
classes decide (Actualmed's chest X-rays, the Mexican fundus photographs), and the classes that a
new source makes least sure of pay: model 1.3.0's ``t = 0.8588`` kept 7 of its 12 held-out
histology tiles (argmax had 11 right) and 47 of 57 validation CT (argmax 54).

Here each class ``c`` gets its own threshold, for the figures whose top class is ``c``:

    t_c = min(t, Q_{1−a}({ max_k P_k(x) : x ∈ H_c, argmax_k P_k(x) = c }))

(rounded down to 4 decimals) with ``Q_q`` the lower ``q``-quantile, ``a`` = ``--min-accept`` and ``H_c`` the figures of class
``c`` from train's held-out sources; when those hold fewer than ``--min-figures`` that the argmax
gets right, ``H_c`` is the held-out sources and train's validation groups together (CT and MRI
have one real source each, so theirs are in-source numbers, optimistic for a new hospital; the
report says which basis each class used). A figure's modality is then ``c = argmax P`` when
``max P ≥ t_c`` (:attr:`xai_pipeline.model.net.ModelSpec.decision_thresholds`).

Without ``--floors`` ``t_c ≤ t``, so per-class thresholds only give back figures the pooled threshold dropped;
what they can cost is out-of-taxonomy figures whose top probability lies in ``[t_c, t)``, which
the report measures on the held-out figures labelled ``other`` (figure-type head included).

With ``--floors STUDY.json`` (a leave-source-out study, ``make loso-fit``'s ``loso-fit.json``)
each class's threshold is raised to the study's floor for it (:func:`study_floors`),

    t_c = max(min(t, Q_{1−a}(H_c)), F_c),

``F_c`` set on every source's figures as scored by a fold model that never saw that source (most
of them sources this model trained on): what a new hospital's figures look like to a model,
which train's one or two held-out sources per class cannot stand in for. It is the analogue of
the study's ``cross_fold_raised`` rule (:func:`cross_fold_thresholds` with ``raised``: there each
fold's own threshold is floored by the other folds' quantile), which in ``packaged-v4``'s study
called 96.7% of the medical images outside the taxonomy ``other`` against 59.7%.

    python -m xai_pipeline.train.thresholds --model IN.safetensors --data A.jsonl,B.jsonl \\
        --holdout-sources S1,S2 --out OUT.safetensors [--floors STUDY.json] [--version V] [--card MODEL_CARD.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from xai_pipeline.config import ConfigError
from xai_pipeline.model.labels import image_labels
from xai_pipeline.model.net import OTHER_LABEL, ModalityNet, load_model, save_model
from xai_pipeline.store.source import S3Settings
from xai_pipeline.train.dataset import load_images
from xai_pipeline.train.evaluate import head_probabilities
from xai_pipeline.train.fit import choose_threshold
from xai_pipeline.train.evaluate_run import held_out_examples
from xai_pipeline.train.split import read_training_examples
from xai_pipeline.train.thresholds_card import card_with_thresholds

log = logging.getLogger(__name__)

HELD_OUT_SOURCES = "held-out sources"
WITH_VALIDATION = "held-out sources + validation groups"
RAISED = ", raised to the study's floor"
"""Appended to a class's basis where its study floor is above the threshold its own figures set."""


@dataclass(frozen=True)
class ClassThreshold:
    """One class's threshold, the basis it was set on and the right figures it was set over."""

    threshold: float
    basis: str
    figures: int


def floor_quantile(confidence: np.ndarray, min_accept: float) -> float:
    """``Q_{1−a}`` of non-empty top probabilities (:func:`fit.choose_threshold`'s lower quantile),
    rounded down to 4 decimals: rounding up would drop the figure the quantile sits on."""
    return math.floor(choose_threshold(confidence, min_accept) * 1e4) / 1e4


def right_quantiles(p: np.ndarray, y: np.ndarray, rows: np.ndarray, fallback: float, min_accept: float, min_figures: int) -> np.ndarray:
    """Per class ``c``: :func:`floor_quantile` of the top probability over the *right* figures among
    ``rows`` (class ``c``, top class ``c``), or ``fallback`` where fewer than ``min_figures`` (at least one) are."""
    top, confidence = p.argmax(axis=1), p.max(axis=1)
    out = np.full(p.shape[1], fallback, dtype=np.float64)
    for c in range(p.shape[1]):
        right = rows & (y == c) & (top == c)
        if right.sum() >= max(min_figures, 1):
            out[c] = floor_quantile(confidence[right], min_accept)
    return out


def _capped(confidence: np.ndarray, pooled: float, min_accept: float) -> float:
    """``min(t, Q_{1−a})`` (:func:`floor_quantile`)."""
    return min(pooled, floor_quantile(confidence, min_accept))


def _raised(threshold: float, basis: str, floor: float | None) -> tuple[float, str]:
    """``max(threshold, F_c)``, the basis saying so where the floor binds."""
    return (floor, basis + RAISED) if floor is not None and floor > threshold else (threshold, basis)


def class_thresholds(probabilities: np.ndarray, y_true: np.ndarray, from_held_source: np.ndarray, class_names: tuple[str, ...],
                     pooled: float, min_accept: float, min_figures: int,
                     floors: Mapping[str, float] | None = None) -> dict[str, ClassThreshold]:
    """``t_c`` of each class (module docstring): ``probabilities`` n×C, ``y_true`` class indices,
    ``from_held_source`` True for figures of train's held-out sources, ``pooled`` = ``t``,
    ``floors`` the study's ``F_c`` (a class without one is not raised)."""
    if not 0.0 < min_accept <= 1.0:
        raise ValueError(f"min_accept must lie in (0, 1], got {min_accept}")
    top, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    result = {}
    for index, name in enumerate(class_names):
        right = (np.asarray(y_true) == index) & (top == index)
        basis, chosen = HELD_OUT_SOURCES, right & from_held_source
        if chosen.sum() < min_figures:
            basis, chosen = WITH_VALIDATION, right
        floor = (floors or {}).get(name)
        if not chosen.any():  # nothing to set it on: the pooled threshold stays
            result[name] = ClassThreshold(*_raised(pooled, "none (pooled threshold)", floor), 0)
            continue
        result[name] = ClassThreshold(*_raised(_capped(confidence[chosen], pooled, min_accept), basis, floor), int(chosen.sum()))
    return result


def study_floors(p: np.ndarray, y: np.ndarray, class_names: Collection[str], min_accept: float,
                 min_figures: int) -> dict[str, ClassThreshold]:
    r"""Each class's floor from a whole leave-source-out study, for a model trained on all its sources:

        F_c = Q_{1−a}({ max_j P_j(x) : x ∈ H, y(x) = c = argmax_j P_j(x) })

    ``H`` every fold's held figures, each scored by its own fold's model (``p`` n×C, ``y`` class
    indices, ≥ C for a figure of no class), so every source counts as a new hospital once. This is
    :func:`cross_fold_thresholds`' quantile with no fold left out: fold ``k``'s floor there leaves
    its own sources out because they score it. A model trained on the study's sources has no such
    figures left (its own held-out sources are in ``H`` too, so its held-out report is not an
    independent test of the floors). A class with fewer than ``min_figures`` right figures gets no floor."""
    if not 0.0 < min_accept <= 1.0:
        raise ValueError(f"min_accept must lie in (0, 1], got {min_accept}")
    q = right_quantiles(p, y, np.ones(len(y), dtype=bool), np.nan, min_accept, min_figures)
    right = np.bincount(y[(y < p.shape[1]) & (p.argmax(axis=1) == y)], minlength=p.shape[1])
    return {name: ClassThreshold(float(q[c]), "leave-source-out study", int(right[c]))
            for c, name in enumerate(class_names) if not np.isnan(q[c])}


def read_study_floors(path: Path, class_names: Collection[str], min_accept: float) -> dict[str, Any]:
    """The ``study_floors`` of a study's ``loso-fit.json`` (under ``pooled``, :func:`xai_pipeline.train.loso_score.score_folds`),
    checked: ``--floors`` fails fast, naming the file; the floors must have been set at ``min_accept`` too."""
    import hashlib

    try:
        raw = path.read_bytes()
        study = json.loads(raw)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--floors {path}: cannot read a study's loso-fit.json ({err})") from err
    pooled = study.get("pooled") if isinstance(study, dict) else None
    floors = pooled.get("study_floors") if isinstance(pooled, dict) else None
    if not isinstance(floors, dict) or not isinstance(floors.get("floors"), dict):
        raise ConfigError(f"--floors {path}: no study_floors in it (score the study again: make loso-fit reuses finished folds)")
    unknown = set(floors["floors"]) - set(class_names)
    if unknown:
        raise ConfigError(f"--floors {path}: floors for classes the model does not have: {', '.join(sorted(unknown))}")
    for name, floor in floors["floors"].items():
        value = floor.get("threshold") if isinstance(floor, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"--floors {path}: class {name}'s floor is not a threshold in [0, 1]: {floor!r}")
    if floors.get("min_accept") != min_accept:
        raise ConfigError(f"--floors {path}: its floors keep {floors.get('min_accept')} of the right figures, "
                          f"--min-accept is {min_accept}: give the same share")
    return {"study": path.name, "study_sha256": hashlib.sha256(raw).hexdigest(), **floors}


def cross_fold_thresholds(p: np.ndarray, y: np.ndarray, fold: np.ndarray, caps: np.ndarray, min_accept: float,
                          min_figures: int, raised: bool = False) -> np.ndarray:
    r"""Per-class thresholds for a leave-source-out study, each fold's set on the *other* folds' held
    sources, never on its own (fold ``k``'s model trained on those other sources; what makes them
    a new hospital's figures is that each was scored by its own fold's model, which never saw it):

        t_{k,c} = min(u_{k,c}, Q_{1−a}({ max_j P_j(x) : x ∈ H_{¬k}, y(x) = c = argmax_j P_j(x) }))

    ``p`` n×C: each held figure scored by its own fold's model; ``y`` its class index (≥ C for a
    figure of no class); ``fold`` its fold index; ``caps`` K×C, ``u_{k,c}``: fold ``k``'s own
    threshold for class ``c`` (a cap: these only loosen it; a floor with ``raised``); ``a`` = ``min_accept``; ``H_{¬k}`` the
    figures of folds other than ``k``. Where fewer than ``min_figures`` figures qualify, ``u_{k,c}``
    stays. The rule is :func:`class_thresholds`'s, with the other folds as the held-out sources;
    the models differ by fold, which a single model's thresholds would not.

    ``raised``: the other way round, ``u_{k,c}`` is a floor, never a cap,

        t_{k,c} = max(u_{k,c}, Q_{1−a}({ max_j P_j(x) : x ∈ H_{¬k}, y(x) = c = argmax_j P_j(x) })),

    so a class whose new hospitals' figures stay sure of it (fundus, chest X-ray) refuses the
    less sure figures of kinds the fold never saw that land on it (colonoscopy on fundus), while
    a class new hospitals make unsure of keeps the fold's own threshold."""
    if not 0.0 < min_accept <= 1.0:
        raise ValueError(f"min_accept must lie in (0, 1], got {min_accept}")
    thresholds = np.array(caps, dtype=float)
    for k in range(len(thresholds)):
        q = right_quantiles(p, y, fold != k, np.nan, min_accept, min_figures)
        found = ~np.isnan(q)
        thresholds[k, found] = (np.maximum if raised else np.minimum)(thresholds[k, found], q[found])
    return thresholds


def _kept(probabilities: np.ndarray, types: np.ndarray | None, y: np.ndarray, model: ModalityNet, thresholds: Any) -> list[bool]:
    """Per figure: given its own class (in-class figures) or a modality at all (``y == -1``)."""
    spec = model.spec
    modalities, _ = image_labels(probabilities, types, spec.class_names, spec.figure_types, thresholds)
    return [m != OTHER_LABEL if label < 0 else m == spec.class_names[label] for m, label in zip(modalities, y)]


def report_of(model: ModalityNet, chosen: dict[str, ClassThreshold], probabilities: np.ndarray, types: np.ndarray | None,
              y: np.ndarray, sources: list[str], held: Collection[str]) -> dict[str, Any]:
    """Per class and per held-out group: figures kept before (pooled ``t``) and after (``t_c``)."""
    pooled = model.spec.other_threshold
    per_class = tuple(chosen[c].threshold for c in model.spec.class_names)
    before, after = (np.array(_kept(probabilities, types, y, model, t)) for t in (pooled, per_class))
    groups: dict[str, dict[str, Any]] = {}
    for i, label in enumerate(y):
        name = OTHER_LABEL if label < 0 else model.spec.class_names[label]
        key = f"{name} ({'held-out source' if sources[i] in held else 'validation groups'})"
        group = groups.setdefault(key, {"figures": 0, "kept_pooled": 0, "kept_per_class": 0})
        group["figures"] += 1
        group["kept_pooled"] += int(before[i])
        group["kept_per_class"] += int(after[i])
    return {"pooled_threshold": pooled, "class_thresholds": {c: asdict(v) for c, v in chosen.items()},
            "groups": dict(sorted(groups.items())),
            "note": "kept: in-class figures given their own class; 'other' figures given a modality (lower is better)"}


def source_check(model: ModalityNet, probabilities: np.ndarray, types: np.ndarray | None, y: np.ndarray, sources: list[str],
                 held: Collection[str], min_accept: float, floors: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """An out-of-sample check of ``t_c``: for each class with two or more held-out sources, each
    of them scored with the class's threshold set (same rule, capped, raised to ``floors``) on the
    class's *other* held-out sources only."""
    spec, pooled = model.spec, float(model.spec.other_threshold or 0.0)
    top, confidence, src = probabilities.argmax(axis=1), probabilities.max(axis=1), np.array(sources)
    rows = []
    for c, name in enumerate(spec.class_names):
        class_sources = sorted({s for s, label in zip(sources, y) if label == c and s in held})
        for source in class_sources if len(class_sources) > 1 else []:
            others = (y == c) & (top == c) & np.isin(src, [s for s in class_sources if s != source])
            t = _raised(_capped(confidence[others], pooled, min_accept) if others.any() else pooled, "", (floors or {}).get(name))[0]
            figures = (y == c) & (src == source)
            thresholds = [pooled] * len(spec.class_names)
            thresholds[c] = t
            kept = [_kept(probabilities[figures], None if types is None else types[figures], y[figures], model, v) for v in (pooled, thresholds)]
            rows.append({"class": name, "source": source, "figures": int(figures.sum()), "threshold_from_others": t,
                         "kept_pooled": int(sum(kept[0])), "kept": int(sum(kept[1]))})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="model file with train's pooled threshold")
    parser.add_argument("--data", required=True, help="train's --data (comma-separated manifests)")
    parser.add_argument("--holdout-sources", required=True, help="train's --holdout-sources")
    parser.add_argument("--out", required=True, type=Path, help="model file to write (may be --model)")
    parser.add_argument("--split-seed", type=int, default=None, help="the seed train split the groups with (its --split-seed, else its --seed; default 0)")
    parser.add_argument("--min-accept", type=float, default=0.97, help="share of each class's right figures its threshold keeps")
    parser.add_argument("--min-figures", type=int, default=10, help="right figures of held-out sources a class needs to be set on them alone")
    parser.add_argument("--version", default=None, help="version of the written model (default: the input's)")
    parser.add_argument("--card", type=Path, default=None, help="MODEL_CARD.md to append the section to")
    parser.add_argument("--floors", type=Path, default=None,
                        help="a leave-source-out study's loso-fit.json: raise each class's threshold to its study_floors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = load_model(args.model)
    if model.spec.other_threshold is None:
        raise ConfigError(f"--model {args.model}: the model has no pooled 'other' threshold (train --threshold-on sets one)")
    study = None if args.floors is None else read_study_floors(args.floors, model.spec.class_names, args.min_accept)
    floors = None if study is None else {c: float(v["threshold"]) for c, v in study["floors"].items()}
    held = frozenset(s.strip() for s in args.holdout_sources.split(",") if s.strip())
    examples = held_out_examples(read_training_examples(args.data, S3Settings()), ",".join(sorted(held)), args.split_seed)
    names = model.spec.class_names
    y = np.array([names.index(e.label) if e.label in names else -1 for e in examples])
    probabilities, types = head_probabilities(model, load_images(examples, S3Settings()))
    sources = [e.source for e in examples]
    in_class = y >= 0
    chosen = class_thresholds(probabilities[in_class], y[in_class], np.array([s in held for s in sources])[in_class], names,
                              model.spec.other_threshold, args.min_accept, args.min_figures, floors)
    before = model.spec
    thresholds = {c: v.threshold for c, v in chosen.items()}
    if before.class_thresholds and before.class_thresholds != thresholds and (args.version or before.version) == before.version:
        # Tables match rows by model name and version: new labels under the old version would never be reindexed.
        raise ConfigError(f"--model {args.model} already has other per-class thresholds under version {before.version}: "
                          "give the changed model a new --version")
    model.spec = replace(before, class_thresholds=thresholds, version=args.version or before.version)
    after = save_model(model, args.out)
    report = report_of(model, chosen, probabilities, types, y, sources, held) | {
        "source_check": source_check(model, probabilities, types, y, sources, held, args.min_accept, floors),
        "model_version": after.version, "min_accept": args.min_accept, "min_figures": args.min_figures}
    if study is not None:
        report["study_floors"] = study
    (args.out.parent / "class_thresholds.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.card is not None:
        args.card.write_text(card_with_thresholds(args.card.read_text(), before, after, report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
