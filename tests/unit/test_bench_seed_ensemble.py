"""bench.seed_ensemble's scoring: mean log-probabilities are the mean logits, and the shipped threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

from bench.seed_ensemble import score_subsets


def test_subsets_average_logits_and_set_the_threshold_on_in_class_figures() -> None:
    logits = [np.array([[4.0, 0.0], [0.0, 3.0], [1.0, 0.0], [2.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]])]
    p = [np.exp(z) / np.exp(z).sum(axis=1, keepdims=True) for z in logits]
    truth = np.array([[1, 1, 1, 0], [0, 1, 0, -1]])  # three in-class figures (classes 0, 1, 0) and one 'other'
    rows = score_subsets(p, truth, ["a", "b"], 0.5, ["s0", "s1"])
    assert [r["runs"] for r in rows] == [["s0"], ["s1"], ["s0", "s1"]]
    both = rows[2]
    mean = (logits[0] + logits[1]) / 2  # [[3, 0], [0, 2], [0.5, 0.5], [1, 0]]
    q = np.exp(mean) / np.exp(mean).sum(axis=1, keepdims=True)
    tops = np.sort(q[:3].max(axis=1))
    assert both["threshold"] == pytest.approx(tops[1], abs=1e-4)  # the lower median keeps half the in-class figures
    assert both["argmax_accuracy"] == 1.0  # the tie on the third figure goes to class 0, its label
    assert both["other_rejected"] == int(q[3].max() < both["threshold"]) and both["other_figures"] == 1
    assert rows[0]["argmax_accuracy"] == 1.0 and rows[1]["argmax_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert set(both["recall"]) == {"a", "b"}
