"""The k-NN score of bench.loso_ood: cosine distance to the k-th nearest training figure."""

from __future__ import annotations

import numpy as np
import pytest

from bench.loso_ood import knn_distance, unit


def test_knn_distance_is_the_cosine_distance_to_the_kth_nearest_bank_row() -> None:
    bank = unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]))
    queries = unit(np.array([[2.0, 0.0], [0.0, -3.0]]))
    assert np.allclose(np.linalg.norm(bank, axis=1), 1.0)
    assert knn_distance(queries, bank, 1) == pytest.approx([0.0, 1.0])  # itself; three rows at 90°
    assert knn_distance(queries, bank, 2) == pytest.approx([1 - np.sqrt(0.5), 1.0])  # the diagonal row next
    assert knn_distance(queries, bank, 9)[0] == pytest.approx(2.0)  # k beyond the bank: the farthest row
    assert unit(np.zeros((1, 2))).tolist() == [[0.0, 0.0]]  # a zero vector stays zero, no NaN
