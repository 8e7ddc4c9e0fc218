"""The classifier stage cuts batches to what fits its device and halves a chunk that runs out of
memory (on the CPU here, with the out-of-memory error simulated; ``bench/gpu_check.py`` sizes
batches on a real card)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_pipeline import classify
from xai_pipeline.classify import FigureClassifier
from xai_pipeline.schema import CRM_MAP, PIXELS, PROBABILITIES, STATUS


@pytest.fixture(scope="module")
def classifier() -> FigureClassifier:
    return FigureClassifier(device="cpu", torch_threads=2)


def _batch(classifier: FigureClassifier, n: int) -> dict[str, np.ndarray]:
    size = classifier.spec.input_size
    pixels = np.random.default_rng(0).integers(0, 255, (n, 3, size, size), dtype=np.uint8)
    status = np.array(["ok"] * n, dtype=object)
    status[3] = "truncated"
    return {PIXELS: pixels, STATUS: status}


def test_on_the_cpu_a_batch_runs_whole(classifier: FigureClassifier) -> None:
    assert classifier.device_batch is None


def test_chunks_give_the_whole_batch_result(classifier: FigureClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _batch(classifier, 11)
    whole = classifier(batch)
    monkeypatch.setattr(classifier, "device_batch", 3)
    chunked = classifier(batch)
    np.testing.assert_allclose(chunked[PROBABILITIES], whole[PROBABILITIES], atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(chunked[CRM_MAP], whole[CRM_MAP], rtol=1e-4, atol=1e-6)


def test_out_of_memory_halves_the_chunk_and_loses_nothing(classifier: FigureClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _batch(classifier, 11)
    whole = classifier(batch)
    real_predict = classify.predict
    sizes: list[int] = []

    def small_device(model, pixels, *args):  # type: ignore[no-untyped-def]
        sizes.append(len(pixels))
        if len(pixels) > 4:
            raise torch.OutOfMemoryError("simulated")
        return real_predict(model, pixels, *args)

    monkeypatch.setattr(classify, "predict", small_device)
    monkeypatch.setattr(classifier, "device_batch", 16)
    out = classifier(batch)
    assert classifier.device_batch == 2 and sizes[:3] == [10, 5, 2]  # 10 ok rows → 5 → 2
    np.testing.assert_allclose(out[PROBABILITIES], whole[PROBABILITIES], atol=1e-5, equal_nan=True)
    monkeypatch.setattr(classify, "predict", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated")))
    monkeypatch.setattr(classifier, "device_batch", 1)
    with pytest.raises(torch.OutOfMemoryError):
        classifier(batch)
