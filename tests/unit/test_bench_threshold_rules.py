"""The quantiles behind bench.threshold_rules' rules: right figures only, rounded down, a fallback."""

from __future__ import annotations

import numpy as np
import pytest

from bench.threshold_rules import fixed_thresholds
from xai_pipeline.train.thresholds import floor_quantile, right_quantiles


def test_right_quantiles_count_only_right_figures_of_the_rows_and_fall_back_below_min_figures() -> None:
    sure = np.linspace(0.90, 0.99, 10)
    p = np.vstack([np.column_stack([sure, 1 - sure]),  # class 0, right, sure
                   [[0.48, 0.52]] * 3,  # class 0 called 1 (less sure than class 1's own): right figures of neither class
                   [[0.45, 0.55]] * 4])  # class 1, right, unsure
    y = np.array([0] * 13 + [1] * 4)
    rows = np.ones(len(y), dtype=bool)
    got = right_quantiles(p, y, rows, fallback=0.5, min_accept=0.9, min_figures=4)
    assert got[0] == floor_quantile(sure, 0.9) == pytest.approx(np.floor(np.quantile(sure, 0.1, method="lower") * 1e4) / 1e4)
    assert got[0] >= 0.9 and got[1] == 0.55  # the three miscalled class-0 figures (0.52) are not class 1's
    assert right_quantiles(p, y, rows, 0.5, 0.9, 5)[1] == 0.5  # four right figures are too few: the fallback
    not_first = rows.copy()
    not_first[:10] = False
    assert right_quantiles(p, y, not_first, 0.5, 0.9, 4)[0] == 0.5  # rows outside the mask do not count
    assert floor_quantile(np.array([0.123456]), 0.97) == 0.1234  # rounded down: rounding up would drop the figure
    assert right_quantiles(p, y, rows, 1, 0.9, 4)[0] == got[0]  # an integer fallback does not truncate the quantiles
    nan = right_quantiles(p, y, rows, np.nan, 0.9, 5)  # NaN marks a class short of figures (bench's model mode)
    assert np.isnan(nan[1]) and nan[0] == got[0]


def test_a_models_own_thresholds_are_laid_out_in_the_studys_label_order_for_every_fold() -> None:
    from xai_pipeline.model.net import ModelSpec

    names = ("ct", "mri", "chest_xray", "fundus", "ultrasound", "histology")  # not the study's order
    spec = ModelSpec(name="m", architecture="tiny_cnn", class_names=names, other_threshold=0.8, class_thresholds={"fundus": 0.93, "ct": 0.6})
    got = fixed_thresholds(spec, 3)
    assert got.shape == (3, 6) and got.tolist()[0] == [0.8, 0.6, 0.93, 0.8, 0.8, 0.8]  # chest_xray, ct, fundus, histology, mri, ultrasound
    assert (got == got[0]).all()
    with pytest.raises(ValueError, match="not the study's modalities"):
        fixed_thresholds(ModelSpec(name="m", architecture="tiny_cnn", class_names=("ct", "mri"), other_threshold=0.8), 3)
