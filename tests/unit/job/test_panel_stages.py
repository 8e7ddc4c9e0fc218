"""Compound figures through decode → classify → encode without Ray: panel crops ride in the
classifier's batch as extra rows, and each panel gets its own labels and CRM in the row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from helpers import image_bytes, tiny_model_file
from xai_pipeline import schema
from xai_pipeline.job import classify, decode
from xai_pipeline.job.codec import decode_map, encode_batch
from xai_pipeline.job.classify import FigureClassifier
from xai_pipeline.model.inference import predict

TYPES = (schema.MEDICAL_IMAGE, "chart", "other")


def _compound(rng: np.random.Generator) -> bytes:
    page = Image.new("RGB", (500, 240), "white")
    for k in range(3):
        page.paste(Image.fromarray(rng.integers(30, 220, (200, 150, 3), dtype=np.uint8)), (15 + k * 160, 20))
    return image_bytes(page, "PNG")


def _fetched(datas: list[bytes]) -> dict[str, np.ndarray]:
    n = len(datas)
    return {"uri": np.array([f"file:///f{i}.png" for i in range(n)], dtype=object), "size": np.array([float(len(d)) for d in datas]),
            "etag": np.array([None] * n, dtype=object), "bytes": np.array(datas, dtype=object),
            "read_status": np.array([""] * n, dtype=object), "read_error": np.array([""] * n, dtype=object)}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("m") / "m.safetensors", figure_types=TYPES)


def test_panels_are_classified_in_the_same_batch_each_with_its_own_map(model_file: Path) -> None:
    rng = np.random.default_rng(0)
    single = image_bytes(Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)), "PNG")
    decoded = decode.decode_batch(_fetched([_compound(rng), single, b"not an image"]), 64, panels=True)
    assert [len(b) for b in decoded[schema.PANEL_BOXES]] == [3, 0, 0] and decoded[schema.PANEL_PIXELS][0].shape == (3, 3, 64, 64)
    assert decoded[schema.PANEL_BOXES][0].tolist() == [[15, 20, 165, 220], [175, 20, 325, 220], [335, 20, 485, 220]]

    classifier = FigureClassifier(str(model_file), device="cpu")
    seen: list[int] = []
    real = classify.predict

    def counting(model, pixels, *args):  # type: ignore[no-untyped-def]
        seen.append(len(pixels))
        return real(model, pixels, *args)

    classify.predict = counting
    try:
        out = classifier(decoded)
    finally:
        classify.predict = real
    assert seen == [2 + 3]  # two ok figures and three crops: one backbone pass
    crops = torch.from_numpy(decoded[schema.PANEL_PIXELS][0])
    alone = predict(classifier.model, crops)
    np.testing.assert_allclose(out[schema.PANEL_MAPS][0], alone.relevance.numpy(), rtol=1e-4, atol=1e-6)
    labels = json.loads(out[schema.PANEL_LABELS][0])
    assert len(labels["panels"]) == 3 and out[schema.MODALITY][0] == schema.COMPOUND
    assert [p["confidence"] for p in labels["panels"]] == pytest.approx(alone.probabilities.max(dim=1).values.tolist(), abs=1e-5)
    assert out[schema.FIGURE_TYPE][1] in TYPES and out[schema.MODALITY][1] != schema.COMPOUND

    rows = encode_batch(out, run_id="r").to_pylist()
    assert rows[0][schema.PANEL_COUNT] == 3 and [(p["x0"], p["x1"]) for p in rows[0][schema.PANELS]] == [(15, 165), (175, 325), (335, 485)]
    restored = decode_map(rows[0][schema.PANELS][1]["crm"], rows[0][schema.PANELS][1]["crm_shape"], rows[0][schema.PANELS][1]["crm_scale"])
    np.testing.assert_allclose(restored, out[schema.PANEL_MAPS][0][1], rtol=0.01, atol=out[schema.PANEL_MAPS][0][1].max() / 255)
    assert rows[0][schema.MODALITIES] == sorted({p["modality"] for p in rows[0][schema.PANELS]} - {"other"})
    assert rows[1][schema.PANEL_COUNT] == 1 and rows[1][schema.PANELS] is None
    assert rows[2][schema.STATUS] == "not_an_image" and rows[2][schema.PANEL_COUNT] is None and rows[2][schema.FIGURE_TYPE] is None
    pa.Table.from_pylist(rows, schema=schema.TABLE_SCHEMA)  # the rows fit the table's schema


def test_a_failing_panel_fails_its_figure_only(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    single = image_bytes(Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)), "PNG")
    decoded = decode.decode_batch(_fetched([_compound(rng), single]), 64, panels=True)
    classifier = FigureClassifier(str(model_file), device="cpu")
    real = classifier._predict
    calls: list[int] = []

    def one_bad_panel(pixels: torch.Tensor):  # type: ignore[no-untyped-def]
        calls.append(len(pixels))
        if len(pixels) > 1 or len(calls) == 4:  # the whole batch, then the second crop alone
            raise RuntimeError("panel failed")
        return real(pixels)

    monkeypatch.setattr(classifier, "_predict", one_bad_panel)
    out = classifier(decoded)
    assert list(out[schema.STATUS]) == ["model_error", "ok"] and "panel failed" in out[schema.ERROR][0]
    assert calls == [5, 1, 1, 1, 1, 1]  # the batch, then the two figures and three crops one at a time


def test_without_panels_the_stage_adds_empty_panel_columns(model_file: Path) -> None:
    rng = np.random.default_rng(2)
    decoded = decode.decode_batch(_fetched([_compound(rng)]), 64, panels=False)
    assert schema.PANEL_PIXELS not in decoded
    out = FigureClassifier(str(model_file), device="cpu")(decoded)
    rows = encode_batch(out, run_id="r").to_pylist()
    assert rows[0][schema.PANEL_COUNT] == 1 and rows[0][schema.MODALITY] != schema.COMPOUND
