from __future__ import annotations

import numpy as np
import pytest

from xai_pipeline.job.codec import decode_map, encode_map
from xai_pipeline.model.roi import upsample


@pytest.mark.parametrize("shape", [(7, 7), (14, 14), (1, 1), (3, 11)])
def test_round_trip_within_1_of_255_of_max(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    relevance = rng.gamma(2.0, 3.0, size=shape) * 1e-3
    data, stored_shape, scale = encode_map(relevance)
    assert len(data) == shape[0] * shape[1] and stored_shape == shape
    back = decode_map(data, stored_shape, scale)
    assert np.abs(back - relevance).max() <= relevance.max() / 255 + 1e-9
    assert np.isclose(decode_map(data, stored_shape, scale, normalized=True).max(), 1.0)


def test_zero_map() -> None:
    data, shape, scale = encode_map(np.zeros((4, 4)))
    assert scale == 0.0 and data == bytes(16)
    assert decode_map(data, shape, scale).max() == 0


@pytest.mark.parametrize("bad", [np.full((2, 2), np.nan), -np.ones((2, 2)), np.ones(4)])
def test_rejects_invalid_maps(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_map(bad)


def test_decode_checks_length() -> None:
    with pytest.raises(ValueError, match="bytes"):
        decode_map(b"\x00" * 5, (2, 3), 1.0)


def test_upsample_to_figure_size_keeps_peak_location() -> None:
    relevance = np.zeros((7, 7), dtype=np.float32)
    relevance[1, 5] = 1.0
    up = upsample(relevance, width=700, height=350)
    assert up.shape == (350, 700)
    y, x = np.unravel_index(up.argmax(), up.shape)
    assert 5 * 100 <= x < 6 * 100 and 50 <= y < 100
