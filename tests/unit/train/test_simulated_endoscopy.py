"""Endoscopy frames simulated as outliers: warm tissue with a dark lumen and highlights, black
outside a round or octagonal field of view; in a batch they fill outlier slots only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from xai_pipeline.train import fit as fit_module
from xai_pipeline.train.augment import AugmentConfig
from xai_pipeline.train.simulated_endoscopy import SIZE, EndoscopyParams, field_of_view, simulate_endoscopy

_PLAIN = EndoscopyParams(weight=1.0, folds=3, sigma=1.0, lumen=(0.5, 0.5), lumen_radius=0.2, lumen_depth=0.0, tint=(1.0, 1.0),
                         highlights=0, highlight_sigma=2.0, octagon=False, radius=0.5, corner=1.4)


def _ramp() -> Image.Image:
    """A figure that brightens from left to right."""
    grey = np.tile(np.linspace(0, 255, 64), (64, 1))
    return Image.fromarray(np.stack([grey] * 3, axis=-1).astype(np.uint8))


def _frame(params: EndoscopyParams, img: Image.Image | None = None, seed: int = 0) -> np.ndarray:
    return np.asarray(simulate_endoscopy(img or _ramp(), params, np.random.default_rng(seed))).astype(float) / 255


def test_the_frame_is_black_outside_its_field_of_view_and_warm_inside() -> None:
    for octagon in (False, True):
        params = replace(_PLAIN, weight=0.5, octagon=octagon, radius=0.45)
        frame = _frame(params)
        inside = field_of_view(octagon, 0.45, 1.4)
        assert frame.shape == (SIZE, SIZE, 3)
        assert frame[~inside].max() == 0 and frame[0, 0].sum() == 0  # corners are black
        r, g, b = (frame[..., ch][inside] for ch in range(3))
        assert (r >= g).all() and (g >= b).all() and r.mean() > 0.3  # a warm palette, red first


def test_circle_and_octagon_geometry() -> None:
    r = 0.4 * SIZE
    c = (SIZE - 1) / 2
    circle, octagon = field_of_view(False, 0.4, 1.6), field_of_view(True, 0.4, 1.6)
    assert circle[round(c), round(c)] and octagon[round(c), round(c)]
    point = (round(c + 0.5 * r), round(c + 0.9 * r))  # (row, column): |x| + |y| = 1.4 r, hypot 1.03 r
    assert octagon[point] and not circle[point]
    corner = (round(c + 0.75 * r), round(c + 0.9 * r))  # |x| + |y| = 1.65 r: cut off the octagon
    assert not octagon[corner]
    assert not field_of_view(True, 0.4, 1.2)[point]  # a larger cut
    assert circle.sum() == pytest.approx(np.pi * r ** 2, rel=0.02)


def test_the_figures_own_structure_shows_through_as_shading() -> None:
    lum = _frame(_PLAIN).mean(axis=-1)  # weight 1: only the figure, no folds
    row = lum[SIZE // 2, SIZE // 2 - 100: SIZE // 2 + 100]
    assert (np.diff(row) >= -1e-9).all() and row[-1] - row[0] > 0.4  # brighter to the right, like the figure
    flat = Image.new("RGB", (64, 64), (128,) * 3)
    folds = _frame(replace(_PLAIN, weight=0.0, folds=5), flat).mean(axis=-1)
    inside = field_of_view(False, 0.5, 1.4)
    assert folds[inside].std() > 0.05  # a flat figure still gets the folds' shading


def test_the_lumen_is_dark() -> None:
    flat = Image.new("RGB", (64, 64), (200,) * 3)
    params = replace(_PLAIN, weight=0.0, lumen=(0.3, 0.6), lumen_radius=0.1, lumen_depth=0.9)
    lum = _frame(params, flat).mean(axis=-1)
    lit = _frame(replace(params, lumen_depth=0.0), flat).mean(axis=-1)  # the same folds (same seed), no lumen
    y, x = round(0.6 * SIZE), round(0.3 * SIZE)
    assert lum[y, x] < 0.35 * lit[y, x]
    assert lum[SIZE // 2, round(0.8 * SIZE)] == pytest.approx(lit[SIZE // 2, round(0.8 * SIZE)], abs=0.01)  # far from it: as lit


def test_highlights_blend_to_white_and_are_drawn_from_the_rng() -> None:
    def white(frame: np.ndarray) -> int:
        return int((frame.min(axis=-1) > 0.92).sum())

    assert white(_frame(replace(_PLAIN, tint=(1.2, 1.2)))) == 0  # the palette alone is never white
    spotted = _frame(replace(_PLAIN, highlights=10))
    assert white(spotted) > 0
    assert np.array_equal(spotted, _frame(replace(_PLAIN, highlights=10)))  # the same seed, the same frame
    assert not np.array_equal(spotted, _frame(replace(_PLAIN, highlights=10), seed=1))


def test_draws_stay_in_their_documented_ranges() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        p = EndoscopyParams.draw(rng)
        assert 0.2 <= p.weight <= 0.7 and 3 <= p.folds <= 8 and 1 <= p.sigma <= 4 and 3 <= p.highlights <= 15
        assert all(0.2 <= v <= 0.8 for v in p.lumen) and 0.1 <= p.lumen_radius <= 0.3 and 0.5 <= p.lumen_depth <= 0.95
        assert 0.42 <= p.radius <= 0.5 and 1.2 <= p.corner <= 1.6 and all(0.8 <= t <= 1.2 for t in p.tint)


def _cfg(p: float) -> object:
    return type("Cfg", (), {"input_size": 16, "augment": True, "sector_probability": 0.0, "mr_contrast_probability": 0.0,
                            "simulated_ultrasound_probability": 0.0, "simulated_mr_probability": 0.0,
                            "simulated_endoscopy_probability": p})()


def test_in_a_batch_only_outlier_slots_become_endoscopy_and_off_draws_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, bool]] = []
    made: list[Image.Image] = []

    def spy(img: Image.Image, rng: np.random.Generator, size: int, cfg: AugmentConfig | None = None, **_: bool) -> np.ndarray:
        seen.append((img.width, any(img is m for m in made)))
        return np.zeros((3, size, size), np.uint8)

    def simulate(img: Image.Image, params: EndoscopyParams, rng: np.random.Generator) -> Image.Image:
        made.append(simulate_endoscopy(img, params, rng))
        return made[-1]

    monkeypatch.setattr(fit_module, "augment", spy)
    monkeypatch.setattr(fit_module, "simulate_endoscopy", simulate)
    fundus = Image.new("RGB", (40, 40), (200, 90, 40))
    data = fit_module.TrainData(images=[fundus] * 2, labels=np.array([0, 1]), class_names=("fundus", "ct"),
                                outliers=[Image.new("RGB", (30, 30), (250,) * 3)])
    _, targets = fit_module._batch(data, np.arange(2), 3, np.random.default_rng(0), _cfg(1.0))  # type: ignore[arg-type]
    assert targets.tolist() == [0, 1]  # labelled figures keep their class; outliers have no label
    assert seen == [(40, False), (40, False)] + [(SIZE, True)] * 3  # every outlier slot, and only those
    assert all(np.asarray(m)[0, 0].sum() == 0 for m in made)  # framed on black
    made.clear()
    rng = np.random.default_rng(0)
    fit_module._batch(data, np.arange(2), 3, rng, _cfg(0.0))  # type: ignore[arg-type]
    assert not made
    after_off = rng.random()
    monkeypatch.setattr(fit_module, "_simulated_outlier", lambda img, cfg, rng: img)
    rng = np.random.default_rng(0)
    fit_module._batch(data, np.arange(2), 3, rng, _cfg(0.0))  # type: ignore[arg-type]
    assert rng.random() == after_off  # off: no random draw, so earlier recipes train the same
