"""Evaluation numbers on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from xai_pipeline.train.evaluate import class_mean_maps, compute_metrics, expected_calibration_error


def _probs(pred: list[int], conf: list[float], c: int = 3) -> np.ndarray:
    out = np.zeros((len(pred), c))
    for i, (p, q) in enumerate(zip(pred, conf)):
        out[i] = (1 - q) / (c - 1)
        out[i, p] = q
    return out


def test_hand_made_confusion_case() -> None:
    # true:  a a a a b b c c c c ; pred: a a a b b a c c c b
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = [0, 0, 0, 1, 1, 0, 2, 2, 2, 1]
    m = compute_metrics(y, _probs(pred, [0.9] * 10), ["a", "b", "c"])
    assert m.confusion == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 1, 3, 0]]
    assert m.accuracy == pytest.approx(0.7)
    # a: P=3/4 R=3/4; b: P=1/3 R=1/2; c: P=1 R=3/4
    assert m.per_class["a"]["f1"] == pytest.approx(0.75)
    assert m.per_class["b"]["precision"] == pytest.approx(1 / 3) and m.per_class["b"]["recall"] == pytest.approx(0.5)
    assert m.per_class["b"]["f1"] == pytest.approx(0.4)
    assert m.per_class["c"]["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert m.macro_f1 == pytest.approx((0.75 + 0.4 + 2 * 0.75 / 1.75) / 3)
    assert m.ece == pytest.approx(abs(0.7 - 0.9))


def test_threshold_moves_low_confidence_to_other() -> None:
    y = np.array([0, 1, 2])
    m = compute_metrics(y, _probs([0, 1, 2], [0.9, 0.4, 0.95]), ["a", "b", "c"], other_threshold=0.5)
    assert m.confusion[1] == [0, 0, 0, 1]
    assert m.accuracy == pytest.approx(2 / 3) and m.closed_set_accuracy == 1.0 and m.other_rate == pytest.approx(1 / 3)


def test_ece_bins() -> None:
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([True, True, True, False])
    # bin(0.95): acc 1 vs 0.95 → 0.05 × 0.5; bin(0.55): acc 0.5 vs 0.55 → 0.05 × 0.5
    assert expected_calibration_error(conf, correct, bins=10) == pytest.approx(0.05)


def test_class_mean_maps_average_normalised_maps_of_correct_figures() -> None:
    maps = np.array([[[1.0, 0.0]], [[0.0, 4.0]], [[9.0, 9.0]]])
    means = class_mean_maps(maps, y_true=np.array([0, 0, 0]), predicted=np.array([0, 0, 1]), n_classes=2)
    assert np.allclose(means[0], [[0.5, 0.5]]) and 1 not in means
