"""bench.loso_merge: partial leave-source-out studies pooled into one, exactly where a confusion pools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score

from bench.loso_merge import check_studies, confusion_metrics, count_roles, merge, weighted_share

LABELS = ["a", "b", "c", "other"]
STUDIES = sorted((Path(__file__).parents[2] / "bench" / "results" / "loso").glob("loso-fit*.json"))


def _study(source: str, y: np.ndarray, predicted: np.ndarray, medical_share: float, architecture: str = "lite0", **config: object) -> dict:
    decision = {"confusion": confusion_matrix(y, predicted, labels=range(4)).tolist(), "other_medical_called_other": medical_share,
                "other_figure_called_other": 1.0, "other_medical_by_kind": {"oct": medical_share}, "testable_classes": ["a", "b", "c"]}
    return {"config": {"data": "d", "epochs": 12, "architecture": architecture, "source_balance": 0.0, "seed": 0, "split_seed": 0, **config},
            "folds": [{"source": source, "threshold": 0.5}], "pooled": {"figures": len(y), "with_threshold": decision, "argmax": dict(decision)}}


def _counts(y: np.ndarray, medical: int) -> dict[str, int]:
    """Role counts that match a study of labels ``y``: ``medical`` of its 'other' figures out-of-taxonomy scans."""
    return {"in_class": int((y < 3).sum()), "other_medical": medical, "other_figure": int((y == 3).sum()) - medical, "kind:oct": medical}


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.stem)
def test_the_metrics_of_a_confusion_are_the_studys_own(study: Path) -> None:
    """Every committed study's per-class F1, macro-F1 (over the classes it held figures of, and the
    testable ones) and in-class shares (scikit-learn on its figures) from its confusion alone."""
    pooled = json.loads(study.read_text())["pooled"]
    labels = list(pooled["with_threshold"]["per_class"])
    for key in ("with_threshold", "argmax", "cross_fold"):
        if key not in pooled:
            continue
        got = confusion_metrics(np.array(pooled[key]["confusion"]), labels, len(labels) - 1, pooled[key]["testable_classes"])
        for metric in ("macro_f1", "macro_f1_testable", "in_class_kept", "in_class_accuracy"):
            assert got[metric] == pytest.approx(pooled[key][metric], abs=1e-12), metric
        assert got["testable_classes"] == pooled[key]["testable_classes"]
        for label in labels:
            assert got["per_class"][label] == pytest.approx(pooled[key]["per_class"][label], abs=1e-12)


def test_two_studies_pool_into_the_metrics_of_their_figures_together() -> None:
    rng = np.random.default_rng(0)
    y1, y2 = np.repeat([0, 1, 2, 3], 15), np.repeat([0, 1, 3], [20, 10, 10])  # the second study holds no class-c figures
    p1, p2 = np.where(rng.random(60) < 0.7, y1, rng.integers(0, 4, 60)), np.where(rng.random(40) < 0.6, y2, 3)
    studies = {"s1.json": _study("x,y", y1, p1, 0.5), "s2.json": _study("z", y2, p2, 0.9)}
    studies["s1.json"]["pooled"]["per_source"] = {"x": {"n": 50, "accuracy": 0.5, "cross_fold_accuracy": 0.1, "typed_accuracy": 0.4}}
    studies["s2.json"]["pooled"]["per_source"] = {"z": {"n": 40, "accuracy": 0.9}}
    merged = merge(studies, {"s1.json": _counts(y1, 10), "s2.json": _counts(y2, 6)}, LABELS, 3, {"x", "y", "z", "w"})
    y, p = np.concatenate([y1, y2]), np.concatenate([p1, p2])
    got = merged["pooled"]["with_threshold"]
    assert got["confusion"] == confusion_matrix(y, p, labels=range(4)).tolist()
    assert got["macro_f1"] == pytest.approx(f1_score(y, p, labels=[0, 1, 2], average="macro", zero_division=0.0))
    assert got["in_class_kept"] == pytest.approx(1 - ((y < 3) & (p == 3)).sum() / (y < 3).sum())
    assert got["other_medical_called_other"] == pytest.approx((0.5 * 10 + 0.9 * 6) / 16)  # weighted by count, not averaged
    assert got["other_medical_by_kind"]["oct"] == pytest.approx((0.5 * 10 + 0.9 * 6) / 16)
    assert merged["pooled"]["figures"] == 100 and merged["pooled"]["held_sources"] == 3
    assert merged["pooled"]["unscored_sources"] == ["w"]
    assert merged["pooled"]["per_source"] == {"x": {"n": 50, "accuracy": 0.5}, "z": {"n": 40, "accuracy": 0.9}}  # cross-fold and typed keys dropped
    assert [f["study"] for f in merged["folds"]] == ["s1.json", "s2.json"]
    assert "with_types" not in merged["pooled"]  # neither study was scored with figure-type heads


def test_a_class_is_testable_only_if_every_study_holding_it_trained_on_it() -> None:
    y = np.array([0, 1, 2, 3])
    one, two = _study("x", y, y, 1.0), _study("z", y[[0, 1, 3]], y[[0, 1, 3]], 1.0)
    one["pooled"]["with_threshold"]["testable_classes"] = ["a", "b"]  # its fold held class c without training on it
    two["pooled"]["with_threshold"]["testable_classes"] = ["a", "b"]  # holds no class c: says nothing about it
    merged = merge({"1": one, "2": two}, {"1": _counts(y, 1), "2": _counts(y[[0, 1, 3]], 1)}, LABELS, 3)["pooled"]
    assert merged["with_threshold"]["testable_classes"] == ["a", "b"] and merged["argmax"]["testable_classes"] == ["a", "b", "c"]


def test_a_decision_one_study_lacks_is_not_pooled() -> None:
    y = np.array([0, 1, 2, 3])
    one, two = _study("x", y, y, 1.0), _study("z", y, y, 1.0)
    one["pooled"]["with_types"] = {"with_threshold": one["pooled"]["with_threshold"]}
    merged = merge({"1": one, "2": two}, {k: _counts(y, 1) for k in "12"}, LABELS, 3)
    assert "with_types" not in merged["pooled"]


def test_studies_of_different_recipes_or_sharing_a_source_are_refused_by_name() -> None:
    y = np.array([0, 1])
    with pytest.raises(ValueError, match=r"b\.json: config architecture='lite1' differs from a\.json's 'lite0'"):
        check_studies({"a.json": _study("x", y, y, 1.0), "b.json": _study("z", y, y, 1.0, architecture="lite1")})
    with pytest.raises(ValueError, match=r"b\.json: config sector_probability=0\.5 differs from a\.json's None"):
        check_studies({"a.json": _study("x", y, y, 1.0), "b.json": _study("z", y, y, 1.0, sector_probability=0.5)})
    with pytest.raises(ValueError, match=r"b\.json: config score_data=None differs from a\.json's 'v3'"):
        check_studies({"a.json": _study("x", y, y, 1.0, score_data="v3"), "b.json": _study("z", y, y, 1.0)})
    with pytest.raises(ValueError, match=r"b\.json: source y is held by a\.json too"):
        check_studies({"a.json": _study("x,y", y, y, 1.0), "b.json": _study("z, y", y, y, 1.0)})
    assert check_studies({"a.json": _study("x,y", y, y, 1.0), "b.json": _study("z", y, y, 1.0)}) == ["x", "y", "z"]


def test_manifests_that_no_longer_hold_what_a_study_scored_are_refused_by_name() -> None:
    y = np.array([0, 1, 3, 3])
    studies = {"a.json": _study("x", y, y, 1.0), "b.json": _study("z", y, y, 1.0)}
    with pytest.raises(ValueError, match=r"b\.json: with_threshold scored 2 in-class and 2 other figures, the manifests hold 2 and 3"):
        merge(studies, {"a.json": _counts(y, 1), "b.json": _counts(y, 1) | {"other_figure": 2}}, LABELS, 3)


def test_roles_are_counted_among_the_studys_held_sources_only() -> None:
    from xai_pipeline.train.dataset import Example
    from xai_pipeline.train.sources import Role, SourcedExample

    def figure(source: str, label: str, role: Role, kind: str = "") -> SourcedExample:
        return SourcedExample(Example(f"{source}/{label}/{kind}", label, source, kind=kind), "set", role, "MIT")

    examples = [figure("x", "ct", Role.IN_CLASS), figure("x", "other", Role.OTHER_MEDICAL, "oct"), figure("y", "other", Role.OTHER_MEDICAL, "oct"),
                figure("y", "other", Role.OTHER_MEDICAL, "endoscopy"), figure("y", "other", Role.OTHER_FIGURE), figure("z", "other", Role.OTHER_FIGURE)]
    study = _study(" x, y", np.array([0]), np.array([0]), 1.0)
    assert count_roles(study, examples) == {"in_class": 1, "other_medical": 3, "other_figure": 1, "kind:oct": 2, "kind:endoscopy": 1}


def test_weighted_share_skips_studies_without_such_figures() -> None:
    assert weighted_share([0.5, float("nan"), 1.0], [2, 0, 2]) == 0.75
    assert np.isnan(weighted_share([float("nan")], [0]))
