"""Ultrasound simulated from a tomographic slice: Rayleigh speckle with grains longer across the
beam, echoes at interfaces facing the beam, shadows behind them, a fan when asked for; in a
training batch, CT and MRI figures, and only they, become it and are labelled ultrasound (and CT
figures, and only they, simulated MR labelled MRI)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from xai_pipeline.train import fit as fit_module
from xai_pipeline.train.augment import AugmentConfig
from xai_pipeline.train.simulated_ultrasound import WORK_HEIGHT, UltrasoundParams, fan, simulate_ultrasound, speckle

_PLAIN = UltrasoundParams(floor=0.1, beta=0.2, sigma_axial=0.8, sigma_lateral=2.0, mu=0.0, kappa=0.0, gain=10.0, sector=False,
                          half_angle=35.0, apex=0.2)


def _lag_correlation(s: np.ndarray, axis: int) -> float:
    a = s - s.mean()
    return float((a * np.roll(a, 1, axis=axis)).mean() / a.var())


def test_speckle_is_rayleigh_with_grains_longer_across_the_beam() -> None:
    s = speckle((400, 400), 0.8, 2.5, np.random.default_rng(0))
    assert abs(float(np.mean(s ** 2)) - 1.0) < 1e-9
    assert abs(s.mean() / s.std() - np.sqrt(np.pi / (4 - np.pi))) < 0.05  # Rayleigh: ≈ 1.91
    assert _lag_correlation(s, axis=1) > _lag_correlation(s, axis=0) + 0.1  # lateral (columns) vs axial (rows)
    assert np.array_equal(s, speckle((400, 400), 0.8, 2.5, np.random.default_rng(0)))


def _slab(top: int = 100, bottom: int = 140) -> Image.Image:
    """A bright horizontal slab (a reflector facing the beam) across grey tissue."""
    grey = np.full((WORK_HEIGHT, 200), 80, np.uint8)
    grey[top:bottom] = 250
    return Image.fromarray(grey).convert("RGB")


def test_the_slice_becomes_a_grey_frame_with_echoes_at_interfaces_facing_the_beam() -> None:
    frame = np.asarray(simulate_ultrasound(_slab(), _PLAIN, np.random.default_rng(0))).astype(float)
    assert frame.shape == (WORK_HEIGHT, 200, 3) and np.array_equal(frame[..., 0], frame[..., 2])
    edge, inside, tissue = frame[98:103, :, 0].mean(), frame[115:125, :, 0].mean(), frame[40:60, :, 0].mean()
    assert edge > inside + 20 and edge > tissue + 20  # the slab's top face echoes; its body and the tissue scatter
    assert frame[..., 0].std() > 20  # speckle, not a smooth slice
    tall = simulate_ultrasound(Image.new("RGB", (50, 100), (90, 90, 90)), _PLAIN, np.random.default_rng(0))
    assert tall.size == (WORK_HEIGHT // 2, WORK_HEIGHT)  # resized to the working height, aspect kept


def test_depth_attenuates_and_a_strong_reflector_shadows_what_lies_behind_it() -> None:
    rng = lambda: np.random.default_rng(3)  # noqa: E731 - the same speckle for each variant
    plain = np.asarray(simulate_ultrasound(_slab(), _PLAIN, rng()))[..., 0].astype(float)
    shadowed = np.asarray(simulate_ultrasound(_slab(), replace(_PLAIN, kappa=2.0), rng()))[..., 0].astype(float)
    assert np.allclose(shadowed[:95], plain[:95], atol=1)  # above the reflector nothing changes
    assert shadowed[180:].mean() < plain[180:].mean() - 15
    attenuated = np.asarray(simulate_ultrasound(Image.new("RGB", (64, 64), (120,) * 3), replace(_PLAIN, mu=1.5), rng()))[..., 0]
    assert attenuated[:40].mean() > attenuated[-40:].mean() + 15


def test_the_fan_blacks_out_what_a_curved_probe_does_not_see() -> None:
    frame = Image.new("RGB", (200, 100), (200, 200, 200))
    cut = np.asarray(fan(frame, 30.0, 0.2))[..., 0]
    assert cut[0, 0] == 0 and cut[0, -1] == 0 and cut[99, 0] == 0  # outside ±30° of the axis
    assert cut[0, 100] == 200 and cut[99, 100] == 200 and cut[99, 100 + 60] == 200  # atan(60/120) < 30°
    assert cut[99, 100 + 75] == 0  # atan(75/120) > 30°
    fanned = simulate_ultrasound(_slab(), replace(_PLAIN, sector=True), np.random.default_rng(0))
    assert np.asarray(fanned)[0, 0].max() == 0


def test_a_faint_slice_does_not_echo_as_a_skull_would() -> None:
    quiet = replace(_PLAIN, floor=0.0, beta=0.0)
    noise = np.random.default_rng(5).integers(100, 102, (WORK_HEIGHT, 200)).astype(np.uint8)  # ±1 grey level
    faint = np.asarray(simulate_ultrasound(Image.fromarray(noise).convert("RGB"), quiet, np.random.default_rng(0)))[..., 0]
    slab = np.asarray(simulate_ultrasound(_slab(), quiet, np.random.default_rng(0)))[..., 0]
    assert faint.mean() < 60 and slab[98:103].mean() > 120  # D_max has a floor: noise is not an interface
    columns = np.tile(np.repeat(np.array([0, 255], np.uint8), 2), (WORK_HEIGHT, 50))  # vertical stripes: no axial interface
    striped = np.asarray(simulate_ultrasound(Image.fromarray(columns).convert("RGB"), quiet, np.random.default_rng(0)))[..., 0]
    assert striped.max() == 0  # not even in the first row, where smoothing meets the edge of the slice


def test_a_wide_strip_keeps_its_middle() -> None:
    strip = simulate_ultrasound(Image.new("RGB", (1000, 50), (90,) * 3), _PLAIN, np.random.default_rng(0))
    assert strip.size == (4 * WORK_HEIGHT, WORK_HEIGHT)


def test_the_fan_is_drawn_as_train_sector_probability_draws_it() -> None:
    draws = [UltrasoundParams.draw(np.random.default_rng(seed)) for seed in range(50)]
    lo, hi = AugmentConfig().sector_half_angle
    assert all(lo <= d.half_angle <= hi and d.sigma_lateral >= d.sigma_axial for d in draws)
    assert {d.sector for d in draws} == {True, False}


def test_in_a_batch_ct_and_mri_become_ultrasound_and_nothing_else_does(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, bool]] = []

    def spy(img: Image.Image, rng: np.random.Generator, size: int, cfg: AugmentConfig, *, stain: bool = False,
            sector: bool = False, contrast: bool = False) -> np.ndarray:
        seen.append((img.height, sector))
        return np.zeros((3, size, size), np.uint8)

    monkeypatch.setattr(fit_module, "augment", spy)
    names = ("chest_xray", "ct", "mri", "ultrasound", "histology")
    data = fit_module.TrainData(images=[Image.new("RGB", (40, 40), (90,) * 3)] * 5, labels=np.array([0, 1, 2, 3, 4]), class_names=names)

    def cfg(p: float, mr: float = 0.0) -> object:
        return type("Cfg", (), {"input_size": 16, "augment": True, "sector_probability": 0.0, "mr_contrast_probability": 0.0,
                                "simulated_ultrasound_probability": p, "simulated_mr_probability": mr})()

    _, targets = fit_module._batch(data, np.arange(5), 0, np.random.default_rng(0), cfg(1.0))  # type: ignore[arg-type]
    assert targets.tolist() == [0, 3, 3, 3, 4]
    assert seen == [(40, False), (WORK_HEIGHT, True), (WORK_HEIGHT, True), (40, True), (40, False)]  # simulated, then augmented as ultrasound
    seen.clear()
    rng = np.random.default_rng(0)
    _, targets = fit_module._batch(data, np.arange(5), 0, rng, cfg(0.0))  # type: ignore[arg-type]
    assert targets.tolist() == [0, 1, 2, 3, 4] and seen == [(40, False), (40, False), (40, False), (40, True), (40, False)]
    assert rng.random() == np.random.default_rng(0).random()  # off: no random draw, so earlier recipes train the same
    no_ultrasound = fit_module.TrainData(images=data.images[:3], labels=np.array([0, 1, 2]), class_names=names[:3])
    rng = np.random.default_rng(0)
    _, targets = fit_module._batch(no_ultrasound, np.arange(3), 0, rng, cfg(1.0))  # type: ignore[arg-type]
    assert targets.tolist() == [0, 1, 2]  # no ultrasound class to give them
    assert rng.random() == np.random.default_rng(0).random()  # and no draw for it
    no_mri = fit_module.TrainData(images=data.images[:2], labels=np.array([0, 1]), class_names=("chest_xray", "ct"))
    rng = np.random.default_rng(0)
    _, targets = fit_module._batch(no_mri, np.arange(2), 0, rng, cfg(0.0, mr=1.0))  # type: ignore[arg-type]
    assert targets.tolist() == [0, 1] and rng.random() == np.random.default_rng(0).random()
    seen.clear()
    _, targets = fit_module._batch(data, np.arange(5), 0, np.random.default_rng(0), cfg(0.0, mr=1.0))  # type: ignore[arg-type]
    assert targets.tolist() == [0, 2, 2, 3, 4]  # CT becomes MR; MRI stays MRI
    assert [h for h, _ in seen] == [40] * 5  # simulated MR keeps the figure's size
    _, targets = fit_module._batch(data, np.arange(5), 0, np.random.default_rng(0), cfg(1.0, mr=1.0))  # type: ignore[arg-type]
    assert targets.tolist() == [0, 3, 3, 3, 4]  # ultrasound is tried first
