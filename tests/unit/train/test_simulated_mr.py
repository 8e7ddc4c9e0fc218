"""MR simulated from a CT figure: fat bright and bone dark by the drawn curve, the air black, a
smooth coil bias and Rician noise on top."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from xai_pipeline.train.augment import body_mask
from xai_pipeline.train.simulated_mr import MrParams, simulate_mr

_CLEAN = MrParams(knots_x=(0.2, 0.5, 0.8), knots_y=(0.05, 0.9, 0.4, 0.3, 0.05), bias=0.0, noise=0.0)


def _ct_body() -> Image.Image:
    """An abdomen as a mediastinal window shows it: fat (0.2) round muscle (0.5) round bone (1.0), on air."""
    y, x = np.mgrid[0:64, 0:64]
    r = np.hypot(x - 32, y - 32)
    grey = np.select([r < 6, r < 16, r < 26], [1.0, 0.5, 0.2], 0.0)
    return Image.fromarray(np.rint(np.stack([grey] * 3, axis=-1) * 255).astype(np.uint8))


def test_fat_turns_bright_bone_dark_and_the_air_stays_black() -> None:
    mr = np.asarray(simulate_mr(_ct_body(), _CLEAN, np.random.default_rng(0)))[..., 0].astype(float) / 255
    assert mr.shape == (64, 64)
    assert abs(mr[32, 32 + 20] - 0.9) < 0.01  # fat, at knot a: y_fat
    assert abs(mr[32, 32 + 10] - 0.4) < 0.01  # muscle, at knot b: y_soft
    assert abs(mr[32, 32] - 0.05) < 0.01  # bone, the densest: y_bone
    assert mr[0, 0] == 0 and mr[32, 62] == 0  # air: no signal
    assert mr[32, 32 + 20] > mr[32, 32 + 10] > mr[32, 32]  # on the CT, the order was the reverse


def test_bias_and_noise_vary_the_figure_and_the_rng_draws_them() -> None:
    noisy = replace(_CLEAN, bias=0.4, noise=0.03)
    a = np.asarray(simulate_mr(_ct_body(), noisy, np.random.default_rng(1)))[..., 0].astype(float)
    b = np.asarray(simulate_mr(_ct_body(), noisy, np.random.default_rng(1)))[..., 0].astype(float)
    c = np.asarray(simulate_mr(_ct_body(), noisy, np.random.default_rng(2)))[..., 0].astype(float)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    clean = np.asarray(simulate_mr(_ct_body(), _CLEAN, np.random.default_rng(1)))[..., 0].astype(float)
    assert np.abs(a - clean).mean() > 3
    assert 0 < a[:8, :8].mean() < 20  # Rician noise lifts the air a little above black, never below


def test_params_draw_fat_brightest_and_bone_darkest_with_ordered_knots() -> None:
    for seed in range(50):
        p = MrParams.draw(np.random.default_rng(seed))
        y0, fat, soft, dense, bone = p.knots_y
        assert 0.1 <= p.knots_x[0] <= p.knots_x[1] <= p.knots_x[2] <= 0.9
        assert fat >= soft and fat >= dense and min(soft, dense) >= bone  # the documented order


def test_body_mask_keeps_the_body_and_its_small_holes_not_the_air() -> None:
    pixels = np.asarray(_ct_body(), dtype=np.float64) / 255
    pixels[30:34, 30:34] = 0  # a small dark hole (gas) inside the body
    mask = body_mask(pixels)
    assert mask[32, 32] and mask[32, 32 + 20] and not mask[0, 0] and not mask[32, 62]
