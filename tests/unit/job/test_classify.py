"""The classifier stage cuts batches to what fits its device and halves a chunk that runs out of
memory (on the CPU here, with the out-of-memory error simulated; ``bench/gpu_check.py`` sizes
batches on a real card)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_pipeline.job import classify
from xai_pipeline.job.classify import FigureClassifier
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


def test_device_batch_fits_the_share_of_free_memory(classifier: FigureClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sizing arithmetic with the CUDA memory calls faked (the probe itself runs on the CPU)."""
    per_figure, free = 3_000_000, 80_000_000_000  # bytes: one figure's activations; free on the card
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 50_000_000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 50_000_000 + FigureClassifier.PROBE_BATCH * per_figure)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    assert classifier._fit_batch(1.0) == FigureClassifier.MAX_DEVICE_BATCH  # 0.7 × 80 GB / 3 MB ≈ 18667, capped
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2_000_000_000, 4_000_000_000))
    assert classifier._fit_batch(1.0) == int(0.7 * 2_000_000_000 // per_figure) == 466
    assert classifier._fit_batch(0.5) == 233  # two actors share the card
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1_000_000, 4_000_000_000))
    assert classifier._fit_batch(1.0) == 1  # never zero
    assert calls[:3] == ["sync", "reset", "sync"]


def test_indexing_labels_use_the_per_class_thresholds(tmp_path) -> None:
    """A figure keeps its top class when its top probability clears that class's own threshold."""
    from dataclasses import replace

    from tests.helpers import tiny_model_file
    from xai_pipeline.schema import MODALITY

    tiny = FigureClassifier(model_path=str(tiny_model_file(tmp_path / "tiny.safetensors", size=32)), device="cpu")
    batch = _batch(tiny, 6)
    pooled = replace(tiny.spec, other_threshold=0.99)
    tiny.spec = pooled
    out = tiny(batch)
    ok = out[STATUS] == "ok"
    assert set(out[MODALITY][ok]) == {"other"}  # a random tiny model is never 99% sure
    top = [pooled.class_names[int(i)] for i in out[PROBABILITIES][ok].argmax(axis=1)]
    first = top[0]
    tiny.spec = replace(pooled, class_thresholds={first: 0.0})  # only the first figure's top class is let through
    labelled = tiny(batch)[MODALITY][ok]
    assert labelled.tolist() == [c if c == first else "other" for c in top]


def test_a_seed_ensemble_file_classifies_with_its_mean_logits_and_exact_maps(tmp_path) -> None:
    """The job's classifier needs nothing special for an ensemble: its maps are CRM of the averaged logits."""
    from tests.helpers import tiny_model_file
    from xai_pipeline.model.crm import crm
    from xai_pipeline.model.ensemble import ensemble_of
    from xai_pipeline.model.net import load_model, save_model

    members = [load_model(tiny_model_file(tmp_path / f"m{seed}.safetensors", size=32, seed=seed)) for seed in (0, 1)]
    save_model(ensemble_of(members), tmp_path / "ens.safetensors")
    ens = FigureClassifier(model_path=str(tmp_path / "ens.safetensors"), device="cpu")
    batch = _batch(ens, 5)
    out = ens(batch)
    ok = out[STATUS] == "ok"
    x = torch.from_numpy(batch[PIXELS][ok])
    with torch.no_grad():
        logits = torch.stack([m(m.normalize(x)) for m in members]).mean(0)
        feats = torch.cat([m.forward_features(m.normalize(x)) for m in members], dim=1)
        head = torch.nn.Linear(feats.shape[1], 3)
        head.weight.copy_(torch.cat([m.head.weight for m in members], dim=1) / 2)
        maps = crm(feats, head)  # the bias cancels: R = ‖W̄ f(:,l,m)‖² / N²
    assert np.allclose(out[PROBABILITIES][ok], logits.softmax(-1).numpy(), atol=1e-5)
    stored = out[CRM_MAP][ok]
    assert stored.shape[0] == int(ok.sum()) and np.allclose(stored.reshape(maps.shape), maps.numpy(), rtol=1e-4, atol=1e-9)
