"""The figure-type head: logistic regression folded into one linear layer on raw pooled features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_pipeline import schema
from xai_pipeline.model.inference import predict
from xai_pipeline.model.net import ModalityNet, ModelSpec
from xai_pipeline.train.figure_type import fit_type_head, held_out_accuracy, pooled_features, type_of_kind, with_type_head


def test_kinds_of_real_figures_map_to_figure_types() -> None:
    assert type_of_kind("chart (plotnine test baseline)") == "chart"
    assert type_of_kind("microscopy/fluorescence (nuclei)") == "microscopy"
    assert type_of_kind("flowchart (CONSORT)") == "diagram" and type_of_kind("molecular_structure") == "chemical_structure"
    assert type_of_kind("table/infographic") == "table" and type_of_kind("silhouette/drawing") == "other"
    assert {type_of_kind(k) for k in ("photograph/astronomy", "screenshot (code)")} == {"photograph", "screenshot"}


def test_the_folded_head_predicts_what_the_regression_predicts() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 16)) + 50  # far from zero, unequal scales: the folding must undo both
    scales = rng.uniform(0.5, 20, 16)
    features = np.concatenate([(c + rng.normal(0, 1, (40, 16))) * scales for c in centres])
    types = [schema.MEDICAL_IMAGE] * 40 + ["chart"] * 40 + ["microscopy"] * 40
    weight, bias, names = fit_type_head(features, types)
    assert names == (schema.MEDICAL_IMAGE, "chart", "microscopy")  # schema order
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    reference = LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000).fit((features - mean) / std, [names.index(t) for t in types])
    logits = features @ weight.T + bias
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1).numpy(), reference.predict_proba((features - mean) / std), atol=1e-4)
    assert held_out_accuracy(features, types, seed=0)["balanced"] == pytest.approx(1.0)


@pytest.mark.parametrize("members", [1, 2])
def test_a_model_with_the_head_gives_type_probabilities(members: int) -> None:
    from xai_pipeline.model.ensemble import ensemble_of

    def one(seed: int) -> ModalityNet:
        torch.manual_seed(seed)
        return ModalityNet(ModelSpec(name="t", architecture="tiny_cnn", class_names=("ct", "mri"), input_size=32)).eval()

    model = one(0) if members == 1 else ensemble_of([one(0), one(1)])  # a seed ensemble's head sees the stacked features
    from PIL import Image

    images = [Image.fromarray(np.full((40, 40, 3), v, dtype=np.uint8)) for v in (10, 120, 240)]
    features = pooled_features(model, images)
    weight = np.random.default_rng(1).normal(size=(2, features.shape[1])).astype(np.float32)
    typed = with_type_head(model, weight, np.zeros(2, dtype=np.float32), (schema.MEDICAL_IMAGE, "chart"), version="2")
    assert typed.spec.figure_types == (schema.MEDICAL_IMAGE, "chart") and typed.spec.version == "2" and typed.spec.members == members
    assert features.shape[1] == 64 * members
    pixels = torch.stack([torch.from_numpy(np.asarray(im.resize((32, 32))).transpose(2, 0, 1).copy()) for im in images])
    out = predict(typed, pixels)
    np.testing.assert_allclose(out.types.numpy(), torch.from_numpy(features @ weight.T).softmax(-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(out.probabilities.numpy(), predict(model, pixels).probabilities.numpy(), atol=1e-6)  # modality head unchanged


def test_the_training_card_is_retitled_for_the_model_with_the_type_head() -> None:
    from types import SimpleNamespace

    from xai_pipeline.train.figure_type import card_with_type_head

    before = SimpleNamespace(name="m", version="1.0.0", weights_sha256="aaa", figure_types=())
    after = SimpleNamespace(name="m", version="1.2.0", weights_sha256="bbb", figure_types=("medical_image", "chart"))
    card = "# Model card: m 1.0.0\n\n## Model\n- 'other': below 0.8.\n- Weights: safetensors, SHA-256 `aaa`.\n\n## Reproduce\nm 1.0.0\n"
    out = card_with_type_head(card, before, after)
    assert out.startswith("# Model card: m 1.2.0\n") and out.endswith("## Reproduce\nm 1.0.0\n")
    assert "- Figure-type head (1.2.0): one linear layer on the same pooled features, 2 outputs (medical_image, chart)" in out
    assert "- Weights: safetensors, SHA-256 `bbb` (with the figure-type head)." in out and "`aaa`" not in out


def test_scans_come_round_robin_from_every_source_but_the_held_out_ones(tmp_path) -> None:
    import json

    import numpy as np

    from xai_pipeline.train.figure_type import scan_rows

    a, b = tmp_path / "a" / "manifest.jsonl", tmp_path / "b" / "manifest.jsonl"
    for path, rows in ((a, [("histology", "big", 10), ("ct", "medpix", 3), ("other", "charts", 4)]),
                       (b, [("histology", "small", 2), ("histology", "held", 5), ("ct", "dicom", 1)])):
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps({"file": f"{src}{i}.png", "label": label, "source_repo": src}) + "\n"
                                for label, src, n in rows for i in range(n)))
    chosen = scan_rows([a, b], per_class=4, exclude={"held"}, rng=np.random.default_rng(0))
    by_label: dict[str, list[str]] = {}
    for folder, row in chosen:
        by_label.setdefault(row["label"], []).append(row["source_repo"])
        assert (folder / row["file"]).parent == folder
    assert sorted(by_label["histology"]) == ["big", "big", "small", "small"]  # the small source is not drowned
    assert sorted(by_label["ct"]) == ["dicom", "medpix", "medpix", "medpix"]
    assert "other" not in by_label and all("held" not in v for v in by_label.values())
    every = scan_rows([a, b], per_class=0, exclude={"held"}, rng=np.random.default_rng(0))  # no cap (--per-scan-class 0)
    assert sorted(row["source_repo"] for _, row in every) == sorted(["big"] * 10 + ["small"] * 2 + ["medpix"] * 3 + ["dicom"])


def test_excluded_sources_leave_the_non_scan_figures_too(tmp_path) -> None:
    import json

    from PIL import Image

    from xai_pipeline.train.figure_type import labelled_figures

    scans, other = tmp_path / "s" / "manifest.jsonl", tmp_path / "o" / "manifest.jsonl"
    for path, rows in ((scans, [("ct", "medpix", ""), ("ct", "held", "")]),
                       (other, [("other", "charts", "chart (x)"), ("other", "held", "chart (y)"), ("fundus", "stray", "")])):
        path.parent.mkdir(parents=True)
        for label, src, _ in rows:
            Image.new("RGB", (8, 8)).save(path.parent / f"{src}.png")
        path.write_text("".join(json.dumps({"file": f"{src}.png", "label": label, "source_repo": src, "kind": kind}) + "\n"
                                for label, src, kind in rows))
    _, types, sources = labelled_figures([scans], other, None, 0, 0, frozenset({"held"}))
    assert sorted(zip(sources, types)) == [("charts", "chart"), ("medpix", "medical_image")]  # no held figure, no stray scan
