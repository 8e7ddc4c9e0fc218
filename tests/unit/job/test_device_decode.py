"""``--jpeg-decoder classifier``: plain JPEGs decoded by the classifier on its device (here the CPU,
libjpeg-turbo through torchvision; nvjpeg on a GPU runs the same code), everything else and every
rejected JPEG through PIL, with the same statuses, sizes and labels as the PIL path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import gradient, image_bytes
from PIL import Image

from bench.corpus import bad_inputs
from xai_pipeline.job import device_decode
from xai_pipeline.job.classify import FigureClassifier
from xai_pipeline.job.decode import (
    DecodeLimits,
    decode_batch,
    decode_image,
    probe_plain_jpeg,
)
from xai_pipeline.schema import (
    ERROR,
    HEIGHT,
    JPEG_BYTES,
    MODALITY,
    PROBABILITIES,
    STATUS,
    WIDTH,
)

CPU = torch.device("cpu")


def _fetched(datas: list[bytes]) -> dict[str, np.ndarray]:
    n = len(datas)
    return {"uri": np.array([f"s3://b/f{i}.jpg" for i in range(n)], dtype=object), "size": np.array([len(d) for d in datas]),
            "etag": np.array(["e"] * n, dtype=object), "bytes": np.array(datas + [b""], dtype=object)[:n],
            "read_status": np.full(n, "", dtype=object), "read_error": np.full(n, "", dtype=object)}


@pytest.fixture(scope="module")
def figures(dataset_dir: Path) -> list[bytes]:
    files = sorted(dataset_dir.glob("*/*.jpg"))
    return [f.read_bytes() for f in files[:: max(1, len(files) // 24)][:24]]


@pytest.fixture(scope="module")
def classifier() -> FigureClassifier:
    return FigureClassifier(device="cpu", torch_threads=2)


def test_probe_takes_plain_jpegs_only() -> None:
    rgb = image_bytes(gradient(), "JPEG")
    assert probe_plain_jpeg(rgb) is not None and (probe_plain_jpeg(rgb).width, probe_plain_jpeg(rgb).height) == (64, 48)  # type: ignore[union-attr]
    assert probe_plain_jpeg(image_bytes(gradient().convert("L"), "JPEG")) is not None
    progressive = io.BytesIO()
    gradient().save(progressive, format="JPEG", progressive=True)
    assert probe_plain_jpeg(progressive.getvalue()) is not None
    for name in ("cmyk.jpg", "exif-rotated.jpg", "truncated.jpg", "zero-byte.jpg", "error-page.jpg", "gray16.png"):
        case = next(c for c in bad_inputs() if c.name == name)
        assert probe_plain_jpeg(case.data) is None, name
    assert probe_plain_jpeg(rgb, DecodeLimits(max_pixels=64 * 48 - 1)) is None
    assert probe_plain_jpeg(rgb, DecodeLimits(max_bytes=len(rgb) - 1)) is None


def test_device_pixels_match_pil_pixels(figures: list[bytes]) -> None:
    big = io.BytesIO()
    Image.open(io.BytesIO(figures[0])).convert("RGB").resize((1600, 1200)).save(big, format="JPEG", quality=90)
    datas = [*figures, big.getvalue()]
    out = device_decode.decode_resize(datas, 224, CPU)
    assert out.failed == [] and out.pixels.shape == (len(datas), 3, 224, 224) and out.pixels.dtype == torch.uint8
    for i, data in enumerate(datas):
        reference = decode_image(data, 224).pixels
        assert reference is not None
        assert np.abs(reference.astype(int) - out.pixels[i].numpy().astype(int)).mean() < 1.0  # grey levels


def test_a_rejected_figure_does_not_take_its_batch_down() -> None:
    good = image_bytes(gradient(), "JPEG")
    out = device_decode.decode_resize([good, b"\xff\xd8\xff\xe0 not a jpeg \xff\xd9", good], 32, CPU)
    assert out.failed == [1]
    assert out.pixels[0].sum() > 0 and torch.equal(out.pixels[0], out.pixels[2]) and out.pixels[1].sum() == 0


def test_deferred_rows_carry_bytes_and_size_and_no_pixels(figures: list[bytes]) -> None:
    png = image_bytes(gradient(), "PNG")
    batch = decode_batch(_fetched([figures[0], png]), 64, defer_jpeg=True)
    assert list(batch[STATUS]) == ["ok", "ok"] and batch[JPEG_BYTES][0] == figures[0] and batch[JPEG_BYTES][1] == b""
    assert batch["pixels"][0].sum() == 0 and batch["pixels"][1].sum() > 0
    assert (batch[WIDTH][1], batch[HEIGHT][1]) == (64, 48) and batch[WIDTH][0] > 0
    assert JPEG_BYTES not in decode_batch(_fetched([png]), 64)


def test_bad_inputs_get_the_same_rows_either_way(classifier: FigureClassifier) -> None:
    datas = [c.data for c in bad_inputs()]
    size = classifier.spec.input_size
    pil = classifier(decode_batch(_fetched(datas), size))
    device = classifier(decode_batch(_fetched(datas), size, defer_jpeg=True))
    for column in (STATUS, ERROR, WIDTH, HEIGHT, MODALITY):
        assert list(pil[column]) == list(device[column]), column
    assert JPEG_BYTES not in device


def test_labels_agree_with_the_pil_path(classifier: FigureClassifier, figures: list[bytes]) -> None:
    size = classifier.spec.input_size
    pil = classifier(decode_batch(_fetched(figures), size))
    device = classifier(decode_batch(_fetched(figures), size, defer_jpeg=True))
    assert list(device[STATUS]) == ["ok"] * len(figures)
    assert list(pil[MODALITY]) == list(device[MODALITY])
    assert np.abs(pil[PROBABILITIES] - device[PROBABILITIES]).max() < 0.05


def test_jpegs_the_device_rejects_are_decoded_with_pil(classifier: FigureClassifier, figures: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_decode, "_decode", lambda tensors, device: [None] * len(tensors))
    size = classifier.spec.input_size
    pil = classifier(decode_batch(_fetched(figures[:4]), size))
    fallback = classifier(decode_batch(_fetched(figures[:4]), size, defer_jpeg=True))
    assert list(fallback[STATUS]) == ["ok"] * 4
    np.testing.assert_allclose(pil[PROBABILITIES], fallback[PROBABILITIES], atol=1e-6)
