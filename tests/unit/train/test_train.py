"""Training: the loss falls on tiny data; splits never share a group; the run writes a loadable model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xai_pipeline.config import ConfigError, EvaluateConfig, TrainConfig
from xai_pipeline.train.dataset import Example, read_examples, split_by_group
from xai_pipeline.model.net import load_model
from xai_pipeline.train.fit import TrainData, build_model, choose_threshold, fit


def _toy_data() -> TrainData:
    rng = np.random.default_rng(0)
    images, labels = [], []
    for label, colour in enumerate([(220, 30, 30), (30, 30, 220)]):
        for _ in range(6):
            arr = np.clip(np.array(colour) + rng.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(arr))
            labels.append(label)
    return TrainData(images, np.array(labels), ("red", "blue"))


def test_loss_falls_in_a_few_steps() -> None:
    cfg = TrainConfig(data="x", out="y", architecture="tiny_cnn", input_size=32, batch_size=8, epochs=100, max_steps=25,
                      lr=1e-2, outlier_fraction=0.0, augment=False, label_smoothing=0.0)
    data = _toy_data()
    model = build_model(cfg, data.class_names)
    losses = fit(model, data, list(range(12)), cfg, device=torch.device("cpu"))
    assert len(losses) == 25
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_augmented_training_with_outliers_runs() -> None:
    cfg = TrainConfig(data="x", out="y", architecture="tiny_cnn", input_size=32, batch_size=8, max_steps=3, outlier_fraction=0.25)
    data = _toy_data()
    losses = fit(build_model(cfg, data.class_names), data, list(range(12)), cfg, device=torch.device("cpu"))
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_group_split_keeps_groups_together_and_holds_out_sources() -> None:
    examples = [Example(f"file:///{i}.png", "ct" if i % 2 else "mri", "src-b" if i >= 36 else "src-a", f"case{i // 4}") for i in range(40)]
    train, val, hold = split_by_group(examples, 0.25, seed=3, holdout_sources=("src-b",))
    assert set(hold) == set(range(36, 40))
    assert not set(train) & set(val) and len(train) + len(val) + len(hold) == 40
    train_groups = {examples[i].group for i in train}
    assert not train_groups & {examples[i].group for i in val}
    assert {examples[i].label for i in val} == {"ct", "mri"}


def test_threshold_keeps_the_requested_share() -> None:
    conf = np.linspace(0.5, 1.0, 101)
    t = choose_threshold(conf, 0.97)
    assert (conf >= t).mean() >= 0.97 and (conf >= t + 0.01).mean() < 0.97


def test_manifest_groups_medpix_cases(dataset_dir: Path) -> None:
    examples = read_examples(str(dataset_dir / "manifest.jsonl"))
    assert len(examples) == 1325
    medpix = [e for e in examples if e.source == "CHILab1/MedPix-2.0"]
    assert all(e.group.startswith("MPX") for e in medpix)
    assert len({e.group for e in medpix}) < len(medpix)


@pytest.mark.slow
def test_train_command_writes_a_model_that_loads_and_predicts(tmp_path: Path, dataset_dir: Path) -> None:
    from xai_pipeline.train.run import run_training

    data = tmp_path / "data"
    for label in ("fundus", "histology"):
        (data / label).mkdir(parents=True)
        for src in sorted((dataset_dir / label).iterdir())[:6]:
            (data / label / src.name).write_bytes(src.read_bytes())
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "out"), architecture="tiny_cnn", input_size=64, batch_size=8, max_steps=6, val_fraction=0.34)
    report = run_training(cfg)
    model = load_model(tmp_path / "out" / "model.safetensors")
    assert model.spec.class_names == ("fundus", "histology") and model.spec.other_threshold is not None
    for name in ("MODEL_CARD.md", "training_metrics.json", "validation_confusion.png", "validation_metrics.json"):
        assert (tmp_path / "out" / name).is_file()
    assert json.loads((tmp_path / "out" / "training_metrics.json").read_text())["steps"] == 6 == report["steps"]
    assert "macro-F1" in (tmp_path / "out" / "MODEL_CARD.md").read_text()


def test_evaluate_command_prints_metrics_and_writes_plots(tmp_path: Path, dataset_dir: Path, capsys) -> None:
    from xai_pipeline.cli import main

    data = tmp_path / "data"
    for label in ("fundus", "histology", "ultrasound"):
        (data / label).mkdir(parents=True)
        for src in sorted((dataset_dir / label).iterdir())[:3]:
            (data / label / src.name).write_bytes(src.read_bytes())
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "eval"), "--compound-figures", "12"]) == 0
    printed = capsys.readouterr().out
    assert "macro-F1" in printed and "confusion" in printed and "ECE" in printed and "exact count" in printed
    checks = json.loads((tmp_path / "eval" / "figures.json").read_text())
    assert checks["panels"]["compound_figures"] == 12 and 0 <= checks["panels"]["recall_iou50"] <= 1
    assert checks["panels"]["single_figures"] == 9 and checks["figure_types"]["accuracy_by_type"]["medical_image"] >= 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 9 and sum(map(sum, metrics["confusion"])) == 9
    for name in ("confusion.png", "class_mean_crm.png"):
        assert Image.open(tmp_path / "eval" / name).size[0] > 100


def test_evaluate_held_out_with_faithfulness_and_its_model_card_section(tmp_path: Path, dataset_dir: Path, capsys) -> None:
    """``evaluate --held-out`` scores only the figures train's split keeps out of training;
    ``--faithfulness`` adds the four maps' areas to metrics.json, which the model card renders."""
    from xai_pipeline.cli import main
    from xai_pipeline.train import model_card

    data = tmp_path / "data"
    for label in ("fundus", "histology"):
        (data / label).mkdir(parents=True)
        for src in sorted((dataset_dir / label).iterdir())[:5]:
            (data / label / src.name).write_bytes(src.read_bytes())
    _, validation, _ = split_by_group(read_examples(str(data)), 0.2, 0, ())
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--compound-figures", "4", "--held-out",
                 "--faithfulness", "--faithfulness-figures", "2", "--faithfulness-steps", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(validation) < 10
    faith = metrics["faithfulness"]
    assert faith["figures"] == 2 and faith["steps"] == 2
    for name in ("crm", "cam", "grad_cam", "random"):
        assert 0 <= faith[name]["deletion_auc"] <= 1 and 0 <= faith[name]["insertion_auc"] <= 1 and "road_auc" in faith[name]
        assert len(faith[name]["curves"]["deletion"]) == 3
    assert "randomisation rho" in capsys.readouterr().out
    card = tmp_path / "card" / "MODEL_CARD.md"
    card.parent.mkdir()
    card.write_text("# Model card\n")
    assert model_card.main(["--evaluation", str(out), "--card", str(card), "--held-out"]) == 0
    assert model_card.main(["--evaluation", str(out), "--card", str(card), "--held-out"]) == 0  # replaced, not appended twice
    text = card.read_text()
    assert text.count("## Faithfulness of the maps") == 1 and "| Grad-CAM |" in text and "| histology |" in text
    assert (card.parent / "faithfulness.png").is_file() and (card.parent / "class_mean_crm.png").is_file()
    with pytest.raises(ConfigError, match="--holdout-sources is used only with --held-out"):
        EvaluateConfig(data=str(data), holdout_sources="x")
    with pytest.raises(ConfigError, match="--split-seed is used only with --held-out"):
        EvaluateConfig(data=str(data), split_seed=1)
