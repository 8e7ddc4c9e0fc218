"""Stain augmentation: HED jitter is colour deconvolution, a per-stain affine map and
recomposition; histology figures, and only they, get it in training batches. Sector scan
conversion: ultrasound figures, and only they, when asked for; MR contrast remapping: MRI
figures, and only they, when asked for, on the body and not the air around it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from xai_pipeline.train import fit as fit_module
from xai_pipeline.train.augment import AugmentConfig, RGB_FROM_HED, augment, hed_jitter, mr_contrast, sector_scan


def _stained(amounts: np.ndarray) -> np.ndarray:
    """RGB uint8 pixels (n×1×3) with the given H, E, DAB amounts (n×3)."""
    return np.clip(np.rint(np.exp(-(amounts @ RGB_FROM_HED)) * 255), 0, 255).astype(np.uint8)[:, None, :]


def test_identity_jitter_keeps_the_image() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 256, (16, 16, 3), dtype=np.uint8)
    out = hed_jitter(pixels, np.ones(3), np.zeros(3))
    assert out.dtype == np.uint8 and out.shape == pixels.shape
    assert np.abs(out.astype(int) - pixels.astype(int)).max() <= 1


def test_jitter_changes_only_the_stain_it_scales() -> None:
    amounts = np.array([[0.6, 0.0, 0.0], [0.0, 0.5, 0.0], [0.3, 0.4, 0.0]])
    out = hed_jitter(_stained(amounts), np.array([1.5, 1.0, 1.0]), np.zeros(3))
    expected = _stained(amounts * np.array([1.5, 1.0, 1.0]))
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 2
    assert not np.array_equal(out[0], _stained(amounts)[0])  # haematoxylin pixel darkened
    assert np.abs(out[1].astype(int) - _stained(amounts)[1].astype(int)).max() <= 2  # eosin pixel kept
    shifted = hed_jitter(_stained(amounts), np.ones(3), np.array([0.0, 0.1, 0.0]))
    assert np.abs(shifted.astype(int) - _stained(amounts + [0.0, 0.1, 0.0]).astype(int)).max() <= 2


def test_stained_augment_varies_the_colour_of_a_tile() -> None:
    tile = Image.fromarray(np.broadcast_to(_stained(np.array([[0.5, 0.3, 0.0]])), (64, 64, 3)).copy())
    quiet = AugmentConfig(pad_probability=0, grayscale_probability=0, color_probability=0, text_probability=0,
                          jpeg_probability=0, rescale_probability=0, flip_probability=0)
    means = {
        stain: np.array([augment(tile, np.random.default_rng(i), 32, quiet, stain=stain).reshape(3, -1).mean(1) for i in range(20)])
        for stain in (False, True)
    }
    assert means[False].std(axis=0).max() < 1.0  # a uniform tile cropped is still the same colour
    assert means[True].std(axis=0).max() > 5.0
    assert means[True].shape == (20, 3)


def test_only_histology_is_stained_ultrasound_sectored_and_mri_contrasted_in_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bool, bool, bool, float, float]] = []

    def spy(img: Image.Image, rng: np.random.Generator, size: int, cfg: AugmentConfig, *, stain: bool = False,
            sector: bool = False, contrast: bool = False) -> np.ndarray:
        seen.append((stain, sector, contrast, cfg.sector_probability, cfg.mr_contrast_probability))
        return np.zeros((3, size, size), np.uint8)

    monkeypatch.setattr(fit_module, "augment", spy)
    images = [Image.new("RGB", (8, 8))] * 5
    data = fit_module.TrainData(images=images, labels=np.array([0, 1, 2, 1, 3]), class_names=("ct", "histology", "ultrasound", "mri"))
    cfg = type("Cfg", (), {"input_size": 16, "augment": True, "sector_probability": 0.4, "mr_contrast_probability": 0.3,
                         "simulated_ultrasound_probability": 0.0, "simulated_mr_probability": 0.0})()
    pixels, targets = fit_module._batch(data, np.array([0, 1, 2, 3, 4]), 0, np.random.default_rng(0), cfg)  # type: ignore[arg-type]
    assert seen == [(False, False, False, 0.4, 0.3), (True, False, False, 0.4, 0.3), (False, True, False, 0.4, 0.3),
                    (True, False, False, 0.4, 0.3), (False, False, True, 0.4, 0.3)]
    assert pixels.shape == (5, 3, 16, 16) and targets.tolist() == [0, 1, 2, 1, 3]


def _head() -> Image.Image:
    """A bright ring (scalp) around grey tissue holding a ventricle as dark as the air, on black air."""
    y, x = np.mgrid[0:64, 0:64]
    r = np.hypot(x - 32, y - 32)
    grey = np.where(r < 24, 120, 0) + np.where((r >= 20) & (r < 24), 100, 0) - np.where(r < 5, 115, 0)
    return Image.fromarray(np.stack([grey] * 3, axis=-1).astype(np.uint8))


def test_mr_contrast_remaps_the_body_by_the_curve_and_leaves_the_air_black() -> None:
    head = _head()
    pixels = np.asarray(head).astype(int)
    assert np.array_equal(np.asarray(mr_contrast(head, np.array([0.0, 1.0]))), pixels)  # the identity curve
    inverted = np.asarray(mr_contrast(head, np.array([1.0, 0.0]))).astype(int)
    assert inverted[0, 0].max() == 0 and inverted[32, 60].max() == 0  # air: no signal under any sequence
    assert np.abs(inverted[32, 32] - (255 - 5)).max() <= 1  # the ventricle, under the floor, is a hole in the body: remapped
    assert np.abs(inverted[32, 40] - (255 - 120)).max() <= 1 and np.abs(inverted[32, 54] - (255 - 220)).max() <= 1
    bumped = np.asarray(mr_contrast(head, np.array([0.0, 1.0, 0.0]))).astype(int)  # not monotone: mid-grey brightest
    assert bumped[32, 40, 0] > bumped[32, 54, 0] and bumped[32, 40, 0] > bumped[32, 32, 0]
    with pytest.raises(ValueError, match="at least two knots"):
        mr_contrast(head, np.array([0.5]))


def test_mr_contrast_leaves_the_air_inside_a_frame_black() -> None:
    framed = np.asarray(_head()).copy()
    framed[0, :] = framed[-1, :] = framed[:, 0] = framed[:, -1] = 255  # a white rule round the figure
    inverted = np.asarray(mr_contrast(Image.fromarray(framed), np.array([1.0, 0.0]))).astype(int)
    assert inverted[2, 2].max() == 0 and inverted[32, 60].max() == 0  # air enclosed by the frame: a large hole, not body
    assert np.abs(inverted[32, 32] - (255 - 5)).max() <= 1  # the ventricle is still filled


def test_mr_contrast_probability_zero_draws_nothing_and_one_always_remaps() -> None:
    head = _head()
    plain = augment(head, np.random.default_rng(1), 32, AugmentConfig(), contrast=False)
    assert np.array_equal(augment(head, np.random.default_rng(1), 32, AugmentConfig(), contrast=True), plain)  # the same stream
    quiet = AugmentConfig(crop_scale=(1.0, 1.0), pad_probability=0, grayscale_probability=0, color_probability=0, text_probability=0,
                          jpeg_probability=0, rescale_probability=0, flip_probability=0, mr_contrast_probability=1.0)
    untouched = augment(head, np.random.default_rng(1), 32, replace(quiet, mr_contrast_probability=0.0), contrast=True)
    remapped = [augment(head, np.random.default_rng(seed), 32, quiet, contrast=True) for seed in range(4)]
    assert all(not np.array_equal(r, untouched) for r in remapped)
    assert all(r[:, 0, 0].max() == 0 for r in remapped)  # the corner's air stays black
    assert np.array_equal(augment(head, np.random.default_rng(1), 32, quiet, contrast=False), untouched)  # not an MR figure


def test_sector_scan_turns_a_frame_into_a_fan_on_black() -> None:
    rows = np.repeat(np.linspace(40, 250, 100)[:, None], 80, axis=1)  # brighter with depth
    frame = Image.fromarray(np.stack([rows] * 3, axis=-1).astype(np.uint8))
    fan = np.asarray(sector_scan(frame, 30.0, 0.25)).astype(int)
    top, h = 25.0, 100
    assert fan.shape[0] == h and fan.shape[1] == int(np.ceil(2 * (top + h) * np.sin(np.radians(30)))) + 1
    assert fan[0, 0].max() == fan[0, -1].max() == fan[-1, 0].max() == 0  # black outside the fan
    centre = fan.shape[1] // 2
    assert fan[2, centre, 0] < 60 and fan[-2, centre, 0] > 230  # depth runs down the axis, as the frame's rows
    edge_column = int(round(centre + (top + 50) * np.sin(np.radians(29))))  # along the fan's edge, half-way down
    assert fan[int(round((top + 50) * np.cos(np.radians(29)) - top)), edge_column, 0] > 100


def test_sector_probability_zero_draws_nothing_and_one_always_converts() -> None:
    frame = Image.fromarray(np.random.default_rng(0).integers(60, 200, (64, 64, 3), dtype=np.uint8))
    plain = augment(frame, np.random.default_rng(1), 32, AugmentConfig(), sector=False)
    assert np.array_equal(augment(frame, np.random.default_rng(1), 32, AugmentConfig(), sector=True), plain)  # the same stream
    quiet = AugmentConfig(crop_scale=(1.0, 1.0), pad_probability=0, grayscale_probability=0, color_probability=0, text_probability=0,
                          jpeg_probability=0, rescale_probability=0, flip_probability=0, sector_probability=1.0)
    fan = augment(frame, np.random.default_rng(1), 32, quiet, sector=True)
    assert fan[:, 0, 0].max() == fan[:, 0, -1].max() == 0 and fan[:, 20, 16].min() > 0  # black top corners, tissue in the middle
    black_corners = np.asarray(frame).copy()
    black_corners[:10, :10] = black_corners[:10, -10:] = 0  # already a fan (or masked): left as it is
    drawn = np.random.default_rng(1)
    drawn.random()  # the sector draw, then nothing converted
    assert np.array_equal(augment(Image.fromarray(black_corners), np.random.default_rng(1), 32, quiet, sector=True),
                          augment(Image.fromarray(black_corners), drawn, 32, replace(quiet, sector_probability=0.0), sector=True))


def test_zoom_out_keeps_the_size_and_shows_the_tissue_smaller() -> None:
    from xai_pipeline.train.augment import zoom_out

    stripes = np.zeros((64, 80, 3), np.uint8)
    stripes[:, ::8] = 255  # a vertical line every 8 pixels
    out = np.asarray(zoom_out(Image.fromarray(stripes), 0.5))
    assert out.shape == stripes.shape
    profile = out[:, :, 0].mean(axis=0)
    peaks = int((profile > 100).sum())
    assert peaks >= 2 * int((stripes[:, :, 0].mean(axis=0) > 100).sum()) - 2  # twice the lines in the same width
    assert np.array_equal(out[:32, :40], out[:32, 40:80][:, ::-1])  # mirror-tiled, no seam


def test_ihc_restaining_moves_eosin_to_dab_under_the_mask_only() -> None:
    from xai_pipeline.train.augment import ihc_restain

    amounts = np.array([[0.6, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.5, 0.0]])  # a nucleus, then eosin twice
    pixels = _stained(amounts)
    out = ihc_restain(pixels, np.array([[1.0], [1.0], [0.0]]), eta=0.5, epsilon=0.0, gamma=1.0)
    expected = _stained(np.array([[0.3, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]]))
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 2
    red, green, blue = out[1, 0].astype(int)
    assert red > green > blue  # brown: DAB absorbs blue most
    assert (out[2] >= 250).all()  # eosin outside the mask is gone, nothing added: glass
    same = ihc_restain(pixels, np.zeros((3, 1)), eta=1.0, epsilon=1.0, gamma=1.0)
    assert np.abs(same.astype(int) - pixels.astype(int)).max() <= 1
